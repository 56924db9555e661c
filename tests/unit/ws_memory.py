"""An in-memory websocket server behind a scripted client endpoint, for link tests on a Clock (no sockets)."""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.test.iosim import FakeTransport, IOPump, connect
from zope.interface import implementer


class ServerProto(WebSocketServerProtocol):
    """Records the upgrade request and the messages; picks the endpoint's subprotocol; sends its greeting."""

    @property
    def owner(self) -> Any:
        return self.factory.owner

    def onConnect(self, request: ConnectionRequest) -> str | None:
        self.owner.requests.append(request)
        pick: str | None = self.owner.pick_subprotocol
        return pick

    def onOpen(self) -> None:
        self.owner.server = self
        if self.owner.greeting is not None:
            self.sendMessage(self.owner.greeting, isBinary=True)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.owner.received.append(payload)


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """Each connect() takes the next outcome: "refuse" fails at once, "hang" never answers, "accept" wires an
    in-memory autobahn server (``protocol``) to the client's connection; :meth:`flush` moves the bytes."""

    protocol: type[WebSocketServerProtocol] = ServerProto

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.outcomes: list[str] = []
        self.connects: list[float] = []
        self.requests: list[ConnectionRequest] = []
        self.received: list[bytes] = []
        self.greeting: bytes | None = None
        self.pick_subprotocol: str | None = None
        self.server: Any = None
        self.pump: IOPump | None = None

    def connect(self, factory: Any) -> Deferred[Any]:
        self.connects.append(self.clock.seconds())
        outcome = self.outcomes.pop(0) if self.outcomes else "refuse"
        if outcome == "refuse":
            return fail(ConnectionRefusedError("scripted refusal"))
        if outcome == "hang":
            return Deferred()
        client = factory.buildProtocol(None)
        sfactory = WebSocketServerFactory(reactor=self.clock)
        sfactory.protocol = self.protocol
        sfactory.owner = self
        sfactory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        server = sfactory.buildProtocol(None)
        self.server = None
        self.pump = connect(
            server,
            FakeTransport(server, isServer=True),
            client,
            FakeTransport(client, isServer=False),
            greet=False,
            clock=self.clock,
        )
        return succeed(client)

    def flush(self) -> None:
        assert self.pump is not None
        self.pump.flush()

    def drop(self) -> None:
        """The server goes away without a close handshake."""
        assert self.server is not None
        self.server.transport.loseConnection()
        self.flush()
