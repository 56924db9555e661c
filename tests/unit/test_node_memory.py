"""Two and three real Nodes over an in-memory network on one Clock (tests/unit/node_world.py): joining by
token, gossip and admission, PEER_LEAVING and PEER_DOWN, heartbeats and dead peers, rejoining while alone,
and a host failover as the client's routing sees it. No sockets; every wait is clock time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.python.failure import Failure

from meshd.config import Role
from meshd.control import STREAM_PROTOCOL_ERROR
from meshd.mesh.state import DEAD_TTL_SECS, order_hosts, route_order
from meshd.node import (
    ALONE_REJOIN_INTERVAL,
    HEARTBEAT_INTERVAL,
    JOIN_TIMEOUT,
    REDIAL_TIMEOUT,
    REJOIN_INTERVAL,
    SAVE_LAST_MESH_DELAY,
    SILENT_PEER_SECS,
    JoinError,
    Node,
    NodeState,
)
from meshd.protocol import node_pb2
from meshd.protocol.framing import encode_stream_type
from meshd.protocol.peers import Role as PeerRole
from meshd.protocol.peers import (
    build_gossip_frame,
    build_peer_down,
    build_peer_leaving,
    build_self_announcement,
    direct_entry,
)
from meshd.protocol.requirements import MeshRequirementState, SignedBootstrapToken
from meshd.protocol.streams import StreamType
from meshd.protocol.token import EndpointAddr, encode_token
from meshd.quic import StreamReset
from meshd.quic.testing import RecordingReceiver

from .node_world import RawPeer, World
from .test_protocol_requirements import make_owner, signed_policy


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.stop_all()


def id_of(node: Node) -> bytes:
    return node.identity.public_bytes


def joined_pair(world: World) -> tuple[Node, Node]:
    host = world.node(Role.HOST, models=("tiny",))
    client = world.node(Role.CLIENT, [host.token or ""])
    world.run_until(lambda: client.state is NodeState.JOINED and host.mesh.is_admitted(id_of(client)), 5)
    return host, client


def two_hosts(world: World) -> tuple[Node, Node]:
    host1 = world.node(Role.HOST, models=("tiny",))
    host2 = world.node(Role.HOST, [host1.token or ""], models=("tiny",))
    world.run_until(lambda: host1.mesh.is_admitted(id_of(host2)) and host2.mesh.is_admitted(id_of(host1)), 5)
    return host1, host2


def test_a_client_joins_a_host_by_token(world: World) -> None:
    host = world.node(Role.HOST, models=("tiny",))
    assert host.state is NodeState.STANDALONE and host.mesh_id is not None  # a host starts its own mesh
    assert (world.state_dir(host.identity) / "mesh-id").read_text() == host.mesh_id
    client = world.node(Role.CLIENT, [host.token or ""])
    assert client.state is NodeState.JOINING and client.mesh_id is None
    world.run_until(lambda: client.state is NodeState.JOINED, 5)
    # one gossip exchange admitted each side to the other, and lifted the QUIC layer's pre-admission bounds
    assert client.mesh.is_admitted(id_of(host)) and host.mesh.is_admitted(id_of(client))
    assert host.state is NodeState.JOINED
    assert client.conns[id_of(host)].admitted and host.conns[id_of(client)].admitted
    assert client.mesh.hosts_for_model("tiny") == [id_of(host)]
    assert host.mesh.peers[id_of(client)].info.role is PeerRole.CLIENT
    assert host.mesh.hosts() == []  # a client is no host
    # the client took the host's mesh id, and keeps it in last-mesh a few seconds later
    assert client.mesh_id == host.mesh_id
    last_mesh = world.state_dir(client.identity) / "last-mesh"
    assert not last_mesh.exists()
    world.run(SAVE_LAST_MESH_DELAY + 0.5)
    assert last_mesh.read_text() == host.mesh_id


def test_a_token_nobody_answers_leaves_the_node_standalone_and_retrying(world: World) -> None:
    nobody = EndpointAddr(world.identity().public_bytes, ip_addrs=[("10.9.9.9", 4433)])  # nothing there
    client = world.node(Role.CLIENT, [encode_token(nobody)])
    started = client.now()
    seen: list[tuple[float, NodeState]] = []
    client.add_listener(lambda: seen.append((client.now() - started, client.state)))
    world.run(JOIN_TIMEOUT + 1)
    # at the join's deadline (connect plus gossip, as mesh-llm 0.76) the node is on its own ...
    failed_at = [t for t, state in seen if state is NodeState.STANDALONE]
    assert failed_at and JOIN_TIMEOUT <= failed_at[0] < JOIN_TIMEOUT + 1
    # ... and keeps trying every 10 s while alone (each try shows as joining)
    assert seen[-1][1] is NodeState.JOINING
    assert client.mesh.peers == {} and client.connected_ids() == set()


def test_a_signed_token_leads_into_a_gated_mesh_whose_members_check_each_other(world: World) -> None:
    host = world.node(Role.HOST, models=("tiny",))
    owner = make_owner()
    here = EndpointAddr(id_of(host), ip_addrs=[world.address_of(host)])
    signed = SignedBootstrapToken.sign(
        [here.to_json().encode()], signed_policy(owner), owner, expires_at_unix_ms=host.now_ms() + 3_600_000
    )
    host.admission.enter_gated_mesh(MeshRequirementState.from_token(signed))  # the mesh's first member
    assert host.mesh_id == signed.mesh_id
    client = world.node(Role.CLIENT, [signed.encode()])
    world.run_until(lambda: client.state is NodeState.JOINED, 5)
    # the client took the mesh's rules from the token; each side checked the other's admission proof
    requirements = client.admission.requirements
    assert requirements is not None and requirements.mesh_id == signed.mesh_id == client.mesh_id
    assert host.mesh.is_admitted(id_of(client)) and client.mesh.hosts_for_model("tiny") == [id_of(host)]
    assert client.admission.rejections == [] and host.admission.rejections == []
    # a node given a plain token to the same host sends no proof: no reply, not admitted
    outsider = world.node(Role.CLIENT, [host.token or ""])
    world.run(5)
    assert outsider.state is not NodeState.JOINED and id_of(outsider) not in host.mesh.peers
    (refused,) = host.admission.rejections
    assert refused["source"] == "gossip" and refused["peer_id"] == outsider.identity.endpoint_id
    # and a token into another gated mesh is refused by a node already in one
    other = make_owner()
    elsewhere = SignedBootstrapToken.sign(
        [here.to_json().encode()], signed_policy(other), other, expires_at_unix_ms=host.now_ms() + 3_600_000
    )
    failure = world.result(client.join(elsewhere.encode()))
    assert isinstance(failure, Failure) and failure.check(JoinError)
    assert client.mesh_id == signed.mesh_id


def test_a_peer_mentioned_by_another_is_known_not_admitted_until_its_own_gossip(world: World) -> None:
    host1, host2 = two_hosts(world)
    address = world.address()
    world.cut(address, host2)  # the client cannot reach host2 for now
    client = world.node(Role.CLIENT, [host1.token or ""], address=address)
    world.run_until(lambda: client.state is NodeState.JOINED, 5)
    world.run(REDIAL_TIMEOUT + 1)  # its dial of host2 timed out
    assert id_of(host2) in client.mesh.peers and not client.mesh.is_admitted(id_of(host2))
    assert client.mesh.hosts_for_model("tiny") == [id_of(host1)]  # hearsay is never routed to
    assert id_of(host2) not in client.connected_ids()
    world.heal()
    # the next heartbeat dials host2 and gossips with it: now both admit each other
    took = world.run_until(lambda: client.mesh.is_admitted(id_of(host2)), HEARTBEAT_INTERVAL)
    assert took > 30  # by the heartbeat, not at once
    assert sorted(client.mesh.hosts_for_model("tiny")) == sorted([id_of(host1), id_of(host2)])
    assert host2.mesh.is_admitted(id_of(client))


def test_a_076_responder_sends_nothing_back_to_a_frame_without_the_senders_own_entry(world: World) -> None:
    host = world.node(Role.HOST, models=("tiny",))
    peer, other = RawPeer(world), RawPeer(world)
    peer.connect(host)
    frame = node_pb2.GossipFrame(gen=1, sender_id=peer.id)
    frame.peers.append(other.own_entry())  # someone else's entry only
    refused = peer.gossip(frame)
    assert isinstance(refused, Failure) and refused.check(StreamReset)
    assert refused.value.error_code == STREAM_PROTOCOL_ERROR
    assert peer.id not in host.mesh.peers and other.id not in host.mesh.peers  # nothing of it was applied
    # the same peer with its own entry is answered, and admitted
    reply = peer.gossip(build_gossip_frame(peer.id, peer.own_entry(), [other.own_entry()]))
    assert isinstance(reply, node_pb2.GossipFrame) and direct_entry(reply, id_of(host)) is not None
    assert host.mesh.is_admitted(peer.id)
    assert other.id in host.mesh.peers and not host.mesh.is_admitted(other.id)  # what it said of others: hearsay


def test_the_stream_table_serves_what_was_registered_and_obeys_the_pre_admission_rule(world: World) -> None:
    """0.76's default trust policy: an unadmitted peer may open TUNNEL_HTTP, but its PEER_LEAVING is dropped
    unread; a type nobody registered is dropped the same way (our side finished, nothing answered)."""
    host, client = joined_pair(world)
    host.streams.register(StreamType.TUNNEL_HTTP, lambda conn, stream: RecordingReceiver(stream, echo=True))
    peer = RawPeer(world)
    conn = peer.connect(host)

    def exchange(data: bytes) -> bytes:
        stream = conn.open_stream()
        got = RecordingReceiver()
        stream.set_receiver(got)
        stream.write(data)
        stream.loseWriteConnection()
        return bytes(world.result(got.done))

    assert exchange(encode_stream_type(StreamType.TUNNEL_HTTP) + b"hello") == b"hello"  # unadmitted: served
    peer.send(StreamType.PEER_LEAVING, build_peer_leaving(peer.id))
    world.run(1)
    assert conn.is_connected  # unadmitted: not obeyed
    assert isinstance(peer.gossip(), node_pb2.GossipFrame) and host.mesh.is_admitted(peer.id)
    peer.send(StreamType.PEER_LEAVING, build_peer_leaving(peer.id))
    world.run(1)
    assert not conn.is_connected and peer.id not in host.mesh.peers  # admitted: obeyed
    conn = peer.connect(client)
    assert exchange(encode_stream_type(StreamType.TUNNEL_HTTP) + b"hello") == b""  # a client serves no tunnels
    assert host.serves_locally("tiny") and not host.serves_locally("other") and not client.serves_locally(None)
    # the host's own API reaches the same handler through an in-memory pipe
    near = host.open_local_tunnel()
    local = RecordingReceiver()
    near.set_receiver(local)
    near.write(b"local")
    near.loseWriteConnection()
    assert world.result(local.done) == b"local"


def test_peer_leaving_removes_the_peer_at_once_and_stale_gossip_does_not_bring_it_back(world: World) -> None:
    host1, host2 = two_hosts(world)
    client = world.node(Role.CLIENT, [host1.token or ""])
    world.run_until(lambda: len(client.mesh.hosts_for_model("tiny")) == 2, 5)
    stopping = host2.stopService()
    world.run(0.1)  # PEER_LEAVING arrives; host2 closes its connections only after a 0.2 s flush
    for node in (host1, client):
        assert id_of(host2) not in node.mesh.peers
        assert node.mesh.recently_dead(id_of(host2), node.now())
    assert client.mesh.hosts_for_model("tiny") == [id_of(host1)]
    world.result(stopping)
    assert id_of(host2) not in client.connected_ids() and id_of(host2) not in host1.connected_ids()
    world.result(client.heartbeat())  # gossip with host1, which may still have heard of host2
    assert id_of(host2) not in client.mesh.peers
    assert client.state is NodeState.JOINED


def test_peer_down_is_ignored_for_a_live_peer_and_probed_for_one_heard_of_only(world: World) -> None:
    host, client = joined_pair(world)
    peer = RawPeer(world)
    peer.connect(host)
    peer.send(StreamType.PEER_DOWN, build_peer_down(id_of(client)))  # not admitted: the stream is dropped
    world.run(6)
    assert host.mesh.is_admitted(id_of(client))
    ghost = EndpointAddr(world.identity().public_bytes, ip_addrs=[("10.9.9.9", 4433)])  # nothing there
    ghost_entry = build_self_announcement(
        addr=ghost, version="0.76.0", role=PeerRole.HOST, http_port=9337, hosted_models=("tiny",)
    )
    assert isinstance(peer.gossip(build_gossip_frame(peer.id, peer.own_entry(), [ghost_entry])), node_pb2.GossipFrame)
    assert ghost.id in host.mesh.peers and host.mesh.is_admitted(peer.id)
    heard = client.mesh.peers[id_of(host)].last_direct
    peer.send(StreamType.PEER_DOWN, build_peer_down(id_of(client)))  # the host heard from the client itself
    world.run(6)
    assert host.mesh.is_admitted(id_of(client)) and id_of(client) in host.connected_ids()
    assert client.mesh.peers[id_of(host)].last_direct == heard  # not even probed: nothing came to the client
    peer.send(StreamType.PEER_DOWN, build_peer_down(ghost.id))  # probed: no answer, so removed
    world.run_until(lambda: ghost.id not in host.mesh.peers, REDIAL_TIMEOUT + 1)
    assert host.mesh.recently_dead(ghost.id, host.now())
    assert host.mesh.hosts_for_model("tiny") == []  # the ghost never was routable


def test_a_peer_that_fails_two_heartbeats_is_dead_and_reported_down(world: World) -> None:
    host1, host2 = two_hosts(world)
    address = world.address()
    world.cut(address, host2)
    client = world.node(Role.CLIENT, [host1.token or ""], address=address)
    world.run_until(lambda: client.state is NodeState.JOINED, 5)
    assert id_of(host2) in client.mesh.peers
    took = world.run_until(lambda: id_of(host2) not in client.mesh.peers, 3 * HEARTBEAT_INTERVAL)
    # two heartbeats failed (at 60 s and 120 s, each after a 10 s dial), not one
    assert 2 * HEARTBEAT_INTERVAL < took <= 2 * HEARTBEAT_INTERVAL + REDIAL_TIMEOUT + 1
    assert client.mesh.recently_dead(id_of(host2), client.now())
    # the client told host1 (PEER_DOWN); host1 heard from host2 itself lately and keeps it
    world.run(1)
    assert host1.mesh.is_admitted(id_of(host2))
    # host1's gossip still mentions host2: the client does not take it back while it is dead to it
    world.result(client.heartbeat())
    assert id_of(host2) not in client.mesh.peers
    world.run(DEAD_TTL_SECS)
    world.heal()
    assert client.state is NodeState.JOINED


def test_a_client_alone_rejoins_its_token_when_the_host_comes_back(world: World) -> None:
    identity = world.identity()
    host = world.node(Role.HOST, models=("tiny",), identity=identity)
    address = world.address_of(host)
    client = world.node(Role.CLIENT, [host.token or ""])
    world.run_until(lambda: client.state is NodeState.JOINED, 5)
    mesh_id = client.mesh_id
    world.stop(host)
    assert client.state is NodeState.STANDALONE and client.mesh.peers == {}
    world.run(2 * ALONE_REJOIN_INTERVAL)  # tries every 10 s while alone; nobody answers yet
    assert client.state is not NodeState.JOINED
    again = world.node(Role.HOST, models=("tiny",), identity=identity, address=address)
    took = world.run_until(lambda: client.state is NodeState.JOINED, 40)
    assert took < 40 and client.mesh.hosts_for_model("tiny") == [id_of(again)]
    assert again.mesh_id == mesh_id == client.mesh_id  # the same host keeps its mesh's id (state-dir mesh-id)


def test_a_crashed_host_is_a_last_resort_then_leaves_the_routes_then_comes_back(world: World) -> None:
    host1, host2 = two_hosts(world)
    me = world.identity()
    first, second = order_hosts([id_of(host1), id_of(host2)], me.public_bytes)
    lead = host1 if first == id_of(host1) else host2
    client = world.node(Role.CLIENT, [lead.token or ""], identity=me)

    def routes() -> list[bytes]:
        return route_order(client.mesh.hosts_for_model("tiny"), client.connected_ids(), client.suspect_ids())

    world.run_until(lambda: len(client.mesh.hosts_for_model("tiny")) == 2, 5)
    assert routes() == [first, second]
    world.crash(lead)
    took = world.run_until(lambda: routes() == [second], SILENT_PEER_SECS + 3)
    assert took > SILENT_PEER_SECS - 2  # its connection was closed for silence (PINGs every 5 s)
    # still known while its redial is under way, but a suspect: tried only if no other host were left
    assert first in client.mesh.peers and client.suspect_ids() == {first}
    assert route_order([first], client.connected_ids(), client.suspect_ids()) == [first]
    world.run_until(lambda: first not in client.mesh.peers, REDIAL_TIMEOUT + 1)
    assert routes() == [second] and client.state is NodeState.JOINED
    world.heal()
    # joined through that host's token: the 60 s rejoin finds it again
    world.run_until(lambda: routes() == [first, second], REJOIN_INTERVAL + ALONE_REJOIN_INTERVAL)
    assert client.state is NodeState.JOINED
