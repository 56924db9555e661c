"""Gossip and admission (MESH_PROTOCOL.md §5.5, 0.76 §2.2-§2.3): our own entry, the frame we send, the
responder and the initiator, what a frame changes, route requests, and dialling the peers a frame told us of.

A peer is admitted once a gossip exchange with the peer itself completed (either side began it); a peer
only mentioned by others is known, not admitted. A 0.76 responder sends no reply to a frame without the
sender's own entry (or one a gated mesh refuses), and so neither do we.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from meshd.control import STREAM_PROTOCOL_ERROR, gossip_round_trip, reply_frame
from meshd.deferreds import failed
from meshd.identity import Identity
from meshd.mesh.state import MeshState
from meshd.node.admission import Admission
from meshd.node.connections import REDIAL_TIMEOUT, Connections
from meshd.node.dispatch import describe, drop, frame_handler
from meshd.node.lifetime import Lifetime
from meshd.node.membership import JoinError, Membership
from meshd.protocol import node_pb2
from meshd.protocol.errors import ProtocolError
from meshd.protocol.peers import Role as PeerRole
from meshd.protocol.peers import (
    build_gossip_frame,
    build_self_announcement,
    peer_info_from_announcement,
    sanitize_relayed_announcement,
)
from meshd.protocol.streams import PROTOCOL_GENERATION
from meshd.protocol.token import EndpointAddr
from meshd.protocol.validate import (
    decode_gossip_frame,
    decode_route_table_request,
    decode_tunnel_map,
    valid_point_announcements,
)
from meshd.protocol.version import ANNOUNCED_VERSION
from meshd.quic import MeshConnection, QuicStream

#: Dials of peers learned from gossip under way at once, at most (more wait for the next round).
MAX_CONCURRENT_DIALS = 8


class Gossip:
    """``own_addr()``: our address as a token names it; ``http_port()``: the API port a host announces;
    ``on_mesh_id(id)``: a frame gave us our mesh id."""

    _log = Logger()

    def __init__(
        self,
        lifetime: Lifetime,
        identity: Identity,
        mesh: MeshState,
        connections: Connections,
        admission: Admission,
        membership: Membership,
        *,
        own_addr: Callable[[], EndpointAddr],
        http_port: Callable[[], int],
        on_mesh_id: Callable[[str], None],
    ) -> None:
        self._lifetime = lifetime
        self._identity = identity
        self._mesh = mesh
        self._connections = connections
        self._admission = admission
        self._membership = membership
        self._own_addr = own_addr
        self._http_port = http_port
        self._on_mesh_id = on_mesh_id
        #: The latest announcement heard of each peer in the mesh table (relayed in our frames).
        self._announcements: dict[bytes, node_pb2.PeerAnnouncement] = {}

    @property
    def _is_client(self) -> bool:
        return self._mesh.role is PeerRole.CLIENT

    # -- what we send ---------------------------------------------------------------------------

    def self_announcement(self) -> node_pb2.PeerAnnouncement:
        """Our own entry: the version 0.76 accepts (``0.76.0+meshd.X``), a hostname that names no
        machine (0.76 hosts relay a client's entry only if it has one), and on a gated mesh the mesh id,
        policy hash and a fresh admission proof."""
        now = self._lifetime.now()
        common: dict[str, Any] = {
            "addr": self._own_addr(),
            "version": ANNOUNCED_VERSION,
            "mesh_id": self._mesh.mesh_id,
            "demand": self._mesh.live_demand(now),
            "hostname": f"meshd-{self._identity.short_id}",
        }
        if self._is_client:
            ann = build_self_announcement(**common)
        else:
            ann = build_self_announcement(
                **common, role=PeerRole.HOST, http_port=self._http_port(), hosted_models=self._mesh.local_models
            )
        self._admission.sign_own_entry(ann)
        return ann

    def gossip_frame(self) -> node_pb2.GossipFrame:
        now = self._lifetime.now()
        relayed = [
            sanitize_relayed_announcement(self._announcements[i.endpoint_id])
            for i in self._mesh.gossip_entries(now)
            if i.endpoint_id in self._announcements
        ]
        return build_gossip_frame(self._identity.public_bytes, self.self_announcement(), relayed)

    # -- the two sides of an exchange -----------------------------------------------------------

    def answer(self, body: bytes, conn: MeshConnection, stream: QuicStream) -> None:
        """Responder: a peer's GOSSIP stream carried its frame; reply with ours, then apply theirs."""
        assert conn.remote_id is not None
        try:
            frame = decode_gossip_frame(body, conn.remote_id)
        except ProtocolError as e:
            self._log.info(
                "rejected gossip from {peer}: {err}", peer=conn.remote_id.hex()[:10], err=str(e), event="bad_gossip"
            )
            stream.reset(STREAM_PROTOCOL_ERROR)
            return
        if not conn.is_connected or self._connections.is_leaving(conn.remote_id):
            return  # the peer left; this frame was still in flight
        problem = self._admission.direct_entry_problem(conn.remote_id, frame)
        if problem is not None:
            # 0.76 §2.3: no reply to a frame without the sender's own entry, or one a gated mesh refuses.
            self._log.info(
                "no gossip reply to {peer}: {why}", peer=conn.remote_id.hex()[:10], why=problem, event="bad_gossip"
            )
            stream.reset(STREAM_PROTOCOL_ERROR)
            return
        reply_frame(stream, self.gossip_frame())
        self.apply(conn.remote_id, frame)
        if self._mesh.is_admitted(conn.remote_id):
            conn.mark_admitted()  # lifts the pre-admission bounds of the QUIC layer
        self.dial_learned_peers()

    def gossip_with(self, conn: MeshConnection, timeout: float) -> Deferred[None]:
        """Initiator: send our frame on a new GOSSIP stream and apply the reply."""

        async def run() -> None:
            reply = await gossip_round_trip(conn, self.gossip_frame(), self._lifetime.clock, timeout)
            assert conn.remote_id is not None
            if not conn.is_connected or self._connections.is_leaving(conn.remote_id):
                # The peer left (or the connection died) while we waited: its news is stale.
                raise JoinError(f"connection to {conn.remote_id.hex()[:10]} closed during gossip")
            problem = self._admission.direct_entry_problem(conn.remote_id, reply)
            if problem is not None:
                raise JoinError(f"peer {conn.remote_id.hex()[:10]}: {problem}")
            self.apply(conn.remote_id, reply)
            if self._mesh.is_admitted(conn.remote_id):
                conn.mark_admitted()  # lifts the pre-admission bounds of the QUIC layer

        return Deferred.fromCoroutine(run())

    def apply(self, remote_id: bytes, frame: node_pb2.GossipFrame) -> None:
        """What a frame from ``remote_id`` (checked already) changes: its own entry admits it; the rest is hearsay."""
        infos = []
        anns: dict[bytes, node_pb2.PeerAnnouncement] = {}
        for ann in valid_point_announcements(frame.peers):
            try:
                info = peer_info_from_announcement(ann)
            except ValueError:
                continue
            infos.append(info)
            if ann.endpoint_id != self._identity.public_bytes:
                anns[bytes(ann.endpoint_id)] = ann
        outcome = self._mesh.ingest_gossip(remote_id, infos, self._lifetime.now())
        self._keep_announcements(anns)
        if outcome.refused is not None:
            self._admission.reject("gossip", "node_version_below_floor", outcome.refused, remote_id)
        else:
            self._connections.heard_from(remote_id)
        if outcome.adopted_mesh_id:
            self._log.info("mesh id {mesh_id}", mesh_id=outcome.adopted_mesh_id, event="mesh_id")
            self._on_mesh_id(outcome.adopted_mesh_id)
        if remote_id in self._mesh.peers:
            self._membership.admitted()
        if outcome.updated or outcome.adopted_mesh_id:
            self._lifetime.changed()

    def _keep_announcements(self, anns: dict[bytes, node_pb2.PeerAnnouncement]) -> None:
        """Keep the announcements of peers the table holds (bounded like the table: hearsay the table
        dropped is not kept here either)."""
        peers = self._mesh.peers
        self._announcements.update((pid, ann) for pid, ann in anns.items() if pid in peers)
        if len(self._announcements) > len(peers):
            for pid in [p for p in self._announcements if p not in peers]:
                del self._announcements[pid]

    def forget(self, peer_id: bytes) -> None:
        self._announcements.pop(peer_id, None)

    # -- dialling through gossip ----------------------------------------------------------------

    def connect_to_peer(self, addr: EndpointAddr, timeout: float) -> Deferred[MeshConnection]:
        """Dial (unless connected), gossip, and dial the peers it told us about."""
        if addr.id == self._identity.public_bytes:
            return failed(JoinError("that token is our own"))
        existing = self._connections.table.get(addr.id)
        if existing is not None and existing.is_connected and self._mesh.is_admitted(addr.id):
            return succeed(existing)
        if self._mesh.recently_dead(addr.id, self._lifetime.now()):
            return failed(JoinError(f"peer {addr.short_id} was declared dead recently"))

        async def run() -> MeshConnection:
            conn = await self._connections.connection_to(addr, timeout)
            await self.gossip_with(conn, timeout)
            self.dial_learned_peers()
            return conn

        return self._lifetime.track(Deferred.fromCoroutine(run()))

    def dial_learned_peers(self) -> None:
        """Dial (and gossip with) peers we only heard of, so they admit us and we them. Bounded: a few at
        a time, and each peer after a failure only once its backoff has passed."""
        dials = self._connections.dials
        candidates = self._mesh.dial_candidates(
            self._lifetime.now(),
            skip=self._connections.busy_ids(),
            dials=dials,
            relays=self._connections.uses_relays,
        )
        for entry in candidates:
            if self._connections.dials_under_way >= MAX_CONCURRENT_DIALS or self._lifetime.stopping:
                return
            pid = entry.endpoint_id
            d = self.connect_to_peer(entry.info.addr, REDIAL_TIMEOUT)
            d.addCallbacks(lambda _, p=pid: dials.succeeded(p), self.log_dial_failure, errbackArgs=(pid,))

    def regossip(self) -> None:
        """Tell every connected peer about a change of our own entry (e.g. hosted models) now,
        rather than at the next heartbeat."""
        for rid, conn in self._connections.live():
            if self._lifetime.stopping:
                continue
            d = self._lifetime.track(self.gossip_with(conn, REDIAL_TIMEOUT))
            d.addErrback(self.log_dial_failure, rid)

    def log_dial_failure(self, failure: Failure, pid: bytes) -> None:
        again = self._connections.dials.failed(pid, self._lifetime.now())
        self._log.info(
            "could not reach peer {peer}: {err} (next try in {wait:.0f} s at the earliest)",
            peer=pid.hex()[:10],
            err=describe(failure.value),
            wait=again - self._lifetime.now(),
            event="dial_failed",
        )

    # -- ROUTE_REQUEST and TUNNEL_MAP -----------------------------------------------------------

    def route_request(self, conn: MeshConnection | None, stream: QuicStream) -> Any:
        """0.76 lets an unadmitted peer open a ROUTE_REQUEST stream but discloses no topology to it."""
        assert conn is not None and conn.remote_id is not None
        if not self._mesh.is_admitted(conn.remote_id):
            drop(stream)
            return None
        return frame_handler(self._answer_route_request, "route")(conn, stream)

    def _answer_route_request(self, body: bytes, conn: MeshConnection, stream: QuicStream) -> None:
        try:
            decode_route_table_request(body)
        except ProtocolError:
            stream.reset(STREAM_PROTOCOL_ERROR)
            return
        table = node_pb2.RouteTable(gen=PROTOCOL_GENERATION)
        if self._mesh.mesh_id:
            table.mesh_id = self._mesh.mesh_id
        for model, ids in sorted(self._mesh.routable_models().items()):
            for pid in ids:
                table.entries.add(endpoint_id=pid, model=model)
        if not self._is_client:
            for model in self._mesh.local_models:
                table.entries.add(endpoint_id=self._identity.public_bytes, model=model)
        reply_frame(stream, table)

    def tunnel_map(self, body: bytes, conn: MeshConnection, stream: QuicStream) -> None:
        """TUNNEL_MAP (a 0.65 leftover): checked and otherwise ignored."""
        assert conn.remote_id is not None
        try:
            decode_tunnel_map(body, conn.remote_id)
        except ProtocolError as e:
            self._log.info("ignored TUNNEL_MAP: {err}", err=str(e), event="bad_frame")
