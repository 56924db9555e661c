"""PeerAnnouncement <-> PeerInfo conversion and the messages meshd sends (§5.5, §5.7, §5.10)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.protocol import node_pb2
from meshd.protocol.framing import encode_opener
from meshd.protocol.peers import (
    MAX_REMOTE_MODEL_LIST_LEN,
    MAX_REMOTE_MODEL_NAME_BYTES,
    DemandEntry,
    GpuInfo,
    InferenceAdmission,
    LatencySource,
    ModelRuntime,
    Role,
    build_gossip_frame,
    build_peer_down,
    build_peer_leaving,
    build_route_table_request,
    build_self_announcement,
    cap_model_names,
    peer_info_from_announcement,
    sanitize_relayed_announcement,
)
from meshd.protocol.streams import StreamType
from meshd.protocol.token import EndpointAddr
from meshd.protocol.validate import decode_gossip_frame


def key(seed: int) -> bytes:
    private = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


A, B = key(1), key(2)


def test_client_self_entry_golden_bytes() -> None:
    addr = EndpointAddr(A)
    entry = build_self_announcement(addr=addr, version="0.1.0")
    frame = build_gossip_frame(A, entry)
    addr_json = ('{"id":"' + A.hex() + '","addrs":[]}').encode()
    assert len(addr_json) == 84
    # PeerAnnouncement, fields in number order:
    ann = (
        bytes([0x0A, 0x20])
        + A  # 1 endpoint_id (LEN)
        + bytes([0x10, 0x03])  # 2 role = CLIENT (3)
        + bytes([0x22, 0x05])
        + b"0.1.0"  # 4 version (LEN)
        + bytes([0xB2, 0x01, 0x54])
        + addr_json  # 22 serialized_addr: tag 178 = varint b2 01
        + bytes([0xC0, 0x01, 0x01])  # 24 hosted_models_known = true: tag 192 = varint c0 01
    )
    assert len(ann) == 133  # length varint 0x85 0x01
    body = bytes([0x08, 0x01]) + bytes([0x12, 0x85, 0x01]) + ann + bytes([0x1A, 0x20]) + A
    assert frame.SerializeToString() == body
    assert encode_opener(StreamType.GOSSIP, body)[:5] == bytes([0x01]) + len(body).to_bytes(4, "little")


def test_client_self_entry_contents() -> None:
    addr = EndpointAddr(A, relay_urls=("https://r.example./",), ip_addrs=(("192.0.2.1", 4000),))
    entry = build_self_announcement(
        addr=addr,
        version="0.1.0",
        mesh_id="abcd",
        demand=[DemandEntry("qwen", 100, 3), DemandEntry("auto", 100, 1), DemandEntry("", 1, 1)],
        hostname="box",
        is_soc=False,
        first_joined_mesh_ts=1_700_000_000_000,
    )
    assert entry.role == node_pb2.CLIENT
    assert not entry.HasField("http_port")
    assert entry.vram_bytes == 0
    assert list(entry.hosted_models) == [] and entry.HasField("hosted_models_known")
    assert entry.hosted_models_known is True
    assert entry.serialized_addr == addr.to_json().encode()
    assert entry.mesh_id == "abcd"
    assert [(d.model_name, d.last_active, d.request_count) for d in entry.demand] == [("qwen", 100, 3)]
    assert entry.hardware.hostname == "box" and entry.hostname == "box"
    assert entry.hardware.HasField("is_soc") and not entry.hardware.is_soc
    assert not entry.HasField("gpu_name")
    assert entry.first_joined_mesh_ts == 1_700_000_000_000


def test_host_self_entry() -> None:
    entry = build_self_announcement(
        addr=EndpointAddr(A),
        version="0.1.0",
        role=Role.HOST,
        http_port=9337,
        hosted_models=["qwen", "llama"],
        runtime=[ModelRuntime("qwen", context_length=8192, ready=True)],
    )
    assert (entry.role, entry.http_port) == (node_pb2.HOST, 9337)
    assert list(entry.hosted_models) == ["qwen", "llama"] == list(entry.serving_models)
    assert entry.primary_serving == "qwen"
    info = peer_info_from_announcement(entry)
    assert info.role is Role.HOST and info.http_port == 9337
    assert info.served_models == ("qwen", "llama")
    assert info.context_length("qwen") == 8192
    assert info.context_length("llama") is None


def test_self_entry_argument_checks() -> None:
    with pytest.raises(ValueError):
        build_self_announcement(addr=EndpointAddr(A), version="1", role=Role.HOST)
    with pytest.raises(ValueError):
        build_self_announcement(addr=EndpointAddr(A), version="1", http_port=80)
    with pytest.raises(ValueError):
        build_self_announcement(addr=EndpointAddr(A), version="1", hosted_models=["x"])
    with pytest.raises(ValueError):
        build_gossip_frame(B, build_self_announcement(addr=EndpointAddr(A), version="1"))


def test_gossip_frame_puts_self_last_and_round_trips() -> None:
    own = build_self_announcement(addr=EndpointAddr(A), version="0.1.0")
    other = node_pb2.PeerAnnouncement(endpoint_id=B, role=node_pb2.HOST, http_port=9337, hosted_models=["m"])
    frame = build_gossip_frame(A, own, [other])
    decoded = decode_gossip_frame(frame.SerializeToString(), remote_id=A)
    assert [p.endpoint_id for p in decoded.peers] == [B, A]
    infos = [peer_info_from_announcement(p) for p in decoded.peers]
    assert [(i.role, i.served_models) for i in infos] == [(Role.HOST, ("m",)), (Role.CLIENT, ())]
    assert infos[1].hosted_models_known is True
    assert infos[1].addr == EndpointAddr(A)


def test_simple_messages() -> None:
    assert build_peer_leaving(A).SerializeToString() == bytes([0x0A, 0x20]) + A + bytes([0x10, 0x01])
    assert build_peer_down(B).SerializeToString() == bytes([0x0A, 0x20]) + B + bytes([0x10, 0x01])
    assert build_route_table_request().SerializeToString() == bytes([0x10, 0x01])
    assert build_route_table_request(A).requester_id == A


@pytest.mark.parametrize(
    ("role", "port", "expected_role", "expected_port"),
    [
        (node_pb2.HOST, 9337, Role.HOST, 9337),
        (node_pb2.HOST, 70000, Role.HOST, 70000 & 0xFFFF),  # Rust keeps the port as u16
        (node_pb2.CLIENT, None, Role.CLIENT, None),
        (node_pb2.WORKER, None, Role.WORKER, None),
        (node_pb2.NODE_ROLE_UNSPECIFIED, None, Role.WORKER, None),
        (42, None, Role.WORKER, None),  # unknown enum value
    ],
)
def test_role_mapping(role: int, port: int | None, expected_role: Role, expected_port: int | None) -> None:
    ann = node_pb2.PeerAnnouncement(endpoint_id=B, role=role)  # type: ignore[arg-type]
    if port is not None:
        ann.http_port = port
    wire = node_pb2.PeerAnnouncement.FromString(ann.SerializeToString())
    info = peer_info_from_announcement(wire)
    assert (info.role, info.http_port) == (expected_role, expected_port)


def test_hosted_models_known_rules() -> None:
    def info(**kwargs: object) -> tuple[bool, tuple[str, ...]]:
        ann = node_pb2.PeerAnnouncement(endpoint_id=B, serving_models=["s1", "s2"], **kwargs)  # type: ignore[arg-type]
        result = peer_info_from_announcement(ann)
        return result.hosted_models_known, result.served_models

    assert info() == (False, ("s1", "s2"))  # absent and empty: unknown, use serving_models
    assert info(hosted_models=["h"]) == (True, ("h",))  # absent but non-empty: known
    assert info(hosted_models_known=True) == (True, ())  # known and empty: serves nothing
    assert info(hosted_models=["h"], hosted_models_known=False) == (False, ("s1", "s2"))


def test_serialized_addr_handling() -> None:
    good = EndpointAddr(B, relay_urls=("https://r.example./",), ip_addrs=(("10.1.2.3", 5),))
    ann = node_pb2.PeerAnnouncement(endpoint_id=B, serialized_addr=good.to_json().encode())
    assert peer_info_from_announcement(ann).addr == good
    for bad in (
        b"",
        b"{not json",
        b"\xff\xfe",
        EndpointAddr(A, ip_addrs=(("1.1.1.1", 1),)).to_json().encode(),
    ):
        ann = node_pb2.PeerAnnouncement(endpoint_id=B, serialized_addr=bad)
        assert peer_info_from_announcement(ann).addr == EndpointAddr(B)


def test_other_fields() -> None:
    ann = node_pb2.PeerAnnouncement(
        endpoint_id=B,
        role=node_pb2.WORKER,
        version="0.65.0-rc2",
        vram_bytes=24 * 2**30,
        mesh_id="m-1",
        requested_models=["r"],
        catalog_models=["c"],
        model_source="hf://x",
        first_joined_mesh_ts=5,
    )
    ann.demand.add(model_name="qwen", last_active=10, request_count=2**40)
    ann.served_model_runtime.add(model_name="qwen", context_length=4096, ready=True, identity_hash="h")
    ann.served_model_identities.add(model_name="legacy")
    ann.owner_attestation.owner_id = "owner"
    info = peer_info_from_announcement(ann)
    assert info.version == "0.65.0-rc2"
    assert info.vram_bytes == 24 * 2**30
    assert info.mesh_id == "m-1"
    assert info.demand == (DemandEntry("qwen", 10, 2**40),)
    assert info.runtime == (ModelRuntime("qwen", "h", 4096, True),)
    assert info.context_length("qwen") == 4096
    assert (info.requested_models, info.catalog_models, info.model_source) == (("r",), ("c",), "hf://x")
    assert info.descriptor_models == ("legacy",)
    assert info.owner_id == "owner"
    assert info.first_joined_mesh_ts == 5


def test_descriptors_preferred_over_identities() -> None:
    ann = node_pb2.PeerAnnouncement(endpoint_id=B)
    ann.served_model_identities.add(model_name="legacy")
    ann.served_model_descriptors.add().identity.model_name = ""
    assert peer_info_from_announcement(ann).descriptor_models == ("legacy",)
    ann.served_model_descriptors.add().identity.model_name = "new"
    assert peer_info_from_announcement(ann).descriptor_models == ("new",)


def test_hardware_supersedes_legacy_fields() -> None:
    legacy = node_pb2.PeerAnnouncement(endpoint_id=B, hostname="old", is_soc=True, gpu_name="GTX")
    info = peer_info_from_announcement(legacy)
    assert (info.hardware.hostname, info.hardware.is_soc, info.gpu_name) == ("old", True, "GTX")
    assert info.hardware.gpus == ()
    legacy.hardware.hostname = "new"
    legacy.hardware.gpus.add(name="RTX 4090", vram_bytes="25769803776")
    legacy.hardware.gpus.add(name="RTX 3090")
    info = peer_info_from_announcement(legacy)
    assert info.hardware.hostname == "new"
    assert info.hardware.is_soc is True  # not in hardware: legacy value kept
    assert info.hardware.gpus[0] == GpuInfo(name="RTX 4090", vram_bytes="25769803776")
    assert info.gpu_name == "RTX 4090, RTX 3090"


def test_conversion_requires_a_validated_id() -> None:
    with pytest.raises(ValueError):
        peer_info_from_announcement(node_pb2.PeerAnnouncement(endpoint_id=B[:31]))


def test_relayed_entries_are_sanitized() -> None:
    ann = node_pb2.PeerAnnouncement(endpoint_id=B, mesh_id="m", available_models=["a"], hosted_models=["h"])
    ann.demand.add(model_name="x")
    ann.available_model_sizes["a"] = 1
    ann.available_model_metadata.add(model_key="a")
    relayed = sanitize_relayed_announcement(ann)
    assert not relayed.HasField("mesh_id")
    assert (len(relayed.demand), len(relayed.available_models)) == (0, 0)
    assert (len(relayed.available_model_sizes), len(relayed.available_model_metadata)) == (0, 0)
    assert list(relayed.hosted_models) == ["h"]
    assert ann.mesh_id == "m"  # the original is untouched


# ---- 0.76 (MESH_PROTOCOL_076.md §4) ----


def test_model_name_lists_are_capped_at_ingest() -> None:
    long_name = "x" * 513
    multibyte = "é" * 257  # 514 UTF-8 bytes but only 257 characters: the cap counts bytes
    exactly = "y" * 512
    names = [long_name, multibyte, exactly] + [f"m{i}" for i in range(300)]
    ann = node_pb2.PeerAnnouncement(endpoint_id=B, role=node_pb2.CLIENT, hosted_models_known=True)
    for field in ("hosted_models", "serving_models", "requested_models", "catalog_models", "explicit_model_interests"):
        getattr(ann, field).extend(names)
    info = peer_info_from_announcement(ann)
    expected = (exactly, *(f"m{i}" for i in range(255)))  # long names dropped first, then the first 256
    assert len(expected) == MAX_REMOTE_MODEL_LIST_LEN == 256
    for got in (
        info.hosted_models,
        info.serving_models,
        info.requested_models,
        info.catalog_models,
        info.explicit_model_interests,
    ):
        assert got == expected
    assert cap_model_names([]) == ()
    assert MAX_REMOTE_MODEL_NAME_BYTES == 512


def test_descriptor_models_are_bounded_too() -> None:
    ann = node_pb2.PeerAnnouncement(endpoint_id=B)
    for i in range(400):
        ann.served_model_descriptors.add().identity.model_name = f"d{i}"
    assert len(peer_info_from_announcement(ann).descriptor_models) == 256


@pytest.mark.parametrize(
    ("value", "expected", "routable"),
    [
        (None, None, True),
        (0, InferenceAdmission.UNSPECIFIED, True),
        (1, InferenceAdmission.ACCEPTING, True),
        (2, InferenceAdmission.ACCEPTING_DEPRIORITIZED, True),
        (3, InferenceAdmission.REMOTE_PAUSED, False),
        (4, InferenceAdmission.ALL_PAUSED, False),
        (5, None, True),  # outside the enum: ignored
        (2**31 - 1, None, True),
    ],
)
def test_inference_admission_state(value: int | None, expected: InferenceAdmission | None, routable: bool) -> None:
    ann = node_pb2.PeerAnnouncement(endpoint_id=B, role=node_pb2.HOST, http_port=1)
    if value is not None:
        ann.inference_admission_state = value  # type: ignore[assignment]
    wire = node_pb2.PeerAnnouncement.FromString(ann.SerializeToString())
    info = peer_info_from_announcement(wire)
    assert info.inference_admission_state == expected
    assert info.accepts_remote_inference is routable


def test_latency_and_policy_fields() -> None:
    ann = node_pb2.PeerAnnouncement(
        endpoint_id=B,
        latency_ms=12,
        latency_source=node_pb2.LATENCY_SOURCE_ESTIMATED,
        latency_age_ms=3400,
        latency_observer_id=A,
        mesh_policy_hash="ab" * 32,
    )
    info = peer_info_from_announcement(ann)
    assert (info.latency_ms, info.latency_source, info.latency_age_ms) == (12, LatencySource.ESTIMATED, 3400)
    assert info.latency_observer_id == A
    assert info.mesh_policy_hash == "ab" * 32
    ann.latency_source = 9  # type: ignore[assignment]
    ann.latency_observer_id = A[:31]
    info = peer_info_from_announcement(ann)
    assert (info.latency_source, info.latency_observer_id) == (None, None)
    ann.latency_observer_id = (2).to_bytes(32, "little")  # not a curve point: dropped like mesh-llm
    assert peer_info_from_announcement(ann).latency_observer_id is None
    empty = peer_info_from_announcement(node_pb2.PeerAnnouncement(endpoint_id=B))
    assert (empty.latency_ms, empty.latency_source, empty.mesh_policy_hash, empty.inference_admission_state) == (
        None,
        None,
        None,
        None,
    )


def test_relayed_076_entries() -> None:
    ann = node_pb2.PeerAnnouncement(endpoint_id=B, role=node_pb2.HOST, http_port=1, mesh_policy_hash="h", latency_ms=5)
    ann.direct_admission_proof.timestamp_unix_ms = 1
    ann.release_attestation.version = 1
    ann.genesis_policy.version = 1
    ann.subprotocols.add(name="skippy-stage", major=2)
    ann.serving_models.extend(["z" * 600, *[f"s{i}" for i in range(300)]])
    relayed = sanitize_relayed_announcement(ann)
    # self-only proofs and another node's latency are not relayed; the policy fields are
    assert not relayed.HasField("direct_admission_proof") and not relayed.HasField("release_attestation")
    assert not relayed.HasField("latency_ms")
    assert relayed.HasField("genesis_policy") and relayed.mesh_policy_hash == "h"
    assert [s.name for s in relayed.subprotocols] == ["skippy-stage"]
    assert list(relayed.serving_models) == [f"s{i}" for i in range(256)]
    assert len(ann.serving_models) == 301  # the original is untouched


def test_unknown_fields_pass_through_relayed_gossip() -> None:
    # A newer mesh-llm's entry with fields this schema does not know (38, varint 7; 50, LEN "zz"):
    # decoded from a real frame, relayed, and re-encoded, they are still there byte for byte.
    unknown = bytes.fromhex("b002079203027a7a")
    entry = node_pb2.PeerAnnouncement(endpoint_id=B, role=node_pb2.CLIENT).SerializeToString() + unknown
    frame_bytes = node_pb2.GossipFrame(gen=1, sender_id=A).SerializeToString() + bytes([0x12, len(entry)]) + entry
    frame = decode_gossip_frame(frame_bytes, A)
    relayed = sanitize_relayed_announcement(frame.peers[0])
    assert relayed.SerializeToString().endswith(unknown)
    me = build_self_announcement(addr=EndpointAddr(A), version="0.76.0+meshd.0.1.0")
    out = build_gossip_frame(A, me, [relayed]).SerializeToString()
    assert unknown in out
    assert decode_gossip_frame(out, A).peers[0].SerializeToString().endswith(unknown)


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=400),
    addr=st.one_of(
        st.binary(max_size=64),
        st.integers(0, 20_000).map(lambda n: b"[" * n),
        st.just(('{"id":"' + B.hex() + '","addrs":[{"Ip":"1.2.3.4:5"}]}').encode()),
    ),
)
def test_any_decodable_announcement_converts(data: bytes, addr: bytes) -> None:
    # whatever a peer puts in an entry (given the validated 32-byte id), conversion neither raises
    # nor keeps more than the caps; a deeply nested serialized_addr is just an unusable address
    try:
        ann = node_pb2.PeerAnnouncement.FromString(data)
    except DecodeError:
        return
    ann.endpoint_id = B
    ann.serialized_addr = addr
    info = peer_info_from_announcement(ann)
    assert info.endpoint_id == B and info.addr.id == B
    assert len(info.serving_models) <= MAX_REMOTE_MODEL_LIST_LEN
    sanitize_relayed_announcement(ann).SerializeToString()
