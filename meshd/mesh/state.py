"""The one source of truth for what this node knows about its mesh (pure: no I/O, no reactor).

Inputs are gossip frames already decoded and validated (``PeerInfo`` records), direct-contact
events and the current time; outputs are decisions the node acts on (peers to dial, peers to drop,
the ordered hosts for a model). Rules and numbers: MESH_PROTOCOL.md §5.5, §5.7, §6.4, §9.1.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Collection, Iterable

import attrs

from meshd.protocol.peers import EXCLUDED_DEMAND_MODELS, DemandEntry, PeerInfo, Role
from meshd.protocol.token import EndpointAddr
from meshd.protocol.version import passes_version_floor

#: A peer not heard from (directly or through gossip) for this long is not relayed in gossip.
STALE_SECS = 180.0
#: ... and after this long it is removed.
PRUNE_SECS = 360.0
#: A peer declared dead is not re-added from gossip for this long.
DEAD_TTL_SECS = 300.0
#: Heartbeat failures before a peer not heard from directly within STALE_SECS is declared dead.
HEARTBEAT_STRIKES = 2
#: Demand entries older than this are forgotten (mesh-llm HEAD DEMAND_TTL_SECS).
DEMAND_TTL_SECS = 86_400
#: Bounds of the demand table (0.76's ingest caps: 256 names of at most 512 bytes).
MAX_DEMAND_ENTRIES = 256
MAX_MODEL_NAME_BYTES = 512
#: Models ever seen served in the mesh, remembered this long and at most this many (a name never seen
#: is a typo: 404 at once; a known one with no live host: 503 and retry).
KNOWN_MODEL_TTL_SECS = 86_400
MAX_KNOWN_MODELS = 1024
#: Entries read from one gossip frame (the sender's own entry always counts; the rest are hearsay).
MAX_ENTRIES_PER_FRAME = 256
#: Peers known only through others (not admitted) kept at most; peers in the table at most.
MAX_UNADMITTED_PEERS = 256
MAX_PEERS = 1024
#: Dialling a peer learned from gossip: after a failure wait this long, doubling up to the cap.
DIAL_BACKOFF_BASE_SECS = 5.0
DIAL_BACKOFF_MAX_SECS = 300.0
#: A connection closed because the peer went silent makes it a last resort for this long.
SILENT_SUSPECT_SECS = 60.0
#: Peers gossiped with in one heartbeat round, at most (a random sample of them when there are more).
HEARTBEAT_FANOUT = 5

_U64 = (1 << 64) - 1


@attrs.define
class PeerEntry:
    info: PeerInfo
    first_seen: float
    last_direct: float | None = None
    last_mention: float | None = None
    strikes: int = 0
    rtt_ms: float | None = None
    path: str | None = None  # "direct" or "relay" while a connection is up
    #: A gossip exchange with this peer itself has completed (either side began it): it admitted us and
    #: we admitted it. Peers only mentioned by others are known, not admitted (0.76 §2.2): never routed to.
    admitted: bool = False

    @property
    def endpoint_id(self) -> bytes:
        return self.info.endpoint_id

    def last_heard(self) -> float:
        return max(t for t in (self.last_direct, self.last_mention, self.first_seen) if t is not None)

    def heard_directly_within(self, now: float, secs: float) -> bool:
        return self.last_direct is not None and now - self.last_direct < secs


@attrs.frozen
class GossipOutcome:
    """What ingesting one gossip frame changed."""

    new_peers: tuple[bytes, ...]  # ids added by this frame (direct or transitive)
    updated: bool  # anything visible changed
    adopted_mesh_id: str | None  # set when this frame gave us our mesh id
    #: Why the sender itself was not admitted (below 0.76's version floor), if it was not.
    refused: str | None = None


def rotation_seed(own_id: bytes) -> int:
    """mesh-llm's per-node rotation: fold ``h = h*31 + b`` over our own id bytes (wrapping u64)."""
    h = 0
    for b in own_id:
        h = (h * 31 + b) & _U64
    return h


def order_hosts(host_ids: Iterable[bytes], own_id: bytes) -> list[bytes]:
    """Sort ids byte-wise ascending, then rotate left by ``rotation_seed(own_id) mod n`` (§6.4)."""
    ids = sorted(set(host_ids))
    if not ids:
        return ids
    k = rotation_seed(own_id) % len(ids)
    return ids[k:] + ids[:k]


_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


def fnv1a64(data: bytes) -> int:
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & _U64
    return h


def sticky_order(hosts: list[bytes], session: str | None) -> list[bytes]:
    """Session affinity (§6.4 step 5): a request naming a ``user`` (else ``session_id``) goes to the
    same host each time — rotate the ordered hosts by the FNV-1a-64 hash of that name."""
    if not session or len(hosts) < 2:
        return hosts
    k = fnv1a64(session.encode("utf-8")) % len(hosts)
    return hosts[k:] + hosts[:k]


def reachable(addr: EndpointAddr, relays: bool) -> bool:
    """Can ``addr`` be dialled: it has a direct IP address, or a relay URL while this node uses relays."""
    return bool(addr.dialable_ip_addrs()) or (relays and bool(addr.relay_urls))


class MeshState:
    def __init__(self, own_id: bytes, role: Role, mesh_id: str | None = None) -> None:
        self.own_id = own_id
        self.role = role
        self.mesh_id = mesh_id
        self.peers: dict[bytes, PeerEntry] = {}
        self.dead: dict[bytes, float] = {}
        self.demand: dict[str, DemandEntry] = {}
        self.known_models: OrderedDict[str, float] = OrderedDict()
        self.version = 0  # bumped on every visible change (drives /api/events)
        #: Host role: the models our own backend serves right now.
        self.local_models: tuple[str, ...] = ()
        #: Requests of our own API under way through the mesh (or our own backend).
        self.inflight_requests = 0

    # -- this node -----------------------------------------------------------------------------

    def set_mesh_id(self, mesh_id: str) -> bool:
        """Our mesh's id from now on (one we start, or a gated mesh's from its signed token); True if it changed."""
        if mesh_id == self.mesh_id:
            return False
        self.mesh_id = mesh_id
        self.version += 1
        return True

    def set_local_models(self, models: Iterable[str], now: float) -> None:
        """Host role: the models our own backend serves now (remembered as seen served, like a peer's)."""
        models = tuple(models)
        if models != self.local_models:
            self.local_models = models
            self.version += 1
        self.note_models(models, now)

    def request_started(self) -> None:
        self.inflight_requests += 1

    def request_finished(self) -> None:
        self.inflight_requests = max(0, self.inflight_requests - 1)

    def alone(self) -> bool:
        """No peer left in the table: a joined node is on its own again."""
        return not self.peers

    # -- gossip --------------------------------------------------------------------------------

    def ingest_gossip(self, remote_id: bytes, infos: Iterable[PeerInfo], now: float) -> GossipOutcome:
        """Apply a validated frame from ``remote_id``: its own entry is direct contact and admits it
        (unless its version is below 0.76's floor); the others are hearsay, bounded per frame and in
        the table, and never admitted by this."""
        new: list[bytes] = []
        updated = False
        adopted: str | None = None
        refused: str | None = None
        self.dead.pop(remote_id, None)
        entries = list(infos)
        own = [i for i in entries if i.endpoint_id == remote_id][:1]
        others = [i for i in entries if i.endpoint_id not in (remote_id, self.own_id)][:MAX_ENTRIES_PER_FRAME]
        for info in own:
            if not passes_version_floor(info.version):
                refused = f"version {info.version!r} is below mesh-llm's floor 0.60"
                continue
            entry = self.peers.get(remote_id)
            if entry is None:
                self._make_room()
                entry = self.peers[remote_id] = PeerEntry(info=info, first_seen=now)
                new.append(remote_id)
            elif entry.info != info:
                entry.info = info
                updated = True
            entry.last_direct = now
            entry.strikes = 0
            if not entry.admitted:
                entry.admitted = True
                updated = True
            self.note_models(info.served_models, now)
            if info.mesh_id and self.mesh_id is None:
                self.mesh_id = adopted = info.mesh_id
            self._merge_demand(info.demand)
        for info in others:
            pid = info.endpoint_id
            if self._is_dead(pid, now) or not passes_version_floor(info.version):
                continue
            self.note_models(info.served_models, now)
            entry = self.peers.get(pid)
            if entry is None:
                if self.unadmitted_count() >= MAX_UNADMITTED_PEERS or len(self.peers) >= MAX_PEERS:
                    continue  # hearsay beyond the bounds is dropped, never stored
                self.peers[pid] = PeerEntry(info=info, first_seen=now, last_mention=now)
                new.append(pid)
                continue
            entry.last_mention = now
            # Direct knowledge beats hearsay while it is fresh.
            if not entry.heard_directly_within(now, STALE_SECS) and entry.info != info:
                entry.info = info
                updated = True
        if new or updated or adopted:
            self.version += 1
        return GossipOutcome(
            new_peers=tuple(new), updated=bool(new or updated), adopted_mesh_id=adopted, refused=refused
        )

    def unadmitted_count(self) -> int:
        return sum(1 for e in self.peers.values() if not e.admitted)

    def _make_room(self) -> None:
        """Before admitting a peer into a full table, forget the hearsay heard of least recently."""
        if len(self.peers) < MAX_PEERS:
            return
        hearsay = [e for e in self.peers.values() if not e.admitted]
        if hearsay:
            oldest = min(hearsay, key=lambda e: e.last_heard())
            del self.peers[oldest.endpoint_id]

    def gossip_entries(self, now: float) -> list[PeerInfo]:
        """Peers to relay in our own frame: those we gossiped with ourselves (admitted), heard from within
        STALE_SECS. Hearsay is not passed on: a frame of invented peers sent to one node stops there instead
        of spreading through the mesh (each peer is relayed by the nodes that talk to it)."""
        return [e.info for e in self.peers.values() if e.admitted and now - e.last_heard() < STALE_SECS]

    def is_admitted(self, peer_id: bytes) -> bool:
        """Admitted = a gossip exchange with the peer itself completed (0.76 §2.2: a transitive mention
        makes a peer known, not admitted)."""
        entry = self.peers.get(peer_id)
        return entry is not None and entry.admitted

    # -- models ever seen ----------------------------------------------------------------------

    def note_models(self, names: Iterable[str], now: float) -> None:
        """Remember models seen served (by a peer, or by this host's own backend)."""
        for name in names:
            if not name or len(name.encode("utf-8")) > MAX_MODEL_NAME_BYTES:
                continue
            self.known_models[name] = now
            self.known_models.move_to_end(name)
        while len(self.known_models) > MAX_KNOWN_MODELS:
            self.known_models.popitem(last=False)

    def is_known_model(self, name: str, now: float) -> bool:
        seen = self.known_models.get(name)
        if seen is None:
            return False
        if now - seen >= KNOWN_MODEL_TTL_SECS:
            del self.known_models[name]
            return False
        return True

    # -- liveness ------------------------------------------------------------------------------

    def touch(self, peer_id: bytes, now: float) -> None:
        entry = self.peers.get(peer_id)
        if entry is not None:
            entry.last_direct = now
            entry.strikes = 0

    def heartbeat_failed(self, peer_id: bytes, now: float, strikes: int = HEARTBEAT_STRIKES) -> bool:
        """Record a failed heartbeat; True when the peer is now to be declared dead (after ``strikes``
        failures: 2 on a direct path, 5 on a relay-only one, as in mesh-llm 0.76)."""
        entry = self.peers.get(peer_id)
        if entry is None:
            return False
        entry.strikes += 1
        return entry.strikes >= strikes and not entry.heard_directly_within(now, STALE_SECS)

    def should_probe_peer_down(self, peer_id: bytes, now: float) -> bool:
        """PEER_DOWN from someone else: ignore it if we heard from that peer directly recently."""
        if peer_id == self.own_id:
            return False
        entry = self.peers.get(peer_id)
        if entry is None:
            return False
        return not entry.heard_directly_within(now, STALE_SECS)

    def remove(self, peer_id: bytes, now: float, *, dead: bool = True) -> bool:
        entry = self.peers.pop(peer_id, None)
        if dead:
            self.dead[peer_id] = now
        if entry is not None:
            self.version += 1
        return entry is not None

    def _is_dead(self, peer_id: bytes, now: float) -> bool:
        since = self.dead.get(peer_id)
        if since is None:
            return False
        if now - since >= DEAD_TTL_SECS:
            del self.dead[peer_id]
            return False
        return True

    def recently_dead(self, peer_id: bytes, now: float) -> bool:
        return self._is_dead(peer_id, now)

    def _talks_to(self, entry: PeerEntry) -> bool:
        """Do we dial this peer ourselves? Clients never dial clients (they have nothing to say to each other)."""
        return not (self.role is Role.CLIENT and entry.info.role is Role.CLIENT)

    def heartbeat_targets(
        self, linked: Collection[bytes], *, relays: bool, rng: random.Random, fanout: int = HEARTBEAT_FANOUT
    ) -> list[bytes]:
        """Peers to gossip with in one heartbeat round: every peer we have a connection to (``linked``), and
        every other peer we would dial and can reach; ``fanout`` of them chosen by ``rng`` when there are more."""
        candidates = [
            e
            for e in self.peers.values()
            if e.endpoint_id in linked or (self._talks_to(e) and reachable(e.info.addr, relays))
        ]
        if len(candidates) > fanout:
            candidates = rng.sample(candidates, fanout)
        return [e.endpoint_id for e in candidates]

    def dial_candidates(self, now: float, *, skip: Collection[bytes], dials: DialBook, relays: bool) -> list[PeerEntry]:
        """Peers learned from gossip to dial now, in table order: not in ``skip`` (connected, or a dial under
        way), past their backoff in ``dials``, ones we talk to, and reachable. The caller bounds how many it starts."""
        return [
            e
            for pid, e in self.peers.items()
            if pid not in skip and dials.may_dial(pid, now) and self._talks_to(e) and reachable(e.info.addr, relays)
        ]

    def redial_target(self, peer_id: bytes) -> EndpointAddr | None:
        """Where to dial a known peer whose connection closed (None: forget it, or a client's fellow client)."""
        entry = self.peers.get(peer_id)
        if entry is None or not self._talks_to(entry):
            return None
        return entry.info.addr

    def prune(self, now: float) -> list[bytes]:
        """Drop peers heard from neither directly nor through gossip within PRUNE_SECS."""
        gone = [pid for pid, e in self.peers.items() if now - e.last_heard() >= PRUNE_SECS]
        for pid in gone:
            del self.peers[pid]
        for pid, since in list(self.dead.items()):
            if now - since >= DEAD_TTL_SECS:
                del self.dead[pid]
        if gone:
            self.version += 1
        return gone

    # -- routing -------------------------------------------------------------------------------

    def hosts(self) -> list[PeerEntry]:
        """Admitted HOST peers that take remote requests: the only ones requests are routed to (a host
        whose activity policy paused remote work is skipped, 0.76 §9.7)."""
        return [
            e
            for e in self.peers.values()
            if e.info.role is Role.HOST and e.admitted and e.info.accepts_remote_inference
        ]

    def routable_models(self) -> dict[str, list[bytes]]:
        """Model name -> ids of admitted HOST peers that route it (hosted_models if known, else serving)."""
        out: dict[str, list[bytes]] = {}
        for entry in self.hosts():
            for model in entry.info.served_models:
                if model:
                    out.setdefault(model, []).append(entry.endpoint_id)
        return out

    def hosts_for_model(self, model: str) -> list[bytes]:
        return order_hosts(self.routable_models().get(model, ()), self.own_id)

    def any_hosts(self) -> list[bytes]:
        """Hosts that route some model, in rotation order (request with no model)."""
        ids = [e.endpoint_id for e in self.hosts() if e.info.served_models]
        return order_hosts(ids, self.own_id)

    # -- demand --------------------------------------------------------------------------------

    def record_request(self, model: str | None, now: float) -> None:
        """Demand from our own API, for models the mesh knows (a typo is not demand for a model)."""
        if not model or model in EXCLUDED_DEMAND_MODELS or not self.is_known_model(model, now):
            return
        old = self.demand.get(model)
        count = 1 if old is None else old.request_count + 1
        self.demand[model] = DemandEntry(model, int(now), count)
        self._bound_demand()

    def _bound_demand(self) -> None:
        if len(self.demand) > MAX_DEMAND_ENTRIES:
            newest = sorted(self.demand.values(), key=lambda d: d.last_active, reverse=True)
            self.demand = {d.model_name: d for d in newest[:MAX_DEMAND_ENTRIES]}

    def _merge_demand(self, entries: Iterable[DemandEntry]) -> None:
        for d in list(entries)[:MAX_DEMAND_ENTRIES]:
            if d.model_name in EXCLUDED_DEMAND_MODELS or len(d.model_name.encode("utf-8")) > MAX_MODEL_NAME_BYTES:
                continue
            old = self.demand.get(d.model_name)
            if old is None:
                self.demand[d.model_name] = d
            else:
                self.demand[d.model_name] = DemandEntry(
                    d.model_name,
                    max(old.last_active, d.last_active),
                    max(old.request_count, d.request_count),
                )
        self._bound_demand()

    def live_demand(self, now: float) -> list[DemandEntry]:
        return [d for d in self.demand.values() if now - d.last_active < DEMAND_TTL_SECS]


@attrs.define
class _DialRecord:
    failures: int = 0
    next_at: float = 0.0


class DialBook:
    """When a peer learned from gossip may be dialled (pure). Every failed dial doubles the wait before
    the next one (5 s up to 5 min); a success forgets the record. Bounded like the peer table, so an
    attacker's thousands of fake addresses cost a bounded number of dials, never a storm."""

    def __init__(self, max_entries: int = MAX_PEERS) -> None:
        self._records: OrderedDict[bytes, _DialRecord] = OrderedDict()
        self._max = max_entries

    def may_dial(self, peer_id: bytes, now: float) -> bool:
        record = self._records.get(peer_id)
        return record is None or now >= record.next_at

    def failed(self, peer_id: bytes, now: float) -> float:
        """Record a failed dial; returns when the next may start."""
        record = self._records.pop(peer_id, None) or _DialRecord()
        record.failures += 1
        wait = min(DIAL_BACKOFF_MAX_SECS, DIAL_BACKOFF_BASE_SECS * 2 ** (record.failures - 1))
        record.next_at = now + wait
        self._records[peer_id] = record
        while len(self._records) > self._max:
            self._records.popitem(last=False)
        return record.next_at

    def succeeded(self, peer_id: bytes) -> None:
        self._records.pop(peer_id, None)

    def __len__(self) -> int:
        return len(self._records)


def route_order(hosts: list[bytes], connected: set[bytes], suspect: set[bytes]) -> list[bytes]:
    """The order to try hosts in: those with a live connection first, then the others, in the given
    order within each group; a host whose connection just died of silence only when no other host is
    left (so no request waits on a dial to a peer that is very likely gone)."""
    live = [h for h in hosts if h in connected]
    cold = [h for h in hosts if h not in connected and h not in suspect]
    if live or cold:
        return live + cold
    return [h for h in hosts if h in suspect]
