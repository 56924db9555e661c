"""Relay client: one reconnecting websocket per relay URL, speaking iroh's relay protocol.

:class:`RelayLink` is one relay (``ClientService`` + autobahn, reconnect with jittered exponential backoff):
``wss://`` with normal certificate checks (``optionsForClientTLS`` on the host without its trailing dot) for
``https://`` URLs, ``ws://`` for ``http://`` ones; subprotocol ``iroh-relay-v2`` (v1 accepted); the challenge
handshake signed with the node key; a Ping at once and every ``ping_interval``, reconnecting when a Pong misses
its deadline; datagrams out as single frames, in as single or batch frames. Sends go through a bounded queue
(the oldest datagram is dropped beyond ``max_queue``: QUIC recovers from loss) that drains while the socket
accepts data and is held while it is not connected or its buffer is full.

:class:`RelayClient` holds the links: the home relay always, any other relay on demand (closed after
``idle_timeout`` without traffic). Received datagrams go to ``on_datagram(url, src_id, data)``.
"""

from __future__ import annotations

import os
import random
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import attrs
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.types import ConnectionResponse
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from meshd.iroh_relay import frames as f

__all__ = [
    "CONNECTING",
    "DENIED",
    "FAILING",
    "STOPPED",
    "UP",
    "LinkCounters",
    "RelayClient",
    "RelayClientConfig",
    "RelayLink",
    "canonical_relay_url",
    "relay_endpoint",
]

CONNECTING = "connecting"
UP = "up"
FAILING = "failing"
DENIED = "denied"
STOPPED = "stopped"

OnDatagram = Callable[[str, bytes, bytes], object]
OnGone = Callable[[str, bytes], object]

_log = Logger()


@attrs.frozen
class RelayClientConfig:
    ping_interval: float = 15.0
    pong_timeout: float = 5.0
    connect_timeout: float = 10.0
    max_queue: int = 1024
    idle_timeout: float = 60.0
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    #: ``--relay-auth URL=TOKEN``: canonical relay URL -> bearer token sent with the websocket upgrade.
    auth: dict[str, str] = attrs.field(factory=dict, repr=False)


@attrs.define
class LinkCounters:
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    denied: int = 0
    datagrams_out: int = 0
    datagrams_in: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    batches_in: int = 0
    queue_drops: int = 0
    oversize_drops: int = 0
    endpoint_gone: int = 0
    pong_timeouts: int = 0
    bad_frames: int = 0
    rate_limited: int = 0


def canonical_relay_url(url: str) -> str:
    """``scheme://host[:port]/`` with a lowercase scheme and host (a trailing dot is kept), or ValueError."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        raise ValueError(f"a relay URL is http(s)://host[:port]/, got {url!r}")
    try:
        port = parts.port
    except ValueError as e:
        raise ValueError(f"relay URL has a bad port: {url!r}") from e
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}{f':{port}' if port else ''}/"


def relay_endpoint(reactor: Any, url: str) -> tuple[IStreamClientEndpoint, str]:
    """The TCP (or TLS) endpoint for *url* and the websocket URL of its ``/relay`` path."""
    parts = urlsplit(canonical_relay_url(url))
    secure = parts.scheme not in ("http", "ws")
    host = (parts.hostname or "").rstrip(".")
    port = parts.port or (443 if secure else 80)
    tcp = HostnameEndpoint(reactor, host, port, timeout=10)
    shown = f"[{host}]" if ":" in host else host
    ws_url = f"{'wss' if secure else 'ws'}://{shown}:{port}/relay"
    if secure:
        return wrapClientTLS(optionsForClientTLS(host), tcp), ws_url
    return tcp, ws_url


@implementer(IPushProducer)
class _Protocol(WebSocketClientProtocol):  # type: ignore[misc]
    link: RelayLink
    relay_version: str = f.PROTOCOL_V2
    authed = False
    paused = False

    def onConnect(self, response: ConnectionResponse) -> None:
        if response.protocol not in f.SUBPROTOCOLS:
            raise Exception(f"relay answered with subprotocol {response.protocol!r}")
        self.relay_version = response.protocol

    def onOpen(self) -> None:
        transport: Any = self.transport
        try:
            transport.registerProducer(self, True)
        except RuntimeError:
            pass

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self.link._message(self, payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.link._closed(self, code, reason)

    def send_frame(self, data: bytes) -> None:
        if self.state == WebSocketClientProtocol.STATE_OPEN:
            self.sendMessage(data, isBinary=True)

    # IPushProducer: the transport's buffer is full / drained
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.link._drain()

    def stopProducing(self) -> None:
        self.paused = True


class _Factory(WebSocketClientFactory):  # type: ignore[misc]
    protocol = _Protocol

    def __init__(self, link: RelayLink, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.link = link

    def buildProtocol(self, addr: Any) -> _Protocol:
        proto = super().buildProtocol(addr)
        assert isinstance(proto, _Protocol)
        proto.link = self.link
        return proto


class _Observed:
    def __init__(self, link: RelayLink, endpoint: IStreamClientEndpoint) -> None:
        self._link = link
        self._endpoint = endpoint

    def connect(self, factory: Any) -> Deferred[Any]:
        self._link.state = CONNECTING
        self._link._opened_at = self._link.reactor.seconds()
        d: Deferred[Any] = self._endpoint.connect(factory)

        def failed(failure: Failure) -> Failure:
            self._link.counters.connect_failures += 1
            self._link.state = FAILING
            self._link.last_error = failure.getErrorMessage()
            return failure

        return d.addErrback(failed)


class RelayLink(Service):
    """One relay URL: connection, handshake, keepalive, bounded send queue, counters."""

    def __init__(
        self,
        reactor: Any,
        url: str,
        private_key: ed25519.Ed25519PrivateKey,
        on_datagram: OnDatagram,
        *,
        on_gone: OnGone | None = None,
        config: RelayClientConfig = RelayClientConfig(),
        endpoint: IStreamClientEndpoint | None = None,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.url = canonical_relay_url(url)
        self.private_key = private_key
        self.on_datagram = on_datagram
        self.on_gone = on_gone
        self.config = config
        self.state = STOPPED
        self.last_error: str | None = None
        self.last_status: int | None = None
        self.counters = LinkCounters()
        self.last_used = reactor.seconds()
        self.connected_at: float | None = None
        self.handshake_seconds: float | None = None
        self._queue: deque[bytes] = deque()
        self._proto: _Protocol | None = None
        self._opened_at = 0.0
        self._ping_data: bytes | None = None
        self._ping_timer: IDelayedCall | None = None
        self._pong_timer: IDelayedCall | None = None
        self._up_waiters: list[Deferred[RelayLink]] = []
        tcp, ws_url = relay_endpoint(reactor, self.url) if endpoint is None else (endpoint, "ws://relay/relay")
        token = next((t for u, t in config.auth.items() if canonical_relay_url(u) == self.url), None)
        headers = {"Authorization": f"Bearer {token}"} if token else None
        factory = _Factory(self, url=ws_url, protocols=list(f.SUBPROTOCOLS), reactor=reactor, headers=headers)
        factory.setProtocolOptions(
            maxMessagePayloadSize=f.MAX_FRAME_SIZE,
            maxFramePayloadSize=f.MAX_FRAME_SIZE,
            openHandshakeTimeout=config.connect_timeout,
            closeHandshakeTimeout=2,
            autoPingInterval=0,
        )
        policy = backoffPolicy(initialDelay=config.initial_backoff, maxDelay=config.max_backoff, factor=2.0)
        self._client = ClientService(_Observed(self, tcp), factory, retryPolicy=policy, clock=reactor)  # type: ignore[arg-type]

    # -- public --
    @property
    def is_up(self) -> bool:
        return self.state == UP and self._proto is not None

    def when_up(self) -> Deferred[RelayLink]:
        if self.is_up:
            return succeed(self)
        d: Deferred[RelayLink] = Deferred()
        self._up_waiters.append(d)
        return d

    def send(self, dst: bytes, datagram: bytes) -> None:
        """Queue one datagram for *dst*; dropped (and counted) when empty, too big, or the queue overflows."""
        self.last_used = self.reactor.seconds()
        try:
            frame = f.encode(f.ClientToRelayDatagram(dst, datagram))
        except f.FrameError:
            self.counters.oversize_drops += 1
            return
        if not datagram:
            self.counters.oversize_drops += 1
            return
        self.counters.datagrams_out += 1
        self.counters.bytes_out += len(datagram)
        proto = self._proto
        if proto is not None and proto.authed and not proto.paused and not self._queue:
            proto.send_frame(frame)
            return
        if len(self._queue) >= self.config.max_queue:
            self._queue.popleft()
            self.counters.queue_drops += 1
        self._queue.append(frame)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def status(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "state": self.state,
            "protocol": self._proto.relay_version if self._proto is not None else None,
            "last_error": self.last_error,
            "last_status": self.last_status,
            "queued": len(self._queue),
            "handshake_ms": round(self.handshake_seconds * 1000, 2) if self.handshake_seconds is not None else None,
            **attrs.asdict(self.counters),
        }

    def startService(self) -> None:
        super().startService()
        self._client.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.state = STOPPED
        self._cancel_timers()
        self._queue.clear()
        for d in self._up_waiters:
            d.errback(Exception(f"relay link {self.url} stopped"))
        self._up_waiters = []
        return maybeDeferred(self._client.stopService)  # type: ignore[arg-type]

    # -- from the protocol --
    def _message(self, proto: _Protocol, data: bytes) -> None:
        try:
            frame = f.decode(data, proto.relay_version)
        except f.FrameError as e:
            self.counters.bad_frames += 1
            _log.info("relay {url}: bad frame ({err}); reconnecting", url=self.url, err=e)
            proto.dropConnection(abort=True)
            return
        if not proto.authed:
            self._handshake(proto, frame)
            return
        if isinstance(frame, f.RelayToClientDatagram):
            self._deliver(frame.src, frame.data)
        elif isinstance(frame, f.RelayToClientDatagramBatch):
            self.counters.batches_in += 1
            for segment in f.split_segments(frame.segment_size, frame.data):
                self._deliver(frame.src, segment)
        elif isinstance(frame, f.Ping):
            proto.send_frame(f.encode(f.Pong(frame.data)))
        elif isinstance(frame, f.Pong):
            if frame.data == self._ping_data:
                self._ping_data = None
                if self._pong_timer is not None and self._pong_timer.active():
                    self._pong_timer.cancel()
                self._pong_timer = None
        elif isinstance(frame, f.EndpointGone):
            self.counters.endpoint_gone += 1
            if self.on_gone is not None:
                self.on_gone(self.url, frame.endpoint_id)
        elif isinstance(frame, f.Status):
            self.last_status = frame.code
            if frame.code == f.StatusCode.RATE_LIMITED:
                self.counters.rate_limited += 1
            _log.info("relay {url}: status {code}", url=self.url, code=frame.code)
        elif isinstance(frame, f.Health):
            self.last_error = frame.problem
        elif isinstance(frame, f.Restarting):
            _log.info("relay {url} is restarting (reconnect in {ms} ms)", url=self.url, ms=frame.reconnect_in_ms)
        else:
            self.counters.bad_frames += 1
            proto.dropConnection(abort=True)

    def _deliver(self, src: bytes, data: bytes) -> None:
        self.counters.datagrams_in += 1
        self.counters.bytes_in += len(data)
        self.last_used = self.reactor.seconds()
        if data:
            self.on_datagram(self.url, src, data)

    def _handshake(self, proto: _Protocol, frame: f.Frame) -> None:
        if isinstance(frame, f.ServerChallenge):
            proto.send_frame(f.encode(f.make_client_auth(self.private_key, frame.challenge)))
        elif isinstance(frame, f.ServerConfirmsAuth):
            proto.authed = True
            self._proto = proto
            self.state = UP
            self.last_error = None
            self.connected_at = self.reactor.seconds()
            self.handshake_seconds = self.connected_at - self._opened_at
            self.counters.connects += 1
            self._client_ping()
            self._drain()
            waiters, self._up_waiters = self._up_waiters, []
            for d in waiters:
                d.callback(self)
        elif isinstance(frame, f.ServerDeniesAuth):
            self.counters.denied += 1
            log = _log.warn if self.counters.denied == 1 else _log.debug  # once, not at every retry
            self.state = DENIED
            self.last_error = f"denied: {frame.reason}"
            log("relay {url} denied us: {reason}", url=self.url, reason=frame.reason)
            proto.sendClose(1000)
        else:
            self.counters.bad_frames += 1
            proto.dropConnection(abort=True)

    def _closed(self, proto: _Protocol, code: int | None, reason: str | None) -> None:
        if self._proto is proto:
            self._proto = None
            self.counters.disconnects += 1
            self._cancel_timers()
        if self.state != STOPPED and self.state != DENIED:
            self.state = FAILING
            if reason:
                self.last_error = reason

    def _drain(self) -> None:
        proto = self._proto
        while self._queue and proto is not None and proto.authed and not proto.paused:
            proto.send_frame(self._queue.popleft())

    def _client_ping(self) -> None:
        proto = self._proto
        if proto is None:
            return
        self._ping_data = os.urandom(8)
        proto.send_frame(f.encode(f.Ping(self._ping_data)))
        if self._pong_timer is None or not self._pong_timer.active():
            self._pong_timer = self.reactor.callLater(self.config.pong_timeout, self._pong_missed, proto)
        self._ping_timer = self.reactor.callLater(self.config.ping_interval, self._client_ping)

    def _pong_missed(self, proto: _Protocol) -> None:
        self._pong_timer = None
        if self._proto is proto:
            self.counters.pong_timeouts += 1
            _log.info("relay {url}: no pong; reconnecting", url=self.url)
            proto.dropConnection(abort=True)

    def _cancel_timers(self) -> None:
        for timer in (self._ping_timer, self._pong_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._ping_timer = self._pong_timer = None


class RelayClient(MultiService):
    """All relay links of a node: the home relay (always connected) and peers' relays (on demand)."""

    def __init__(
        self,
        reactor: Any,
        private_key: ed25519.Ed25519PrivateKey,
        on_datagram: OnDatagram,
        *,
        home_url: str | None = None,
        on_gone: OnGone | None = None,
        config: RelayClientConfig = RelayClientConfig(),
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.private_key = private_key
        self.on_datagram = on_datagram
        self.on_gone = on_gone
        self.config = config
        self.home_url = canonical_relay_url(home_url) if home_url else None
        self.links: dict[str, RelayLink] = {}
        self._sweep: IDelayedCall | None = None

    def link(self, url: str) -> RelayLink:
        """The link for *url*, created and started if needed."""
        key = canonical_relay_url(url)
        link = self.links.get(key)
        if link is None:
            link = RelayLink(
                self.reactor, key, self.private_key, self._received, on_gone=self.on_gone, config=self.config
            )
            self.links[key] = link
            link.setServiceParent(self)  # starts it when we are running
        return link

    def set_home(self, url: str | None) -> None:
        self.home_url = canonical_relay_url(url) if url else None
        if self.home_url is not None and self.running:
            self.link(self.home_url)

    def send(self, url: str, dst: bytes, datagram: bytes) -> None:
        self.link(url).send(dst, datagram)

    def status(self) -> list[dict[str, Any]]:
        return [{**link.status(), "home": url == self.home_url} for url, link in self.links.items()]

    def _received(self, url: str, src: bytes, data: bytes) -> None:
        self.on_datagram(url, src, data)

    def startService(self) -> None:
        super().startService()
        if self.home_url is not None:
            self.link(self.home_url)
        self._schedule_sweep()

    def stopService(self) -> Deferred[Any]:
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        d: Deferred[Any] = maybeDeferred(super().stopService)  # type: ignore[arg-type]
        return d

    def _schedule_sweep(self) -> None:
        interval = max(1.0, self.config.idle_timeout / 4)
        self._sweep = self.reactor.callLater(interval * random.uniform(0.9, 1.1), self._sweep_idle)

    def _sweep_idle(self) -> None:
        now = self.reactor.seconds()
        stopping = []
        for url, link in list(self.links.items()):
            if url != self.home_url and now - link.last_used > self.config.idle_timeout:
                _log.info("closing idle relay link {url}", url=url)
                del self.links[url]
                stopping.append(maybeDeferred(link.disownServiceParent))
        if stopping:
            DeferredList(stopping, consumeErrors=True)
        self._schedule_sweep()
