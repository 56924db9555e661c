"""A relay server that speaks iroh's relay protocol, for tests and small self-hosted meshes.

``RelayServer(reactor, config).site()`` is a ``twisted.web`` site with:

* ``GET /relay``: the websocket upgrade (subprotocol ``iroh-relay-v2``, else ``iroh-relay-v1``; 400 otherwise),
  challenge handshake (``ServerChallenge`` → ``ClientAuth`` → ``ServerConfirmsAuth``/``ServerDeniesAuth``),
  then forwarding of datagram frames by EndpointId (4→6, 5→7 with the key rewritten), Ping/Pong both ways,
  ``EndpointGone`` to the peers a departing client sent to, ``Status`` (v2) for same-id takeovers and rate
  limiting;
* ``GET /ping`` (200, empty, ``Access-Control-Allow-Origin: *``), ``GET /generate_204``, ``GET /healthz``,
  ``GET /status`` (JSON counters), ``GET /`` (a short text page).

Bounds: 1 MiB websocket messages (autobahn closes bigger ones with 1009), 64 KiB frame payloads, a token
bucket on received datagram bytes per client (reading pauses while it is empty), a per-client outbound queue
of ``max_queue_frames`` that drops the oldest datagram when a client does not read, a handshake deadline,
a server Ping every ``ping_interval`` (+ jitter) with a pong deadline, and ``max_clients``.
Anything malformed closes that one connection (websocket close 4002) and is counted in ``bad_frames``.
"""

from __future__ import annotations

import hmac
import json
import os
import random
from collections import deque
from typing import Any

import attrs
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IPushProducer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from meshd.iroh_relay import frames as f

__all__ = ["RelayServer", "RelayServerConfig", "RelayServerService"]

_log = Logger()

#: Websocket close codes (autobahn allows 1000 or 3000-4999 from the application).
CLOSE_PROTOCOL_ERROR = 4002
CLOSE_RELAY_FULL = 4013


@attrs.frozen
class RelayServerConfig:
    ping_interval: float = 15.0
    ping_jitter: float = 5.0
    pong_timeout: float = 5.0
    handshake_timeout: float = 10.0
    #: Token bucket on received datagram bytes per client (bytes/s and burst); None = unlimited.
    rate_bytes_per_s: float | None = 8 * 1024 * 1024
    rate_burst_bytes: int = 2 * 1024 * 1024
    max_queue_frames: int = 512
    max_clients: int = 10_000
    #: EndpointIds remembered per client for EndpointGone.
    max_sent_to: int = 4096
    #: Bearer tokens this relay accepts (``Authorization: Bearer T`` or ``?token=T`` on the upgrade, as
    #: iroh-relay reads them); empty: anyone may register.
    tokens: frozenset[str] = attrs.field(factory=frozenset, repr=False)


@attrs.define
class Metrics:
    connections_total: int = 0
    clients_connected: int = 0
    handshakes_ok: int = 0
    handshakes_denied: int = 0
    handshake_timeouts: int = 0
    refused_full: int = 0
    bad_frames: int = 0
    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    datagrams_forwarded: int = 0
    datagrams_unknown_destination: int = 0
    queue_drops: int = 0
    rate_limited: int = 0
    endpoint_gone_sent: int = 0
    pings_sent: int = 0
    pong_timeouts: int = 0


@implementer(IPushProducer)
class _Client:
    """One websocket connection's relay state. The protocol hands it messages; it writes through ``send``."""

    def __init__(self, server: RelayServer, proto: _ServerProtocol, version: str) -> None:
        self.server = server
        self.proto = proto
        self.relay_version = version
        self.endpoint_id: bytes | None = None
        self.challenge = os.urandom(16)
        self.queue: deque[bytes] = deque()
        self.paused = False  # the transport's buffer is full
        self.closed = False
        self.sent_to: dict[bytes, None] = {}
        self.tokens = float(server.config.rate_burst_bytes)
        self.tokens_at = server.reactor.seconds()
        self.rate_signalled = False
        self.reading_paused = False
        self.ping_data: bytes | None = None
        self._timers: dict[str, IDelayedCall] = {}

    # -- timers --
    def call_later(self, name: str, delay: float, fn: Any) -> None:
        self.cancel(name)
        self._timers[name] = self.server.reactor.callLater(delay, self._fire, name, fn)

    def _fire(self, name: str, fn: Any) -> None:
        self._timers.pop(name, None)
        if not self.closed:
            fn()

    def cancel(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()

    # -- output --
    def send(self, frame: f.Frame) -> None:
        self.send_raw(f.encode(frame), droppable=isinstance(frame, f.RelayToClientDatagram))

    def send_raw(self, data: bytes, droppable: bool = False) -> None:
        if self.closed:
            return
        if self.paused or self.queue:
            if len(self.queue) >= self.server.config.max_queue_frames:
                self.queue.popleft()
                self.server.metrics.queue_drops += 1
            self.queue.append(data)
            return
        self._write(data)

    def _write(self, data: bytes) -> None:
        if self.proto.state != WebSocketServerProtocol.STATE_OPEN:
            return  # closing: nothing more goes out
        self.server.metrics.frames_out += 1
        self.server.metrics.bytes_out += len(data)
        self.proto.sendMessage(data, isBinary=True)

    # IPushProducer (registered on the TCP transport: it tells us when its buffer is full)
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while self.queue and not self.paused and not self.closed:
            self._write(self.queue.popleft())

    def stopProducing(self) -> None:
        self.closed = True

    # -- input --
    def message(self, data: bytes) -> None:
        metrics = self.server.metrics
        metrics.frames_in += 1
        metrics.bytes_in += len(data)
        try:
            frame = f.decode(data, self.relay_version)
        except f.FrameError as e:
            self.protocol_error(f"bad frame: {e}")
            return
        if self.endpoint_id is None:
            if isinstance(frame, f.ClientAuth):
                self.server._authenticate(self, frame)
            else:
                self.protocol_error(f"expected ClientAuth, got {type(frame).__name__}")
            return
        if isinstance(frame, (f.ClientToRelayDatagram, f.ClientToRelayDatagramBatch)):
            self._charge(len(data))
            self.server._forward(self, frame)
        elif isinstance(frame, f.Ping):
            self.send(f.Pong(frame.data))
        elif isinstance(frame, f.Pong):
            if frame.data == self.ping_data:
                self.ping_data = None
                self.cancel("pong")
        else:
            self.protocol_error(f"unexpected {type(frame).__name__} from a client")

    def _charge(self, n: int) -> None:
        cfg = self.server.config
        if cfg.rate_bytes_per_s is None:
            return
        now = self.server.reactor.seconds()
        self.tokens = min(float(cfg.rate_burst_bytes), self.tokens + (now - self.tokens_at) * cfg.rate_bytes_per_s)
        self.tokens_at = now
        self.tokens -= n
        if self.tokens < 0 and not self.reading_paused:
            self.server.metrics.rate_limited += 1
            if not self.rate_signalled and self.relay_version == f.PROTOCOL_V2:
                self.rate_signalled = True
                self.send(f.Status(f.StatusCode.RATE_LIMITED))
            self.reading_paused = True
            transport: Any = self.proto.transport
            transport.pauseProducing()
            self.call_later("rate", -self.tokens / cfg.rate_bytes_per_s, self._resume_reading)

    def _resume_reading(self) -> None:
        self.reading_paused = False
        transport: Any = self.proto.transport
        if transport is not None:
            transport.resumeProducing()

    def protocol_error(self, why: str) -> None:
        self.server.metrics.bad_frames += 1
        _log.info("relay client {peer}: {why}; closing", peer=self.proto.peer, why=why)
        self.proto.sendClose(CLOSE_PROTOCOL_ERROR, why[:120])

    # -- keepalive --
    def schedule_ping(self) -> None:
        cfg = self.server.config
        self.call_later("ping", cfg.ping_interval + random.uniform(0, cfg.ping_jitter), self._ping)

    def _ping(self) -> None:
        self.ping_data = os.urandom(8)
        self.server.metrics.pings_sent += 1
        self.send(f.Ping(self.ping_data))
        self.call_later("pong", self.server.config.pong_timeout, self._pong_missed)
        self.schedule_ping()

    def _pong_missed(self) -> None:
        self.server.metrics.pong_timeouts += 1
        _log.info("relay client {peer}: no pong; closing", peer=self.proto.peer)
        self.proto.dropConnection(abort=True)

    def shutdown(self) -> None:
        self.closed = True
        for name in list(self._timers):
            self.cancel(name)
        self.queue.clear()


class _ServerProtocol(WebSocketServerProtocol):  # type: ignore[misc]
    server: RelayServer
    client: _Client | None = None
    relay_version: str = f.PROTOCOL_V2
    #: The bearer token the client presented on the upgrade, if any.
    token: str | None = None

    def onConnect(self, request: ConnectionRequest) -> str:
        self.token = bearer_or_query_token(request.headers.get("authorization"), request.params.get("token"))
        offered = [p.strip() for p in request.protocols]
        for version in f.SUBPROTOCOLS:
            if version in offered:
                self.relay_version = version
                return version
        raise ConnectionDeny(400, "unsupported relay version")

    def onOpen(self) -> None:
        self.client = self.server._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.client is None:
            return
        if not isBinary:
            _log.debug("relay: ignoring a text message from {peer}", peer=self.peer)
            return
        self.client.message(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        client, self.client = self.client, None
        if client is not None:
            self.server._closed(client)


def bearer_or_query_token(authorization: str | None, query: list[str] | None) -> str | None:
    """iroh-relay's rule: the ``Authorization: Bearer`` token (scheme case-insensitive), else ``?token=``."""
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    if query:
        return query[0] or None
    return None


class _Factory(WebSocketServerFactory):  # type: ignore[misc]
    protocol = _ServerProtocol

    def __init__(self, relay: RelayServer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.relay = relay

    def buildProtocol(self, addr: Any) -> _ServerProtocol:
        proto = super().buildProtocol(addr)
        assert isinstance(proto, _ServerProtocol)
        proto.server = self.relay
        return proto


class _RelayResource(WebSocketResource):  # type: ignore[misc]
    def render(self, request: Request) -> Any:
        request.channel.setTimeout(None)  # the websocket owns the connection from here on
        return super().render(request)


class _Simple(Resource):
    isLeaf = True

    def __init__(self, code: int, body: bytes = b"", headers: dict[bytes, bytes] | None = None) -> None:
        super().__init__()
        self.code = code
        self.body = body
        self.headers = headers or {}

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(self.code)
        for k, v in self.headers.items():
            request.setHeader(k, v)
        challenge = request.getHeader(b"x-iroh-challenge")
        if challenge is not None and len(challenge) < 64 and challenge.isascii():
            request.setHeader(b"x-iroh-response", b"response " + challenge)
        return self.body


class _StatusPage(Resource):
    isLeaf = True

    def __init__(self, relay: RelayServer) -> None:
        super().__init__()
        self.relay = relay

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.relay.status()).encode()


class RelayServer:
    """The relay's state: connected clients by EndpointId, forwarding, counters."""

    def __init__(self, reactor: Any, config: RelayServerConfig = RelayServerConfig()) -> None:
        self.reactor = reactor
        self.config = config
        self.metrics = Metrics()
        self.started_at = reactor.seconds()
        self._active: dict[bytes, _Client] = {}
        self._inactive: dict[bytes, list[_Client]] = {}
        self._open: set[_Client] = set()

    # -- web --
    def site(self) -> Site:
        factory = _Factory(self, reactor=self.reactor)
        factory.setProtocolOptions(
            maxMessagePayloadSize=f.MAX_FRAME_SIZE,
            maxFramePayloadSize=f.MAX_FRAME_SIZE,
            openHandshakeTimeout=self.config.handshake_timeout,
            closeHandshakeTimeout=2,
            autoPingInterval=0,
        )
        root = Resource()
        root.putChild(b"", _Simple(200, b"meshd relay: iroh relay protocol v1/v2 on /relay\n"))
        root.putChild(b"relay", _RelayResource(factory))
        root.putChild(b"ping", _Simple(200, b"", {b"access-control-allow-origin": b"*"}))
        root.putChild(b"generate_204", _Simple(204))
        root.putChild(b"healthz", _Simple(200, b"ok\n"))
        root.putChild(b"status", _StatusPage(self))
        site = Site(root)
        site.noisy = False
        return site

    def status(self) -> dict[str, Any]:
        return {
            "clients": len(self._active),
            "connections": len(self._open),
            "uptime_s": round(self.reactor.seconds() - self.started_at, 3),
            "metrics": attrs.asdict(self.metrics),
        }

    def drop_all(self) -> None:
        """Close every client connection (on shutdown)."""
        for client in list(self._open):
            client.proto.dropConnection(abort=True)

    def is_connected(self, endpoint_id: bytes) -> bool:
        return endpoint_id in self._active

    # -- called by the protocol --
    def _opened(self, proto: _ServerProtocol) -> _Client | None:
        self.metrics.connections_total += 1
        if len(self._open) >= self.config.max_clients:
            self.metrics.refused_full += 1
            proto.sendClose(CLOSE_RELAY_FULL, "relay full")
            return None
        client = _Client(self, proto, proto.relay_version)
        self._open.add(client)
        transport: Any = proto.transport
        try:
            transport.unregisterProducer()  # the HTTP channel's, left behind by the upgrade
        except Exception:
            pass
        transport.registerProducer(client, True)
        client.send(f.ServerChallenge(client.challenge))
        client.call_later("handshake", self.config.handshake_timeout, lambda: self._handshake_timeout(client))
        return client

    def _handshake_timeout(self, client: _Client) -> None:
        self.metrics.handshake_timeouts += 1
        client.proto.dropConnection(abort=True)

    def _authenticate(self, client: _Client, auth: f.ClientAuth) -> None:
        client.cancel("handshake")
        denial = None
        if not f.verify_client_auth(auth, client.challenge):
            denial = "signature invalid"
        elif self.config.tokens and not _token_accepted(client.proto.token, self.config.tokens):
            denial = "this relay needs an access token (Authorization: Bearer)"
        if denial is not None:
            self.metrics.handshakes_denied += 1
            client.send(f.ServerDeniesAuth(denial))
            client.proto.sendClose(1000, "denied")
            return
        self.metrics.handshakes_ok += 1
        key = auth.public_key
        client.endpoint_id = key
        client.send(f.ServerConfirmsAuth())
        previous = self._active.get(key)
        if previous is not None:
            self._inactive.setdefault(key, []).append(previous)
            if previous.relay_version == f.PROTOCOL_V2:
                previous.send(f.Status(f.StatusCode.SAME_ENDPOINT_ID_CONNECTED))
        self._active[key] = client
        self.metrics.clients_connected = len(self._active)
        client.schedule_ping()

    def _forward(self, client: _Client, frame: f.ClientToRelayDatagram | f.ClientToRelayDatagramBatch) -> None:
        src = client.endpoint_id
        assert src is not None
        dst = self._active.get(frame.dst)
        if dst is None:
            self.metrics.datagrams_unknown_destination += 1
            return
        out: f.Frame
        if isinstance(frame, f.ClientToRelayDatagram):
            out = f.RelayToClientDatagram(src, frame.data, frame.ecn)
        else:
            out = f.RelayToClientDatagramBatch(src, frame.segment_size, frame.data, frame.ecn)
        if frame.dst not in client.sent_to:
            if len(client.sent_to) >= self.config.max_sent_to:
                client.sent_to.pop(next(iter(client.sent_to)))
            client.sent_to[frame.dst] = None
        self.metrics.datagrams_forwarded += 1
        dst.send_raw(f.encode(out), droppable=True)

    def _closed(self, client: _Client) -> None:
        client.shutdown()
        self._open.discard(client)
        key = client.endpoint_id
        if key is None:
            return
        waiting = self._inactive.get(key, [])
        if client in waiting:
            waiting.remove(client)
        if self._active.get(key) is client:
            del self._active[key]
            if waiting:
                promoted = waiting.pop()
                self._active[key] = promoted
                if promoted.relay_version == f.PROTOCOL_V2:
                    promoted.send(f.Status(f.StatusCode.HEALTHY))
            else:
                for peer_id in client.sent_to:
                    peer = self._active.get(peer_id)
                    if peer is not None:
                        self.metrics.endpoint_gone_sent += 1
                        peer.send(f.EndpointGone(key))
        if not waiting:
            self._inactive.pop(key, None)
        self.metrics.clients_connected = len(self._active)


def _token_accepted(given: str | None, accepted: frozenset[str]) -> bool:
    """Constant time over every accepted token."""
    found = False
    for token in accepted:
        if hmac.compare_digest((given or "").encode(), token.encode()) and given is not None:
            found = True
    return found


class RelayServerService(Service):
    """Listens with a :class:`RelayServer` site on ``interface:port`` (TCP, plain HTTP)."""

    def __init__(self, reactor: Any, port: int, interface: str = "0.0.0.0", config: RelayServerConfig | None = None):
        super().__init__()
        self.reactor = reactor
        self.port = port
        self.interface = interface
        self.server = RelayServer(reactor, config or RelayServerConfig())
        self.listening: IListeningPort | None = None

    @property
    def bound_port(self) -> int:
        assert self.listening is not None
        return int(self.listening.getHost().port)  # type: ignore[attr-defined]

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self.listening = self.reactor.listenTCP(self.port, self.server.site(), interface=self.interface)
        _log.info("relay server listening on http://{host}:{port}/", host=self.interface, port=self.bound_port)

    def startService(self) -> None:
        if self.listening is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self) -> Any:
        super().stopService()
        self.server.drop_all()
        port, self.listening = self.listening, None
        if port is not None:
            return port.stopListening()
        return None
