"""Liveness (MESH_PROTOCOL.md §5.6-§5.7, 0.76 §13): heartbeats and their strikes, dead peers, PEER_DOWN and
PEER_LEAVING, a lost connection's redial, and our own PEER_LEAVING when the node stops."""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from meshd.control import send_oneway
from meshd.deferreds import failed
from meshd.mesh.state import MeshState
from meshd.node.connections import REDIAL_TIMEOUT, Connections
from meshd.node.dispatch import describe
from meshd.node.gossip import Gossip
from meshd.node.lifetime import Lifetime
from meshd.node.membership import JoinError, Membership
from meshd.protocol.errors import ProtocolError
from meshd.protocol.peers import build_peer_down, build_peer_leaving
from meshd.protocol.streams import StreamType
from meshd.protocol.validate import decode_peer_down, decode_peer_leaving
from meshd.quic import MeshConnection, QuicStream

HEARTBEAT_INTERVAL = 60.0
#: Heartbeat failures before a peer is dead: on a direct path, and on a relay-only one (0.76 §13).
STRIKES_DIRECT = 2
STRIKES_RELAY = 5
#: Deadlines of the probe of a peer another peer reported down: over our connection, or a new dial.
PEER_DOWN_PROBE_SECS = 3.0
PEER_DOWN_DIAL_SECS = 5.0


class Liveness:
    _log = Logger()

    def __init__(
        self,
        lifetime: Lifetime,
        own_id: bytes,
        mesh: MeshState,
        connections: Connections,
        gossip: Gossip,
        membership: Membership,
        rng: random.Random,
    ) -> None:
        self._lifetime = lifetime
        self._own_id = own_id
        self._mesh = mesh
        self._connections = connections
        self._gossip = gossip
        self._membership = membership
        self._rng = rng

    # -- heartbeats -----------------------------------------------------------------------------

    def heartbeat(self) -> Deferred[Any]:
        """Gossip with every peer we talk to directly (5 random ones if more), prune the rest."""
        now = self._lifetime.now()
        for pid in self._mesh.prune(now):
            self._gossip.forget(pid)
            self._lifetime.changed()
        targets = self._mesh.heartbeat_targets(
            self._connections.linked_ids(), relays=self._connections.uses_relays, rng=self._rng
        )
        return DeferredList([self._heartbeat_one(pid) for pid in targets], consumeErrors=True)

    def _heartbeat_one(self, pid: bytes) -> Deferred[None]:
        async def run() -> None:
            conn = await self._connections.connection_for(pid, REDIAL_TIMEOUT)
            await self._gossip.gossip_with(conn, REDIAL_TIMEOUT)

        d = self._lifetime.track(Deferred.fromCoroutine(run()))
        d.addErrback(self._heartbeat_failed, pid)
        return d

    def _heartbeat_failed(self, failure: Failure, pid: bytes) -> None:
        if self._lifetime.stopping:
            return
        strikes = STRIKES_RELAY if self._connections.relay_only(pid) else STRIKES_DIRECT
        if self._mesh.heartbeat_failed(pid, self._lifetime.now(), strikes):
            self._log.info("peer {peer} is dead", peer=pid.hex()[:10], event="peer_dead")
            self._mesh.remove(pid, self._lifetime.now())
            self._gossip.forget(pid)
            self.broadcast_peer_down(pid)
            self._lifetime.changed()
            self._membership.check_alone()

    def broadcast_peer_down(self, dead: bytes) -> None:
        for rid, conn in self._connections.live():
            if rid == dead:
                continue
            try:
                send_oneway(conn, StreamType.PEER_DOWN, build_peer_down(dead))
            except Exception as e:
                self._log.info("PEER_DOWN to {peer} failed: {err}", peer=rid.hex()[:10], err=str(e))

    # -- what peers tell us ---------------------------------------------------------------------

    def peer_leaving(self, body: bytes, conn: MeshConnection, stream: QuicStream) -> None:
        rid = conn.remote_id
        assert rid is not None
        try:
            decode_peer_leaving(body, rid)
        except ProtocolError as e:
            self._log.info("ignored PEER_LEAVING: {err}", err=str(e), event="bad_frame")
            return
        self._log.info("peer {peer} is leaving", peer=rid.hex()[:10], event="peer_leaving")
        self._connections.mark_leaving(rid)
        # Marked dead too, so stale gossip from others cannot bring it back before it returns itself;
        # its connections are closed so nothing it still had in flight re-admits it. A peer that
        # comes back dials a new connection and gossips again.
        if self._mesh.remove(rid, self._lifetime.now()):
            self._lifetime.changed()
        self._connections.close(rid, conn, "peer left")
        self._membership.check_alone()

    def peer_down(self, body: bytes, conn: MeshConnection, stream: QuicStream) -> None:
        try:
            msg = decode_peer_down(body)
        except ProtocolError as e:
            self._log.info("ignored PEER_DOWN: {err}", err=str(e), event="bad_frame")
            return
        dead = bytes(msg.peer_id)
        if not self._mesh.should_probe_peer_down(dead, self._lifetime.now()):
            return
        self._log.info("peer {peer} reported down; probing", peer=dead.hex()[:10], event="peer_down_report")
        existing = self._connections.table.get(dead)
        entry = self._mesh.peers.get(dead)
        probe: Deferred[Any]
        if existing is not None and existing.is_connected:
            probe = self._gossip.gossip_with(existing, PEER_DOWN_PROBE_SECS)
        elif entry is not None and self._connections.reachable(entry.info.addr):
            probe = self._gossip.connect_to_peer(entry.info.addr, PEER_DOWN_DIAL_SECS)
        else:
            probe = failed(JoinError("no way to reach the peer"))

        def gone(_: Failure) -> None:
            if self._mesh.remove(dead, self._lifetime.now()):
                self._log.info("peer {peer} removed after PEER_DOWN", peer=dead.hex()[:10], event="peer_removed")
                self._lifetime.changed()
            self._membership.check_alone()

        probe.addErrback(gone)

    # -- our side -------------------------------------------------------------------------------

    def connection_lost(self, peer_id: bytes) -> None:
        """A peer's connection closed while we still expect it: dial its last known address and gossip again;
        drop it if that fails."""
        addr = self._mesh.redial_target(peer_id)
        if addr is None:
            return
        d = self._gossip.connect_to_peer(addr, REDIAL_TIMEOUT)
        d.addErrback(self._redial_failed, peer_id)

    def _redial_failed(self, failure: Failure, rid: bytes) -> None:
        self._log.info("lost peer {peer}: {err}", peer=rid.hex()[:10], err=describe(failure.value), event="peer_lost")
        if self._mesh.remove(rid, self._lifetime.now()):
            self._lifetime.changed()
        self._membership.check_alone()

    def say_goodbye(self) -> bool:
        """PEER_LEAVING to every peer we have a connection to (the node is stopping); True if there was one."""
        conns = self._connections.all()
        for conn in conns:
            try:
                send_oneway(conn, StreamType.PEER_LEAVING, build_peer_leaving(self._own_id))
            except Exception:
                pass
        return bool(conns)
