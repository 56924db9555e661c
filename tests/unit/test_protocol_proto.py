"""node.proto: the committed generated code is current, the schema matches MESH_PROTOCOL.md §5.10
plus the 0.76 additions of MESH_PROTOCOL_076.md §4, and the new fields encode to hand-computed
protobuf wire bytes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor

from meshd.protocol import node_pb2

ROOT = Path(__file__).resolve().parents[2]
F = FieldDescriptor


def test_committed_generated_code_is_current(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            ".",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            "meshd/protocol/node.proto",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for name in ("node_pb2.py", "node_pb2.pyi"):
        fresh = (tmp_path / "meshd" / "protocol" / name).read_bytes()
        committed = (ROOT / "meshd" / "protocol" / name).read_bytes()
        assert fresh == committed, f"{name} is stale: regenerate it (see the header of node.proto)"


def test_generated_module_identity() -> None:
    assert node_pb2.DESCRIPTOR.package == "meshllm.node.v1"
    assert node_pb2.DESCRIPTOR.name == "meshd/protocol/node.proto"
    assert node_pb2.PeerAnnouncement.__module__ == "meshd.protocol.node_pb2"


# (name, number, type, label) per MESH_PROTOCOL.md §5.10; "opt" = proto3 optional.
_STR, _BYTES, _U32, _U64, _BOOL, _ENUM, _MSG = (
    F.TYPE_STRING,
    F.TYPE_BYTES,
    F.TYPE_UINT32,
    F.TYPE_UINT64,
    F.TYPE_BOOL,
    F.TYPE_ENUM,
    F.TYPE_MESSAGE,
)
PEER_ANNOUNCEMENT = [
    ("endpoint_id", 1, _BYTES, ""),
    ("role", 2, _ENUM, ""),
    ("http_port", 3, _U32, "opt"),
    ("version", 4, _STR, "opt"),
    ("gpu_name", 5, _STR, "opt"),
    ("hostname", 6, _STR, "opt"),
    ("is_soc", 7, _BOOL, "opt"),
    ("gpu_vram", 8, _STR, "opt"),
    ("available_models", 9, _STR, "rep"),
    ("serving_models", 10, _STR, "rep"),
    ("requested_models", 11, _STR, "rep"),
    ("available_model_metadata", 12, _MSG, "rep"),
    ("experts_summary", 13, _MSG, "opt"),
    ("rtt_ms", 14, _U32, "opt"),
    ("catalog_models", 15, _STR, "rep"),
    ("vram_bytes", 16, _U64, ""),
    ("model_source", 17, _STR, "opt"),
    ("primary_serving", 18, _STR, "opt"),
    ("mesh_id", 19, _STR, "opt"),
    ("demand", 20, _MSG, "rep"),
    ("available_model_sizes", 21, _MSG, "rep"),  # map<string, uint64>
    ("serialized_addr", 22, _BYTES, ""),
    ("hosted_models", 23, _STR, "rep"),
    ("hosted_models_known", 24, _BOOL, "opt"),
    ("served_model_descriptors", 25, _MSG, "rep"),
    ("served_model_identities", 26, _MSG, "rep"),
    ("served_model_runtime", 27, _MSG, "rep"),
    ("owner_attestation", 28, _MSG, "opt"),
    ("gpu_mem_bandwidth_gbps", 29, _STR, "opt"),
    ("gpu_compute_tflops_fp32", 30, _STR, "opt"),
    ("gpu_compute_tflops_fp16", 31, _STR, "opt"),
    ("gpu_reserved_bytes", 32, _STR, "opt"),
    ("hardware", 33, _MSG, "opt"),
    ("first_joined_mesh_ts", 34, _U64, "opt"),
    # 0.76 (MESH_PROTOCOL_076.md §4.1); 36 is reserved, 38 and 39 unused
    ("explicit_model_interests", 35, _STR, "rep"),
    ("subprotocols", 37, _MSG, "rep"),
    ("latency_ms", 40, _U32, "opt"),
    ("latency_source", 41, _ENUM, "opt"),
    ("latency_age_ms", 42, _U32, "opt"),
    ("latency_observer_id", 43, _BYTES, "opt"),
    ("advertised_model_throughput", 44, _MSG, "rep"),
    ("mesh_policy_hash", 45, _STR, "opt"),
    ("genesis_policy", 46, _MSG, "opt"),
    ("release_attestation", 47, _MSG, "opt"),
    ("direct_admission_proof", 48, _MSG, "opt"),
    ("inference_admission_state", 49, _ENUM, "opt"),
]


def _shape(message: type) -> list[tuple[str, int, int, str]]:
    rows = []
    for field in message.DESCRIPTOR.fields:  # type: ignore[attr-defined]
        if field.is_repeated:
            kind = "rep"
        elif field.has_presence:
            kind = "opt"  # proto3 `optional` scalar, or any singular message field
        else:
            kind = ""
        rows.append((field.name, field.number, field.type, kind))
    return sorted(rows, key=lambda r: r[1])


def test_peer_announcement_fields() -> None:
    assert _shape(node_pb2.PeerAnnouncement) == PEER_ANNOUNCEMENT
    sizes = node_pb2.PeerAnnouncement.DESCRIPTOR.fields_by_name["available_model_sizes"].message_type
    assert sizes.GetOptions().map_entry
    assert [(f.name, f.type) for f in sizes.fields] == [("key", _STR), ("value", _U64)]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            node_pb2.GossipFrame,
            [("gen", 1, _U32, ""), ("peers", 2, _MSG, "rep"), ("sender_id", 3, _BYTES, "")],
        ),
        (
            node_pb2.HardwareInfo,
            [("is_soc", 1, _BOOL, "opt"), ("hostname", 2, _STR, "opt"), ("gpus", 3, _MSG, "rep")],
        ),
        (
            node_pb2.GpuInfo,
            [
                ("name", 1, _STR, "opt"),
                ("vram_bytes", 2, _STR, "opt"),
                ("reserved_bytes", 3, _STR, "opt"),
                ("mem_bandwidth_gbps", 4, _STR, "opt"),
                ("compute_tflops_fp32", 5, _STR, "opt"),
                ("compute_tflops_fp16", 6, _STR, "opt"),
            ],
        ),
        (
            node_pb2.SignedNodeOwnership,
            [
                ("version", 1, _U32, ""),
                ("cert_id", 2, _STR, ""),
                ("owner_id", 3, _STR, ""),
                ("owner_sign_public_key", 4, _BYTES, ""),
                ("node_endpoint_id", 5, _BYTES, ""),
                ("issued_at_unix_ms", 6, _U64, ""),
                ("expires_at_unix_ms", 7, _U64, ""),
                ("node_label", 8, _STR, "opt"),
                ("hostname_hint", 9, _STR, "opt"),
                ("signature", 10, _BYTES, ""),
            ],
        ),
        (
            node_pb2.ServedModelDescriptor,
            [
                ("identity", 1, _MSG, "opt"),
                ("capabilities", 2, _MSG, "opt"),
                ("topology", 3, _MSG, "opt"),
                ("capabilities_known", 4, _BOOL, "opt"),
                ("metadata", 5, _MSG, "opt"),
            ],
        ),
        (
            node_pb2.ServedModelMetadata,
            [
                ("architecture", 1, _STR, "opt"),
                ("parameter_size", 2, _STR, "opt"),
                ("parameter_count_b", 3, F.TYPE_DOUBLE, "opt"),
                ("quant", 4, _STR, "opt"),
                ("native_context_length", 5, _U32, "opt"),
                ("tokenizer", 6, _STR, "opt"),
                ("layer_count", 7, _U32, "opt"),
                ("embedding_size", 8, _U32, "opt"),
                ("head_count", 9, _U32, "opt"),
                ("kv_head_count", 10, _U32, "opt"),
                ("expert_count", 11, _U32, "opt"),
                ("active_expert_count", 12, _U32, "opt"),
            ],
        ),
        (
            node_pb2.SignedMeshGenesisPolicy,
            [
                ("version", 1, _U32, ""),
                ("policy", 2, _MSG, "opt"),
                ("origin_sign_public_key", 3, _BYTES, ""),
                ("signature_algorithm", 4, _STR, ""),
                ("signature", 5, _BYTES, ""),
            ],
        ),
        (
            node_pb2.MeshGenesisPolicy,
            [
                ("version", 1, _U32, ""),
                ("origin_owner_id", 2, _STR, ""),
                ("created_at_unix_ms", 3, _U64, ""),
                ("requirements", 4, _MSG, "opt"),
            ],
        ),
        (
            node_pb2.MeshRequirements,
            [
                ("node_version", 1, _MSG, "opt"),
                ("protocol_generation", 2, _MSG, "opt"),
                ("release_attestation", 3, _MSG, "opt"),
            ],
        ),
        (node_pb2.NodeVersionBounds, [("min", 1, _STR, "opt"), ("max", 2, _STR, "opt")]),
        (node_pb2.ProtocolGenerationBounds, [("min", 1, _U32, "opt"), ("max", 2, _U32, "opt")]),
        (
            node_pb2.ReleaseAttestationRequirement,
            [("required", 1, _BOOL, "opt"), ("allowed_signer_keys", 2, _STR, "rep")],
        ),
        (
            node_pb2.SignedBootstrapToken,
            [
                ("version", 1, _U32, ""),
                ("serialized_addrs", 2, _BYTES, "rep"),
                ("mesh_id", 3, _STR, ""),
                ("policy_hash", 4, _STR, ""),
                ("genesis_policy", 5, _MSG, "opt"),
                ("expires_at_unix_ms", 6, _U64, "opt"),
                ("origin_sign_public_key", 7, _BYTES, ""),
                ("signature_algorithm", 8, _STR, ""),
                ("signature", 9, _BYTES, ""),
            ],
        ),
        (
            node_pb2.ReleaseBuildAttestation,
            [
                ("version", 1, _U32, ""),
                ("node_version", 2, _STR, ""),
                ("build_id", 3, _STR, ""),
                ("commit", 4, _STR, ""),
                ("target_triple", 5, _STR, ""),
                ("supported_protocol_generation_min", 6, _U32, "opt"),
                ("supported_protocol_generation_max", 7, _U32, "opt"),
                ("artifact_digest", 8, _STR, "opt"),
                ("signer_key_id", 9, _STR, ""),
                ("signature_algorithm", 10, _STR, ""),
                ("signature", 11, _BYTES, ""),
            ],
        ),
        (
            node_pb2.DirectNodeAdmissionProof,
            [
                ("version", 1, _U32, ""),
                ("sender_id", 2, _BYTES, ""),
                ("mesh_id", 3, _STR, ""),
                ("policy_hash", 4, _STR, ""),
                ("attestation_hash", 5, _STR, ""),
                ("timestamp_unix_ms", 6, _U64, ""),
                ("signature_algorithm", 7, _STR, ""),
                ("signature", 8, _BYTES, ""),
            ],
        ),
        (
            node_pb2.AdvertisedModelThroughput,
            [
                ("model_name", 1, _STR, ""),
                ("avg_tokens_per_second_milli", 2, _U64, ""),
                ("throughput_samples", 3, _U64, ""),
            ],
        ),
        (
            node_pb2.MeshSubprotocol,
            [("name", 1, _STR, ""), ("major", 2, _U32, ""), ("features", 3, _STR, "rep")],
        ),
        (node_pb2.MeshSubprotocolOpen, [("gen", 1, _U32, ""), ("name", 2, _STR, ""), ("major", 3, _U32, "")]),
        (
            node_pb2.DirectPathRequest,
            [("requester_id", 1, _BYTES, ""), ("gen", 2, _U32, ""), ("serialized_addr", 3, _BYTES, "")],
        ),
        (
            node_pb2.ServedModelIdentity,
            [
                ("model_name", 1, _STR, ""),
                ("is_primary", 2, _BOOL, ""),
                ("source_kind", 3, _ENUM, ""),
                ("canonical_ref", 4, _STR, "opt"),
                ("repository", 5, _STR, "opt"),
                ("revision", 6, _STR, "opt"),
                ("artifact", 7, _STR, "opt"),
                ("local_file_name", 8, _STR, "opt"),
                ("identity_hash", 9, _STR, "opt"),
            ],
        ),
        (
            node_pb2.ModelCapabilities,
            [
                ("vision", 1, _ENUM, ""),
                ("reasoning", 2, _ENUM, ""),
                ("tool_use", 3, _ENUM, ""),
                ("moe", 4, _BOOL, ""),
                ("multimodal", 5, _BOOL, ""),
                ("audio", 6, _ENUM, ""),
            ],
        ),
        (node_pb2.ModelTopology, [("moe", 1, _MSG, "opt")]),
        (
            node_pb2.ModelRuntimeDescriptor,
            [
                ("model_name", 1, _STR, ""),
                ("identity_hash", 2, _STR, "opt"),
                ("context_length", 3, _U32, "opt"),
                ("ready", 4, _BOOL, ""),
            ],
        ),
        (
            node_pb2.ModelMoeInfo,
            [
                ("expert_count", 1, _U32, ""),
                ("used_expert_count", 2, _U32, ""),
                ("min_experts_per_node", 3, _U32, "opt"),
                ("source", 4, _STR, "opt"),
                ("ranking_source", 5, _STR, "opt"),
                ("ranking", 6, _U32, "rep"),
                ("ranking_prompt_count", 7, _U32, "opt"),
                ("ranking_tokens", 8, _U32, "opt"),
                ("ranking_layer_scope", 9, _STR, "opt"),
                ("ranking_origin", 10, _STR, "opt"),
            ],
        ),
        (
            node_pb2.CompactModelMetadata,
            [
                ("model_key", 1, _STR, ""),
                ("context_length", 2, _U32, ""),
                ("vocab_size", 3, _U32, ""),
                ("embedding_size", 4, _U32, ""),
                ("head_count", 5, _U32, ""),
                ("layer_count", 6, _U32, ""),
                ("feed_forward_length", 7, _U32, ""),
                ("key_length", 8, _U32, ""),
                ("value_length", 9, _U32, ""),
                ("architecture", 10, _STR, ""),
                ("tokenizer_model_name", 11, _STR, ""),
                ("special_tokens", 12, _MSG, "rep"),
                ("rope_scale", 13, F.TYPE_FLOAT, ""),
                ("rope_freq_base", 14, F.TYPE_FLOAT, ""),
                ("is_moe", 15, _BOOL, ""),
                ("expert_count", 16, _U32, ""),
                ("used_expert_count", 17, _U32, ""),
                ("quantization_type", 18, _STR, ""),
                ("kv_head_count", 19, _U32, ""),
                ("parameter_size", 20, _STR, "opt"),
            ],
        ),
        (node_pb2.SpecialToken, [("name", 1, _STR, ""), ("token_id", 2, _U32, "")]),
        (
            node_pb2.ExpertsSummary,
            [
                ("total_experts", 1, _U32, ""),
                ("expert_count_used", 2, _U32, ""),
                ("top_expert_ids", 3, _U32, "rep"),
            ],
        ),
        (
            node_pb2.ModelDemandEntry,
            [("model_name", 1, _STR, ""), ("last_active", 2, _U64, ""), ("request_count", 3, _U64, "")],
        ),
        (node_pb2.TunnelMap, [("owner_peer_id", 1, _BYTES, ""), ("entries", 2, _MSG, "rep")]),
        (
            node_pb2.TunnelEntry,
            [
                ("target_peer_id", 1, _BYTES, ""),
                ("relay_peer_id", 2, _BYTES, "opt"),
                ("tunnel_port", 3, _U32, ""),
            ],
        ),
        (node_pb2.RouteTableRequest, [("requester_id", 1, _BYTES, ""), ("gen", 2, _U32, "")]),
        (
            node_pb2.RouteTable,
            [("entries", 1, _MSG, "rep"), ("mesh_id", 2, _STR, "opt"), ("gen", 3, _U32, "")],
        ),
        (node_pb2.RouteEntry, [("endpoint_id", 1, _BYTES, ""), ("model", 2, _STR, "")]),
        (node_pb2.PeerDown, [("peer_id", 1, _BYTES, ""), ("gen", 2, _U32, "")]),
        (node_pb2.PeerLeaving, [("peer_id", 1, _BYTES, ""), ("gen", 2, _U32, "")]),
    ],
)
def test_message_fields(message: type, expected: list[tuple[str, int, int, str]]) -> None:
    assert _shape(message) == expected


def test_enums() -> None:
    def values(enum_name: str) -> dict[str, int]:
        return {v.name: v.number for v in node_pb2.DESCRIPTOR.enum_types_by_name[enum_name].values}

    assert values("NodeRole") == {"NODE_ROLE_UNSPECIFIED": 0, "WORKER": 1, "HOST": 2, "CLIENT": 3}
    assert values("CapabilityLevel") == {
        "CAPABILITY_LEVEL_UNSPECIFIED": 0,
        "CAPABILITY_LEVEL_NONE": 1,
        "CAPABILITY_LEVEL_LIKELY": 2,
        "CAPABILITY_LEVEL_SUPPORTED": 3,
    }
    assert values("ModelSourceKind") == {
        "MODEL_SOURCE_KIND_UNSPECIFIED": 0,
        "MODEL_SOURCE_KIND_CATALOG": 1,
        "MODEL_SOURCE_KIND_HUGGING_FACE": 2,
        "MODEL_SOURCE_KIND_LOCAL_GGUF": 3,
        "MODEL_SOURCE_KIND_DIRECT_URL": 4,
        "MODEL_SOURCE_KIND_UNKNOWN": 5,
    }
    assert values("InferenceAdmissionState") == {
        "INFERENCE_ADMISSION_STATE_UNSPECIFIED": 0,
        "INFERENCE_ADMISSION_STATE_ACCEPTING": 1,
        "INFERENCE_ADMISSION_STATE_ACCEPTING_DEPRIORITIZED": 2,
        "INFERENCE_ADMISSION_STATE_REMOTE_PAUSED": 3,
        "INFERENCE_ADMISSION_STATE_ALL_PAUSED": 4,
    }
    assert values("LatencySource") == {
        "LATENCY_SOURCE_UNSPECIFIED": 0,
        "LATENCY_SOURCE_DIRECT": 1,
        "LATENCY_SOURCE_ESTIMATED": 2,
        "LATENCY_SOURCE_UNKNOWN": 3,
    }


def test_field_36_is_reserved() -> None:
    proto = descriptor_pb2.DescriptorProto()
    node_pb2.PeerAnnouncement.DESCRIPTOR.CopyToProto(proto)
    assert 36 not in node_pb2.PeerAnnouncement.DESCRIPTOR.fields_by_number
    assert [(r.start, r.end) for r in proto.reserved_range] == [(36, 37)]
    assert list(proto.reserved_name) == ["artifact_transfer_supported"]


def test_proto3_optional_zero_is_on_the_wire() -> None:
    # http_port = 0 set explicitly must still be encoded (tag 0x18, value 0): presence matters.
    assert node_pb2.PeerAnnouncement(http_port=0).SerializeToString() == bytes.fromhex("1800")
    assert node_pb2.PeerAnnouncement(vram_bytes=0).SerializeToString() == b""


# ---- golden bytes for the 0.76 fields, written out from the protobuf wire format ----
# A tag is the varint of (field_number << 3) | wire_type; for numbers >= 16 it takes two bytes,
# e.g. field 35, wire type 2 (LEN): 35 << 3 | 2 = 282 = 0b10_0011010 -> 0x9a 0x02.
OBSERVER = bytes(range(32))
PEER_ANNOUNCEMENT_076 = (
    bytes.fromhex("9a020161")  # 35 explicit_model_interests: ["a"]
    # 37 subprotocols: [{name "s" (0a 01 73), major 2 (10 02), features ["f"] (1a 01 66)}]
    + bytes.fromhex("aa02080a017310021a0166")
    + bytes.fromhex("c002ac02")  # 40 latency_ms: 300 = 0b10_0101100 -> ac 02
    + bytes.fromhex("c80201")  # 41 latency_source: DIRECT
    + bytes.fromhex("d00200")  # 42 latency_age_ms: 0, present (proto3 optional)
    + bytes.fromhex("da0220")  # 43 latency_observer_id: 32 bytes
    + OBSERVER
    # 44 advertised_model_throughput: [{model_name "m", avg 1500 (dc 0b), samples 3}]
    + bytes.fromhex("e202080a016d10dc0b1803")
    + bytes.fromhex("ea020168")  # 45 mesh_policy_hash: "h"
    + bytes.fromhex("f202020801")  # 46 genesis_policy: {version 1}
    + bytes.fromhex("fa02020801")  # 47 release_attestation: {version 1}
    + bytes.fromhex("8203023001")  # 48 direct_admission_proof: {timestamp_unix_ms 1} (field 6)
    + bytes.fromhex("880303")  # 49 inference_admission_state: REMOTE_PAUSED
)


def _ann_076() -> node_pb2.PeerAnnouncement:
    ann = node_pb2.PeerAnnouncement(
        explicit_model_interests=["a"],
        latency_ms=300,
        latency_source=node_pb2.LATENCY_SOURCE_DIRECT,
        latency_age_ms=0,
        latency_observer_id=OBSERVER,
        mesh_policy_hash="h",
        inference_admission_state=node_pb2.INFERENCE_ADMISSION_STATE_REMOTE_PAUSED,
    )
    ann.subprotocols.add(name="s", major=2, features=["f"])
    ann.advertised_model_throughput.add(model_name="m", avg_tokens_per_second_milli=1500, throughput_samples=3)
    ann.genesis_policy.version = 1
    ann.release_attestation.version = 1
    ann.direct_admission_proof.timestamp_unix_ms = 1
    return ann


def test_peer_announcement_076_golden_bytes() -> None:
    assert _ann_076().SerializeToString() == PEER_ANNOUNCEMENT_076
    parsed = node_pb2.PeerAnnouncement.FromString(PEER_ANNOUNCEMENT_076)
    assert parsed == _ann_076()
    assert parsed.HasField("latency_age_ms") and parsed.latency_age_ms == 0


def test_other_076_messages_golden_bytes() -> None:
    descriptor = node_pb2.ServedModelDescriptor(capabilities_known=False)
    descriptor.metadata.parameter_count_b = 1.5
    # 4 capabilities_known: false but present (20 00); 5 metadata: {3 parameter_count_b, a double
    # (wire type 1, tag 0x19) 1.5 = 0x3ff8000000000000 little-endian}
    assert descriptor.SerializeToString() == bytes.fromhex("20002a0919000000000000f83f")
    compact = node_pb2.CompactModelMetadata(kv_head_count=8, parameter_size="32B")
    # 19 << 3 = 152 -> 98 01; 20 << 3 | 2 = 162 -> a2 01
    assert compact.SerializeToString() == bytes.fromhex("980108a20103333242")
    request = node_pb2.DirectPathRequest(requester_id=OBSERVER, gen=1, serialized_addr=b"{}")
    assert request.SerializeToString() == bytes.fromhex("0a20") + OBSERVER + bytes.fromhex("10011a027b7d")
    opener = node_pb2.MeshSubprotocolOpen(gen=1, name="x", major=2)
    assert opener.SerializeToString() == bytes.fromhex("08011201781802")
    proof = node_pb2.DirectNodeAdmissionProof(
        version=1,
        sender_id=OBSERVER,
        mesh_id="m",
        policy_hash="p",
        attestation_hash="a",
        timestamp_unix_ms=2**40,
        signature_algorithm="ed25519",
        signature=b"\x01" * 64,
    )
    assert proof.SerializeToString() == (
        bytes.fromhex("08011220")
        + OBSERVER
        + bytes.fromhex("1a016d2201702a0161")
        # 2**40 as a varint: 40 bits in 7-bit groups -> 80 80 80 80 80 20
        + bytes.fromhex("30808080808020")
        + bytes.fromhex("3a07")
        + b"ed25519"
        + bytes.fromhex("4240")
        + b"\x01" * 64
    )


def test_unknown_fields_survive_a_round_trip() -> None:
    # Field 38 (varint 7, tag 38 << 3 = 304 -> b0 02) and field 50 (LEN "zz", 402 -> 92 03):
    # numbers this schema does not define, as a newer mesh-llm might send.
    unknown = bytes.fromhex("b002079203027a7a")
    data = bytes.fromhex("0a20") + OBSERVER + unknown
    ann = node_pb2.PeerAnnouncement.FromString(data)
    assert ann.endpoint_id == OBSERVER
    assert ann.SerializeToString() == data
    # the reserved number 36 is kept as an unknown field too
    reserved = bytes.fromhex("a00201")
    assert node_pb2.PeerAnnouncement.FromString(reserved).SerializeToString() == reserved
