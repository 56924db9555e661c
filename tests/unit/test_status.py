"""``/api/status`` in mesh-llm 0.76's shape (``meshd.status``; MESH_PROTOCOL_076.md §10): every key of
its ``StatusPayload`` and ``PeerPayload`` with 0.76's type and meaning, and meshd's own fields only under
``meshd``."""

from __future__ import annotations

import json
from types import NoneType
from typing import Any

import attrs
from twisted.internet.task import Clock

from meshd import __version__
from meshd.config import Config, Role
from meshd.discovery.nostr_pool import PublishResult
from meshd.identity import Identity
from meshd.node import Node
from meshd.protocol import node_pb2
from meshd.protocol.peers import Role as PeerRole
from meshd.protocol.peers import build_self_announcement, peer_info_from_announcement
from meshd.protocol.requirements import MeshRequirementState
from meshd.protocol.token import EndpointAddr
from meshd.protocol.version import ANNOUNCED_VERSION
from meshd.status import StatusView, gpu_entries
from meshd.web.api import APIApp

from .test_protocol_requirements import NOW, make_owner, make_token

#: StatusPayload: key -> the JSON types 0.76 gives it (``75ed866c:HR/api/status.rs``).
STATUS_KEYS: dict[str, tuple[type, ...]] = {
    "version": (str,),
    "latest_version": (NoneType, str),
    "node_id": (str,),
    "owner": (dict,),
    "release_attestation": (dict,),
    "token": (str,),
    "node_state": (str,),
    "node_status": (str,),
    "is_host": (bool,),
    "is_client": (bool,),
    "llama_ready": (bool,),
    "runtime": (dict,),
    "model_name": (str,),
    "models": (list,),
    "available_models": (list,),
    "requested_models": (list,),
    "serving_models": (list,),
    "hosted_models": (list,),
    "draft_name": (NoneType, str),
    "api_port": (int,),
    "my_vram_gb": (float,),
    "model_size_gb": (float,),
    "peers": (list,),
    "wakeable_nodes": (list,),
    "local_instances": (list,),
    "launch_pi": (NoneType, str),
    "launch_goose": (NoneType, str),
    "inflight_requests": (int,),
    "mesh_discovery_mode": (str,),
    "discovery_scope": (str,),
    "discovery_source": (str,),
    "nostr_discovery": (bool,),
    "publication_state": (str,),
    "my_hostname": (NoneType, str),
    "my_is_soc": (NoneType, bool),
    "gpus": (list,),
    "routing_affinity": (dict,),
    "routing_metrics": (dict,),
}
#: Keys 0.76 leaves out when empty or None.
STATUS_OPTIONAL: dict[str, tuple[type, ...]] = {
    "mesh_id": (str,),
    "mesh_name": (str,),
    "wanted_model_refs": (list,),
    "first_joined_mesh_ts": (int,),
    "mesh_requirements": (dict,),
    "recent_mesh_rejections": (list,),
    "logging": (dict,),
}
PEER_KEYS: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "owner": (dict,),
    "release_attestation": (dict,),
    "role": (str,),
    "state": (str,),
    "models": (list,),
    "available_models": (list,),
    "requested_models": (list,),
    "vram_gb": (float, int),
    "serving_models": (list,),
    "hosted_models": (list,),
    "hosted_models_known": (bool,),
    "version": (NoneType, str),
    "rtt_ms": (NoneType, int),
    "hostname": (NoneType, str),
    "is_soc": (NoneType, bool),
    "gpus": (list,),
}
PEER_OPTIONAL: dict[str, tuple[type, ...]] = {
    "advertised_model_throughput": (list,),
    "latency_ms": (int,),
    "latency_source": (str,),
    "latency_age_ms": (int,),
    "latency_observer_id": (str,),
    "first_joined_mesh_ts": (int,),
}
NODE_STATES = {"client", "standby", "loading", "serving"}


def check_shape(payload: dict[str, Any], required: dict[str, Any], optional: dict[str, Any]) -> None:
    keys = set(payload) - {"meshd"}
    assert required.keys() <= keys, required.keys() - keys
    assert keys <= required.keys() | optional.keys(), keys - required.keys() - optional.keys()
    for key in keys:
        assert isinstance(payload[key], (required | optional)[key]), (key, payload[key])
    assert isinstance(payload["meshd"], dict)


def check_status(st: dict[str, Any]) -> None:
    st = json.loads(json.dumps(st))  # as a browser gets it
    check_shape(st, STATUS_KEYS, STATUS_OPTIONAL)
    assert st["node_state"] in NODE_STATES and st["node_status"] == st["node_state"].capitalize()
    assert st["version"] == ANNOUNCED_VERSION and st["version"].startswith("0.76.0+meshd.")
    assert st["release_attestation"] == {"status": "missing", "verified": False}
    assert st["owner"] == {"status": "unsigned", "verified": False}
    assert (st["mesh_discovery_mode"], st["discovery_scope"], st["discovery_source"]) == (
        "nostr",
        "public",
        "nostr-relay",
    )
    assert st["publication_state"] in ("private", "public", "publish_failed")
    assert all(isinstance(m, str) for k in ("models", "serving_models", "hosted_models") for m in st[k])
    for peer in st["peers"]:
        check_shape(peer, PEER_KEYS, PEER_OPTIONAL)
        assert peer["role"] in ("Worker", "Host", "Client") and peer["state"] in NODE_STATES


def make_node(role: Role = Role.CLIENT, **kw: Any) -> Node:
    serve = {"serve_url": "http://127.0.0.1:1"} if role is Role.HOST else {}
    node = Node(Config(role=role, **serve, **kw), Identity.generate(), Clock())
    node.ports_bound(19337, 13131)
    return node


def gossip_peer(node: Node, ann: node_pb2.PeerAnnouncement) -> bytes:
    info = peer_info_from_announcement(ann)
    node.mesh.ingest_gossip(info.endpoint_id, [info], node.now())
    return info.endpoint_id


def test_a_client_with_a_host_and_a_relayed_client_is_0_76s_status() -> None:
    node = make_node(auto=True)
    host = Identity.generate()
    ann = build_self_announcement(
        addr=EndpointAddr(host.public_bytes),
        version="0.76.0-rc6",
        role=PeerRole.HOST,
        http_port=9337,
        hosted_models=("tiny",),
        vram_bytes=24_000_000_000,
        hostname="gpu-box",
        is_soc=False,
    )
    ann.hardware.gpus.add(name="RTX 4090", vram_bytes="24000000000", reserved_bytes="x", mem_bandwidth_gbps="1008.0")
    ann.hardware.gpus.add(vram_bytes="1")  # no name: not a GPU entry
    ann.requested_models.append("wanted")
    gossip_peer(node, ann)
    other = Identity.generate()
    relayed = build_self_announcement(addr=EndpointAddr(other.public_bytes), version="0.76.0")
    relayed.latency_ms, relayed.latency_source, relayed.latency_age_ms = 42, node_pb2.LATENCY_SOURCE_DIRECT, 900
    relayed.latency_observer_id = host.public_bytes
    node.mesh.ingest_gossip(host.public_bytes, [peer_info_from_announcement(relayed)], node.now())
    api = APIApp(node)
    st = StatusView(node, gate=api.gate, proxy=api.proxy).status()
    check_status(st)
    assert (st["node_state"], st["is_client"], st["llama_ready"], st["nostr_discovery"]) == ("client", True, True, True)
    assert st["serving_models"] == st["hosted_models"] == st["models"] == [] and st["model_name"] == ""
    assert st["runtime"] == {"is_processing": False, "models": []}
    assert st["routing_metrics"] == {
        "retry_count": 0,
        "failover_count": 0,
        "attempt_unavailable_count": 0,
        "attempt_reject_count": 0,
    }
    rows = {p["id"]: p for p in st["peers"]}
    h = rows[host.short_id]
    assert (h["role"], h["state"], h["models"], h["hosted_models_known"]) == ("Host", "serving", ["tiny"], True)
    assert (h["version"], h["hostname"], h["is_soc"], h["vram_gb"]) == ("0.76.0-rc6", "gpu-box", False, 24.0)
    assert h["requested_models"] == ["wanted"]
    assert h["gpus"] == [{"name": "RTX 4090", "vram_bytes": 24_000_000_000, "mem_bandwidth_gbps": 1008.0}]
    assert h["rtt_ms"] is None and "latency_ms" not in h  # no connection of ours, no relayed measurement
    assert h["meshd"]["endpoint_id"] == host.endpoint_id and h["meshd"]["connected"] is False
    c = rows[other.short_id]
    assert (c["role"], c["state"]) == ("Client", "client")
    assert (c["latency_ms"], c["latency_source"], c["latency_age_ms"]) == (42, "direct", 900)
    assert c["latency_observer_id"] == host.endpoint_id
    own = st["meshd"]
    assert (own["version"], own["node_state"], own["role"]) == (__version__, "discovering", "client")
    assert own["gate"]["inflight"] == 0 and own["nostr_discovery"] == [] and own["iroh_relay"] is None
    assert [m["name"] for m in own["mesh_models"]] == ["tiny"]


def test_a_host_serves_stands_by_and_reports_its_models() -> None:
    node = make_node(Role.HOST, mesh_name="lab")
    st = StatusView(node).status()
    check_status(st)
    assert (st["node_state"], st["is_host"], st["llama_ready"], st["mesh_name"]) == ("standby", True, False, "lab")
    node.set_hosted_models(("tiny", "small"))
    st = StatusView(node).status()
    check_status(st)
    assert (st["node_state"], st["node_status"], st["model_name"]) == ("serving", "Serving", "tiny")
    assert st["serving_models"] == st["hosted_models"] == st["models"] == ["tiny", "small"]
    assert st["runtime"]["backend"] == "openai-compatible"
    assert [m["name"] for m in st["runtime"]["models"]] == ["tiny", "small"]
    assert st["meshd"]["role"] == "host" and "backend" not in st["meshd"]  # no backend watch given


def test_a_gated_mesh_shows_its_requirements_rejections_and_the_signed_token() -> None:
    node = make_node()
    node.clock.advance(NOW / 1000)
    token = make_token(make_owner())
    node.admission.enter_gated_mesh(MeshRequirementState.from_token(token))
    node.mesh.mesh_id = token.mesh_id
    node.admission.reject("gossip", "node_version_below_floor", "peer abc announces 0.59.0", b"\x01" * 32)
    st = StatusView(node).status()
    check_status(st)
    assert st["mesh_id"] == token.mesh_id
    assert st["mesh_requirements"]["policy_hash"] == token.policy_hash
    assert st["mesh_requirements"]["requirements"]["node_version"] == {"min": "0.76.0"}
    (rejection,) = st["recent_mesh_rejections"]
    assert rejection["source"] == "gossip" and rejection["reason"] == "node_version_below_floor"
    assert st["token"] == token.encode()  # the signed token we joined with, while it is valid
    node.clock.advance(3600)
    assert StatusView(node).status()["token"] == ""  # expired: no token leads into this mesh
    requirements = node.admission.requirements
    assert requirements is not None
    node.admission.enter_gated_mesh(attrs.evolve(requirements, token=None))
    assert StatusView(node).status()["token"] == ""


class FakePublisher:
    """What the status reads of a ``Publisher``."""

    def __init__(self, results: list[PublishResult], *, running: bool = True, delisted: bool = False) -> None:
        self.last_results, self.running, self.delisted = results, running, delisted


def test_publication_state() -> None:
    node = make_node(Role.HOST)

    def state(pub: Any) -> str:
        return str(StatusView(node, publisher=pub).status()["publication_state"])

    ok, refused = PublishResult("ws://a", True, ""), PublishResult("ws://b", False, "blocked")
    assert state(None) == "private"
    assert state(FakePublisher([])) == "private"  # not published yet
    assert state(FakePublisher([refused, ok])) == "public"
    assert state(FakePublisher([refused])) == "publish_failed"
    assert state(FakePublisher([ok], delisted=True)) == "private"
    assert state(FakePublisher([ok], running=False)) == "private"


def test_gossiped_gpu_numbers_are_parsed_or_left_out() -> None:
    from meshd.protocol.peers import GpuInfo

    rows = gpu_entries(
        (
            GpuInfo(name="A", vram_bytes="9" * 40, compute_tflops_fp16="nan"),
            GpuInfo(name="B", vram_bytes="-5", reserved_bytes="100", compute_tflops_fp32="inf"),
            GpuInfo(name=None, vram_bytes="1"),
        )
    )
    assert rows == [{"name": "A", "vram_bytes": 0}, {"name": "B", "vram_bytes": 0, "reserved_bytes": 100}]


def test_meshds_own_fields_never_share_a_name_with_0_76s() -> None:
    st = StatusView(make_node()).status()
    assert set(st) - set(STATUS_KEYS) - set(STATUS_OPTIONAL) == {"meshd"}
    # the names meshd used before 0.76's shape, now under meshd
    assert {"node_state", "version", "endpoint_id", "nostr_discovery", "mesh_models", "uptime_secs"} <= set(st["meshd"])
