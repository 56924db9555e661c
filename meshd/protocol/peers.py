"""Pure conversions between gossip ``PeerAnnouncement`` messages and meshd's peer records,
plus builders for the messages meshd sends (MESH_PROTOCOL.md §5.5, §5.7, §5.10).

:func:`peer_info_from_announcement` follows mesh-llm's receiver-side reading of an announcement
(``proto_ann_to_local``); :func:`build_self_announcement` produces the entry a node puts last in
its own GossipFrame.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

import attrs

from meshd.protocol import node_pb2
from meshd.protocol.errors import InvalidToken
from meshd.protocol.keys import ENDPOINT_ID_BYTES
from meshd.protocol.streams import PROTOCOL_GENERATION
from meshd.protocol.token import EndpointAddr

__all__ = [
    "EXCLUDED_DEMAND_MODELS",
    "DemandEntry",
    "GpuInfo",
    "HardwareInfo",
    "ModelRuntime",
    "PeerInfo",
    "Role",
    "build_gossip_frame",
    "build_peer_down",
    "build_peer_leaving",
    "build_route_table_request",
    "build_self_announcement",
    "peer_info_from_announcement",
    "sanitize_relayed_announcement",
]

#: Model names never reported as demand (mesh-llm skips the ``auto`` alias and empty names).
EXCLUDED_DEMAND_MODELS = frozenset({"", "auto"})


class Role(enum.Enum):
    WORKER = "worker"
    HOST = "host"
    CLIENT = "client"


@attrs.frozen
class DemandEntry:
    model_name: str
    last_active: int  # unix seconds
    request_count: int


@attrs.frozen
class ModelRuntime:
    model_name: str
    identity_hash: str | None = None
    context_length: int | None = None
    ready: bool = False


@attrs.frozen
class GpuInfo:
    name: str | None = None
    vram_bytes: str | None = None
    reserved_bytes: str | None = None
    mem_bandwidth_gbps: str | None = None
    compute_tflops_fp32: str | None = None
    compute_tflops_fp16: str | None = None


@attrs.frozen
class HardwareInfo:
    is_soc: bool | None = None
    hostname: str | None = None
    gpus: tuple[GpuInfo, ...] = ()


@attrs.frozen
class PeerInfo:
    """What a gossip announcement says about one peer, in meshd's terms."""

    endpoint_id: bytes
    role: Role
    #: Host's local API port (present for HOST; informational, not used for tunnelling).
    http_port: int | None
    #: Where to dial the peer (from ``serialized_addr``; no addresses if absent or unusable).
    addr: EndpointAddr
    version: str | None
    vram_bytes: int
    #: Whether ``hosted_models`` is authoritative.
    hosted_models_known: bool
    hosted_models: tuple[str, ...]
    serving_models: tuple[str, ...]
    requested_models: tuple[str, ...]
    catalog_models: tuple[str, ...]
    #: Model names the peer itself reports in its served-model descriptors (else identities).
    descriptor_models: tuple[str, ...]
    mesh_id: str | None
    demand: tuple[DemandEntry, ...]
    model_source: str | None
    hardware: HardwareInfo
    #: GPU name summary: the ``hardware`` GPU names joined, else the legacy ``gpu_name``.
    gpu_name: str | None
    runtime: tuple[ModelRuntime, ...]
    owner_id: str | None
    first_joined_mesh_ts: int | None

    @property
    def served_models(self) -> tuple[str, ...]:
        """Models this peer can be asked to run: ``hosted_models`` when known, else the older
        ``serving_models`` list."""
        return self.hosted_models if self.hosted_models_known else self.serving_models

    def context_length(self, model: str) -> int | None:
        """Context length the peer advertises for ``model`` (first runtime entry that has one)."""
        for entry in self.runtime:
            if entry.model_name == model and entry.context_length is not None:
                return entry.context_length
        return None


def _opt(message: object, field: str) -> object | None:
    return getattr(message, field) if message.HasField(field) else None  # type: ignore[attr-defined]


def _opt_str(message: object, field: str) -> str | None:
    value = _opt(message, field)
    return value if isinstance(value, str) else None


def _gpu_from_proto(gpu: node_pb2.GpuInfo) -> GpuInfo:
    return GpuInfo(
        name=_opt_str(gpu, "name"),
        vram_bytes=_opt_str(gpu, "vram_bytes"),
        reserved_bytes=_opt_str(gpu, "reserved_bytes"),
        mem_bandwidth_gbps=_opt_str(gpu, "mem_bandwidth_gbps"),
        compute_tflops_fp32=_opt_str(gpu, "compute_tflops_fp32"),
        compute_tflops_fp16=_opt_str(gpu, "compute_tflops_fp16"),
    )


def _hardware_from_proto(ann: node_pb2.PeerAnnouncement) -> tuple[HardwareInfo, str | None]:
    legacy_is_soc = ann.is_soc if ann.HasField("is_soc") else None
    legacy_hostname = _opt_str(ann, "hostname")
    legacy_gpu_name = _opt_str(ann, "gpu_name")
    if not ann.HasField("hardware"):
        return HardwareInfo(is_soc=legacy_is_soc, hostname=legacy_hostname), legacy_gpu_name
    hw = ann.hardware
    gpus = tuple(_gpu_from_proto(gpu) for gpu in hw.gpus)
    names = [gpu.name for gpu in gpus if gpu.name]
    return (
        HardwareInfo(
            is_soc=hw.is_soc if hw.HasField("is_soc") else legacy_is_soc,
            hostname=_opt_str(hw, "hostname") or legacy_hostname,
            gpus=gpus,
        ),
        ", ".join(names) if names else legacy_gpu_name,
    )


def _addr_from_proto(ann: node_pb2.PeerAnnouncement) -> EndpointAddr:
    # mesh-llm uses whatever the JSON says; meshd also requires the JSON's id to be the
    # announced endpoint_id, so that an entry cannot point our dialler at another key.
    if ann.serialized_addr:
        try:
            addr = EndpointAddr.from_json(ann.serialized_addr)
        except (InvalidToken, UnicodeDecodeError):
            addr = None
        if addr is not None and addr.id == ann.endpoint_id:
            return addr
    return EndpointAddr(bytes(ann.endpoint_id))


def _descriptor_models(ann: node_pb2.PeerAnnouncement) -> tuple[str, ...]:
    names = tuple(
        d.identity.model_name for d in ann.served_model_descriptors if d.HasField("identity") and d.identity.model_name
    )
    if names:
        return names
    return tuple(identity.model_name for identity in ann.served_model_identities if identity.model_name)


def peer_info_from_announcement(ann: node_pb2.PeerAnnouncement) -> PeerInfo:
    """Convert a validated announcement (32-byte ``endpoint_id``) into a :class:`PeerInfo`."""
    if len(ann.endpoint_id) != ENDPOINT_ID_BYTES:
        raise ValueError("announcement endpoint_id must be 32 bytes (validate first)")
    if ann.role == node_pb2.HOST:
        role = Role.HOST
        # mesh-llm stores the port as u16 (``as u16``) and 0 when absent.
        http_port: int | None = (ann.http_port if ann.HasField("http_port") else 0) & 0xFFFF
    elif ann.role == node_pb2.CLIENT:
        role, http_port = Role.CLIENT, None
    else:
        role, http_port = Role.WORKER, None
    known = ann.hosted_models_known if ann.HasField("hosted_models_known") else bool(ann.hosted_models)
    hardware, gpu_name = _hardware_from_proto(ann)
    return PeerInfo(
        endpoint_id=bytes(ann.endpoint_id),
        role=role,
        http_port=http_port,
        addr=_addr_from_proto(ann),
        version=_opt_str(ann, "version"),
        vram_bytes=ann.vram_bytes,
        hosted_models_known=known,
        hosted_models=tuple(ann.hosted_models) if known else (),
        serving_models=tuple(ann.serving_models),
        requested_models=tuple(ann.requested_models),
        catalog_models=tuple(ann.catalog_models),
        descriptor_models=_descriptor_models(ann),
        mesh_id=_opt_str(ann, "mesh_id"),
        demand=tuple(DemandEntry(d.model_name, d.last_active, d.request_count) for d in ann.demand),
        model_source=_opt_str(ann, "model_source"),
        hardware=hardware,
        gpu_name=gpu_name,
        runtime=tuple(
            ModelRuntime(
                model_name=r.model_name,
                identity_hash=_opt_str(r, "identity_hash"),
                context_length=r.context_length if r.HasField("context_length") else None,
                ready=r.ready,
            )
            for r in ann.served_model_runtime
        ),
        owner_id=ann.owner_attestation.owner_id if ann.HasField("owner_attestation") else None,
        first_joined_mesh_ts=ann.first_joined_mesh_ts if ann.HasField("first_joined_mesh_ts") else None,
    )


def build_self_announcement(
    *,
    addr: EndpointAddr,
    version: str,
    role: Role = Role.CLIENT,
    http_port: int | None = None,
    hosted_models: Sequence[str] = (),
    mesh_id: str | None = None,
    demand: Iterable[DemandEntry] = (),
    vram_bytes: int = 0,
    hostname: str | None = None,
    is_soc: bool | None = None,
    runtime: Iterable[ModelRuntime] = (),
    first_joined_mesh_ts: int | None = None,
) -> node_pb2.PeerAnnouncement:
    """The entry a node announces about itself (the last entry of its GossipFrame).

    A client (the default) sends role CLIENT, no ``http_port``, VRAM 0, ``hosted_models=[]`` with
    ``hosted_models_known=true``, its ``serialized_addr``, ``mesh_id`` once learned and one demand
    entry per model requested through it. A HOST must give ``http_port``; its ``hosted_models``
    also become ``serving_models`` (first = ``primary_serving``).
    """
    if role is Role.HOST:
        if http_port is None or not 0 < http_port <= 0xFFFF:
            raise ValueError("a HOST announcement needs an http_port in 1..65535")
    elif http_port is not None:
        raise ValueError("only a HOST announces an http_port")
    if role is Role.CLIENT and hosted_models:
        raise ValueError("a CLIENT hosts no models")
    ann = node_pb2.PeerAnnouncement(
        endpoint_id=addr.id,
        role={Role.HOST: node_pb2.HOST, Role.CLIENT: node_pb2.CLIENT, Role.WORKER: node_pb2.WORKER}[role],
        version=version,
        vram_bytes=vram_bytes,
        serialized_addr=addr.to_json().encode("utf-8"),
        hosted_models=list(hosted_models),
        hosted_models_known=True,
    )
    if http_port is not None:
        ann.http_port = http_port
    if role is Role.HOST and hosted_models:
        ann.serving_models.extend(hosted_models)
        ann.primary_serving = hosted_models[0]
    if mesh_id is not None:
        ann.mesh_id = mesh_id
    for entry in demand:
        if entry.model_name in EXCLUDED_DEMAND_MODELS:
            continue
        ann.demand.add(
            model_name=entry.model_name,
            last_active=entry.last_active,
            request_count=entry.request_count,
        )
    if hostname is not None or is_soc is not None:
        ann.hardware.SetInParent()
        if hostname is not None:
            ann.hardware.hostname = hostname
            ann.hostname = hostname
        if is_soc is not None:
            ann.hardware.is_soc = is_soc
            ann.is_soc = is_soc
    for r in runtime:
        entry_pb = ann.served_model_runtime.add(model_name=r.model_name, ready=r.ready)
        if r.identity_hash is not None:
            entry_pb.identity_hash = r.identity_hash
        if r.context_length is not None:
            entry_pb.context_length = r.context_length
    if first_joined_mesh_ts is not None:
        ann.first_joined_mesh_ts = first_joined_mesh_ts
    return ann


def sanitize_relayed_announcement(ann: node_pb2.PeerAnnouncement) -> node_pb2.PeerAnnouncement:
    """A copy of another peer's entry as it should be relayed: no ``mesh_id``, no ``demand``
    (self-entry-only fields) and none of the deprecated ``available_*`` lists."""
    copy = node_pb2.PeerAnnouncement()
    copy.CopyFrom(ann)
    copy.ClearField("mesh_id")
    copy.ClearField("demand")
    copy.ClearField("available_models")
    copy.ClearField("available_model_metadata")
    copy.ClearField("available_model_sizes")
    return copy


def build_gossip_frame(
    sender_id: bytes,
    self_entry: node_pb2.PeerAnnouncement,
    others: Iterable[node_pb2.PeerAnnouncement] = (),
) -> node_pb2.GossipFrame:
    """GossipFrame with generation 1: relayed entries first, the sender's own entry last."""
    if len(sender_id) != ENDPOINT_ID_BYTES or self_entry.endpoint_id != sender_id:
        raise ValueError("the self entry must carry the 32-byte sender_id")
    frame = node_pb2.GossipFrame(gen=PROTOCOL_GENERATION, sender_id=sender_id)
    frame.peers.extend(others)
    frame.peers.append(self_entry)
    return frame


def build_peer_leaving(own_id: bytes) -> node_pb2.PeerLeaving:
    return node_pb2.PeerLeaving(peer_id=own_id, gen=PROTOCOL_GENERATION)


def build_peer_down(dead_id: bytes) -> node_pb2.PeerDown:
    return node_pb2.PeerDown(peer_id=dead_id, gen=PROTOCOL_GENERATION)


def build_route_table_request(requester_id: bytes = b"") -> node_pb2.RouteTableRequest:
    return node_pb2.RouteTableRequest(requester_id=requester_id, gen=PROTOCOL_GENERATION)
