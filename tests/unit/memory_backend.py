"""An HTTP backend in memory for tunnel tests: a real twisted.web ``Site`` reached through
``Backend(endpoint=MemoryBackend(...))`` over a pair of in-memory transports driven by a ``Clock``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer


class _Half(StringTransport):
    """One end of an in-memory TCP connection: writes arrive at the other end on the next clock turn."""

    def __init__(self, clock: Clock, protocol: Any, port: int) -> None:
        super().__init__(IPv4Address("TCP", "127.0.0.1", 8080), IPv4Address("TCP", "127.0.0.1", port))
        self.clock = clock
        self.protocol = protocol
        self.peer: _Half | None = None
        self.closed = False
        self.gone = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        if not self.closed and data and self.peer is not None:
            self.clock.callLater(0, self.peer._deliver, data)

    def writeSequence(self, seq: Any) -> None:
        self.write(b"".join(seq))

    def _deliver(self, data: bytes) -> None:
        if not self.gone:
            self.protocol.dataReceived(data)

    def loseConnection(self) -> None:
        self._close(ConnectionDone())

    def abortConnection(self) -> None:
        self.aborted = True
        self._close(ConnectionLost())

    def _close(self, why: Exception) -> None:
        """No more writes from either end; both ends learn it after the bytes already on their way."""
        if self.closed:
            return
        for end in (self, self.peer):
            if end is not None:
                end.closed = end.disconnecting = True
                self.clock.callLater(0, end._lost, why)

    def _lost(self, why: Exception) -> None:
        if not self.gone:
            self.gone = True
            self.protocol.connectionLost(Failure(why))

    def stopProducing(self) -> None:
        self.loseConnection()


@implementer(IStreamClientEndpoint)
class MemoryBackend:
    """An endpoint whose connections reach a twisted.web Site in memory (or are refused)."""

    def __init__(self, clock: Clock, resource: Resource) -> None:
        self.clock = clock
        self.site = Site(resource, reactor=clock)
        self.refuse = False
        self.connections: list[_Half] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        if self.refuse:
            return fail(ConnectionRefusedError())
        client = factory.buildProtocol(None)
        server = self.site.buildProtocol(None)
        c, s = _Half(self.clock, client, 5000 + len(self.connections)), _Half(self.clock, server, 8080)
        c.peer, s.peer = s, c
        self.connections.append(c)
        server.makeConnection(s)
        client.makeConnection(c)
        return succeed(client)


class Chat(Resource):
    """``POST /v1/chat/completions``: answers at once, or holds each request until ``release``."""

    isLeaf = True

    def __init__(
        self, name: str, hold: bool = False, answer: Callable[[Any], tuple[int, dict[str, Any]]] | None = None
    ) -> None:
        super().__init__()
        self.name = name
        self.hold = hold
        self.answer = answer
        self.held: list[Any] = []
        self.gone: list[Any] = []
        self.served = 0

    def render_POST(self, request: Any) -> Any:
        body = json.loads(request.content.read())
        if self.hold:
            self.held.append(request)
            request.notifyFinish().addErrback(lambda _: self.gone.append(request))
            return NOT_DONE_YET
        return self._write(request, body)

    def _write(self, request: Any, body: Any) -> bytes:
        status, payload = self.answer(body) if self.answer else (200, {"served_by": self.name, "model": body["model"]})
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        self.served += 1
        return json.dumps(payload).encode()

    def release(self) -> None:
        for request in self.held:
            if request not in self.gone:
                request.write(self._write(request, {"model": "m"}))
                request.finish()
        self.held = []
