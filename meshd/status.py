"""``GET /api/status`` (and every ``/api/events`` event): the node's state in mesh-llm 0.76's shape.

The payload is mesh-llm's ``StatusPayload`` (MESH_PROTOCOL_076.md §10): every key it has, with its type
and meaning, filled in with what meshd knows (and the neutral value where meshd has nothing: no GPUs, no
owner certificate, no release attestation). What only meshd has goes under one key of its own,
``meshd`` (an object), and each peer row carries its own ``meshd`` object; nothing of meshd's shares a
name with a 0.76 key. ``docs/api.md`` lists both.

:class:`StatusView` reads the node and the parts it is given (mesh state through the node, the API gate,
the proxy's counters, the host's backend watch, Nostr discovery and publishing, the iroh relay) and
changes none of them; ``tap.build_service`` builds one with every part, tests with the parts they have.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from meshd import __version__
from meshd.mesh.models import LocalModel, MeshModel, mesh_models
from meshd.mesh.state import PeerEntry
from meshd.protocol.peers import CapabilityLevel, GpuInfo, LatencySource, PeerInfo, Role
from meshd.protocol.requirements import RequirementError, requirements_summary
from meshd.protocol.version import ANNOUNCED_VERSION

if TYPE_CHECKING:
    from meshd.autojoin import Discovery
    from meshd.discovery.publish import Publisher
    from meshd.host import BackendWatch
    from meshd.node import Node
    from meshd.web.gate import Gate
    from meshd.web.proxy import MeshProxy

#: ``runtime.backend`` of a meshd host: it relays to any OpenAI-compatible server.
RUNTIME_BACKEND = "openai-compatible"
#: meshd checks no owner certificate and no release attestation (its own or its peers').
UNSIGNED_OWNER: Mapping[str, Any] = {"status": "unsigned", "verified": False}
NO_ATTESTATION: Mapping[str, Any] = {"status": "missing", "verified": False}
_LATENCY_SOURCES = {
    LatencySource.DIRECT: "direct",
    LatencySource.ESTIMATED: "estimated",
    LatencySource.UNKNOWN: "unknown",
}
_STATUS = {CapabilityLevel.SUPPORTED: "supported", CapabilityLevel.LIKELY: "likely"}
#: Numbers in a peer's gossiped GPU entries are believed up to this (else left out).
_MAX_GPU_NUMBER_CHARS = 20


def _title(state: str) -> str:
    return state.capitalize()


def node_state(node: Node, backend: BackendWatch | None) -> str:
    """0.76's ``node_state``: ``client``; or for a host ``serving`` while its backend serves a model,
    ``loading`` until the backend first answered, ``standby`` while it serves nothing."""
    if node.is_client:
        return "client"
    if node.hosted_models:
        return "serving"
    if backend is not None and not backend.polled:
        return "loading"
    return "standby"


def peer_state(info: PeerInfo) -> str:
    """A peer's ``state`` in 0.76's node_state values (from what it announces)."""
    if info.role is Role.CLIENT:
        return "client"
    return "serving" if info.served_models else "standby"


def gpu_entries(gpus: tuple[GpuInfo, ...]) -> list[dict[str, Any]]:
    """A peer's gossiped GPUs as 0.76's GpuEntry rows (numbers arrive as text; bad ones are left out)."""

    def number(text: str | None, kind: type) -> Any:
        if text is None or len(text) > _MAX_GPU_NUMBER_CHARS:
            return None
        try:
            value = kind(text.strip())
        except ValueError:
            return None
        return value if value >= 0 and value == value and value != float("inf") else None

    rows = []
    for gpu in gpus:
        if not gpu.name:
            continue
        row: dict[str, Any] = {"name": gpu.name, "vram_bytes": number(gpu.vram_bytes, int) or 0}
        for key, text, kind in (
            ("reserved_bytes", gpu.reserved_bytes, int),
            ("mem_bandwidth_gbps", gpu.mem_bandwidth_gbps, float),
            ("compute_tflops_fp32", gpu.compute_tflops_fp32, float),
            ("compute_tflops_fp16", gpu.compute_tflops_fp16, float),
        ):
            value = number(text, kind)
            if value is not None:
                row[key] = value
        rows.append(row)
    return rows


def _owner(info: PeerInfo) -> dict[str, Any]:
    # meshd does not verify owner attestations: one that is there is reported as not supported, unverified.
    if info.owner_id is None:
        return dict(UNSIGNED_OWNER)
    return {"owner_id": info.owner_id, "status": "unsupported_protocol", "verified": False}


def _status_of(level: CapabilityLevel) -> str:
    return _STATUS.get(level, "none")


@attrs.define
class StatusView:
    """Builds ``/api/status`` from the node and the parts it is given (each optional)."""

    node: Node
    gate: Gate | None = None
    proxy: MeshProxy | None = None
    backend: BackendWatch | None = None
    discovery: Discovery | None = None
    publisher: Publisher | None = None

    def __call__(self) -> dict[str, Any]:
        return self.status()

    # -- models ---------------------------------------------------------------------------------

    def local_models(self) -> list[LocalModel]:
        """This host's own models with what its backend says about them (names only without a watch)."""
        if self.backend is not None:
            return self.backend.local_models()
        return [LocalModel(name) for name in self.node.hosted_models]

    def models(self) -> list[MeshModel]:
        return mesh_models(self.node.mesh, self.local_models())

    def mesh_models(self) -> list[dict[str, Any]]:
        """``/api/models`` ``mesh_models`` (also ``meshd.mesh_models`` of the status): the warm models with
        their hosts and what is known about them, plus cold models with live demand. On a host each row
        has ``served_count``: requests its backend answered for the mesh (every client's included)."""
        node = self.node
        now = node.now()
        served = self.backend.backend.stats.served if self.backend is not None else None
        demand = {d.model_name: d for d in node.mesh.live_demand(now)}
        warm = {m.name: m for m in self.models()}
        peers = node.mesh.peers
        routes = node.mesh.routable_models()
        out: list[dict[str, Any]] = []
        for name in sorted(set(warm) | set(demand)):
            model = warm.get(name)
            row: dict[str, Any] = {
                "name": name,
                "display_name": model.public_id if model is not None else name,
                "status": "warm" if model is not None and model.hosts else "cold",
                "node_count": model.hosts if model is not None else 0,
                "mesh_vram_gb": round(sum(peers[p].info.vram_bytes for p in routes.get(name, ())) / 1e9, 2),
                "size_gb": 0.0,
            }
            if model is not None:
                row.update(self._model_facts(model))
            d = demand.get(name)
            if d is not None:
                row["request_count"] = d.request_count
                row["last_active_secs_ago"] = max(0, int(now) - d.last_active)
            if served is not None:
                row["served_count"] = served.get(name, 0)
            out.append(row)
        return out

    @staticmethod
    def _model_facts(model: MeshModel) -> dict[str, Any]:
        caps = model.capabilities()
        vision = caps.vision is CapabilityLevel.SUPPORTED
        audio = caps.audio is CapabilityLevel.SUPPORTED
        multimodal = caps.multimodal or vision or audio
        row: dict[str, Any] = {
            "multimodal": multimodal,
            "multimodal_status": "supported" if multimodal else "none",
            "vision": vision,
            "vision_status": _status_of(caps.vision),
            "audio": audio,
            "audio_status": _status_of(caps.audio),
            "reasoning": caps.reasoning in (CapabilityLevel.SUPPORTED, CapabilityLevel.LIKELY),
            "reasoning_status": _status_of(caps.reasoning),
            "tool_use": caps.tool_use is CapabilityLevel.SUPPORTED,
            "tool_use_status": _status_of(caps.tool_use),
            "moe": caps.moe,
        }
        if model.context_length is not None:
            row["context_length"] = model.context_length
        meta = dict(model.descriptor.metadata) if model.descriptor is not None else {}
        if "architecture" in meta:
            row["architecture"] = meta["architecture"]
        if "quant" in meta:
            row["quantization"] = meta["quant"]
        return row

    # -- peers ----------------------------------------------------------------------------------

    def peer_rows(self) -> list[dict[str, Any]]:
        node = self.node
        now = node.now()
        return [self._peer_row(pid, entry, now) for pid, entry in sorted(node.mesh.peers.items())]

    def _peer_row(self, pid: bytes, entry: PeerEntry, now: float) -> dict[str, Any]:
        node = self.node
        info = entry.info
        conn = node.connections.table.get(pid)
        connected = conn is not None and conn.is_connected
        rtt: float | None = None
        path: str | None = None
        relay_url: str | None = None
        if conn is not None and connected:
            rtt = round(conn.stats().rtt_smoothed * 1000, 2)
            path, relay_url = node.connections.path_of(conn)
        row: dict[str, Any] = {
            "id": info.addr.short_id,
            "owner": _owner(info),
            "release_attestation": dict(NO_ATTESTATION),
            "role": info.role.value.capitalize(),
            "state": peer_state(info),
            "models": list(info.served_models),
            "available_models": list(info.catalog_models),
            "requested_models": list(info.requested_models),
            "vram_gb": round(info.vram_bytes / 1e9, 2),
            "serving_models": list(info.serving_models),
            "hosted_models": list(info.hosted_models),
            "hosted_models_known": info.hosted_models_known,
            "version": info.version,
            "rtt_ms": None if rtt is None else round(rtt),
            "hostname": info.hardware.hostname,
            "is_soc": info.hardware.is_soc,
            "gpus": gpu_entries(info.hardware.gpus),
        }
        if rtt is not None:  # measured on our own connection, now
            row.update(latency_ms=round(rtt), latency_source="direct", latency_age_ms=0)
        elif info.latency_ms is not None:  # what the peer that told us about it measured
            row["latency_ms"] = info.latency_ms
            row["latency_source"] = _LATENCY_SOURCES.get(info.latency_source, "unknown")  # type: ignore[arg-type]
            if info.latency_age_ms is not None:
                row["latency_age_ms"] = info.latency_age_ms
            if info.latency_observer_id is not None:
                row["latency_observer_id"] = info.latency_observer_id.hex()
        if info.first_joined_mesh_ts is not None:
            row["first_joined_mesh_ts"] = info.first_joined_mesh_ts
        row["meshd"] = {
            "endpoint_id": pid.hex(),
            "connected": connected,
            "path": path,
            "relay_url": relay_url,
            "rtt_ms": rtt,
            "last_seen_secs_ago": round(now - entry.last_heard(), 1),
            "mesh_id": info.mesh_id,
        }
        return row

    # -- the node -------------------------------------------------------------------------------

    def token(self) -> str:
        """Our invite token; on a gated mesh the signed token we joined with while it is valid, else ""
        (a plain token does not lead into a gated mesh)."""
        node = self.node
        requirements = node.admission.requirements
        if requirements is None:
            return node.token or ""
        signed = requirements.token
        if signed is None:
            return ""
        try:
            signed.verify_at(node.now_ms())
        except RequirementError:
            return ""
        return signed.encode()

    def publication_state(self) -> str:
        """``public`` once a relay took our listing, ``publish_failed`` when the last round was refused by
        every relay, ``private`` otherwise (not publishing, not yet, or delisted while full)."""
        pub = self.publisher
        if pub is None or not pub.running or pub.delisted or not pub.last_results:
            return "private"
        return "public" if any(r.accepted for r in pub.last_results) else "publish_failed"

    def runtime(self, state: str) -> dict[str, Any]:
        node = self.node
        if node.is_client:
            return {"is_processing": node.mesh.inflight_requests > 0, "models": []}
        local = self.local_models()
        out: dict[str, Any] = {
            "backend": RUNTIME_BACKEND,
            "is_processing": self.backend is not None and self.backend.backend.inflight > 0,
            "models": [
                {"name": m.name, "backend": RUNTIME_BACKEND, "status": "ready"}
                | ({"context_length": m.context_length} if m.context_length else {})
                for m in local
            ],
        }
        if local and local[0].context_length:
            out["n_ctx"] = local[0].context_length
        if state == "loading" and self.backend is not None:
            starting = self.backend.fixed_models
            out["models"] = [{"name": n, "backend": RUNTIME_BACKEND, "status": "starting"} for n in starting]
        return out

    def routing_metrics(self) -> dict[str, Any]:
        """The counters of 0.76's ``routing_metrics`` that meshd keeps (on a node with an API port)."""
        proxy = self.proxy
        if proxy is None:
            return {}
        return {
            "retry_count": proxy.failovers,
            "failover_count": proxy.failovers,
            "attempt_unavailable_count": proxy.tunnel_failures,
            "attempt_reject_count": proxy.busy_replies,
        }

    def status(self) -> dict[str, Any]:
        node = self.node
        state = node_state(node, self.backend)
        hosted = list(node.hosted_models) if not node.is_client else []
        requested = [m for m in (self.backend.fixed_models if self.backend is not None else ()) if m not in hosted]
        payload: dict[str, Any] = {
            "version": ANNOUNCED_VERSION,
            "latest_version": None,
            "node_id": node.identity.short_id,
            "owner": dict(UNSIGNED_OWNER),
            "release_attestation": dict(NO_ATTESTATION),
            "token": self.token(),
            "node_state": state,
            "node_status": _title(state),
            "is_host": not node.is_client,
            "is_client": node.is_client,
            "llama_ready": node.is_client or bool(hosted),
            "runtime": self.runtime(state),
            "model_name": hosted[0] if hosted else "",
            "models": hosted,
            "available_models": [],
            "requested_models": requested,
            "serving_models": hosted,
            "hosted_models": hosted,
            "draft_name": None,
            "api_port": node.api_port or 0,
            "my_vram_gb": 0.0,
            "model_size_gb": 0.0,
            "peers": self.peer_rows(),
            "wakeable_nodes": [],
            "local_instances": [],
            "launch_pi": None,
            "launch_goose": None,
            "inflight_requests": node.mesh.inflight_requests,
            "mesh_discovery_mode": "nostr",
            "discovery_scope": "public",
            "discovery_source": "nostr-relay",
            "nostr_discovery": node.config.auto,
            "publication_state": self.publication_state(),
            "my_hostname": f"meshd-{node.identity.short_id}",
            "my_is_soc": None,
            "gpus": [],
            "routing_affinity": {"prefix_enabled": False, "sticky_enabled": True},
            "routing_metrics": self.routing_metrics(),
        }
        if node.mesh_id is not None:
            payload["mesh_id"] = node.mesh_id
        if node.mesh_name is not None:
            payload["mesh_name"] = node.mesh_name
        requirements = node.admission.requirements
        if requirements is not None:
            payload["mesh_requirements"] = requirements_summary(requirements)
        rejections = node.admission.rejections
        if rejections:
            payload["recent_mesh_rejections"] = rejections
        payload["meshd"] = self.extras()
        return payload

    def extras(self) -> dict[str, Any]:
        """What only meshd reports (the ``meshd`` object of the status)."""
        node = self.node
        out: dict[str, Any] = {
            "version": __version__,
            "node_state": node.state.value,
            "role": node.config.role.value,
            "endpoint_id": node.identity.endpoint_id,
            "quic_address": node.quic_address(),
            "uptime_secs": round(node.uptime, 3),
            "console_port": node.console_port,
            "headless": node.config.headless,
            "nostr_discovery": self.discovery.nostr_status() if self.discovery is not None else [],
            "iroh_relay": node.iroh_relay.status() if node.iroh_relay is not None else None,
            "mesh_models": self.mesh_models(),
        }
        if self.gate is not None:
            out["gate"] = self.gate.status()
            if self.gate.shared is not None:
                out["redis"] = self.gate.shared.status()
        if self.backend is not None:
            out["backend"] = self.backend.status()
        return out


__all__ = ["NO_ATTESTATION", "UNSIGNED_OWNER", "StatusView", "gpu_entries", "node_state", "peer_state"]
