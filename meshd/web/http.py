"""twisted.web with meshd's request limits (MESH_PROTOCOL.md §6.5) and connection limits.

Headers: 64 KiB in all (431 beyond), bodies: 8 MiB (413 beyond, refused as soon as the declared
length or the received bytes pass the limit, before the body is buffered). Refusals carry the port's
own error shape and close the connection.

Slow clients: a connection idle for ``timeout`` (30 s) is closed (twisted.web's idle timeout), and
whatever it sends, a request's line and headers must be complete within :data:`HEADER_DEADLINE` (10 s,
counted from the connection or from the request's first byte) and its body within
:data:`BODY_DEADLINE` (120 s), else 408. A port holds at most :func:`meshd.limits.connection_limit`
connections (503 beyond) and :data:`MAX_CONNECTIONS_PER_ADDRESS` from one client address (429 beyond;
``per_address=0`` turns that off, for a port behind a proxy where every connection comes from it).
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from meshd.httpwire import MAX_BODY_BYTES, MAX_HEADER_BYTES
from meshd.limits import connection_limit

ErrorBody = Callable[[int, str, str], bytes]
REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Payload Too Large",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}
#: Idle timeout: a connection that sends nothing for this long is closed.
HEADER_READ_TIMEOUT = 30
#: A request line and its headers must be complete this long after the connection (or, on a kept-alive
#: connection, the request's first byte), however the bytes trickle in.
HEADER_DEADLINE = 10.0
#: A request body must be complete this long after its headers.
BODY_DEADLINE = 120.0
#: Connections one client address may hold on one port.
MAX_CONNECTIONS_PER_ADDRESS = 256
#: A refused connection is cut this long after its answer if the client does not read it.
_ABORT_AFTER = 5.0


class LimitedRequest(Request):
    _refused = False
    _body_seen = 0
    #: When the response's first byte was written (the gate's time to first byte), on the site's clock.
    first_write_at: float | None = None

    def write(self, data: bytes) -> None:
        if data and self.first_write_at is None:
            self.first_write_at = float(self.channel.site.clock().seconds())  # type: ignore[attr-defined]
        super().write(data)

    def gotLength(self, length: int | None) -> None:
        limit = self.channel.site.max_body  # type: ignore[attr-defined]
        if length is not None and length > limit:
            self._refuse(413, f"request body of {length} bytes exceeds the {limit}-byte limit")
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._body_seen += len(data)
        limit = self.channel.site.max_body  # type: ignore[attr-defined]
        if self._body_seen > limit:
            self._refuse(413, f"request body exceeds the {limit}-byte limit")
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return
        super().requestReceived(command, path, version)

    def _refuse(self, status: int, message: str) -> None:
        self._refused = True
        self.content = io.BytesIO()
        self.channel.refuse(status, message)  # type: ignore[attr-defined]


_DEFAULT_CODES = {
    400: "invalid_request",
    408: "request_timeout",
    413: "request_too_large",
    429: "too_many_connections",
    431: "request_header_fields_too_large",
    503: "too_many_connections",
}


def _refusal_bytes(site: LimitedSite, status: int, message: str, code: str | None) -> bytes:
    body = site.error_body(status, message, code or _DEFAULT_CODES.get(status, "invalid_request"))
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    return head % (status, REASONS.get(status, b"Error"), len(body)) + body


class LimitedChannel(HTTPChannel):
    totalHeadersSize = MAX_HEADER_BYTES
    MAX_LENGTH = MAX_HEADER_BYTES
    maxHeaders = 100

    _log = Logger()
    _deadline: IDelayedCall | None = None
    _abort_call: IDelayedCall | None = None
    _refused_connection = False
    #: The key this connection is counted under in its site (None: not counted).
    counted_as: str | None = None

    def refuse(self, status: int, message: str, code: str | None = None) -> None:
        site: LimitedSite = self.site  # type: ignore[attr-defined]
        self._cancel_deadline()
        if self._refused_connection or self.transport is None:
            return
        self._refused_connection = True
        self.setTimeout(None)  # the idle timeout is over too: the abort below ends it
        self.transport.write(_refusal_bytes(site, status, message, code))
        self.loseConnection()
        self._abort_call = site.clock().callLater(_ABORT_AFTER, self._abort)

    def _abort(self) -> None:
        self._abort_call = None
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # -- deadlines: a request's head, then its body, each within a fixed time --------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self._start_deadline(self.site.header_deadline, "request headers")  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self._deadline is None and not self.requests and not self._refused_connection:
            # The first byte of the next request on a kept-alive connection.
            self._start_deadline(self.site.header_deadline, "request headers")  # type: ignore[attr-defined]
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        self._cancel_deadline()
        super().allHeadersReceived()
        if self.length != 0 and not self._refused_connection:
            self._start_deadline(self.site.body_deadline, "request body")  # type: ignore[attr-defined]

    def allContentReceived(self) -> None:
        self._cancel_deadline()
        super().allContentReceived()

    def _start_deadline(self, seconds: float, what: str) -> None:
        self._cancel_deadline()
        if seconds and seconds > 0:
            self._deadline = self.site.clock().callLater(seconds, self._deadline_passed, seconds, what)  # type: ignore[attr-defined]

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _deadline_passed(self, seconds: float, what: str) -> None:
        self._deadline = None
        peer = self.transport.getPeer() if self.transport is not None else None
        site = self.site  # type: ignore[attr-defined]
        if isinstance(site, LimitedSite):
            site.note_slow_client(str(getattr(peer, "host", "?")), what, seconds)
        self.refuse(408, f"{what} not complete within {seconds:g} s")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_deadline()
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        site = getattr(self, "site", None)
        if isinstance(site, LimitedSite):
            site.connection_closed(self)
        super().connectionLost(reason)

    def _respondToBadRequestAndDisconnect(self) -> None:
        if self._receivedHeaderSize > self.totalHeadersSize:  # type: ignore[attr-defined]
            self.refuse(431, f"request headers exceed {self.totalHeadersSize} bytes")
        elif getattr(self, "_receivedHeaderCount", 0) > self.maxHeaders:
            self.refuse(431, f"more than {self.maxHeaders} request headers")
        else:
            self.refuse(400, "malformed HTTP request")

    def lineLengthExceeded(self, line: bytes) -> Any:
        self.refuse(431, f"a request line or header exceeds {self.MAX_LENGTH} bytes")


class _Refusal(Protocol):
    """Answers a connection beyond the site's limits with one error response, then closes it."""

    def __init__(self, site: LimitedSite, status: int, message: str) -> None:
        self.site = site
        self.status = status
        self.message = message
        self._abort_call: IDelayedCall | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(_refusal_bytes(self.site, self.status, self.message, None))
        self.transport.loseConnection()
        self._abort_call = self.site.clock().callLater(_ABORT_AFTER, self.transport.abortConnection)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()


class LimitedSite(Site):
    protocol = LimitedChannel  # type: ignore[assignment]
    requestFactory = LimitedRequest
    displayTracebacks = False
    noisy = False

    _log = Logger()

    def log(self, request: Any) -> None:
        """No combined-log line: the API's gate writes one ``access`` event per request instead."""

    def __init__(
        self,
        resource: Any,
        error_body: ErrorBody,
        max_body: int = MAX_BODY_BYTES,
        timeout: float = HEADER_READ_TIMEOUT,
        *,
        header_deadline: float = HEADER_DEADLINE,
        body_deadline: float = BODY_DEADLINE,
        max_connections: int | None = None,
        per_address: int = MAX_CONNECTIONS_PER_ADDRESS,
    ) -> None:
        # Bodies are JSON relayed as bytes: no form parsing (it also costs an email-module header parse).
        super().__init__(resource, timeout=timeout, parsePOSTFormSubmission=False)
        self.error_body = error_body
        self.max_body = max_body
        self.header_deadline = header_deadline
        self.body_deadline = body_deadline
        self.max_connections = connection_limit() if max_connections is None else max_connections
        self.per_address = per_address
        self.open_connections = 0
        self.by_address: Counter[str] = Counter()
        self.refused_connections = 0
        self.slow_clients = 0

    def clock(self) -> Any:
        """The reactor timers run on (``site.reactor`` is Twisted's hook for tests)."""
        return self.reactor  # type: ignore[attr-defined]

    def buildProtocol(self, addr: Any) -> Any:
        host = str(getattr(addr, "host", ""))
        refusal: tuple[int, str] | None = None
        if self.open_connections >= self.max_connections:
            refusal = (503, f"this port holds {self.max_connections} connections; try again shortly")
        elif self.per_address and self.by_address[host] >= self.per_address:
            refusal = (429, f"too many connections from {host} (limit {self.per_address})")
        if refusal is not None:
            self.refused_connections += 1
            if self.refused_connections & (self.refused_connections - 1) == 0:  # 1st, 2nd, 4th, 8th...: no flood
                self._log.warn(
                    "refusing HTTP connections: {reason} ({n} so far)",
                    reason=refusal[1],
                    n=self.refused_connections,
                    event="http_connection_refused",
                )
            return _Refusal(self, *refusal)
        channel = super().buildProtocol(addr)
        if isinstance(channel, LimitedChannel):
            channel.counted_as = host
            self.open_connections += 1
            self.by_address[host] += 1
        return channel

    def note_slow_client(self, client: str, what: str, seconds: float) -> None:
        """Count a client cut for slowness; log the 1st, 2nd, 4th, 8th... (an attack must not flood the log)."""
        self.slow_clients += 1
        if self.slow_clients & (self.slow_clients - 1) == 0:
            self._log.info(
                "closing a slow HTTP client {client}: {what} not complete within {secs:g}s ({n} so far)",
                client=client,
                what=what,
                secs=seconds,
                n=self.slow_clients,
                event="http_slow_client",
            )

    def connection_closed(self, channel: LimitedChannel) -> None:
        host, channel.counted_as = channel.counted_as, None
        if host is None:
            return
        self.open_connections -= 1
        self.by_address[host] -= 1
        if self.by_address[host] <= 0:
            del self.by_address[host]


def unregister_producer(request: Any) -> None:
    """Unregister a response's producer unless the caller already went away (then there is none)."""
    if getattr(request, "channel", None) is not None:
        try:
            request.unregisterProducer()
        except (AttributeError, RuntimeError):
            pass


def pass_chunks_through(request: Any) -> None:
    """Send the response head now (twisted.web announces chunked framing), then stop twisted.web from
    framing the body: the caller writes chunks already framed (a host's, relayed as they are)."""
    request.write(b"")
    request.chunked = False


def abort_response(request: Any) -> None:
    """Cut the caller's connection: a body that broke halfway must not look complete."""
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None)
    if transport is not None:
        transport.abortConnection()
