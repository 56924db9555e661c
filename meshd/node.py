"""The live node: QUIC endpoint, joins, gossip, heartbeats and inbound stream dispatch.

It glues the pure mesh state (``meshd.mesh.state``) and codec (``meshd.protocol``) to the QUIC
transport (``meshd.quic``). Every decision about peers lives in ``MeshState``; this module only
moves bytes and keeps connections. Rules: MESH_PROTOCOL.md §2.3, §4.2, §5.4-§5.7, §9.1.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from meshd.config import Config, Role
from meshd.control import STREAM_PROTOCOL_ERROR, Discard, FrameReader, InboundStream, gossip_round_trip, reply_frame
from meshd.control import send_oneway as _send_oneway
from meshd.deferreds import failed, fire_all
from meshd.identity import Identity
from meshd.iroh_relay.client import RelayClientConfig
from meshd.iroh_relay.node_relay import NodeRelay
from meshd.mesh.state import SILENT_SUSPECT_SECS, DialBook, MeshState, PeerEntry
from meshd.pipe import pipe
from meshd.protocol import node_pb2
from meshd.protocol.admission import add_gated_self_fields, check_direct_peer
from meshd.protocol.errors import InvalidToken, ProtocolError
from meshd.protocol.framing import encode_stream_type
from meshd.protocol.mesh_id import named_mesh_id, random_mesh_id
from meshd.protocol.peers import Role as PeerRole
from meshd.protocol.peers import (
    build_gossip_frame,
    build_peer_down,
    build_peer_leaving,
    build_self_announcement,
    direct_entry,
    peer_info_from_announcement,
    sanitize_relayed_announcement,
)
from meshd.protocol.requirements import MeshRequirementState, RequirementError
from meshd.protocol.streams import PROTOCOL_GENERATION, StreamType, TrustPolicy, allowed_before_admission
from meshd.protocol.token import EndpointAddr, decode_invite_token, encode_token
from meshd.protocol.validate import (
    decode_gossip_frame,
    decode_peer_down,
    decode_peer_leaving,
    decode_route_table_request,
    decode_tunnel_map,
    valid_point_announcements,
)
from meshd.protocol.version import ANNOUNCED_VERSION
from meshd.quic import MeshConnection, QuicEndpoint, QuicStream
from meshd.quic.endpoint import AdmissionLimits

#: Connect plus gossip (mesh-llm 0.76: 30 s).
JOIN_TIMEOUT = 30.0
REDIAL_TIMEOUT = 10.0
HEARTBEAT_INTERVAL = 60.0
HEARTBEAT_FANOUT = 5
REJOIN_INTERVAL = 60.0
#: While no peer is connected, tokens are retried this often (a mesh coming back is found fast).
ALONE_REJOIN_INTERVAL = 10.0
LEAVING_FLUSH = 0.2
SAVE_LAST_MESH_DELAY = 5.0
#: A connection whose peer sent nothing for this long is dead (both sides PING every 5 s).
SILENT_PEER_SECS = 12.0
LIVENESS_INTERVAL = 2.0
#: mesh-llm's default trust policy: unadmitted peers may gossip, tunnel (0x04) and ask routes (0x05).
TRUST_POLICY = TrustPolicy.OFF
#: Recent reasons a peer or a mesh was refused (``/api/status`` ``recent_mesh_rejections``), at most.
MAX_REJECTIONS = 16
#: Dials of peers learned from gossip under way at once, at most (more wait for the next round).
MAX_CONCURRENT_DIALS = 8
#: Heartbeat failures before a peer is dead: on a direct path, and on a relay-only one (0.76 §13).
STRIKES_DIRECT = 2
STRIKES_RELAY = 5


class NodeState(Enum):
    DISCOVERING = "discovering"  # --auto: looking for meshes on Nostr
    JOINING = "joining"  # dialling tokens
    JOINED = "joined"  # admitted into a mesh
    STANDALONE = "standalone"  # no mesh: nothing to join, or every attempt failed


class JoinError(Exception):
    """A token could not be joined."""


def local_addresses(interface: str, port: int) -> list[tuple[str, int]]:
    """Addresses to put in our invite token for a socket bound to ``interface:port``."""
    if interface not in ("0.0.0.0", "::", ""):
        return [(interface, port)]
    found: list[tuple[str, int]] = [("127.0.0.1", port)]
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        infos = []
    for info in infos:
        host = str(info[4][0])
        if not host.startswith("127.") and (host, port) not in found:
            found.append((host, port))
    return found


class Node(Service):
    _log = Logger()

    def __init__(
        self,
        config: Config,
        identity: Identity,
        reactor: Any,
        *,
        rng: random.Random | None = None,
        nostr_pubkey_hex: str | None = None,
    ) -> None:
        self.config = config
        #: The publishing key's hex (``--publish``): part of a named mesh's id (0.76 §7).
        self._nostr_pubkey_hex = nostr_pubkey_hex
        self.identity = identity
        self._reactor = reactor
        self._rng = rng or random.Random()
        self.started_at: float | None = None
        self.state = self._initial_state()
        peer_role = PeerRole.CLIENT if config.role is Role.CLIENT else PeerRole.HOST
        self.mesh = MeshState(identity.public_bytes, peer_role)
        self.mesh_name: str | None = config.mesh_name
        self.api_port: int | None = None
        self.console_port: int | None = None
        self.token: str | None = None
        self.inflight_requests = 0
        self.endpoint: QuicEndpoint | None = None
        self.conns: dict[bytes, MeshConnection] = {}
        self.announcements: dict[bytes, node_pb2.PeerAnnouncement] = {}
        self.join_tokens: list[str] = list(config.join_tokens)
        self.joined_token: str | None = None
        #: Host role: the models our backend serves right now, and the tunnel handler factory.
        self.hosted_models: tuple[str, ...] = ()
        self.tunnel_handler: Callable[[MeshConnection | None, QuicStream], Any] | None = None
        self.on_change: list[Callable[[], None]] = []
        self._loops: list[LoopingCall] = []
        self._pending: set[Deferred[Any]] = set()
        self._dialing: dict[bytes, list[Deferred[MeshConnection]]] = {}
        self._stopping = False
        self._leaving: set[bytes] = set()
        self._joining = False
        self._join_errors: dict[str, str] = {}
        #: A gated mesh's requirement state, from the signed token we joined through (0.76 §6).
        self.requirements: MeshRequirementState | None = None
        #: mesh-llm's ``recent_mesh_rejections``: why a mesh or a peer was refused, newest last.
        self.rejections: list[dict[str, Any]] = []
        #: When peers learned from gossip may be dialled again (backoff per peer).
        self.dials = DialBook()
        #: Peers whose connection we closed because they went silent, and when.
        self._silenced: dict[bytes, float] = {}
        self._last_rejoin = 0.0
        self._save_call: Any = None
        # --- relay path (meshd.relay): None when relays are disabled ---
        self.relay: NodeRelay | None = None
        if config.relay_urls:
            self.relay = NodeRelay(
                reactor, identity.private_key, config.relay_urls, config=RelayClientConfig(auth=dict(config.relay_auth))
            )
            self.relay.on_home_changed = self._home_relay_changed

    def _initial_state(self) -> NodeState:
        if self.config.auto:
            return NodeState.DISCOVERING
        if self.config.join_tokens:
            return NodeState.JOINING
        return NodeState.STANDALONE

    @property
    def mesh_id(self) -> str | None:
        return self.mesh.mesh_id

    @property
    def is_client(self) -> bool:
        return self.config.role is Role.CLIENT

    def now(self) -> float:
        return float(self._reactor.seconds())

    # -- lifecycle ------------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.endpoint is None:
            self.endpoint = QuicEndpoint(
                self._reactor,
                self.identity.private_key,
                on_connection=self._on_inbound_connection,
                admission=AdmissionLimits(),
            )
            self.endpoint.listen(self.config.bind_port, interface=self.config.bind_address)
            port = self.endpoint.getHost().port  # type: ignore[attr-defined]
            if self.relay is not None:
                self.relay.attach(self.endpoint)
                self.relay.start()
            self.token = encode_token(self.own_addr(port))

    def startService(self) -> None:
        if self.endpoint is None:
            self.privilegedStartService()
        super().startService()
        self.started_at = self.now()
        if not self.is_client and not self.join_tokens and not self.config.auto and self.mesh.mesh_id is None:
            self.mesh.mesh_id = self._originate_mesh_id()
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
        self._start_loop(self.heartbeat, HEARTBEAT_INTERVAL)
        self._last_rejoin = self.now()
        self._start_loop(self._rejoin, ALONE_REJOIN_INTERVAL)
        self._start_loop(self.check_liveness, LIVENESS_INTERVAL)
        if self.join_tokens:
            self._track(self.join_any(self.join_tokens)).addErrback(lambda f: f.trap(CancelledError))

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stopping = True
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        for d in list(self._pending):
            d.cancel()
        if self._save_call is not None and self._save_call.active():
            self._save_call.cancel()
        for conn in list(self.conns.values()):
            try:
                _send_oneway(conn, StreamType.PEER_LEAVING, build_peer_leaving(self.identity.public_bytes))
            except Exception:
                pass

        async def finish() -> None:
            if self.conns:
                d: Deferred[None] = Deferred()
                self._reactor.callLater(LEAVING_FLUSH, d.callback, None)
                await d
            if self.endpoint is not None:
                endpoint, self.endpoint = self.endpoint, None
                await endpoint.stop()
            if self.relay is not None:
                await self.relay.stop()

        return Deferred.fromCoroutine(finish())

    def _start_loop(self, fn: Callable[[], Any], interval: float) -> None:
        loop = LoopingCall(fn)
        loop.clock = self._reactor
        loop.start(interval, now=False).addErrback(self._loop_failed)
        self._loops.append(loop)

    def _loop_failed(self, failure: Failure) -> None:
        self._log.failure("periodic task failed", failure=failure, event="loop_error")

    def _track(self, d: Deferred[Any]) -> Deferred[Any]:
        self._pending.add(d)

        def done(result: Any) -> Any:
            self._pending.discard(d)
            return result

        d.addBoth(done)
        return d

    def quic_address(self) -> str:
        if self.endpoint is None:
            return "-"
        host = self.endpoint.getHost()
        return f"{host.host}:{host.port}"  # type: ignore[attr-defined]

    def own_addr(self, port: int | None = None) -> EndpointAddr:
        if port is None:
            port = self.endpoint.getHost().port if self.endpoint else 0  # type: ignore[attr-defined]
        home = self.relay.advertised_url if self.relay is not None else None
        return EndpointAddr(
            self.identity.public_bytes,
            relay_urls=(home,) if home else (),
            ip_addrs=local_addresses(self.config.bind_address, port),
        )

    def _home_relay_changed(self, url: str | None) -> None:
        if self.endpoint is not None:
            self.token = encode_token(self.own_addr())
            self._log.info("home relay is now {url}; token {token}", event="home_relay", url=url, token=self.token)
            self.notify_changed()

    def _dialable(self, addr: EndpointAddr) -> bool:
        return bool(addr.dialable_ip_addrs()) or (self.relay is not None and bool(addr.relay_urls))

    def set_state(self, state: NodeState) -> None:
        if state is not self.state:
            self._log.info("node state {old} -> {new}", event="node_state", old=self.state.value, new=state.value)
            self.state = state
            self.notify_changed()

    def notify_changed(self) -> None:
        for cb in list(self.on_change):
            cb()

    @property
    def uptime(self) -> float:
        return 0.0 if self.started_at is None else max(0.0, self.now() - self.started_at)

    # -- joining --------------------------------------------------------------------------------

    def join_any(self, tokens: Sequence[str]) -> Deferred[str | None]:
        """Try tokens in order; the first that joins wins (the join list shrinks to it)."""

        async def run() -> str | None:
            if self.state is not NodeState.JOINED:
                self.set_state(NodeState.JOINING)
            for token in tokens:
                try:
                    await self.join(token)
                except CancelledError:
                    raise  # the node is stopping
                except Exception as e:
                    self._join_failed(token, _describe(e))
                    continue
                self._join_errors.pop(token, None)
                self.joined_token = token
                self.join_tokens = [token]
                return token
            if self.state is not NodeState.JOINED:
                self.set_state(NodeState.STANDALONE)
            return None

        return Deferred.fromCoroutine(run())

    def _join_failed(self, token: str, error: str) -> None:
        """Say why a token could not be joined once; the retries every few seconds say it again only in
        debug (or when the reason changes)."""
        again = self._join_errors.get(token) == error
        self._join_errors[token] = error
        log = self._log.debug if again else self._log.warn
        log(
            "could not join through token {token}: {err}{retry}",
            token=token[:16] + "…",
            err=error,
            retry="" if again else f"; retrying every {ALONE_REJOIN_INTERVAL:g} s while alone",
            event="join_failed",
        )

    def join(self, token: str) -> Deferred[MeshConnection]:
        try:
            invite = decode_invite_token(token, now_ms=self.now_ms())
        except InvalidToken as e:
            return failed(JoinError(f"bad invite token: {e}"))
        if invite.mesh is not None:
            try:
                self._enter_gated_mesh(invite.mesh)
            except JoinError as e:
                return failed(e)
        addr = invite.addr
        self.mesh.dead.pop(addr.id, None)
        return self.connect_to_peer(addr, JOIN_TIMEOUT)

    def _enter_gated_mesh(self, state: MeshRequirementState) -> None:
        """A signed token leads into a gated mesh: its id is ours from now on, and every gossip frame
        carries our admission proof. A mesh that needs a release-signed build is out of reach."""
        if self.requirements is not None and self.requirements.mesh_id != state.mesh_id:
            raise JoinError("this token leads to another gated mesh than the one this node is in")
        try:
            # Our own entry must pass the mesh's bounds (a mesh requiring a release-signed build fails here).
            state.policy.requirements.evaluate(node_version=ANNOUNCED_VERSION, protocol_generation=PROTOCOL_GENERATION)
        except RequirementError as e:
            self.reject("join", e.code, str(e))
            raise JoinError(f"cannot join this gated mesh: {e}") from None
        self.requirements = state
        if self.mesh.mesh_id != state.mesh_id:
            self.mesh.mesh_id = state.mesh_id
            self.notify_changed()

    def reject(self, source: str, reason: str, message: str, peer: bytes | None = None) -> None:
        """Remember why a mesh or a peer was refused (shown in ``/api/status``; bounded)."""
        entry: dict[str, Any] = {
            "observed_at_unix_ms": self.now_ms(),
            "source": source,
            "reason": reason,
            "message": message,
        }
        if peer is not None:
            entry["peer_id"] = peer.hex()
        self.rejections = [*self.rejections, entry][-MAX_REJECTIONS:]
        self._log.warn("refused ({source}): {message}", source=source, message=message, event="mesh_rejection")

    def now_ms(self) -> int:
        return int(self.now() * 1000)

    def connect_to_peer(self, addr: EndpointAddr, timeout: float) -> Deferred[MeshConnection]:
        """Dial (unless connected), gossip, and dial the peers it told us about."""
        if addr.id == self.identity.public_bytes:
            return failed(JoinError("that token is our own"))
        existing = self.conns.get(addr.id)
        if existing is not None and existing.is_connected and self.mesh.is_admitted(addr.id):
            return succeed(existing)
        if self.mesh.recently_dead(addr.id, self.now()):
            return failed(JoinError(f"peer {addr.short_id} was declared dead recently"))

        async def run() -> MeshConnection:
            conn = await self.connection_to(addr, timeout)
            await self.gossip_with(conn, timeout)
            self._dial_learned_peers()
            return conn

        return self._track(Deferred.fromCoroutine(run()))

    def connection_to(self, addr: EndpointAddr, timeout: float) -> Deferred[MeshConnection]:
        """An open connection to ``addr.id``: the existing one, or a new dial (one at a time)."""
        existing = self.conns.get(addr.id)
        if existing is not None and existing.is_connected:
            return succeed(existing)
        if self.endpoint is None:
            return failed(JoinError("node is not running"))
        mine: Deferred[MeshConnection] = Deferred()
        waiters = self._dialing.get(addr.id)
        if waiters is not None:
            waiters.append(mine)  # share the dial already under way
            return mine
        targets = list(addr.dialable_ip_addrs())
        if self.relay is not None:
            targets += self.relay.dial_targets(addr.relay_urls, addr.id)  # raced with the direct ones
        if not targets:
            return failed(JoinError(f"no address to dial for {addr.short_id}"))
        self._dialing[addr.id] = [mine]

        def done(result: MeshConnection | Failure) -> None:
            waiting = self._dialing.pop(addr.id, [])
            if not isinstance(result, Failure):
                self._adopt(result)
            fire_all(waiting, result)

        self.endpoint.dial(addr.id, targets, timeout=timeout).addBoth(done)
        return mine

    def connection_for(self, peer_id: bytes, timeout: float = REDIAL_TIMEOUT) -> Deferred[MeshConnection]:
        """A connection to a known peer, dialling its gossiped address when needed."""
        conn = self.conns.get(peer_id)
        if conn is not None and conn.is_connected:
            return succeed(conn)
        entry = self.mesh.peers.get(peer_id)
        if entry is None:
            return failed(JoinError(f"unknown peer {peer_id.hex()[:10]}"))
        return self.connection_to(entry.info.addr, timeout)

    def gossip_with(self, conn: MeshConnection, timeout: float) -> Deferred[None]:
        async def run() -> None:
            reply = await gossip_round_trip(conn, self.gossip_frame(), self._reactor, timeout)
            assert conn.remote_id is not None
            if not conn.is_connected or conn.remote_id in self._leaving:
                # The peer left (or the connection died) while we waited: its news is stale.
                raise JoinError(f"connection to {conn.remote_id.hex()[:10]} closed during gossip")
            problem = self._direct_entry_problem(conn.remote_id, reply)
            if problem is not None:
                raise JoinError(f"peer {conn.remote_id.hex()[:10]}: {problem}")
            self._apply_gossip(conn.remote_id, reply)
            if self.mesh.is_admitted(conn.remote_id):
                conn.mark_admitted()  # lifts the pre-admission bounds of the QUIC layer

        return Deferred.fromCoroutine(run())

    def _dial_learned_peers(self) -> None:
        """Dial (and gossip with) peers we only heard of, so they admit us and we them. Bounded: a few at
        a time, and each peer after a failure only once its backoff has passed."""
        now = self.now()
        for pid, entry in list(self.mesh.peers.items()):
            if len(self._dialing) >= MAX_CONCURRENT_DIALS or self._stopping:
                return
            if pid in self.conns or pid in self._dialing or not self.dials.may_dial(pid, now):
                continue
            if self.is_client and entry.info.role is PeerRole.CLIENT:
                continue  # clients don't dial clients
            if not self._dialable(entry.info.addr):
                continue
            d = self.connect_to_peer(entry.info.addr, REDIAL_TIMEOUT)
            d.addCallbacks(lambda _, p=pid: self.dials.succeeded(p), self._log_dial_failure, errbackArgs=(pid,))

    def _log_dial_failure(self, failure: Failure, pid: bytes) -> None:
        again = self.dials.failed(pid, self.now())
        self._log.info(
            "could not reach peer {peer}: {err} (next try in {wait:.0f} s at the earliest)",
            peer=pid.hex()[:10],
            err=_describe(failure.value),
            wait=again - self.now(),
            event="dial_failed",
        )

    def _rejoin(self) -> None:
        """Every 60 s re-join the token list (a no-op while connected); every 10 s while alone."""
        if not self.join_tokens or self._stopping or self._joining:
            return
        alone = not any(c.is_connected for c in self.conns.values())
        if not alone and self.now() - self._last_rejoin < REJOIN_INTERVAL:
            return
        self._last_rejoin = self.now()
        self._joining = True

        def done(_: Any) -> None:
            self._joining = False

        self.join_any(self.join_tokens).addBoth(done)

    # -- gossip ---------------------------------------------------------------------------------

    def self_announcement(self) -> node_pb2.PeerAnnouncement:
        """Our own entry: the version 0.76 accepts (``0.76.0+meshd.X``), a hostname that names no
        machine (0.76 hosts relay a client's entry only if it has one), and on a gated mesh the mesh id,
        policy hash and a fresh admission proof."""
        now = self.now()
        common: dict[str, Any] = {
            "addr": self.own_addr(),
            "version": ANNOUNCED_VERSION,
            "mesh_id": self.mesh.mesh_id,
            "demand": self.mesh.live_demand(now),
            "hostname": f"meshd-{self.identity.short_id}",
        }
        if self.is_client:
            ann = build_self_announcement(**common)
        else:
            ann = build_self_announcement(
                **common,
                role=PeerRole.HOST,
                http_port=self.api_port or self.config.api_port or 9337,
                hosted_models=self.hosted_models,
            )
        if self.requirements is not None:
            add_gated_self_fields(ann, self.requirements, self.identity.private_key, self.now_ms())
        return ann

    def gossip_frame(self) -> node_pb2.GossipFrame:
        now = self.now()
        relayed = [
            sanitize_relayed_announcement(self.announcements[i.endpoint_id])
            for i in self.mesh.gossip_entries(now)
            if i.endpoint_id in self.announcements
        ]
        return build_gossip_frame(self.identity.public_bytes, self.self_announcement(), relayed)

    def _apply_gossip(self, remote_id: bytes, frame: node_pb2.GossipFrame) -> None:
        anns = valid_point_announcements(frame.peers)
        infos = []
        for ann in anns:
            try:
                info = peer_info_from_announcement(ann)
            except ValueError:
                continue
            infos.append(info)
            if ann.endpoint_id != self.identity.public_bytes:
                self.announcements[bytes(ann.endpoint_id)] = ann
        outcome = self.mesh.ingest_gossip(remote_id, infos, self.now())
        if outcome.refused is not None:
            self.reject("gossip", "node_version_below_floor", outcome.refused, remote_id)
        else:
            self._silenced.pop(remote_id, None)
        if outcome.adopted_mesh_id:
            self._log.info("mesh id {mesh_id}", mesh_id=outcome.adopted_mesh_id, event="mesh_id")
            self._save_call = self._reactor.callLater(SAVE_LAST_MESH_DELAY, self._save_last_mesh)
        if self.state is not NodeState.JOINED and remote_id in self.mesh.peers:
            self.set_state(NodeState.JOINED)
        if outcome.updated or outcome.adopted_mesh_id:
            self.notify_changed()

    def _originate_mesh_id(self) -> str:
        """A host that starts its own mesh (0.76 §7): a named mesh's id is derived from its name (and the
        publishing Nostr key); an unnamed one's is random, persisted in ``<state-dir>/mesh-id``."""
        if self.config.mesh_name:
            return named_mesh_id(self.config.mesh_name, self._nostr_pubkey_hex if self.config.publish else None)
        path = Path(self.config.state_dir) / "mesh-id"
        try:
            text = path.read_text().strip()
            if len(text) == 32 and all(c in "0123456789abcdef" for c in text):
                return text
        except OSError:
            pass
        mesh_id = random_mesh_id(os.urandom)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.write_text(mesh_id)
        except OSError as e:
            self._log.warn("cannot save mesh-id: {err}", err=str(e), event="state_write_failed")
        return mesh_id

    def _save_last_mesh(self) -> None:
        if self.mesh.mesh_id is None or self._stopping:
            return
        try:
            path = Path(self.config.state_dir)
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            (path / "last-mesh").write_text(self.mesh.mesh_id)
        except OSError as e:
            self._log.warn("cannot save last-mesh: {err}", err=str(e), event="state_write_failed")

    # -- connections and inbound streams -------------------------------------------------------

    def _on_inbound_connection(self, conn: MeshConnection) -> None:
        self._adopt(conn)

    def _adopt(self, conn: MeshConnection) -> None:
        rid = conn.remote_id
        assert rid is not None
        self._leaving.discard(rid)
        old = self.conns.get(rid)
        self.conns[rid] = conn  # the newest connection wins; the old one ends on its own
        if old is not None and old is not conn:
            self._log.debug("replacing connection to {peer}", peer=rid.hex()[:10])
        conn.on_stream = lambda stream: stream.set_receiver(
            InboundStream(conn, stream, self._dispatch, clock=self._reactor)
        )
        conn.when_closed().addCallback(lambda reason: self._connection_closed(conn, reason))

    def _connection_closed(self, conn: MeshConnection, reason: Any) -> None:
        rid = conn.remote_id
        if rid is None or self.conns.get(rid) is not conn:
            return
        del self.conns[rid]
        self.notify_changed()
        if self._stopping or rid in self._leaving or rid not in self.mesh.peers:
            return
        # Re-dial the peer's last known address and re-gossip; drop it if that fails.
        entry = self.mesh.peers[rid]
        if self.is_client and entry.info.role is PeerRole.CLIENT:
            return
        d = self.connect_to_peer(entry.info.addr, REDIAL_TIMEOUT)
        d.addErrback(self._redial_failed, rid)

    def _redial_failed(self, failure: Failure, rid: bytes) -> None:
        self._log.info("lost peer {peer}: {err}", peer=rid.hex()[:10], err=_describe(failure.value), event="peer_lost")
        if self.mesh.remove(rid, self.now()):
            self.notify_changed()
        self._check_alone()

    def _check_alone(self) -> None:
        if self.state is NodeState.JOINED and not self.mesh.peers:
            self.set_state(NodeState.STANDALONE if not self.config.auto else NodeState.DISCOVERING)

    def _dispatch(self, conn: MeshConnection, stream: QuicStream, stream_type: StreamType) -> Any:
        rid = conn.remote_id
        assert rid is not None
        if not allowed_before_admission(stream_type, TRUST_POLICY) and not self.mesh.is_admitted(rid):
            self._log.info(
                "dropping {type} stream from unadmitted {peer}",
                type=stream_type.name,
                peer=rid.hex()[:10],
                event="stream_unadmitted",
            )
            _drop(stream)
            return None
        self.mesh.touch(rid, self.now())
        if stream_type is StreamType.GOSSIP:
            reader = FrameReader(stream)
            reader.result.addCallbacks(
                self._answer_gossip, self._bad_frame, callbackArgs=(conn, stream), errbackArgs=(conn, "gossip")
            )
            return reader
        if stream_type is StreamType.ROUTE_REQUEST:
            if not self.mesh.is_admitted(rid):  # 0.76 lets the stream in but discloses no topology
                _drop(stream)
                return None
            reader = FrameReader(stream)
            reader.result.addCallbacks(
                self._answer_route_request, self._bad_frame, callbackArgs=(stream,), errbackArgs=(conn, "route")
            )
            return reader
        if stream_type is StreamType.PEER_LEAVING:
            reader = FrameReader(stream, wait_eof=False)
            reader.result.addCallbacks(
                self._peer_leaving, self._bad_frame, callbackArgs=(conn,), errbackArgs=(conn, "peer-leaving")
            )
            return reader
        if stream_type is StreamType.PEER_DOWN:
            reader = FrameReader(stream, wait_eof=False)
            reader.result.addCallbacks(
                self._peer_down, self._bad_frame, callbackArgs=(conn,), errbackArgs=(conn, "peer-down")
            )
            return reader
        if stream_type is StreamType.TUNNEL_MAP:
            reader = FrameReader(stream, wait_eof=False)
            reader.result.addCallbacks(
                self._tunnel_map, self._bad_frame, callbackArgs=(conn,), errbackArgs=(conn, "tunnel-map")
            )
            return reader
        if stream_type is StreamType.TUNNEL_HTTP and self.tunnel_handler is not None:
            return self.tunnel_handler(conn, stream)
        self._log.info(
            "dropping {type} stream from {peer}", type=stream_type.name, peer=rid.hex()[:10], event="stream_ignored"
        )
        _drop(stream)
        return None

    def _bad_frame(self, failure: Failure, conn: MeshConnection, what: str) -> None:
        self._log.info(
            "bad {what} stream from {peer}: {err}",
            what=what,
            peer=(conn.remote_id or b"").hex()[:10],
            err=_describe(failure.value),
            event="bad_frame",
        )

    def _answer_gossip(self, body: bytes, conn: MeshConnection, stream: QuicStream) -> None:
        assert conn.remote_id is not None
        try:
            frame = decode_gossip_frame(body, conn.remote_id)
        except ProtocolError as e:
            self._log.info(
                "rejected gossip from {peer}: {err}", peer=conn.remote_id.hex()[:10], err=str(e), event="bad_gossip"
            )
            stream.reset(STREAM_PROTOCOL_ERROR)
            return
        if not conn.is_connected or conn.remote_id in self._leaving:
            return  # the peer left; this frame was still in flight
        problem = self._direct_entry_problem(conn.remote_id, frame)
        if problem is not None:
            # 0.76 §2.3: no reply to a frame without the sender's own entry, or one a gated mesh refuses.
            self._log.info(
                "no gossip reply to {peer}: {why}", peer=conn.remote_id.hex()[:10], why=problem, event="bad_gossip"
            )
            stream.reset(STREAM_PROTOCOL_ERROR)
            return
        reply_frame(stream, self.gossip_frame())
        self._apply_gossip(conn.remote_id, frame)
        if self.mesh.is_admitted(conn.remote_id):
            conn.mark_admitted()  # lifts the pre-admission bounds of the QUIC layer
        self._dial_learned_peers()

    def _direct_entry_problem(self, remote_id: bytes, frame: node_pb2.GossipFrame) -> str | None:
        """Why a peer's direct gossip is refused, if it is: it must carry the sender's own entry, and on a
        gated mesh that entry must pass the mesh's checks (0.76 §2.3, §6.2)."""
        own = direct_entry(frame, remote_id)
        if own is None:
            return "the frame omits the sender's own entry"
        try:
            check_direct_peer(self.requirements, own, remote_id, self.now_ms())
        except RequirementError as e:
            self.reject("gossip", e.code, str(e), remote_id)
            return str(e)
        return None

    def _answer_route_request(self, body: bytes, stream: QuicStream) -> None:
        try:
            decode_route_table_request(body)
        except ProtocolError:
            stream.reset(STREAM_PROTOCOL_ERROR)
            return
        table = node_pb2.RouteTable(gen=PROTOCOL_GENERATION)
        if self.mesh.mesh_id:
            table.mesh_id = self.mesh.mesh_id
        for model, ids in sorted(self.mesh.routable_models().items()):
            for pid in ids:
                table.entries.add(endpoint_id=pid, model=model)
        if not self.is_client:
            for model in self.hosted_models:
                table.entries.add(endpoint_id=self.identity.public_bytes, model=model)
        reply_frame(stream, table)

    def _peer_leaving(self, body: bytes, conn: MeshConnection) -> None:
        assert conn.remote_id is not None
        try:
            decode_peer_leaving(body, conn.remote_id)
        except ProtocolError as e:
            self._log.info("ignored PEER_LEAVING: {err}", err=str(e), event="bad_frame")
            return
        rid = conn.remote_id
        self._log.info("peer {peer} is leaving", peer=rid.hex()[:10], event="peer_leaving")
        self._leaving.add(rid)
        # Marked dead too, so stale gossip from others cannot bring it back before it returns itself;
        # its connections are closed so nothing it still had in flight re-admits it. A peer that
        # comes back dials a new connection and gossips again.
        if self.mesh.remove(rid, self.now()):
            self.notify_changed()
        for c in {conn, self.conns.get(rid)}:
            if c is not None and c.is_connected:
                c.close(0, "peer left")
        self._check_alone()

    def _peer_down(self, body: bytes, conn: MeshConnection) -> None:
        try:
            msg = decode_peer_down(body)
        except ProtocolError as e:
            self._log.info("ignored PEER_DOWN: {err}", err=str(e), event="bad_frame")
            return
        dead = bytes(msg.peer_id)
        if not self.mesh.should_probe_peer_down(dead, self.now()):
            return
        self._log.info("peer {peer} reported down; probing", peer=dead.hex()[:10], event="peer_down_report")
        existing = self.conns.get(dead)
        probe: Deferred[Any]
        if existing is not None and existing.is_connected:
            probe = self.gossip_with(existing, 3.0)
        elif dead in self.mesh.peers and self._dialable(self.mesh.peers[dead].info.addr):
            probe = self.connect_to_peer(self.mesh.peers[dead].info.addr, 5.0)
        else:
            probe = failed(JoinError("no way to reach the peer"))

        def gone(_: Failure) -> None:
            if self.mesh.remove(dead, self.now()):
                self._log.info("peer {peer} removed after PEER_DOWN", peer=dead.hex()[:10], event="peer_removed")
                self.notify_changed()
            self._check_alone()

        probe.addErrback(gone)

    def _tunnel_map(self, body: bytes, conn: MeshConnection) -> None:
        assert conn.remote_id is not None
        try:
            decode_tunnel_map(body, conn.remote_id)
        except ProtocolError as e:
            self._log.info("ignored TUNNEL_MAP: {err}", err=str(e), event="bad_frame")

    # -- periodic duties ------------------------------------------------------------------------

    def regossip(self) -> None:
        """Tell every connected peer about a change of our own entry (e.g. hosted models) now,
        rather than at the next heartbeat."""
        for rid, conn in list(self.conns.items()):
            if not conn.is_connected or self._stopping:
                continue
            d = self._track(self.gossip_with(conn, REDIAL_TIMEOUT))
            d.addErrback(self._log_dial_failure, rid)

    def check_liveness(self) -> None:
        """Close connections whose peer went silent, so their streams fail now rather than at the
        30 s idle timeout (requests then fail over, streams end with an error)."""
        now = self.now()
        self.suspect_ids()  # forgets silences that are old news
        for rid, conn in list(self.conns.items()):
            if conn.is_connected and now - conn.last_received > SILENT_PEER_SECS:
                self._silenced[rid] = now
                self._log.info(
                    "peer {peer} silent for {secs:.0f}s; closing its connection",
                    peer=rid.hex()[:10],
                    secs=now - conn.last_received,
                    event="peer_silent",
                )
                conn.close(0, "peer silent")

    def heartbeat(self) -> Deferred[Any]:
        """Gossip with every peer we talk to directly (5 random ones if more), prune the rest."""
        now = self.now()
        for pid in self.mesh.prune(now):
            self.announcements.pop(pid, None)
            self.notify_changed()
        candidates = [
            e
            for e in self.mesh.peers.values()
            if e.endpoint_id in self.conns or not (self.is_client and e.info.role is PeerRole.CLIENT)
        ]
        candidates = [e for e in candidates if e.endpoint_id in self.conns or self._dialable(e.info.addr)]
        if len(candidates) > HEARTBEAT_FANOUT:
            candidates = self._rng.sample(candidates, HEARTBEAT_FANOUT)
        ds = [self._heartbeat_one(e) for e in candidates]
        return DeferredList(ds, consumeErrors=True)

    def _heartbeat_one(self, entry: PeerEntry) -> Deferred[None]:
        pid = entry.endpoint_id

        async def run() -> None:
            conn = await self.connection_for(pid, REDIAL_TIMEOUT)
            await self.gossip_with(conn, REDIAL_TIMEOUT)

        d = self._track(Deferred.fromCoroutine(run()))
        d.addErrback(self._heartbeat_failed, pid)
        return d

    def _heartbeat_failed(self, failure: Failure, pid: bytes) -> None:
        if self._stopping:
            return
        conn = self.conns.get(pid)
        relay_only = conn is not None and self.relay is not None and self.relay.path_of(conn)[0] == "relay"
        if self.mesh.heartbeat_failed(pid, self.now(), STRIKES_RELAY if relay_only else STRIKES_DIRECT):
            self._log.info("peer {peer} is dead", peer=pid.hex()[:10], event="peer_dead")
            self.mesh.remove(pid, self.now())
            self.announcements.pop(pid, None)
            self.broadcast_peer_down(pid)
            self.notify_changed()
            self._check_alone()

    def broadcast_peer_down(self, dead: bytes) -> None:
        for rid, conn in list(self.conns.items()):
            if rid == dead or not conn.is_connected:
                continue
            try:
                _send_oneway(conn, StreamType.PEER_DOWN, build_peer_down(dead))
            except Exception as e:
                self._log.info("PEER_DOWN to {peer} failed: {err}", peer=rid.hex()[:10], err=str(e))

    # -- tunnels (client side) ------------------------------------------------------------------

    def open_tunnel(self, peer_id: bytes, timeout: float = REDIAL_TIMEOUT) -> Deferred[QuicStream]:
        """A new TUNNEL_HTTP stream to ``peer_id`` with the type byte already written."""

        async def run() -> QuicStream:
            conn = await self.connection_for(peer_id, timeout)
            stream = conn.open_stream()
            stream.write(encode_stream_type(StreamType.TUNNEL_HTTP))
            return stream

        return Deferred.fromCoroutine(run())

    def set_hosted_models(self, models: tuple[str, ...]) -> None:
        """Host role: the models our backend serves right now (known to the mesh state from then on)."""
        self.hosted_models = models
        self.mesh.note_models(models, self.now())

    def connected_ids(self) -> set[bytes]:
        return {pid for pid, conn in self.conns.items() if conn.is_connected}

    def suspect_ids(self) -> set[bytes]:
        """Peers whose connection died of silence lately and has not come back."""
        now = self.now()
        for pid, at in list(self._silenced.items()):
            if now - at >= SILENT_SUSPECT_SECS:
                del self._silenced[pid]
        return set(self._silenced) - self.connected_ids()

    def serves_locally(self, model: str | None) -> bool:
        """Host role: does our own backend serve ``model`` (any model, when None)?"""
        if self.tunnel_handler is None or not self.hosted_models:
            return False
        return model is None or model in self.hosted_models

    def open_local_tunnel(self) -> Any:
        """Host role: a tunnel to our own backend through an in-memory pipe (same code path as a
        TUNNEL_HTTP stream from a peer)."""
        assert self.tunnel_handler is not None
        near, far = pipe(self._reactor)
        far.set_receiver(self.tunnel_handler(None, far))  # type: ignore[arg-type]
        return near


def _drop(stream: QuicStream) -> None:
    """Drop a stream as mesh-llm does: FIN our side, stop reading theirs."""
    stream.set_receiver(Discard())
    stream.loseWriteConnection()


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
