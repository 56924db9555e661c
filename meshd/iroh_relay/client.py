"""iroh relay client: one reconnecting websocket per relay URL, speaking iroh's relay protocol.

:class:`RelayLink` is one relay: a :class:`~meshd.wslink.WebSocketLink` (``ClientService`` + autobahn, reconnect
with jittered exponential backoff, shared with the Nostr pool) plus the iroh parts: ``wss://`` with normal
certificate checks (``optionsForClientTLS`` on the host without its trailing dot) for ``https://`` URLs, ``ws://``
for ``http://`` ones; subprotocol ``iroh-relay-v2`` (v1 accepted); a ``--relay-auth`` bearer token in the upgrade;
the challenge handshake signed with the node key (the link is ``up`` once the relay confirms it, ``denied``
when it refuses); a Ping at once and every ``ping_interval``, reconnecting when a Pong misses its deadline;
datagrams out as single frames, in as single or batch frames. Sends go through the link's bounded queue (the
oldest datagram is dropped beyond ``max_queue``: QUIC recovers from loss) that drains while the socket accepts
data and is held while it is not up or its buffer is full.

:class:`RelayClient` holds the links: the home relay always, any other relay on demand (closed after
``idle_timeout`` without traffic). Received datagrams go to ``on_datagram(url, src_id, data)``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import attrs
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.application.internet import backoffPolicy
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.logger import Logger

from meshd.iroh_relay import frames as f
from meshd.wslink import LinkConnection, LinkCounters, LinkOptions, LinkState, WebSocketLink, stream_endpoint

__all__ = [
    "RelayClient",
    "RelayClientConfig",
    "RelayCounters",
    "RelayLink",
    "canonical_relay_url",
    "relay_endpoint",
]

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
    #: A connection up this long resets the backoff when it drops.
    stable_after: float = 10.0
    #: ``--relay-auth URL=TOKEN``: canonical relay URL -> bearer token sent with the websocket upgrade.
    auth: dict[str, str] = attrs.field(factory=dict, repr=False)


@attrs.define
class RelayCounters(LinkCounters):
    """The link's own counters (connects, failures, denials, queue drops) and the iroh relay protocol's."""

    datagrams_out: int = 0
    datagrams_in: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    batches_in: int = 0
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
    shown = f"[{host}]" if ":" in host else host
    ws_url = f"{'wss' if secure else 'ws'}://{shown}:{port}/relay"
    return stream_endpoint(reactor, host, port, secure), ws_url


class RelayLink(Service):
    """One relay URL: the iroh relay protocol (handshake, keepalive, datagrams) over a :class:`WebSocketLink`.

    *endpoint* replaces the TCP/TLS endpoint of the URL and *retry_policy* (``backoff level -> delay``) the
    jittered backoff of *config*: tests pass a fake endpoint and a policy without jitter, with a ``Clock``.
    """

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
        retry_policy: Callable[[int], float] | None = None,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.url = canonical_relay_url(url)
        self.private_key = private_key
        self.on_datagram = on_datagram
        self.on_gone = on_gone
        self.config = config
        self.last_status: int | None = None
        self.counters = RelayCounters()
        self.last_used = reactor.seconds()
        self._ping_data: bytes | None = None
        self._ping_timer: IDelayedCall | None = None
        self._pong_timer: IDelayedCall | None = None
        tcp, ws_url = relay_endpoint(reactor, self.url) if endpoint is None else (endpoint, "ws://relay/relay")
        token = next((t for u, t in config.auth.items() if canonical_relay_url(u) == self.url), None)
        options = LinkOptions(
            max_message_bytes=f.MAX_FRAME_SIZE,
            open_timeout=config.connect_timeout,
            stable_after=config.stable_after,
            max_queue=config.max_queue,
            subprotocols=f.SUBPROTOCOLS,
            headers={"Authorization": f"Bearer {token}"} if token else {},
        )
        policy = retry_policy or backoffPolicy(
            initialDelay=config.initial_backoff, maxDelay=config.max_backoff, factor=2.0
        )
        self._link = WebSocketLink(
            reactor,
            self.url,
            tcp,
            self,
            ws_url=ws_url,
            retry_policy=policy,
            options=options,
            counters=self.counters,
            label="iroh relay",
        )

    # -- public --
    @property
    def state(self) -> LinkState:
        return self._link.state

    @property
    def last_error(self) -> str | None:
        return self._link.last_error

    @property
    def is_up(self) -> bool:
        return self._link.is_up

    @property
    def connected_at(self) -> float | None:
        return self._link.connected_at

    @property
    def handshake_seconds(self) -> float | None:
        return self._link.handshake_seconds

    def when_up(self) -> Deferred[RelayLink]:
        """Fires with this link once the relay confirmed our handshake; fails with LinkStopped on stop."""
        return self._link.when_up().addCallback(lambda _: self)

    def touch(self) -> None:
        """Count the link as used now (the idle sweep closes a peer relay's link ``idle_timeout`` after this)."""
        self.last_used = self.reactor.seconds()

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
        self._link.send(frame, binary=True)

    @property
    def queued(self) -> int:
        return self._link.queued

    def status(self) -> dict[str, Any]:
        conn = self._link.connection
        return {
            **self._link.status(),
            "protocol": conn.subprotocol if conn is not None and self.is_up else None,
            "last_status": self.last_status,
            "queued": self._link.queued,
            "handshake_ms": round(self.handshake_seconds * 1000, 2) if self.handshake_seconds is not None else None,
            **attrs.asdict(self.counters),
        }

    def startService(self) -> None:
        super().startService()
        self._link.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._cancel_timers()
        return self._link.stopService()

    # -- LinkHandler --
    def link_opened(self, conn: LinkConnection) -> None:
        pass  # the relay speaks first: ServerChallenge

    def link_message(self, conn: LinkConnection, data: bytes, binary: bool) -> None:
        if not binary:
            return
        try:
            frame = f.decode(data, conn.subprotocol or f.PROTOCOL_V2)
        except f.FrameError as e:
            self.counters.bad_frames += 1
            _log.info("relay {url}: bad frame ({err}); reconnecting", url=self.url, err=e)
            conn.abort()
            return
        if not self._link.is_up:
            self._handshake(conn, frame)
            return
        if isinstance(frame, f.RelayToClientDatagram):
            self._deliver(frame.src, frame.data)
        elif isinstance(frame, f.RelayToClientDatagramBatch):
            self.counters.batches_in += 1
            for segment in f.split_segments(frame.segment_size, frame.data):
                self._deliver(frame.src, segment)
        elif isinstance(frame, f.Ping):
            conn.send_message(f.encode(f.Pong(frame.data)), binary=True)
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
            self._link.report_problem(frame.problem)
        elif isinstance(frame, f.Restarting):
            _log.info("relay {url} is restarting (reconnect in {ms} ms)", url=self.url, ms=frame.reconnect_in_ms)
        else:
            self.counters.bad_frames += 1
            conn.abort()

    def link_closed(self, conn: LinkConnection) -> None:
        self._cancel_timers()

    # -- the iroh relay protocol --
    def _deliver(self, src: bytes, data: bytes) -> None:
        self.counters.datagrams_in += 1
        self.counters.bytes_in += len(data)
        self.last_used = self.reactor.seconds()
        if data:
            self.on_datagram(self.url, src, data)

    def _handshake(self, conn: LinkConnection, frame: f.Frame) -> None:
        if isinstance(frame, f.ServerChallenge):
            conn.send_message(f.encode(f.make_client_auth(self.private_key, frame.challenge)), binary=True)
        elif isinstance(frame, f.ServerConfirmsAuth):
            self._link.set_up(conn)
            if self._link.is_up:
                self._client_ping(conn)
        elif isinstance(frame, f.ServerDeniesAuth):
            self._link.deny(conn, frame.reason)
        else:
            self.counters.bad_frames += 1
            conn.abort()

    def _client_ping(self, conn: LinkConnection) -> None:
        if self._link.connection is not conn:
            return
        self._ping_data = os.urandom(8)
        conn.send_message(f.encode(f.Ping(self._ping_data)), binary=True)
        if self._pong_timer is None or not self._pong_timer.active():
            self._pong_timer = self.reactor.callLater(self.config.pong_timeout, self._pong_missed, conn)
        self._ping_timer = self.reactor.callLater(self.config.ping_interval, self._client_ping, conn)

    def _pong_missed(self, conn: LinkConnection) -> None:
        self._pong_timer = None
        if self._link.connection is conn:
            self.counters.pong_timeouts += 1
            _log.info("relay {url}: no pong; reconnecting", url=self.url)
            conn.abort()

    def _cancel_timers(self) -> None:
        for timer in (self._ping_timer, self._pong_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._ping_timer = self._pong_timer = None


class RelayClient(MultiService):
    """All relay links of a node: the home relay (always connected) and peers' relays (on demand).

    ``endpoint_factory(url)`` gives the endpoint of a link (default: TCP, plus TLS for ``https``); tests pass
    one with a ``Clock`` as the reactor.
    """

    def __init__(
        self,
        reactor: Any,
        private_key: ed25519.Ed25519PrivateKey,
        on_datagram: OnDatagram,
        *,
        home_url: str | None = None,
        on_gone: OnGone | None = None,
        config: RelayClientConfig = RelayClientConfig(),
        endpoint_factory: Callable[[str], IStreamClientEndpoint] | None = None,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.private_key = private_key
        self.on_datagram = on_datagram
        self.on_gone = on_gone
        self.config = config
        self.home_url = canonical_relay_url(home_url) if home_url else None
        self.links: dict[str, RelayLink] = {}
        self._endpoint_factory = endpoint_factory
        self._sweep: IDelayedCall | None = None

    def link(self, url: str) -> RelayLink:
        """The link for *url*, created and started if needed."""
        key = canonical_relay_url(url)
        link = self.links.get(key)
        if link is None:
            endpoint = self._endpoint_factory(key) if self._endpoint_factory is not None else None
            link = RelayLink(
                self.reactor,
                key,
                self.private_key,
                self._received,
                on_gone=self.on_gone,
                config=self.config,
                endpoint=endpoint,
            )
            self.links[key] = link
            link.setServiceParent(self)  # starts it when we are running
        return link

    def set_home(self, url: str | None) -> None:
        """Make *url* the home relay (connected while we run); the old home link idles out from now on."""
        old = self.links.get(self.home_url) if self.home_url is not None else None
        self.home_url = canonical_relay_url(url) if url else None
        if old is not None and old.url != self.home_url:
            old.touch()
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
