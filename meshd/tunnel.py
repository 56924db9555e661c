"""HTTP over TUNNEL_HTTP streams (MESH_PROTOCOL.md §5.8): the host side relays one request per
stream to its OpenAI-compatible backend; the client side (``ClientTunnel``) sends a request to a
host and hands the response back as it arrives.

Streams are the Twisted-faced objects of ``meshd.quic`` (``write``, ``loseWriteConnection``,
``reset``, ``registerProducer``, ``set_receiver``); anything with that face works, which keeps
these adapters testable without QUIC.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as TxProtocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from meshd import jsonbound
from meshd.agentapi.translate import Output as TranslatorOutput
from meshd.agentapi.translate import Translator
from meshd.concurrency import Admission, ConcurrencyLimiter
from meshd.httpwire import (
    MAX_BODY_BYTES,
    HTTPWireError,
    ParsedRequest,
    RequestParser,
    ResponseFramer,
    ResponseHead,
    ResponseParser,
    openai_error_body,
    render_request,
)
from meshd.ingress import Answer as IngressAnswer
from meshd.ingress import HostIngress

#: mesh-llm's BACKEND_PROXY_MAX_INFLIGHT: the backend limit when neither the flag nor the backend says.
DEFAULT_BACKEND_INFLIGHT = 4
BACKEND_CONNECT_TIMEOUT = 10.0
#: The backend must start answering within this (mesh-llm's remote first-byte timeout).
BACKEND_FIRST_BYTE_TIMEOUT = 300.0
#: The whole request must arrive within this after the stream opened.
REQUEST_READ_TIMEOUT = 30.0
#: A peer that reads nothing of a response for this long loses its tunnel (and frees the slot).
STALLED_READER_TIMEOUT = 60.0
#: How long a tunnel may wait for a backend slot when its client does not say (``--backend-queue-timeout``).
DEFAULT_BACKEND_QUEUE_TIMEOUT = 30.0
#: Sent by meshd clients: seconds the host may queue the request for a slot (``0``: answer busy at once,
#: so the client can try another host). Never forwarded to the backend.
WAIT_HEADER = b"x-meshd-wait"
#: On a host's 503 that means "busy", never "failed" (a meshd client waits or tries another host).
BUSY_HEADER = b"x-meshd-busy"
#: Reset code of a tunnel whose response was cut short (the caller must not take it for complete).
RESET_TRUNCATED = 1

_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
#: Distinct model names counted in ``BackendStats.served`` (the names come from callers); the rest,
#: and names longer than MAX_MODEL_NAME, count as OTHER_MODEL.
MAX_SERVED_MODELS = 64
MAX_MODEL_NAME = 256
OTHER_MODEL = "(other)"


class TunnelStream(Protocol):
    """The face of a QUIC stream this module needs."""

    def set_receiver(self, receiver: Any) -> None: ...
    def write(self, data: bytes) -> None: ...
    def loseWriteConnection(self) -> None: ...
    def reset(self, code: int = 0) -> None: ...
    def registerProducer(self, producer: Any, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def http_response(
    status: int, body: bytes, content_type: str = "application/json", extra: dict[str, str] | None = None
) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}", f"content-type: {content_type}"]
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    lines += [f"content-length: {len(body)}", "connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


def requested_wait(value: bytes | None) -> float | None:
    """The seconds a client allows the host to queue its request (``x-meshd-wait``), if it says."""
    if value is None:
        return None
    try:
        wait = float(value.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return wait if 0 <= wait <= 3600 else None


def requested_model(body: bytes) -> str | None:
    """The ``model`` of a JSON object request body, else None."""
    if body.lstrip()[:1] != b"{":
        return None
    try:
        data = jsonbound.loads(body, max_bytes=MAX_BODY_BYTES)
    except jsonbound.BadJSON:
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) else None


@attrs.define
class BackendStats:
    requests: int = 0
    #: Requests answered busy (no slot within their wait).
    rejected_busy: int = 0
    #: Requests that waited for a slot.
    queued: int = 0
    failed: int = 0
    timeouts: int = 0
    #: Tunnel requests whose response the backend sent in full, per requested model (bounded).
    served: dict[str, int] = attrs.Factory(dict)
    #: Called after each ``count_served`` (the console's live events follow it).
    on_served: list[Callable[[], None]] = attrs.Factory(list)

    def count_served(self, model: str | None) -> None:
        key = model if model and len(model) <= MAX_MODEL_NAME else OTHER_MODEL
        if key not in self.served and len(self.served) >= MAX_SERVED_MODELS:
            key = OTHER_MODEL
        self.served[key] = self.served.get(key, 0) + 1
        for listener in list(self.on_served):
            listener()


class Backend:
    """An OpenAI-compatible server this host relays tunnel requests to, with its slots.

    A slot is held from the moment a request may go to the backend until its response is complete
    (not until the backend closes). Requests over the limit wait in a bounded FIFO for their wait time.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        url: str,
        max_inflight: int | None = None,
        queue_timeout: float = DEFAULT_BACKEND_QUEUE_TIMEOUT,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"backend URL must be http(s)://host[:port], got {url!r}")
        self.url = url
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.base_path = parts.path.rstrip("/")
        #: Where the limit came from: ``flag``, ``default``, or what the backend said of itself.
        self.limit_source = "flag" if max_inflight is not None else "default"
        self.slots = ConcurrencyLimiter(max_inflight or DEFAULT_BACKEND_INFLIGHT, queue_timeout)
        self.stats = BackendStats()
        self.clock = reactor
        self._reactor = reactor
        self._waiters: dict[int, tuple[Callable[[], None], Callable[[], None], Any]] = {}
        self._next_token = 0

    @property
    def max_inflight(self) -> int:
        return self.slots.max_inflight

    @property
    def inflight(self) -> int:
        return self.slots.inflight

    def learned_limit(self, limit: int, source: str) -> None:
        """The backend said how many requests it serves at once; the flag, when given, still wins."""
        if self.limit_source == "flag":
            return
        changed = limit != self.slots.max_inflight
        self.limit_source = source
        if not changed:
            return
        self._log.info(
            "backend {url} serves {n} requests at once ({source}); using that as the host's limit",
            url=self.url,
            n=limit,
            source=source,
            event="backend_limit",
        )
        for token in self.slots.set_limit(limit):
            self._grant(token)

    @property
    def host_header(self) -> bytes:
        default = 443 if self.tls else 80
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return (host if self.port == default else f"{host}:{self.port}").encode("idna")

    # slots ---------------------------------------------------------------------------------------

    def request_slot(
        self, granted: Callable[[], None], expired: Callable[[], None], wait: float | None
    ) -> tuple[Admission, int]:
        """Take a slot now (``ADMIT``), queue for one (``QUEUED``: ``granted`` or ``expired`` is called
        later; the token is for ``cancel``), or ``REJECT`` (busy). ``wait`` caps the queueing time."""
        self._next_token += 1
        token = self._next_token
        now = float(self.clock.seconds())
        admission, deadline = self.slots.admit(token, now, wait)
        if admission is Admission.ADMIT:
            self.stats.requests += 1
        elif admission is Admission.REJECT:
            self.stats.rejected_busy += 1
        else:
            self.stats.queued += 1
            timer = self.clock.callLater(max(0.0, deadline - now), self._expire)
            self._waiters[token] = (granted, expired, timer)
        return admission, token

    def cancel(self, token: int) -> None:
        waiter = self._waiters.pop(token, None)
        self.slots.withdraw(token)
        if waiter is not None and waiter[2].active():
            waiter[2].cancel()

    def release(self) -> None:
        token = self.slots.release()
        if token is not None:
            self._grant(token)

    def _grant(self, token: int) -> None:
        waiter = self._waiters.pop(token, None)
        if waiter is None:  # pragma: no cover - queued tokens always have a waiter
            self.release()
            return
        granted, _, timer = waiter
        if timer.active():
            timer.cancel()
        self.stats.requests += 1
        granted()

    def _expire(self) -> None:
        for token in self.slots.expired(float(self.clock.seconds())):
            waiter = self._waiters.pop(token, None)
            if waiter is not None:
                self.stats.rejected_busy += 1
                waiter[1]()

    # connections ---------------------------------------------------------------------------------

    def connect(self, protocol: TxProtocol) -> Deferred[Any]:
        endpoint: Any
        if _is_ip(self.host):
            # An address needs no resolver round trip through the thread pool (the usual 127.0.0.1).
            cls = TCP6ClientEndpoint if ":" in self.host else TCP4ClientEndpoint
            endpoint = cls(self._reactor, self.host, self.port, timeout=BACKEND_CONNECT_TIMEOUT)
        else:
            endpoint = HostnameEndpoint(self._reactor, self.host, self.port, timeout=BACKEND_CONNECT_TIMEOUT)
        if self.tls:
            endpoint = wrapClientTLS(optionsForClientTLS(self.host), endpoint)
        factory = Factory.forProtocol(lambda: protocol)
        factory.noisy = False
        return endpoint.connect(factory)

    def render(self, request: ParsedRequest) -> bytes:
        target = self.base_path.encode() + request.target if self.base_path else request.target
        headers = [(k, v) for k, v in request.headers if not k.lower().startswith(b"x-meshd-")]
        return render_request(request.method, target, headers, request.body, host=self.host_header)


class _BackendRelay(TxProtocol):
    """Backend TCP connection: writes the request, hands the raw response to the tunnel."""

    def __init__(self, tunnel: HostTunnel, request_bytes: bytes) -> None:
        self.tunnel = tunnel
        self.request_bytes = request_bytes

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request_bytes)
        self.tunnel.backend_connected(self)

    def dataReceived(self, data: bytes) -> None:
        self.tunnel.backend_data(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.tunnel.backend_closed(reason)


class TunnelState(enum.Enum):
    READING = "reading"  # the request is arriving
    QUEUED = "queued"  # waiting for a backend slot
    CONNECTING = "connecting"  # holds a slot; dialling the backend
    RELAYING = "relaying"  # the backend's response flows to the stream
    DONE = "done"  # answered, failed or gone; the slot (if any) is free


@implementer(IPushProducer)
class _ReaderWatch:
    """The producer registered on the stream: passes pause/resume to the backend socket, and gives up
    on a peer that stopped reading for ``STALLED_READER_TIMEOUT`` (so no slot is held forever)."""

    def __init__(self, tunnel: HostTunnel, transport: Any) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.timer: Any = None

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()
        if self.timer is None:
            self.timer = self.tunnel.clock.callLater(STALLED_READER_TIMEOUT, self.tunnel.reader_stalled)

    def resumeProducing(self) -> None:
        self.cancel()
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.cancel()
        self.transport.stopProducing()

    def cancel(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


class HostTunnel:
    """Receiver of one inbound TUNNEL_HTTP stream on a host (after the 0x04 type byte).

    Reads exactly one request (limits of §6.5; 400/408/413/431 answered in OpenAI's error shape), waits
    for a backend slot (bounded; ``503`` with ``x-meshd-busy`` when none frees in time), relays the
    request with ``Connection: close`` and streams the raw response back with backpressure. The response
    is complete at the end of its framing: then the stream is FINed and the slot freed at once. A stream
    reset by the client (or STOP_SENDING) aborts the backend request; a response cut short resets the
    stream. Every wait has a deadline: the request's arrival, the backend's first byte, a stalled reader.
    """

    _log = Logger()

    def __init__(
        self,
        stream: TunnelStream,
        backend: Backend,
        peer: str = "?",
        clock: Any = None,
        ingress: HostIngress | None = None,
    ) -> None:
        self.stream = stream
        self.backend = backend
        self.peer = peer
        #: What the host answers itself (0.76 host ingress: /v1/models, public ids, agent APIs).
        self.ingress = ingress
        #: Translates the backend's chat-completions answer for an agent-API request (decoded, not relayed).
        self._translator: Translator | None = None
        self._decoder: ResponseParser | None = None
        self.clock = clock if clock is not None else backend.clock
        self.state = TunnelState.READING
        self._parser = RequestParser()
        self._framer: ResponseFramer | None = None
        self._relay: _BackendRelay | None = None
        self._watch: _ReaderWatch | None = None
        self._holds_slot = False
        self._queue_token: int | None = None
        self._request_bytes = b""
        self._sent_bytes = 0
        self._timer: Any = None
        self._arm(REQUEST_READ_TIMEOUT, self._request_timeout)
        self._model: str | None = None
        self._charged = 0

    # stream receiver -----------------------------------------------------------------------

    def _charge(self, count: int) -> bool:
        """Hold ``count`` more request bytes. Where the node tracks admission and serves tunnels before
        it (mesh-llm 0.76's passive SDK path), a peer not admitted yet has a small budget for them
        (:meth:`MeshConnection.charge_preadmission`), released when the tunnel ends."""
        conn = getattr(self.stream, "connection", None)
        if conn is None or conn.admitted or not conn.admission_tracked:
            return True
        if not conn.charge_preadmission(count):
            return False
        self._charged += count
        return True

    def dataReceived(self, data: bytes) -> None:
        if self.state is not TunnelState.READING:
            return  # one request per stream; anything after it is ignored
        if not self._charge(len(data)):
            self._answer_error(
                413, "request too large for a peer that is not admitted to the mesh yet", "request_too_large"
            )
            return
        try:
            request = self._parser.feed(data)
        except HTTPWireError as e:
            self._answer_error(e.status, e.message, e.code)
            return
        if request is not None:
            self._start(request)

    def eofReceived(self) -> None:
        if self.state is not TunnelState.READING:
            return
        try:
            request = self._parser.feed_eof()
        except HTTPWireError as e:
            self._answer_error(e.status, e.message, e.code)
            return
        self._start(request)

    def connectionLost(self, reason: Failure) -> None:
        if self.state in (TunnelState.CONNECTING, TunnelState.RELAYING):
            self._log.info(
                "tunnel from {peer} went away; aborting backend request", peer=self.peer, event="tunnel_cancelled"
            )
        self._finish()

    # the request ---------------------------------------------------------------------------------

    def _start(self, request: ParsedRequest) -> None:
        self._disarm()
        if self.ingress is not None:
            decision = self.ingress.decide(request)
            if isinstance(decision, IngressAnswer):
                self._answer(decision.status, decision.body, decision.content_type, dict(decision.headers))
                return
            request = decision.request
            self._translator = decision.translator
        try:
            self._request_bytes = self.backend.render(request)
        except HTTPWireError as e:
            self._answer_error(e.status, e.message, e.code)
            return
        self._framer = ResponseFramer(request.method)
        if self._translator is not None:
            self._decoder = ResponseParser(request.method)
        self._model = requested_model(request.body)
        wait = requested_wait(request.header(WAIT_HEADER))
        admission, token = self.backend.request_slot(self._slot_granted, self._slot_expired, wait)
        if admission is Admission.ADMIT:
            self._holds_slot = True
            self._connect()
        elif admission is Admission.REJECT:
            self._answer_busy()
        else:
            self.state = TunnelState.QUEUED
            self._queue_token = token

    def _slot_granted(self) -> None:
        self._queue_token = None
        self._holds_slot = True
        if self.state is not TunnelState.QUEUED:  # pragma: no cover - a gone tunnel withdrew itself
            self._finish()
            return
        self._connect()

    def _slot_expired(self) -> None:
        self._queue_token = None
        self._answer_busy()

    def _answer_busy(self) -> None:
        self._log.debug(
            "backend busy ({n}/{max} in flight); answering busy to {peer}",
            n=self.backend.inflight,
            max=self.backend.max_inflight,
            peer=self.peer,
            event="tunnel_busy",
        )
        self._answer_error(
            503,
            f"host busy: its backend is serving {self.backend.max_inflight} requests; retry shortly",
            "server_busy",
            "server_error",
            extra={BUSY_HEADER.decode(): "1", "retry-after": "1"},
        )

    def _connect(self) -> None:
        self.state = TunnelState.CONNECTING
        self._relay = _BackendRelay(self, self._request_bytes)
        self._arm(BACKEND_FIRST_BYTE_TIMEOUT, self._first_byte_timeout)
        d = self.backend.connect(self._relay)
        d.addErrback(self._connect_failed)

    def _connect_failed(self, failure: Failure) -> None:
        if self.state is TunnelState.DONE:
            return
        self.backend.stats.failed += 1
        self._log.warn(
            "backend {url} unreachable: {err}",
            url=self.backend.url,
            err=failure.getErrorMessage(),
            event="backend_down",
        )
        self._answer_error(503, "llama backend unavailable", "service_unavailable", "server_error")

    # backend side -----------------------------------------------------------------------------

    def backend_connected(self, relay: _BackendRelay) -> None:
        assert relay.transport is not None
        if self.state is not TunnelState.CONNECTING:
            relay.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self.state = TunnelState.RELAYING
        self._watch = _ReaderWatch(self, relay.transport)
        self.stream.registerProducer(self._watch, True)

    def backend_data(self, data: bytes) -> None:
        if self.state is not TunnelState.RELAYING or self._framer is None:
            return
        if self._sent_bytes == 0:
            self._disarm()  # the backend started answering
        try:
            out = self._framer.feed(data)
        except HTTPWireError as e:
            self._backend_broke(str(e))
            return
        if self._decoder is not None:
            self._translate(out)
            return
        if out:
            self._sent_bytes += len(out)
            self.stream.write(out)
        if self._framer.done:
            self._complete()

    def _translate(self, data: bytes) -> None:
        """An agent-API request's answer: the backend's response decoded, through the translator, out as a
        close-delimited HTTP response in the caller's API."""
        assert self._decoder is not None and self._translator is not None
        try:
            events = self._decoder.feed(data) if data else []
        except HTTPWireError as e:
            self._emit(self._translator.fail(f"the backend's answer could not be read: {e}"))
            self._complete()
            return
        for event in events:
            if isinstance(event, ResponseHead):
                out = self._translator.start(event.status, event.headers)
            elif isinstance(event, bytes):
                out = self._translator.feed(event)
            else:
                out = self._translator.finish()
            self._emit(out)
            if out.done:
                self._complete()
                return

    def _emit(self, out: TranslatorOutput) -> None:
        parts = []
        if out.head is not None:
            lines = [f"HTTP/1.1 {out.head.status} {_REASONS.get(out.head.status, 'OK')}"]
            lines += [f"{k}: {v}" for k, v in out.head.headers]
            lines += ["connection: close", "", ""]  # the body ends where the stream does
            parts.append("\r\n".join(lines).encode("latin-1"))
        if out.body:
            parts.append(out.body)
        if parts:
            data = b"".join(parts)
            self._sent_bytes += len(data)
            self.stream.write(data)

    def backend_closed(self, reason: Failure) -> None:
        if self.state is not TunnelState.RELAYING:
            if self.state is TunnelState.CONNECTING:
                self._backend_broke(f"backend closed the connection: {reason.getErrorMessage()}")
            return
        assert self._framer is not None
        try:
            self._framer.feed_eof()
        except HTTPWireError as e:
            self._backend_broke(str(e))
            return
        if self._decoder is not None and self._translator is not None:
            try:
                events = self._decoder.feed_eof()
            except HTTPWireError as e:
                events = []
                self._emit(self._translator.fail(f"the backend's answer was cut short: {e}"))
            for event in events:
                if event is None:
                    self._emit(self._translator.finish())
                elif isinstance(event, bytes):
                    self._emit(self._translator.feed(event))
            self._emit(self._translator.fail("the backend closed before a complete answer"))
            self._complete()
            return
        if not reason.check(ConnectionDone) and self._framer.until_close:
            self._backend_broke(f"backend connection lost: {reason.getErrorMessage()}")
            return
        self._complete()

    def _complete(self) -> None:
        """The response is whole: FIN the stream, close the backend connection, free the slot."""
        self.backend.stats.count_served(self._model)
        self._unregister()
        self.stream.loseWriteConnection()
        self._finish(close_backend=True)

    def _backend_broke(self, why: str) -> None:
        self.backend.stats.failed += 1
        if self._sent_bytes == 0:
            self._log.info("backend failed before responding: {why}", why=why, event="backend_failed")
            self._answer_error(502, f"backend failed before responding: {why}", "bad_gateway", "server_error")
            return
        # A response cut short must not look complete: reset rather than FIN.
        self._log.info("backend response cut short: {why}", why=why, event="backend_failed")
        self._unregister()
        self.stream.reset(RESET_TRUNCATED)
        self._finish()

    # deadlines ------------------------------------------------------------------------------------

    def _arm(self, secs: float, fn: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.clock.callLater(secs, fn)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _request_timeout(self) -> None:
        self._timer = None
        self._answer_error(408, f"request not received within {REQUEST_READ_TIMEOUT:g}s", "request_timeout")

    def _first_byte_timeout(self) -> None:
        self._timer = None
        self.backend.stats.timeouts += 1
        self._log.info(
            "backend {url} sent nothing within {secs:g}s; giving up",
            url=self.backend.url,
            secs=BACKEND_FIRST_BYTE_TIMEOUT,
            event="backend_timeout",
        )
        self._answer_error(
            504, f"backend sent nothing within {BACKEND_FIRST_BYTE_TIMEOUT:g}s", "backend_timeout", "server_error"
        )

    def reader_stalled(self) -> None:
        if self._watch is not None:
            self._watch.timer = None
        if self.state is not TunnelState.RELAYING:
            return
        self.backend.stats.timeouts += 1
        self._log.info(
            "tunnel from {peer} read nothing for {secs:g}s; dropping it",
            peer=self.peer,
            secs=STALLED_READER_TIMEOUT,
            event="tunnel_stalled",
        )
        self._unregister()
        self.stream.reset(RESET_TRUNCATED)
        self._finish()

    # helpers ----------------------------------------------------------------------------------

    def _answer(self, status: int, body: bytes, content_type: str, extra: dict[str, str]) -> None:
        """A response the host makes itself (host ingress)."""
        if self.state is TunnelState.DONE:
            return
        self.stream.write(http_response(status, body, content_type, extra))
        self.stream.loseWriteConnection()
        self._finish()

    def _answer_error(
        self,
        status: int,
        message: str,
        code: str,
        type_: str = "invalid_request_error",
        extra: dict[str, str] | None = None,
    ) -> None:
        if self.state is TunnelState.DONE:
            return
        self._unregister()
        body = openai_error_body(message, type_, code)
        self.stream.write(http_response(status, body, extra=extra))
        self.stream.loseWriteConnection()
        self._finish()

    def _unregister(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
            self.stream.unregisterProducer()

    def _finish(self, close_backend: bool = False) -> None:
        """End of this tunnel: every timer off, the backend connection closed, the slot free."""
        if self.state is TunnelState.DONE:
            return
        was = self.state
        self.state = TunnelState.DONE
        self._disarm()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._queue_token is not None:
            self.backend.cancel(self._queue_token)
            self._queue_token = None
        relay = self._relay
        if relay is not None and relay.transport is not None and was in (TunnelState.CONNECTING, TunnelState.RELAYING):
            if close_backend:
                relay.transport.loseConnection()
            else:
                relay.transport.abortConnection()  # type: ignore[attr-defined]
        if self._holds_slot:
            self._holds_slot = False
            self.backend.release()
        conn = getattr(self.stream, "connection", None)
        if self._charged and conn is not None:
            conn.release_preadmission(self._charged)
            self._charged = 0
