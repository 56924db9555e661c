"""node.proto: the committed generated code is current, and the schema matches §5.10."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
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
            [("identity", 1, _MSG, "opt"), ("capabilities", 2, _MSG, "opt"), ("topology", 3, _MSG, "opt")],
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


def test_proto3_optional_zero_is_on_the_wire() -> None:
    # http_port = 0 set explicitly must still be encoded (tag 0x18, value 0): presence matters.
    assert node_pb2.PeerAnnouncement(http_port=0).SerializeToString() == bytes.fromhex("1800")
    assert node_pb2.PeerAnnouncement(vram_bytes=0).SerializeToString() == b""
