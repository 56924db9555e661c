"""A TCP listening service that binds in ``privilegedStartService`` and fails loudly."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort, IReactorTCP
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

#: Connections the kernel may queue before meshd accepts them (Twisted's default, 50, drops a burst of
#: clients' handshakes; the kernel caps it at net.core.somaxconn).
LISTEN_BACKLOG = 1024


class TCPListenService(Service):
    """Listen on ``interface:port`` (0 = any free port) with ``factory``.

    The bind happens synchronously in ``privilegedStartService`` so a bind error surfaces before
    twistd runs the reactor; ``stopService`` closes the port.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: IReactorTCP,
        interface: str,
        port: int,
        factory: ServerFactory[Any],
        on_stop: Sequence[Callable[[], object]] = (),
    ) -> None:
        self._reactor = reactor
        self.interface = interface
        self.requested_port = port
        self.factory = factory
        self.port: IListeningPort | None = None
        #: Called when the service stops (e.g. to stop an app's timers).
        self.on_stop = tuple(on_stop)

    @property
    def bound_port(self) -> int | None:
        return None if self.port is None else self.port.getHost().port  # type: ignore[attr-defined]

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.port is None:
            self.port = self._reactor.listenTCP(
                self.requested_port, self.factory, backlog=LISTEN_BACKLOG, interface=self.interface
            )

    def unbind(self) -> None:
        """Stop listening now (a sibling's bind failed before the service ran)."""
        port, self.port = self.port, None
        if port is not None:
            port.stopListening()

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        for hook in self.on_stop:
            hook()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        d = port.stopListening()
        return d if isinstance(d, Deferred) else succeed(None)
