"""Validation of decoded control messages (MESH_PROTOCOL.md §5.3, MESH_PROTOCOL_076.md §4.3)."""

from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.protocol import node_pb2
from meshd.protocol.errors import (
    BadGeneration,
    ForgedSender,
    InvalidFrame,
    InvalidIdLength,
    InvalidSubprotocol,
    MalformedMessage,
    MissingHttpPort,
)
from meshd.protocol.keys import is_valid_ed25519_point
from meshd.protocol.validate import (
    check_gossip_sender,
    decode_direct_path_request,
    decode_gossip_frame,
    decode_peer_down,
    decode_peer_leaving,
    decode_route_table,
    decode_route_table_request,
    decode_subprotocol_open,
    decode_tunnel_map,
    valid_point_announcements,
)


def key(seed: int) -> bytes:
    private = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


A, B, C = key(1), key(2), key(3)


def gossip(**kwargs: object) -> node_pb2.GossipFrame:
    frame = node_pb2.GossipFrame(gen=1, sender_id=A)
    frame.peers.add(endpoint_id=A, role=node_pb2.CLIENT)
    for name, value in kwargs.items():
        setattr(frame, name, value)
    return frame


def test_good_gossip_frame() -> None:
    frame = gossip()
    frame.peers.add(endpoint_id=B, role=node_pb2.HOST, http_port=9337)
    decoded = decode_gossip_frame(frame.SerializeToString(), remote_id=A)
    assert decoded == frame


def test_gossip_generation_2_rejected() -> None:
    with pytest.raises(BadGeneration) as info:
        decode_gossip_frame(gossip(gen=2).SerializeToString())
    assert (info.value.got, info.value.expected) == (2, 1)


def test_all_default_gossip_frame_is_generation_0() -> None:
    with pytest.raises(BadGeneration) as info:
        decode_gossip_frame(b"")
    assert info.value.got == 0


def test_gossip_31_byte_sender() -> None:
    with pytest.raises(InvalidIdLength) as info:
        decode_gossip_frame(gossip(sender_id=A[:31]).SerializeToString())
    assert (info.value.field, info.value.got) == ("sender_id", 31)


@pytest.mark.parametrize("length", [0, 31, 33])
def test_gossip_bad_announcement_id_rejects_the_whole_frame(length: int) -> None:
    frame = gossip()
    frame.peers.add(endpoint_id=bytes(length), role=node_pb2.WORKER)
    with pytest.raises(InvalidIdLength) as info:
        decode_gossip_frame(frame.SerializeToString())
    assert (info.value.field, info.value.got) == ("endpoint_id", length)


def test_host_without_http_port() -> None:
    frame = gossip()
    frame.peers.add(endpoint_id=B, role=node_pb2.HOST)
    with pytest.raises(MissingHttpPort) as info:
        decode_gossip_frame(frame.SerializeToString())
    assert info.value.endpoint_id == B


def test_host_with_explicit_port_zero_is_present() -> None:
    frame = gossip()
    frame.peers.add(endpoint_id=B, role=node_pb2.HOST, http_port=0)
    decode_gossip_frame(frame.SerializeToString())


def test_non_host_may_omit_port() -> None:
    frame = gossip()
    frame.peers.add(endpoint_id=B, role=node_pb2.WORKER)
    frame.peers.add(endpoint_id=C, role=node_pb2.NODE_ROLE_UNSPECIFIED)
    decode_gossip_frame(frame.SerializeToString())


def test_sender_must_be_the_tls_identity() -> None:
    body = gossip().SerializeToString()
    with pytest.raises(ForgedSender) as info:
        decode_gossip_frame(body, remote_id=B)
    assert (info.value.claimed, info.value.remote) == (A, B)
    check_gossip_sender(decode_gossip_frame(body), A)
    with pytest.raises(ForgedSender):
        check_gossip_sender(decode_gossip_frame(body), B)


def test_malformed_protobuf() -> None:
    # Field 3 (LEN) claiming 5 bytes with only 2 present.
    with pytest.raises(MalformedMessage) as info:
        decode_gossip_frame(bytes([0x1A, 0x05, 0x00, 0x00]))
    assert info.value.message_type == "GossipFrame"
    assert isinstance(info.value, InvalidFrame)


def test_invalid_utf8_string_is_malformed() -> None:
    # RouteEntry.model (field 2, string) = b"\xff" inside RouteTable.entries.
    entry = bytes([0x0A, 0x20]) + A + bytes([0x12, 0x01, 0xFF])
    body = bytes([0x0A, len(entry)]) + entry + bytes([0x18, 0x01])
    with pytest.raises(MalformedMessage):
        decode_route_table(body)


def test_route_table_request() -> None:
    assert decode_route_table_request(bytes([0x10, 0x01])).requester_id == b""
    ok = node_pb2.RouteTableRequest(requester_id=A, gen=1).SerializeToString()
    assert decode_route_table_request(ok).requester_id == A
    with pytest.raises(BadGeneration):
        decode_route_table_request(node_pb2.RouteTableRequest(requester_id=A, gen=2).SerializeToString())
    with pytest.raises(InvalidIdLength):
        decode_route_table_request(node_pb2.RouteTableRequest(requester_id=A[:31], gen=1).SerializeToString())


def test_route_table() -> None:
    table = node_pb2.RouteTable(gen=1, mesh_id="m1")
    table.entries.add(endpoint_id=A, model="qwen")
    assert decode_route_table(table.SerializeToString()) == table
    table.entries.add(endpoint_id=B[:31], model="x")
    with pytest.raises(InvalidIdLength):
        decode_route_table(table.SerializeToString())
    with pytest.raises(BadGeneration):
        decode_route_table(node_pb2.RouteTable(gen=2).SerializeToString())


def test_peer_down() -> None:
    assert decode_peer_down(node_pb2.PeerDown(peer_id=C, gen=1).SerializeToString()).peer_id == C
    with pytest.raises(BadGeneration):
        decode_peer_down(node_pb2.PeerDown(peer_id=C, gen=2).SerializeToString())
    with pytest.raises(InvalidIdLength):
        decode_peer_down(node_pb2.PeerDown(peer_id=C[:31], gen=1).SerializeToString())


def test_peer_leaving() -> None:
    body = node_pb2.PeerLeaving(peer_id=A, gen=1).SerializeToString()
    assert decode_peer_leaving(body, remote_id=A).peer_id == A
    with pytest.raises(ForgedSender):
        decode_peer_leaving(body, remote_id=B)
    with pytest.raises(BadGeneration):
        decode_peer_leaving(node_pb2.PeerLeaving(peer_id=A, gen=2).SerializeToString(), remote_id=A)
    with pytest.raises(InvalidIdLength):
        decode_peer_leaving(node_pb2.PeerLeaving(peer_id=A[:31], gen=1).SerializeToString(), remote_id=A)


def test_tunnel_map() -> None:
    tmap = node_pb2.TunnelMap(owner_peer_id=A)
    tmap.entries.add(target_peer_id=B, tunnel_port=65535)
    tmap.entries.add(target_peer_id=C, relay_peer_id=B, tunnel_port=1)
    assert decode_tunnel_map(tmap.SerializeToString(), remote_id=A) == tmap
    with pytest.raises(ForgedSender):
        decode_tunnel_map(tmap.SerializeToString(), remote_id=B)
    with pytest.raises(InvalidIdLength):
        decode_tunnel_map(node_pb2.TunnelMap(owner_peer_id=A[:31]).SerializeToString(), remote_id=A)
    bad_port = node_pb2.TunnelMap(owner_peer_id=A)
    bad_port.entries.add(target_peer_id=B, tunnel_port=65536)
    with pytest.raises(InvalidFrame, match="65536"):
        decode_tunnel_map(bad_port.SerializeToString(), remote_id=A)
    bad_target = node_pb2.TunnelMap(owner_peer_id=A)
    bad_target.entries.add(target_peer_id=B[:31], tunnel_port=1)
    with pytest.raises(InvalidIdLength):
        decode_tunnel_map(bad_target.SerializeToString(), remote_id=A)


# --- Ed25519 point validity --------------------------------------------------------------
# An independent oracle: RFC 8032 §5.1.3 decoding via the (p+3)/8 square-root candidate, with
# y reduced mod p (ed25519-dalek does not reject non-canonical y).
P = 2**255 - 19
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def oracle_decompresses(data: bytes) -> bool:
    y = (int.from_bytes(data, "little") & ((1 << 255) - 1)) % P
    u = (y * y - 1) % P
    v = (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if v * x * x % P == u:
        return True
    return v * x * x % P == (-u) % P


def test_point_check_agrees_with_rfc8032_decoding() -> None:
    rng = random.Random(20260430)
    verdicts = set()
    for _ in range(400):
        data = rng.randbytes(32)
        verdict = is_valid_ed25519_point(data)
        assert verdict == oracle_decompresses(data)
        verdicts.add(verdict)
    assert verdicts == {True, False}


def test_real_keys_are_valid_points() -> None:
    assert all(is_valid_ed25519_point(key(seed)) for seed in range(1, 40))


def test_non_canonical_y_accepted_like_dalek() -> None:
    # y = p + 1 encodes the same point as y = 1 (x = 0); sign bit set on x = 0 also passes.
    assert is_valid_ed25519_point((P + 1).to_bytes(32, "little"))
    assert is_valid_ed25519_point((1 | (1 << 255)).to_bytes(32, "little"))
    assert not is_valid_ed25519_point(A[:31])


def test_entries_with_invalid_points_are_dropped() -> None:
    rng = random.Random(7)
    bad = next(b for b in (rng.randbytes(32) for _ in range(1000)) if not oracle_decompresses(b))
    frame = gossip()
    frame.peers.add(endpoint_id=bad, role=node_pb2.WORKER)
    frame.peers.add(endpoint_id=B, role=node_pb2.WORKER)
    decoded = decode_gossip_frame(frame.SerializeToString(), remote_id=A)
    assert [p.endpoint_id for p in valid_point_announcements(decoded.peers)] == [A, B]


# ---- 0.76 (MESH_PROTOCOL_076.md §4.3) ----


@pytest.mark.parametrize(("name", "major"), [("", 1), ("  \t", 2), ("\u3000", 1), ("skippy-stage", 0)])
def test_a_bad_subprotocol_rejects_the_whole_frame(name: str, major: int) -> None:
    frame = gossip()
    frame.peers.add(endpoint_id=B, role=node_pb2.CLIENT)  # a second, otherwise fine entry
    frame.peers[1].subprotocols.add(name="skippy-stage", major=2, features=["stage-control"])
    frame.peers[1].subprotocols.add(name=name, major=major)
    with pytest.raises(InvalidSubprotocol) as info:
        decode_gossip_frame(frame.SerializeToString())
    assert (info.value.name, info.value.major) == (name, major)


def test_good_subprotocols_accepted() -> None:
    frame = gossip()
    frame.peers[0].subprotocols.add(name="skippy-stage", major=2, features=[])
    frame.peers[0].subprotocols.add(name="\u00a0x", major=1)  # not blank after trimming
    assert decode_gossip_frame(frame.SerializeToString()) == frame


def test_direct_path_request() -> None:
    good = node_pb2.DirectPathRequest(requester_id=A, gen=1, serialized_addr=b"{}")
    assert decode_direct_path_request(good.SerializeToString(), A) == good
    with pytest.raises(BadGeneration):
        decode_direct_path_request(
            node_pb2.DirectPathRequest(requester_id=A, serialized_addr=b"x").SerializeToString(), A
        )
    with pytest.raises(InvalidIdLength):
        decode_direct_path_request(
            node_pb2.DirectPathRequest(requester_id=A[:5], gen=1, serialized_addr=b"x").SerializeToString(), A
        )
    with pytest.raises(InvalidFrame, match="empty serialized_addr"):
        decode_direct_path_request(node_pb2.DirectPathRequest(requester_id=A, gen=1).SerializeToString(), A)
    with pytest.raises(ForgedSender):
        decode_direct_path_request(good.SerializeToString(), B)


def test_subprotocol_open() -> None:
    good = node_pb2.MeshSubprotocolOpen(gen=1, name="skippy-stage", major=2)
    assert decode_subprotocol_open(good.SerializeToString()) == good
    with pytest.raises(BadGeneration):
        decode_subprotocol_open(node_pb2.MeshSubprotocolOpen(gen=2, name="x", major=1).SerializeToString())
    with pytest.raises(InvalidSubprotocol):
        decode_subprotocol_open(node_pb2.MeshSubprotocolOpen(gen=1, name=" ", major=1).SerializeToString())
    with pytest.raises(InvalidSubprotocol):
        decode_subprotocol_open(node_pb2.MeshSubprotocolOpen(gen=1, name="x").SerializeToString())


# ---- property tests: whatever bytes arrive, a decoder returns a message or raises InvalidFrame ----

_DECODERS = [
    lambda b: decode_gossip_frame(b, A),
    decode_route_table_request,
    decode_route_table,
    decode_peer_down,
    lambda b: decode_peer_leaving(b, A),
    lambda b: decode_tunnel_map(b, A),
    lambda b: decode_direct_path_request(b, A),
    decode_subprotocol_open,
]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600), which=st.integers(0, len(_DECODERS) - 1))
def test_random_bytes_only_raise_invalid_frame(data: bytes, which: int) -> None:
    try:
        _DECODERS[which](data)
    except InvalidFrame:
        pass


def _entry(draw: st.DrawFn) -> node_pb2.PeerAnnouncement:
    ann = node_pb2.PeerAnnouncement(
        endpoint_id=draw(st.sampled_from([A, B, C, A[:31], b""])),
        role=draw(st.sampled_from([0, 1, 2, 3, 7])),
    )
    if draw(st.booleans()):
        ann.http_port = draw(st.integers(0, 2**32 - 1))
    for _ in range(draw(st.integers(0, 3))):
        ann.subprotocols.add(name=draw(st.sampled_from(["", " ", "skippy-stage", "x"])), major=draw(st.integers(0, 3)))
    ann.serving_models.extend(draw(st.lists(st.text(max_size=5), max_size=3)))
    ann.latency_source = draw(st.integers(0, 9))
    ann.inference_admission_state = draw(st.integers(0, 9))
    if draw(st.booleans()):
        ann.direct_admission_proof.timestamp_unix_ms = draw(st.integers(0, 2**64 - 1))
    return ann


@st.composite
def frames(draw: st.DrawFn) -> tuple[node_pb2.GossipFrame, bytes]:
    frame = node_pb2.GossipFrame(gen=draw(st.sampled_from([0, 1, 2])), sender_id=draw(st.sampled_from([A, B[:3]])))
    for _ in range(draw(st.integers(0, 4))):
        frame.peers.append(_entry(draw))
    body = frame.SerializeToString()
    # segmentation and corruption: a truncated body or one flipped byte
    mode = draw(st.sampled_from(["whole", "cut", "flip"]))
    if mode == "cut" and body:
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif mode == "flip" and body:
        i = draw(st.integers(0, len(body) - 1))
        body = body[:i] + bytes([body[i] ^ draw(st.integers(1, 255))]) + body[i + 1 :]
    return frame, body


def _expected_ok(frame: node_pb2.GossipFrame) -> bool:
    return (
        frame.gen == 1
        and frame.sender_id == A
        and all(
            len(p.endpoint_id) == 32
            and (p.role != node_pb2.HOST or p.HasField("http_port"))
            and all(s.name.strip() and s.major for s in p.subprotocols)
            for p in frame.peers
        )
    )


@settings(max_examples=400, deadline=None)
@given(frames())
def test_gossip_frames_accepted_exactly_when_valid(case: tuple[node_pb2.GossipFrame, bytes]) -> None:
    frame, body = case
    try:
        decoded = decode_gossip_frame(body, A)
    except InvalidFrame:
        if body == frame.SerializeToString():
            assert not _expected_ok(frame)
        return
    assert _expected_ok(decoded)
    if body == frame.SerializeToString():
        assert decoded == frame
