"""Connections and dialling: one live connection per peer, dials to a peer shared, the backoff of peers
learned from gossip, and peers that went silent (MESH_PROTOCOL.md §4.2, §5.7; 0.76 §13).

The table holds the newest connection to each peer (either side may have dialled it). A connection that
closes is forgotten and reported (``on_lost``) unless the node is stopping or the peer said it was leaving.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from types import MappingProxyType

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from meshd.deferreds import failed, fire_all
from meshd.iroh_relay.node_relay import NodeRelay
from meshd.mesh.state import SILENT_SUSPECT_SECS, DialBook, MeshState, reachable
from meshd.node.lifetime import Lifetime
from meshd.node.membership import JoinError
from meshd.protocol.framing import encode_stream_type
from meshd.protocol.streams import StreamType
from meshd.protocol.token import EndpointAddr
from meshd.quic import MeshConnection, QuicEndpoint, QuicStream

#: Dialling a known peer again (and gossiping with it), at most.
REDIAL_TIMEOUT = 10.0
#: A connection whose peer sent nothing for this long is dead (both sides PING every 5 s).
SILENT_PEER_SECS = 12.0


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


class Connections:
    """The connection table. ``accept_stream(conn, stream)`` takes each stream a peer opens;
    ``on_lost(peer_id)`` hears of a connection that closed while the peer is still expected."""

    _log = Logger()

    def __init__(
        self,
        lifetime: Lifetime,
        mesh: MeshState,
        *,
        bind_address: str,
        relay: NodeRelay | None,
        accept_stream: Callable[[MeshConnection, QuicStream], None],
        on_lost: Callable[[bytes], None],
    ) -> None:
        self._lifetime = lifetime
        self._mesh = mesh
        self._bind_address = bind_address
        self._relay = relay
        self._accept_stream = accept_stream
        self._on_lost = on_lost
        self._endpoint: QuicEndpoint | None = None
        self._conns: dict[bytes, MeshConnection] = {}
        self._dialing: dict[bytes, list[Deferred[MeshConnection]]] = {}
        #: Peers that said PEER_LEAVING, until they connect again.
        self._leaving: set[bytes] = set()
        #: Peers whose connection we closed because they went silent, and when.
        self._silenced: dict[bytes, float] = {}
        #: When peers learned from gossip may be dialled again (backoff per peer).
        self.dials = DialBook()

    # -- the endpoint ---------------------------------------------------------------------------

    @property
    def endpoint(self) -> QuicEndpoint | None:
        return self._endpoint

    def attach(self, endpoint: QuicEndpoint) -> None:
        self._endpoint = endpoint

    def detach(self) -> QuicEndpoint | None:
        endpoint, self._endpoint = self._endpoint, None
        return endpoint

    def own_addr(self, port: int | None = None) -> EndpointAddr:
        """Our address as our invite token names it: the bound port on our addresses, and the home relay."""
        if port is None:
            port = self._endpoint.getHost().port if self._endpoint else 0  # type: ignore[attr-defined]
        home = self._relay.advertised_url if self._relay is not None else None
        return EndpointAddr(
            self._mesh.own_id,
            relay_urls=(home,) if home else (),
            ip_addrs=local_addresses(self._bind_address, port),
        )

    # -- the table ------------------------------------------------------------------------------

    @property
    def table(self) -> Mapping[bytes, MeshConnection]:
        """Peer id -> its newest connection (read-only)."""
        return MappingProxyType(self._conns)

    def linked_ids(self) -> set[bytes]:
        """Peers with a connection in the table (open, or closing and not yet forgotten)."""
        return set(self._conns)

    def busy_ids(self) -> set[bytes]:
        """Peers with a connection in the table or a dial under way."""
        return set(self._conns) | set(self._dialing)

    def connected_ids(self) -> set[bytes]:
        return {pid for pid, conn in self._conns.items() if conn.is_connected}

    def any_connected(self) -> bool:
        return any(c.is_connected for c in self._conns.values())

    def suspect_ids(self) -> set[bytes]:
        """Peers whose connection died of silence lately and has not come back."""
        now = self._lifetime.now()
        for pid, at in list(self._silenced.items()):
            if now - at >= SILENT_SUSPECT_SECS:
                del self._silenced[pid]
        return set(self._silenced) - self.connected_ids()

    def heard_from(self, peer_id: bytes) -> None:
        """The peer gossiped with us: it is not a suspect any more."""
        self._silenced.pop(peer_id, None)

    @property
    def dials_under_way(self) -> int:
        return len(self._dialing)

    @property
    def uses_relays(self) -> bool:
        """Does this node dial through iroh relays (a peer with only a relay URL is reachable)?"""
        return self._relay is not None

    def reachable(self, addr: EndpointAddr) -> bool:
        return reachable(addr, self.uses_relays)

    def path_of(self, conn: MeshConnection) -> tuple[str, str | None]:
        """``("relay", url)`` for a connection over an iroh relay, else ``("direct", None)``."""
        return self._relay.path_of(conn) if self._relay is not None else ("direct", None)

    # -- dialling -------------------------------------------------------------------------------

    def connection_to(self, addr: EndpointAddr, timeout: float) -> Deferred[MeshConnection]:
        """An open connection to ``addr.id``: the existing one, or a new dial (one at a time)."""
        existing = self._conns.get(addr.id)
        if existing is not None and existing.is_connected:
            return succeed(existing)
        if self._endpoint is None:
            return failed(JoinError("node is not running"))
        mine: Deferred[MeshConnection] = Deferred()
        waiters = self._dialing.get(addr.id)
        if waiters is not None:
            waiters.append(mine)  # share the dial already under way
            return mine
        targets = list(addr.dialable_ip_addrs())
        if self._relay is not None:
            targets += self._relay.dial_targets(addr.relay_urls, addr.id)  # raced with the direct ones
        if not targets:
            return failed(JoinError(f"no address to dial for {addr.short_id}"))
        self._dialing[addr.id] = [mine]

        def done(result: MeshConnection | Failure) -> None:
            waiting = self._dialing.pop(addr.id, [])
            if not isinstance(result, Failure):
                self.adopt(result)
            fire_all(waiting, result)

        self._endpoint.dial(addr.id, targets, timeout=timeout).addBoth(done)
        return mine

    def connection_for(self, peer_id: bytes, timeout: float = REDIAL_TIMEOUT) -> Deferred[MeshConnection]:
        """A connection to a known peer, dialling its gossiped address when needed."""
        conn = self._conns.get(peer_id)
        if conn is not None and conn.is_connected:
            return succeed(conn)
        entry = self._mesh.peers.get(peer_id)
        if entry is None:
            return failed(JoinError(f"unknown peer {peer_id.hex()[:10]}"))
        return self.connection_to(entry.info.addr, timeout)

    def open_tunnel(self, peer_id: bytes, timeout: float = REDIAL_TIMEOUT) -> Deferred[QuicStream]:
        """A new TUNNEL_HTTP stream to ``peer_id`` with the type byte already written."""

        async def run() -> QuicStream:
            conn = await self.connection_for(peer_id, timeout)
            stream = conn.open_stream()
            stream.write(encode_stream_type(StreamType.TUNNEL_HTTP))
            return stream

        return Deferred.fromCoroutine(run())

    # -- connections coming and going -----------------------------------------------------------

    def adopt(self, conn: MeshConnection) -> None:
        """A connection that completed its handshake (dialled by us, or accepted)."""
        rid = conn.remote_id
        assert rid is not None
        self._leaving.discard(rid)
        old = self._conns.get(rid)
        self._conns[rid] = conn  # the newest connection wins; the old one ends on its own
        if old is not None and old is not conn:
            self._log.debug("replacing connection to {peer}", peer=rid.hex()[:10])
        conn.on_stream = lambda stream: self._accept_stream(conn, stream)
        conn.when_closed().addCallback(lambda reason: self._closed(conn))

    def _closed(self, conn: MeshConnection) -> None:
        rid = conn.remote_id
        if rid is None or self._conns.get(rid) is not conn:
            return
        del self._conns[rid]
        self._lifetime.changed()
        if self._lifetime.stopping or rid in self._leaving:
            return
        self._on_lost(rid)

    def is_leaving(self, peer_id: bytes) -> bool:
        return peer_id in self._leaving

    def mark_leaving(self, peer_id: bytes) -> None:
        """The peer said PEER_LEAVING: its connections closing now is no loss (until it connects again)."""
        self._leaving.add(peer_id)

    def close(self, peer_id: bytes, conn: MeshConnection, why: str) -> None:
        """Close ``conn`` and the table's connection to ``peer_id`` (so nothing still in flight on them counts)."""
        for c in {conn, self._conns.get(peer_id)}:
            if c is not None and c.is_connected:
                c.close(0, why)

    def check_liveness(self) -> None:
        """Close connections whose peer went silent, so their streams fail now rather than at the
        30 s idle timeout (requests then fail over, streams end with an error)."""
        now = self._lifetime.now()
        self.suspect_ids()  # forgets silences that are old news
        for rid, conn in list(self._conns.items()):
            if conn.is_connected and now - conn.last_received > SILENT_PEER_SECS:
                self._silenced[rid] = now
                self._log.info(
                    "peer {peer} silent for {secs:.0f}s; closing its connection",
                    peer=rid.hex()[:10],
                    secs=now - conn.last_received,
                    event="peer_silent",
                )
                conn.close(0, "peer silent")

    def relay_only(self, peer_id: bytes) -> bool:
        """Is our connection to the peer over an iroh relay (no direct path)?"""
        conn = self._conns.get(peer_id)
        return conn is not None and self._relay is not None and self._relay.path_of(conn)[0] == "relay"

    def live(self) -> list[tuple[bytes, MeshConnection]]:
        """Peers with an open connection, and that connection."""
        return [(pid, c) for pid, c in self._conns.items() if c.is_connected]

    def all(self) -> list[MeshConnection]:
        """Every connection in the table (open or closing)."""
        return list(self._conns.values())


__all__ = ["REDIAL_TIMEOUT", "SILENT_PEER_SECS", "Connections"]
