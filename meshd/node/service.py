"""The live node as a Twisted service: it owns the lifecycle and composes the parts (``meshd/node/*.py``,
one room each; docs/design.md). Every decision about peers lives in the pure ``MeshState``; the parts move
bytes and keep connections. Rules: MESH_PROTOCOL.md §2.3, §4.2, §5.4-§5.7, §9.1 and the 0.76 delta.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from meshd.config import Config, Role
from meshd.identity import Identity
from meshd.iroh_relay.client import RelayClientConfig
from meshd.iroh_relay.node_relay import NodeRelay
from meshd.mesh.state import MeshState
from meshd.node.admission import Admission
from meshd.node.connections import REDIAL_TIMEOUT, Connections
from meshd.node.dispatch import StreamDispatch, frame_handler
from meshd.node.gossip import Gossip
from meshd.node.joining import ALONE_REJOIN_INTERVAL, Joiner
from meshd.node.lifetime import Lifetime
from meshd.node.liveness import HEARTBEAT_INTERVAL, Liveness
from meshd.node.membership import Membership, NodeState, initial_state
from meshd.node.statefiles import StateFiles
from meshd.protocol import node_pb2
from meshd.protocol.peers import Role as PeerRole
from meshd.protocol.streams import StreamType
from meshd.protocol.token import encode_token
from meshd.quic import MeshConnection, QuicEndpoint, QuicStream
from meshd.quic.endpoint import AdmissionLimits

LEAVING_FLUSH = 0.2
SAVE_LAST_MESH_DELAY = 5.0
LIVENESS_INTERVAL = 2.0


class Node(Service):
    """``bind(endpoint)`` binds the QUIC endpoint when the service starts (default: a UDP port,
    ``--bind-port`` on ``--bind-address``; tests attach it to a ``meshd.quic.testing.MemoryNetwork``)."""

    _log = Logger()

    def __init__(
        self,
        config: Config,
        identity: Identity,
        reactor: Any,
        *,
        rng: random.Random | None = None,
        nostr_pubkey_hex: str | None = None,
        bind: Callable[[QuicEndpoint], object] | None = None,
    ) -> None:
        self.config = config
        self.identity = identity
        self._reactor = reactor
        #: The publishing key's hex (``--publish``): part of a named mesh's id (0.76 §7).
        self._nostr_pubkey_hex = nostr_pubkey_hex
        self._bind = bind or self._listen_udp
        self.started_at: float | None = None
        self.token: str | None = None
        self._mesh_name: str | None = config.mesh_name
        self._api_port: int | None = None
        self._console_port: int | None = None
        self.mesh = MeshState(identity.public_bytes, PeerRole.CLIENT if config.role is Role.CLIENT else PeerRole.HOST)
        self.lifetime = Lifetime(reactor)
        # --- relay path (meshd.iroh_relay): None when relays are disabled ---
        self.iroh_relay: NodeRelay | None = None
        if config.relay_urls:
            self.iroh_relay = NodeRelay(
                reactor,
                identity.private_key,
                config.relay_urls,
                config=RelayClientConfig(auth=dict(config.relay_auth)),
                on_home_changed=self._home_relay_changed,
            )
        state = initial_state(auto=config.auto, has_tokens=bool(config.join_tokens))
        self.membership = Membership(state, self.mesh, self.lifetime, auto=config.auto)
        self.admission = Admission(self.lifetime, self.mesh, identity.private_key)
        self.streams = StreamDispatch(self.mesh, reactor)
        self.connections = Connections(
            self.lifetime,
            self.mesh,
            bind_address=config.bind_address,
            relay=self.iroh_relay,
            accept_stream=self.streams.accept,
            on_lost=lambda peer_id: self.liveness.connection_lost(peer_id),
        )
        self.gossip = Gossip(
            self.lifetime,
            identity,
            self.mesh,
            self.connections,
            self.admission,
            self.membership,
            own_addr=self.connections.own_addr,
            http_port=lambda: self._api_port or config.api_port or 9337,
            on_mesh_id=lambda _: self.lifetime.later(SAVE_LAST_MESH_DELAY, self._save_last_mesh),
        )
        self.liveness = Liveness(
            self.lifetime,
            identity.public_bytes,
            self.mesh,
            self.connections,
            self.gossip,
            self.membership,
            rng or random.Random(),
        )
        self.joiner = Joiner(
            self.lifetime, self.mesh, self.membership, self.admission, self.connections, self.gossip, config.join_tokens
        )
        self.files = StateFiles(config.state_dir)
        self.streams.register(StreamType.GOSSIP, frame_handler(self.gossip.answer, "gossip"))
        self.streams.register(StreamType.ROUTE_REQUEST, self.gossip.route_request)
        self.streams.register(StreamType.PEER_LEAVING, frame_handler(self.liveness.peer_leaving, "peer-leaving"))
        self.streams.register(StreamType.PEER_DOWN, frame_handler(self.liveness.peer_down, "peer-down"))
        self.streams.register(StreamType.TUNNEL_MAP, frame_handler(self.gossip.tunnel_map, "tunnel-map"))

    # -- lifecycle ------------------------------------------------------------------------------

    def _listen_udp(self, endpoint: QuicEndpoint) -> None:
        endpoint.listen(self.config.bind_port, interface=self.config.bind_address)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.connections.endpoint is None:
            endpoint = QuicEndpoint(
                self._reactor,
                self.identity.private_key,
                on_connection=self.connections.adopt,
                admission=AdmissionLimits(),
            )
            self._bind(endpoint)
            self.connections.attach(endpoint)
            port = endpoint.getHost().port  # type: ignore[attr-defined]
            if self.iroh_relay is not None:
                self.iroh_relay.attach(endpoint)
                self.iroh_relay.start()
            self.token = encode_token(self.connections.own_addr(port))

    def startService(self) -> None:
        if self.connections.endpoint is None:
            self.privilegedStartService()
        super().startService()
        self.started_at = self.now()
        if not self.is_client and not self.joiner.tokens and not self.config.auto and self.mesh.mesh_id is None:
            publisher = self._nostr_pubkey_hex if self.config.publish else None
            self.mesh.set_mesh_id(self.files.originate_mesh_id(self.config.mesh_name, publisher))
        self._log.info(
            "node {node_id} starting as {role} ({state}); QUIC on {bind}, token {token}",
            event="node_start",
            node_id=self.identity.short_id,
            endpoint_id=self.identity.endpoint_id,
            role=self.config.role.value,
            state=self.state.value,
            bind=self.quic_address(),
            token=self.token,
        )
        self.lifetime.every(HEARTBEAT_INTERVAL, self.heartbeat)
        self.joiner.start()
        self.lifetime.every(ALONE_REJOIN_INTERVAL, self.joiner.rejoin)
        self.lifetime.every(LIVENESS_INTERVAL, self.connections.check_liveness)
        if self.joiner.tokens:
            self.lifetime.track(self.join_any(self.joiner.tokens)).addErrback(lambda f: f.trap(CancelledError))

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.lifetime.stop()
        said_goodbye = self.liveness.say_goodbye()

        async def finish() -> None:
            if said_goodbye:
                d: Deferred[None] = Deferred()
                self._reactor.callLater(LEAVING_FLUSH, d.callback, None)
                await d
            endpoint = self.connections.detach()
            if endpoint is not None:
                await endpoint.stop()
            if self.iroh_relay is not None:
                await self.iroh_relay.stop()

        return Deferred.fromCoroutine(finish())

    def _save_last_mesh(self) -> None:
        if self.mesh.mesh_id is not None and not self.lifetime.stopping:
            self.files.save_last_mesh(self.mesh.mesh_id)

    def _home_relay_changed(self, url: str | None) -> None:
        if self.connections.endpoint is not None:
            self.token = encode_token(self.connections.own_addr())
            self._log.info("home relay is now {url}; token {token}", event="home_relay", url=url, token=self.token)
            self.notify_changed()

    # -- what the node is -----------------------------------------------------------------------

    @property
    def is_client(self) -> bool:
        return self.config.role is Role.CLIENT

    @property
    def mesh_id(self) -> str | None:
        return self.mesh.mesh_id

    @property
    def mesh_name(self) -> str | None:
        """The mesh's name: ``--mesh-name``, or the listing's name of the mesh ``--auto`` joined."""
        return self._mesh_name

    def set_mesh_name(self, name: str | None) -> None:
        self._mesh_name = name

    @property
    def api_port(self) -> int | None:
        return self._api_port

    @property
    def console_port(self) -> int | None:
        return self._console_port

    def ports_bound(self, api: int | None, console: int | None) -> None:
        """The API and console ports are bound (a host announces its API port; the status shows both)."""
        self._api_port, self._console_port = api, console

    @property
    def endpoint(self) -> QuicEndpoint | None:
        return self.connections.endpoint

    @property
    def conns(self) -> Mapping[bytes, MeshConnection]:
        return self.connections.table

    @property
    def state(self) -> NodeState:
        return self.membership.state

    def set_state(self, state: NodeState) -> None:
        self.membership.set(state)

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever something ``/api/status`` shows changed."""
        self.lifetime.on_change.append(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        if listener in self.lifetime.on_change:
            self.lifetime.on_change.remove(listener)

    @property
    def clock(self) -> Any:
        """The reactor (or Clock) the node runs on, for the parts built around it."""
        return self._reactor

    def notify_changed(self) -> None:
        self.lifetime.changed()

    def now(self) -> float:
        return self.lifetime.now()

    def now_ms(self) -> int:
        return self.lifetime.now_ms()

    @property
    def uptime(self) -> float:
        return 0.0 if self.started_at is None else max(0.0, self.now() - self.started_at)

    def quic_address(self) -> str:
        if self.endpoint is None:
            return "-"
        host = self.endpoint.getHost()
        return f"{host.host}:{host.port}"  # type: ignore[attr-defined]

    # -- hosted models and requests -------------------------------------------------------------

    @property
    def hosted_models(self) -> tuple[str, ...]:
        """Host role: the models our backend serves right now."""
        return self.mesh.local_models

    def set_hosted_models(self, models: tuple[str, ...]) -> None:
        self.mesh.set_local_models(models, self.now())

    @property
    def inflight_requests(self) -> int:
        return self.mesh.inflight_requests

    def serves_locally(self, model: str | None) -> bool:
        """Host role: does our own backend serve ``model`` (any model, when None)?"""
        hosted = self.mesh.local_models
        if not self.streams.handles(StreamType.TUNNEL_HTTP) or not hosted:
            return False
        return model is None or model in hosted

    def open_local_tunnel(self) -> Any:
        """Host role: a tunnel to our own backend through an in-memory pipe (a ``PipeEnd``, which has the
        face of a ``QuicStream``)."""
        return self.streams.open_local(StreamType.TUNNEL_HTTP)

    def open_tunnel(self, peer_id: bytes, timeout: float = REDIAL_TIMEOUT) -> Deferred[QuicStream]:
        return self.connections.open_tunnel(peer_id, timeout)

    def connected_ids(self) -> set[bytes]:
        return self.connections.connected_ids()

    def suspect_ids(self) -> set[bytes]:
        return self.connections.suspect_ids()

    # -- joining, gossip, liveness --------------------------------------------------------------

    def join_any(self, tokens: Sequence[str]) -> Deferred[str | None]:
        return self.joiner.join_any(tokens)

    def join(self, token: str) -> Deferred[MeshConnection]:
        return self.joiner.join(token)

    def self_announcement(self) -> node_pb2.PeerAnnouncement:
        return self.gossip.self_announcement()

    def gossip_frame(self) -> node_pb2.GossipFrame:
        return self.gossip.gossip_frame()

    def regossip(self) -> None:
        self.gossip.regossip()

    def heartbeat(self) -> Deferred[Any]:
        return self.liveness.heartbeat()
