"""The pure mesh state: gossip ingestion, admission, liveness clocks, routing order, demand."""

from __future__ import annotations

import os

import attrs

from meshd.mesh.state import (
    DEAD_TTL_SECS,
    PRUNE_SECS,
    STALE_SECS,
    MeshState,
    order_hosts,
    rotation_seed,
)
from meshd.protocol.peers import DemandEntry, PeerInfo, Role, build_self_announcement, peer_info_from_announcement
from meshd.protocol.token import EndpointAddr


def pid(n: int) -> bytes:
    return bytes([n]) * 32


def info(
    n: int,
    role: Role = Role.HOST,
    models: tuple[str, ...] = ("m",),
    mesh_id: str | None = None,
    demand: tuple[DemandEntry, ...] = (),
    version: str = "0.65.0",
) -> PeerInfo:
    ann = build_self_announcement(
        addr=EndpointAddr(pid(n)),
        version=version,
        role=role,
        http_port=9337 if role is Role.HOST else None,
        hosted_models=models if role is Role.HOST else (),
        mesh_id=mesh_id,
        demand=demand,
    )
    return peer_info_from_announcement(ann)


ME = pid(200)


def test_rotation_seed_matches_the_rust_fold() -> None:
    # h = h*31 + b over 32 bytes of 0x01, wrapping at 2**64 (computed independently here)
    expected = 0
    for _ in range(32):
        expected = (expected * 31 + 1) % 2**64
    assert rotation_seed(pid(1)) == expected
    assert rotation_seed(bytes(32)) == 0


def test_order_hosts_sorts_bytewise_then_rotates_by_own_id() -> None:
    ids = [pid(3), pid(1), pid(2)]
    assert order_hosts(ids, bytes(32)) == [pid(1), pid(2), pid(3)]  # seed 0: no rotation
    own = bytes(31) + b"\x01"  # seed 1 -> rotate left by 1
    assert order_hosts(ids, own) == [pid(2), pid(3), pid(1)]
    own2 = bytes(31) + b"\x05"  # seed 5 -> 5 mod 3 = 2
    assert order_hosts(ids, own2) == [pid(3), pid(1), pid(2)]
    assert order_hosts([], own) == []
    for _ in range(20):
        rnd = os.urandom(32)
        out = order_hosts(ids, rnd)
        assert sorted(out) == sorted(ids)
        k = rotation_seed(rnd) % 3
        assert out == sorted(ids)[k:] + sorted(ids)[:k]


def test_remote_self_entry_is_direct_and_others_transitive() -> None:
    st = MeshState(ME, Role.CLIENT)
    out = st.ingest_gossip(pid(1), [info(2), info(3, Role.CLIENT), info(1, mesh_id="abc")], now=100)
    assert set(out.new_peers) == {pid(1), pid(2), pid(3)}
    assert out.adopted_mesh_id == "abc" and st.mesh_id == "abc"
    assert st.peers[pid(1)].last_direct == 100
    assert st.peers[pid(2)].last_direct is None and st.peers[pid(2)].last_mention == 100
    # 0.76 §2.2: only a gossip exchange with the peer itself admits it; a mention makes it known
    assert st.is_admitted(pid(1)) and not st.is_admitted(pid(2)) and pid(2) in st.peers
    assert not st.is_admitted(pid(9))
    st.ingest_gossip(pid(2), [info(2)], now=101)
    assert st.is_admitted(pid(2))


def test_first_mesh_id_wins() -> None:
    st = MeshState(ME, Role.CLIENT)
    st.ingest_gossip(pid(1), [info(1, mesh_id="first")], now=1)
    out = st.ingest_gossip(pid(2), [info(2, mesh_id="second")], now=2)
    assert st.mesh_id == "first" and out.adopted_mesh_id is None


def test_our_own_entry_is_ignored() -> None:
    st = MeshState(ME, Role.CLIENT)
    st.ingest_gossip(pid(1), [info(1), info(200, Role.CLIENT)], now=1)
    assert ME not in st.peers


def test_fresh_direct_info_beats_hearsay() -> None:
    st = MeshState(ME, Role.CLIENT)
    st.ingest_gossip(pid(1), [info(1, models=("a",))], now=10)
    st.ingest_gossip(pid(2), [info(1, models=("stale",)), info(2)], now=20)
    assert st.peers[pid(1)].info.served_models == ("a",)
    st.ingest_gossip(pid(2), [info(1, models=("new",)), info(2)], now=10 + STALE_SECS + 1)
    assert st.peers[pid(1)].info.served_models == ("new",)


def test_routable_models_only_from_admitted_hosts() -> None:
    st = MeshState(ME, Role.CLIENT)
    st.ingest_gossip(pid(1), [info(2, models=("a", "b")), info(3, Role.CLIENT), info(1, models=("a",))], now=1)
    # host 2 is only known through host 1: never routed to before our own gossip with it completed
    assert st.routable_models() == {"a": [pid(1)]}
    assert st.is_known_model("b", 1)  # ... but its model is known: 503 and retry, not 404
    st.ingest_gossip(pid(2), [info(2, models=("a", "b"))], now=2)
    routes = st.routable_models()
    assert sorted(routes) == ["a", "b"]
    assert sorted(routes["a"]) == [pid(1), pid(2)]
    assert st.hosts_for_model("a") == order_hosts([pid(1), pid(2)], ME)
    assert st.hosts_for_model("zzz") == []
    assert sorted(st.any_hosts()) == [pid(1), pid(2)]


def test_heartbeat_strikes_and_recent_direct_contact() -> None:
    st = MeshState(ME, Role.CLIENT)
    st.ingest_gossip(pid(1), [info(1)], now=0)
    assert not st.heartbeat_failed(pid(1), now=10)
    assert not st.heartbeat_failed(pid(1), now=20)  # two strikes, but heard directly < 180 s ago
    assert st.heartbeat_failed(pid(1), now=STALE_SECS + 1)
    st.touch(pid(1), now=200)
    assert st.peers[pid(1)].strikes == 0


def test_dead_peers_are_not_readded_by_gossip_until_the_ttl() -> None:
    st = MeshState(ME, Role.CLIENT)
    st.ingest_gossip(pid(1), [info(1), info(2)], now=0)
    assert st.remove(pid(2), now=10)
    st.ingest_gossip(pid(1), [info(1), info(2)], now=20)
    assert pid(2) not in st.peers
    st.ingest_gossip(pid(1), [info(1), info(2)], now=10 + DEAD_TTL_SECS)
    assert pid(2) in st.peers
    # a peer gossiping with us directly is alive whatever the dead list said
    st.remove(pid(1), now=400)
    st.ingest_gossip(pid(1), [info(1)], now=401)
    assert pid(1) in st.peers


def test_prune_after_360s_without_contact_or_mention() -> None:
    st = MeshState(ME, Role.CLIENT)
    st.ingest_gossip(pid(1), [info(1), info(2)], now=0)
    st.touch(pid(1), now=300)
    assert st.prune(now=PRUNE_SECS) == [pid(2)]
    assert list(st.peers) == [pid(1)]


def test_gossip_entries_skip_stale_peers_and_hearsay() -> None:
    st = MeshState(ME, Role.CLIENT)
    st.ingest_gossip(pid(1), [info(1), info(2)], now=0)
    st.ingest_gossip(pid(3), [info(3)], now=0)
    assert sorted(i.endpoint_id for i in st.gossip_entries(now=1)) == [pid(1), pid(3)]  # 2 is hearsay: not relayed
    st.touch(pid(1), now=STALE_SECS)
    assert [i.endpoint_id for i in st.gossip_entries(now=STALE_SECS + 1)] == [pid(1)]


def test_peer_down_reports_are_probed_only_without_recent_contact() -> None:
    st = MeshState(ME, Role.CLIENT)
    st.ingest_gossip(pid(1), [info(1), info(2)], now=0)
    assert not st.should_probe_peer_down(pid(1), now=10)  # heard directly
    assert st.should_probe_peer_down(pid(2), now=10)  # only hearsay
    assert not st.should_probe_peer_down(ME, now=10)
    assert not st.should_probe_peer_down(pid(7), now=10)


def test_demand_counts_and_merges_by_max() -> None:
    st = MeshState(ME, Role.CLIENT)
    st.note_models(["m"], now=99)
    st.record_request("typo", now=100)  # a name never seen in the mesh is not demand
    st.record_request("m", now=100)
    st.record_request("m", now=105)
    st.record_request("auto", now=105)
    st.record_request(None, now=105)
    assert [(d.model_name, d.request_count, d.last_active) for d in st.live_demand(106)] == [("m", 2, 105)]
    st.ingest_gossip(pid(1), [info(1, demand=(DemandEntry("m", 90, 7), DemandEntry("x", 200, 1)))], now=110)
    d = {e.model_name: e for e in st.demand.values()}
    assert (d["m"].request_count, d["m"].last_active) == (7, 105)
    assert d["x"].request_count == 1
    assert st.live_demand(200 + 86_400) == []


def test_demand_and_known_models_are_bounded() -> None:
    from meshd.mesh.state import MAX_DEMAND_ENTRIES, MAX_KNOWN_MODELS

    st = MeshState(ME, Role.CLIENT)
    huge = "x" * 600
    flood = (*(DemandEntry(f"m{i}", 1000 + i, 1) for i in range(3 * MAX_DEMAND_ENTRIES)), DemandEntry(huge, 5000, 9))
    st.ingest_gossip(pid(1), [info(1, demand=flood)], now=10)
    assert len(st.demand) <= MAX_DEMAND_ENTRIES and huge not in st.demand
    st.note_models([f"k{i}" for i in range(MAX_KNOWN_MODELS + 50)] + [huge], now=1)
    assert len(st.known_models) == MAX_KNOWN_MODELS and huge not in st.known_models
    assert st.is_known_model(f"k{MAX_KNOWN_MODELS + 49}", 2) and not st.is_known_model("k0", 2)


def test_version_bumps_on_visible_change_only() -> None:
    st = MeshState(ME, Role.CLIENT)
    v0 = st.version
    st.ingest_gossip(pid(1), [info(1)], now=0)
    v1 = st.version
    assert v1 > v0
    st.ingest_gossip(pid(1), [info(1)], now=1)
    assert st.version == v1


def test_fnv1a64_known_values_and_sticky_rotation() -> None:
    from meshd.mesh.state import fnv1a64, sticky_order

    assert fnv1a64(b"") == 0xCBF29CE484222325  # the offset basis
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C  # published FNV-1a 64 test vector
    hosts = [pid(1), pid(2), pid(3)]
    assert sticky_order(hosts, None) == hosts
    k = fnv1a64(b"alice") % 3
    assert sticky_order(hosts, "alice") == hosts[k:] + hosts[:k]
    assert sticky_order(hosts, "alice") == sticky_order(hosts, "alice")
    firsts = {sticky_order(hosts, f"user-{i}")[0] for i in range(30)}
    assert firsts == set(hosts)  # different users spread over the hosts


def test_version_floor_refuses_old_direct_peers_and_drops_old_hearsay() -> None:
    st = MeshState(ME, Role.CLIENT)
    out = st.ingest_gossip(pid(1), [info(2, version="0.59.9"), info(1, version="0.59.0")], now=1)
    assert out.refused is not None and "0.59.0" in out.refused
    assert pid(1) not in st.peers and pid(2) not in st.peers  # neither admitted nor kept as hearsay
    out = st.ingest_gossip(pid(1), [info(2, version="0.76.0-rc6"), info(1, version="0.76.0+meshd.0.1.0")], now=2)
    assert out.refused is None and st.is_admitted(pid(1)) and pid(2) in st.peers


def test_a_frame_of_fake_peers_is_bounded_and_never_routed_to() -> None:
    from meshd.mesh.state import MAX_ENTRIES_PER_FRAME, MAX_UNADMITTED_PEERS

    st = MeshState(ME, Role.CLIENT)
    template = info(5, models=("tiny",))
    fakes = [attrs.evolve(template, endpoint_id=i.to_bytes(32, "big")) for i in range(1000, 4000)]
    st.ingest_gossip(pid(1), [*fakes, info(1, models=("tiny",))], now=1)
    assert st.unadmitted_count() <= min(MAX_ENTRIES_PER_FRAME, MAX_UNADMITTED_PEERS)
    assert st.hosts_for_model("tiny") == [pid(1)]  # hearsay hosts are not routed to
    st.ingest_gossip(pid(2), [*fakes[500:], info(2, models=("tiny",))], now=2)
    assert st.unadmitted_count() <= MAX_UNADMITTED_PEERS and st.is_admitted(pid(2))


def test_dial_backoff_doubles_and_resets() -> None:
    from meshd.mesh.state import DIAL_BACKOFF_MAX_SECS, DialBook

    book = DialBook(max_entries=3)
    assert book.may_dial(pid(1), 0)
    assert book.failed(pid(1), 0) == 5.0
    assert not book.may_dial(pid(1), 4.9) and book.may_dial(pid(1), 5.0)
    assert book.failed(pid(1), 5) == 15.0  # 10 s after the second failure
    for _ in range(20):
        last = book.failed(pid(1), 100)
    assert last == 100 + DIAL_BACKOFF_MAX_SECS
    book.succeeded(pid(1))
    assert book.may_dial(pid(1), 100)
    for n in range(2, 10):
        book.failed(pid(n), 0)
    assert len(book) == 3  # bounded


def test_route_order_prefers_live_connections_and_avoids_the_silent() -> None:
    from meshd.mesh.state import route_order

    hosts = [pid(1), pid(2), pid(3), pid(4)]
    assert route_order(hosts, connected={pid(3)}, suspect={pid(1)}) == [pid(3), pid(2), pid(4)]
    assert route_order([pid(1)], connected=set(), suspect={pid(1)}) == [pid(1)]  # the only one: still tried


def at(n: int, role: Role = Role.HOST, *, ip: bool = True, relay: bool = False) -> PeerInfo:
    """A peer's own entry with a direct address, a relay URL, both or neither."""
    addr = EndpointAddr(
        pid(n),
        ip_addrs=[(f"10.0.0.{n}", 4433)] if ip else [],
        relay_urls=["https://relay.example/"] if relay else [],
    )
    return attrs.evolve(info(n, role), addr=addr)


def test_reachable_needs_a_direct_address_or_a_relay_we_use() -> None:
    from meshd.mesh.state import reachable

    assert reachable(at(1).addr, relays=False)
    assert not reachable(at(2, ip=False, relay=True).addr, relays=False)
    assert reachable(at(2, ip=False, relay=True).addr, relays=True)
    assert not reachable(at(3, ip=False).addr, relays=True)


def test_heartbeat_targets_are_the_linked_and_the_reachable_we_talk_to() -> None:
    import random

    st = MeshState(ME, Role.CLIENT)
    st.ingest_gossip(pid(1), [at(1), at(2, Role.CLIENT), at(3, ip=False, relay=True), at(4, ip=False)], now=1)
    st.ingest_gossip(pid(5), [at(5, Role.CLIENT)], now=1)  # a client that dialled us: we have its connection
    rng = random.Random(0)
    # a client gossips with hosts it can reach, not with other clients, unless there is a connection already
    assert sorted(st.heartbeat_targets({pid(5)}, relays=False, rng=rng)) == [pid(1), pid(5)]
    assert sorted(st.heartbeat_targets(set(), relays=True, rng=rng)) == [pid(1), pid(3)]
    host = MeshState(ME, Role.HOST)
    host.ingest_gossip(pid(2), [at(2, Role.CLIENT)], now=1)
    assert host.heartbeat_targets(set(), relays=False, rng=rng) == [pid(2)]  # a host talks to clients


def test_heartbeat_targets_are_a_sample_of_five_when_there_are_more() -> None:
    import random

    st = MeshState(ME, Role.HOST)
    for n in range(1, 13):
        st.ingest_gossip(pid(n), [at(n)], now=1)
    picks = [set(st.heartbeat_targets(set(), relays=False, rng=random.Random(seed))) for seed in range(20)]
    assert all(len(p) == 5 and p <= set(st.peers) for p in picks)
    assert len({frozenset(p) for p in picks}) > 1  # the sample changes with the random source
    again = [set(st.heartbeat_targets(set(), relays=False, rng=random.Random(seed))) for seed in range(20)]
    assert again == picks  # and only with it


def test_dial_candidates_skip_the_busy_the_backed_off_clients_and_the_unreachable() -> None:
    from meshd.mesh.state import DialBook

    st = MeshState(ME, Role.CLIENT)
    st.ingest_gossip(pid(9), [at(9), at(1), at(2), at(3, Role.CLIENT), at(4, ip=False, relay=True), at(5)], now=1)
    dials = DialBook()
    dials.failed(pid(5), now=1)  # backed off until 6
    ids = [e.endpoint_id for e in st.dial_candidates(2, skip={pid(9), pid(2)}, dials=dials, relays=False)]
    assert ids == [pid(1)]
    ids = [e.endpoint_id for e in st.dial_candidates(6, skip={pid(9)}, dials=dials, relays=True)]
    assert ids == [pid(1), pid(2), pid(4), pid(5)]  # table order


def test_redial_target_and_alone() -> None:
    st = MeshState(ME, Role.CLIENT)
    assert st.alone()
    st.ingest_gossip(pid(1), [at(1)], now=1)
    st.ingest_gossip(pid(2), [at(2, Role.CLIENT)], now=1)
    assert not st.alone()
    assert st.redial_target(pid(1)) == at(1).addr
    assert st.redial_target(pid(2)) is None  # a client does not dial a client back
    assert st.redial_target(pid(7)) is None  # forgotten
    st.remove(pid(1), now=2)
    st.remove(pid(2), now=2)
    assert st.alone()


def test_set_mesh_id_says_whether_it_changed() -> None:
    st = MeshState(ME, Role.HOST)
    version = st.version
    assert st.set_mesh_id("a" * 32) and st.mesh_id == "a" * 32 and st.version == version + 1
    assert not st.set_mesh_id("a" * 32) and st.version == version + 1
    assert st.set_mesh_id("b" * 32) and st.mesh_id == "b" * 32


def test_local_models_are_known_models_and_requests_are_counted() -> None:
    st = MeshState(ME, Role.HOST)
    version = st.version
    st.set_local_models(["tiny"], now=10)
    assert st.local_models == ("tiny",) and st.is_known_model("tiny", 11) and st.version == version + 1
    st.set_local_models(("tiny",), now=20)
    assert st.version == version + 1  # nothing changed
    st.set_local_models((), now=30)
    assert st.local_models == () and st.is_known_model("tiny", 31)  # still a name seen served
    st.request_started()
    st.request_started()
    st.request_finished()
    assert st.inflight_requests == 1
    st.request_finished()
    st.request_finished()  # one finish too many never goes below zero
    assert st.inflight_requests == 0
