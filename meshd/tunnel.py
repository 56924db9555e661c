"""HTTP over TUNNEL_HTTP streams (MESH_PROTOCOL.md §5.8): the host side relays one request per
stream to its OpenAI-compatible backend; the client side (``ClientTunnel``) sends a request to a
host and hands the response back as it arrives.

Streams are the Twisted-faced objects of ``meshd.quic`` (``write``, ``loseWriteConnection``,
``reset``, ``registerProducer``, ``set_receiver``); anything with that face works, which keeps
these adapters testable without QUIC.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as TxProtocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure

from meshd.httpwire import HTTPWireError, ParsedRequest, RequestParser, openai_error_body, render_request

#: mesh-llm's BACKEND_PROXY_MAX_INFLIGHT.
DEFAULT_BACKEND_INFLIGHT = 4
BACKEND_CONNECT_TIMEOUT = 10.0
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


def http_response(status: int, reason: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def requested_model(body: bytes) -> str | None:
    """The ``model`` of a JSON object request body, else None."""
    if body.lstrip()[:1] != b"{":
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) else None


@attrs.define
class BackendStats:
    requests: int = 0
    rejected_busy: int = 0
    failed: int = 0
    inflight: int = 0
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
    """An OpenAI-compatible server this host relays tunnel requests to."""

    _log = Logger()

    def __init__(self, reactor: Any, url: str, max_inflight: int = DEFAULT_BACKEND_INFLIGHT) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"backend URL must be http(s)://host[:port], got {url!r}")
        self.url = url
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.base_path = parts.path.rstrip("/")
        self.max_inflight = max_inflight
        self.stats = BackendStats()
        self._reactor = reactor

    @property
    def host_header(self) -> bytes:
        default = 443 if self.tls else 80
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return (host if self.port == default else f"{host}:{self.port}").encode("idna")

    def try_acquire(self) -> bool:
        if self.stats.inflight >= self.max_inflight:
            self.stats.rejected_busy += 1
            return False
        self.stats.inflight += 1
        self.stats.requests += 1
        return True

    def release(self) -> None:
        self.stats.inflight = max(0, self.stats.inflight - 1)

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
        return render_request(request.method, target, request.headers, request.body, host=self.host_header)


class _BackendRelay(TxProtocol):
    """Backend TCP connection: writes the request, pipes the raw response into the stream."""

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


class HostTunnel:
    """Receiver of one inbound TUNNEL_HTTP stream on a host (after the 0x04 type byte).

    Reads exactly one request (limits of §6.5; 400/413/431 answered in OpenAI's error shape), relays
    it to the backend with ``Connection: close`` and streams the raw response back with
    backpressure; FINs the stream when the backend closes. A stream reset by the client aborts the
    backend request.
    """

    _log = Logger()

    def __init__(self, stream: TunnelStream, backend: Backend, peer: str = "?") -> None:
        self.stream = stream
        self.backend = backend
        self.peer = peer
        self._parser = RequestParser()
        self._relay: _BackendRelay | None = None
        self._acquired = False
        self._finished = False
        self._stream_gone = False
        self._sent_bytes = 0
        self._model: str | None = None

    # stream receiver -----------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._parser.request is not None or self._finished:
            return  # one request per stream; anything after it is ignored
        try:
            request = self._parser.feed(data)
        except HTTPWireError as e:
            self._answer_error(e.status, e.message, e.code)
            return
        if request is not None:
            self._start(request)

    def eofReceived(self) -> None:
        if self._parser.request is not None or self._finished:
            return
        try:
            request = self._parser.feed_eof()
        except HTTPWireError as e:
            self._answer_error(e.status, e.message, e.code)
            return
        self._start(request)

    def connectionLost(self, reason: Failure) -> None:
        self._stream_gone = True
        if self._relay is not None and self._relay.transport is not None and not self._finished:
            self._log.info(
                "tunnel from {peer} went away; aborting backend request", peer=self.peer, event="tunnel_cancelled"
            )
            self._relay.transport.abortConnection()  # type: ignore[attr-defined]
        self._done()

    # backend side -----------------------------------------------------------------------------

    def _start(self, request: ParsedRequest) -> None:
        if not self.backend.try_acquire():
            # Busy: drop the stream at once so the client fails over to another host.
            self._log.info(
                "backend busy ({n} in flight); dropping tunnel from {peer}",
                n=self.backend.stats.inflight,
                peer=self.peer,
                event="tunnel_busy",
            )
            self._finished = True
            self.stream.loseWriteConnection()
            return
        self._acquired = True
        try:
            raw = self.backend.render(request)
        except HTTPWireError as e:
            self._answer_error(e.status, e.message, e.code)
            return
        self._model = requested_model(request.body)
        self._relay = _BackendRelay(self, raw)
        d = self.backend.connect(self._relay)
        d.addErrback(self._connect_failed)

    def _connect_failed(self, failure: Failure) -> None:
        self.backend.stats.failed += 1
        self._log.warn(
            "backend {url} unreachable: {err}",
            url=self.backend.url,
            err=failure.getErrorMessage(),
            event="backend_down",
        )
        self._answer_error(503, "llama backend unavailable", "service_unavailable", "server_error")

    def backend_connected(self, relay: _BackendRelay) -> None:
        if self._stream_gone:
            assert relay.transport is not None
            relay.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self.stream.registerProducer(relay.transport, True)

    def backend_data(self, data: bytes) -> None:
        if not self._stream_gone:
            self._sent_bytes += len(data)
            self.stream.write(data)

    def backend_closed(self, reason: Failure) -> None:
        if self._stream_gone:
            self._done()
            return
        self.stream.unregisterProducer()
        if not reason.check(ConnectionDone):
            self.backend.stats.failed += 1
            if self._sent_bytes == 0:
                self._answer_error(502, "backend failed before responding", "bad_gateway", "server_error")
            else:
                # A response cut short must not look complete: reset rather than FIN.
                self._finished = True
                self.stream.reset(1)
                self._done()
            return
        self._finished = True
        self.backend.stats.count_served(self._model)
        self.stream.loseWriteConnection()
        self._done()

    # helpers ----------------------------------------------------------------------------------

    def _answer_error(self, status: int, message: str, code: str, type_: str = "invalid_request_error") -> None:
        if self._finished or self._stream_gone:
            return
        self._finished = True
        reasons = {400: "Bad Request", 413: "Payload Too Large", 431: "Request Header Fields Too Large"}
        reasons.update({502: "Bad Gateway", 503: "Service Unavailable"})
        body = openai_error_body(message, type_, code)
        self.stream.write(http_response(status, reasons.get(status, "Error"), body))
        self.stream.loseWriteConnection()
        self._done()

    def _done(self) -> None:
        if self._acquired:
            self._acquired = False
            self.backend.release()
