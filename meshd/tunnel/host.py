"""The host half of TUNNEL_HTTP (MESH_PROTOCOL.md §5.8): one request per inbound stream, relayed to
the host's OpenAI-compatible backend, the raw response streamed back with backpressure.

Streams are the Twisted-faced objects of ``meshd.quic`` (``write``, ``loseWriteConnection``,
``reset``, ``registerProducer``, ``set_receiver``); anything with that face works (``TunnelStream``),
which keeps the tunnel testable without QUIC. The client half is ``meshd.tunnel.client``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol as TxProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from meshd import jsonbound
from meshd.agentapi.translate import Output as TranslatorOutput
from meshd.agentapi.translate import Translator
from meshd.concurrency import Admission
from meshd.httpwire import (
    MAX_BODY_BYTES,
    HTTPWireError,
    ParsedRequest,
    RequestParser,
    ResponseFramer,
    ResponseHead,
    ResponseParser,
    openai_error_body,
)
from meshd.ingress import Answer as IngressAnswer
from meshd.ingress import HostIngress
from meshd.tunnel.backend import Backend

#: The backend must start answering within this (mesh-llm's remote first-byte timeout).
BACKEND_FIRST_BYTE_TIMEOUT = 300.0
#: The whole request must arrive within this after the stream opened.
REQUEST_READ_TIMEOUT = 30.0
#: A peer that reads nothing of a response for this long loses its tunnel (and frees the slot).
STALLED_READER_TIMEOUT = 60.0
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
    """The life of a host tunnel (docs/lifecycles.md draws it)."""

    READING = "reading"  # the request is arriving
    QUEUED = "queued"  # waiting for a backend slot
    CONNECTING = "connecting"  # holds a slot; dialling the backend
    RELAYING = "relaying"  # the backend's response flows to the stream
    DONE = "done"  # answered, failed or gone; the slot (if any) is free


#: The only moves a host tunnel makes; anything else is a bug (``HostTunnel._enter`` refuses it).
TUNNEL_MOVES: dict[TunnelState, frozenset[TunnelState]] = {
    TunnelState.READING: frozenset({TunnelState.QUEUED, TunnelState.CONNECTING, TunnelState.DONE}),
    TunnelState.QUEUED: frozenset({TunnelState.CONNECTING, TunnelState.DONE}),
    TunnelState.CONNECTING: frozenset({TunnelState.RELAYING, TunnelState.DONE}),
    TunnelState.RELAYING: frozenset({TunnelState.DONE}),
    TunnelState.DONE: frozenset(),
}


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
            self._enter(TunnelState.QUEUED)
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
        self._enter(TunnelState.CONNECTING)
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
        self._enter(TunnelState.RELAYING)
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

    def _enter(self, state: TunnelState) -> None:
        if state not in TUNNEL_MOVES[self.state]:
            raise AssertionError(f"host tunnel cannot go from {self.state.value} to {state.value}")
        self.state = state

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
        self._enter(TunnelState.DONE)
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
