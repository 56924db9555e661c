"""Pure conversions between gossip ``PeerAnnouncement`` messages and meshd's peer records,
plus builders for the messages meshd sends (MESH_PROTOCOL.md §5.5, §5.7, §5.10;
MESH_PROTOCOL_076.md §4).

:func:`peer_info_from_announcement` follows mesh-llm 0.76's receiver-side reading of an
announcement (``proto_ann_to_local``), including its ingest caps on model-name lists;
:func:`build_self_announcement` produces the entry a node puts last in its own GossipFrame.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence

import attrs

from meshd.protocol import node_pb2
from meshd.protocol.errors import InvalidToken
from meshd.protocol.keys import ENDPOINT_ID_BYTES, is_valid_ed25519_point
from meshd.protocol.streams import PROTOCOL_GENERATION
from meshd.protocol.token import EndpointAddr

__all__ = [
    "EXCLUDED_DEMAND_MODELS",
    "MAX_REMOTE_MODEL_LIST_LEN",
    "MAX_REMOTE_MODEL_NAME_BYTES",
    "CapabilityLevel",
    "DemandEntry",
    "GpuInfo",
    "HardwareInfo",
    "InferenceAdmission",
    "LatencySource",
    "ModelCapabilities",
    "ModelRuntime",
    "ModelSourceKind",
    "PeerInfo",
    "Role",
    "ServedModel",
    "build_gossip_frame",
    "build_peer_down",
    "build_peer_leaving",
    "build_route_table_request",
    "build_self_announcement",
    "cap_model_names",
    "peer_info_from_announcement",
    "sanitize_relayed_announcement",
]

#: Model names never reported as demand (mesh-llm skips the ``auto`` alias and empty names).
EXCLUDED_DEMAND_MODELS = frozenset({"", "auto"})

#: mesh-llm 0.76's ingest caps on a remote peer's model-name lists (``cap_remote_model_names``):
#: longer names are dropped and only the first entries are kept, silently.
MAX_REMOTE_MODEL_LIST_LEN = 256
MAX_REMOTE_MODEL_NAME_BYTES = 512


def cap_model_names(names: Iterable[str]) -> tuple[str, ...]:
    """Drop names over 512 UTF-8 bytes, then keep at most the first 256 (mesh-llm's order)."""
    kept: list[str] = []
    for name in names:
        if len(name.encode("utf-8")) > MAX_REMOTE_MODEL_NAME_BYTES:
            continue
        kept.append(name)
        if len(kept) == MAX_REMOTE_MODEL_LIST_LEN:
            break
    return tuple(kept)


class Role(enum.Enum):
    WORKER = "worker"
    HOST = "host"
    CLIENT = "client"


class InferenceAdmission(enum.IntEnum):
    """A host's activity state (``inference_admission_state``, field 49)."""

    UNSPECIFIED = node_pb2.INFERENCE_ADMISSION_STATE_UNSPECIFIED
    ACCEPTING = node_pb2.INFERENCE_ADMISSION_STATE_ACCEPTING
    ACCEPTING_DEPRIORITIZED = node_pb2.INFERENCE_ADMISSION_STATE_ACCEPTING_DEPRIORITIZED
    REMOTE_PAUSED = node_pb2.INFERENCE_ADMISSION_STATE_REMOTE_PAUSED
    ALL_PAUSED = node_pb2.INFERENCE_ADMISSION_STATE_ALL_PAUSED


class LatencySource(enum.IntEnum):
    """How a relayed entry's ``latency_ms`` was obtained (field 41)."""

    UNSPECIFIED = node_pb2.LATENCY_SOURCE_UNSPECIFIED
    DIRECT = node_pb2.LATENCY_SOURCE_DIRECT
    ESTIMATED = node_pb2.LATENCY_SOURCE_ESTIMATED
    UNKNOWN = node_pb2.LATENCY_SOURCE_UNKNOWN


def _enum_or_none(cls: type[enum.IntEnum], value: int) -> object | None:
    try:
        return cls(value)
    except ValueError:  # outside the enum: ignored, as mesh-llm does
        return None


@attrs.frozen
class DemandEntry:
    model_name: str
    last_active: int  # unix seconds
    request_count: int


class CapabilityLevel(enum.IntEnum):
    """How sure a host is that a model has a capability (``CapabilityLevel``)."""

    UNSPECIFIED = node_pb2.CAPABILITY_LEVEL_UNSPECIFIED
    NONE = node_pb2.CAPABILITY_LEVEL_NONE
    LIKELY = node_pb2.CAPABILITY_LEVEL_LIKELY
    SUPPORTED = node_pb2.CAPABILITY_LEVEL_SUPPORTED


class ModelSourceKind(enum.IntEnum):
    """Where a served model comes from (``ModelSourceKind``): it decides the model's public id."""

    UNSPECIFIED = node_pb2.MODEL_SOURCE_KIND_UNSPECIFIED
    CATALOG = node_pb2.MODEL_SOURCE_KIND_CATALOG
    HUGGING_FACE = node_pb2.MODEL_SOURCE_KIND_HUGGING_FACE
    LOCAL_GGUF = node_pb2.MODEL_SOURCE_KIND_LOCAL_GGUF
    DIRECT_URL = node_pb2.MODEL_SOURCE_KIND_DIRECT_URL
    UNKNOWN = node_pb2.MODEL_SOURCE_KIND_UNKNOWN


@attrs.frozen
class ModelCapabilities:
    """A descriptor's ``ModelCapabilities`` (levels outside the enum read as NONE)."""

    vision: CapabilityLevel = CapabilityLevel.NONE
    audio: CapabilityLevel = CapabilityLevel.NONE
    reasoning: CapabilityLevel = CapabilityLevel.NONE
    tool_use: CapabilityLevel = CapabilityLevel.NONE
    multimodal: bool = False
    moe: bool = False


#: ``ServedModelMetadata`` fields kept from a descriptor (strings, then numbers), as mesh-llm's
#: ``/v1/models`` ``metadata`` names them.
METADATA_TEXT_FIELDS = ("architecture", "parameter_size", "quant", "tokenizer")
METADATA_NUMBER_FIELDS = (
    "parameter_count_b",
    "native_context_length",
    "layer_count",
    "embedding_size",
    "head_count",
    "kv_head_count",
    "expert_count",
    "active_expert_count",
)
#: Text in a descriptor (refs, file names, metadata) longer than this is dropped, like a model name.
MAX_DESCRIPTOR_TEXT_BYTES = MAX_REMOTE_MODEL_NAME_BYTES


@attrs.frozen
class ServedModel:
    """One ``ServedModelDescriptor`` of a peer: what it serves under ``model_name`` and where that model
    comes from (the identity decides its public id, MESH_PROTOCOL_076.md §9.1)."""

    model_name: str
    source_kind: ModelSourceKind = ModelSourceKind.UNSPECIFIED
    canonical_ref: str | None = None
    repository: str | None = None
    revision: str | None = None
    artifact: str | None = None
    #: Whether ``capabilities`` was filled in by the host (else it says nothing).
    capabilities_known: bool = False
    capabilities: ModelCapabilities = ModelCapabilities()
    #: ``ServedModelMetadata`` as ``(field, value)`` pairs (only the fields that are set).
    metadata: tuple[tuple[str, str | float | int], ...] = ()


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
    # ---- 0.76 ----
    explicit_model_interests: tuple[str, ...] = ()
    #: Host activity state; None when absent or outside the enum. Routing may skip
    #: REMOTE_PAUSED / ALL_PAUSED hosts and de-prioritise ACCEPTING_DEPRIORITIZED ones.
    inference_admission_state: InferenceAdmission | None = None
    #: Gated meshes: the policy hash in the peer's entry.
    mesh_policy_hash: str | None = None
    #: Relayed entries: the relaying node's latency to this peer, how it got it, its age, and
    #: who measured it (a 32-byte valid key, else None).
    latency_ms: int | None = None
    latency_source: LatencySource | None = None
    latency_age_ms: int | None = None
    latency_observer_id: bytes | None = None
    #: The peer's ``served_model_descriptors`` (bounded like the model-name lists).
    served_descriptors: tuple[ServedModel, ...] = ()

    def descriptor(self, model: str) -> ServedModel | None:
        """The peer's descriptor of ``model`` (the first one naming it)."""
        for d in self.served_descriptors:
            if d.model_name == model:
                return d
        return None

    @property
    def accepts_remote_inference(self) -> bool:
        """False when the host says it is not taking tunnelled requests (paused)."""
        return self.inference_admission_state not in (InferenceAdmission.REMOTE_PAUSED, InferenceAdmission.ALL_PAUSED)

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
    # mesh-llm does not cap descriptors; meshd bounds this list like the other model lists.
    names = cap_model_names(
        d.identity.model_name for d in ann.served_model_descriptors if d.HasField("identity") and d.identity.model_name
    )
    if names:
        return names
    return cap_model_names(identity.model_name for identity in ann.served_model_identities if identity.model_name)


def _short_text(message: object, field: str) -> str | None:
    value = _opt_str(message, field)
    if value is None or len(value.encode("utf-8")) > MAX_DESCRIPTOR_TEXT_BYTES:
        return None
    return value


def _level(value: int) -> CapabilityLevel:
    level = _enum_or_none(CapabilityLevel, value)
    return level if isinstance(level, CapabilityLevel) else CapabilityLevel.NONE


def _served_model(d: node_pb2.ServedModelDescriptor) -> ServedModel | None:
    identity = d.identity
    name = identity.model_name
    if not name or len(name.encode("utf-8")) > MAX_REMOTE_MODEL_NAME_BYTES:
        return None
    kind = _enum_or_none(ModelSourceKind, identity.source_kind)
    caps = d.capabilities
    metadata: list[tuple[str, str | float | int]] = []
    if d.HasField("metadata"):
        for field in METADATA_TEXT_FIELDS:
            text = _short_text(d.metadata, field)
            if text is not None:
                metadata.append((field, text))
        for field in METADATA_NUMBER_FIELDS:
            number = _opt(d.metadata, field)
            if isinstance(number, float) and not math.isfinite(number):
                continue
            if isinstance(number, int | float):
                metadata.append((field, number))
    return ServedModel(
        model_name=name,
        source_kind=kind if isinstance(kind, ModelSourceKind) else ModelSourceKind.UNKNOWN,
        canonical_ref=_short_text(identity, "canonical_ref"),
        repository=_short_text(identity, "repository"),
        revision=_short_text(identity, "revision"),
        artifact=_short_text(identity, "artifact"),
        capabilities_known=d.capabilities_known if d.HasField("capabilities_known") else False,
        capabilities=ModelCapabilities(
            vision=_level(caps.vision),
            audio=_level(caps.audio),
            reasoning=_level(caps.reasoning),
            tool_use=_level(caps.tool_use),
            multimodal=caps.multimodal,
            moe=caps.moe,
        ),
        metadata=tuple(metadata),
    )


def _served_descriptors(ann: node_pb2.PeerAnnouncement) -> tuple[ServedModel, ...]:
    # Bounded like the model-name lists: descriptors with a name over 512 bytes are dropped, at most 256 kept.
    out: list[ServedModel] = []
    for d in ann.served_model_descriptors:
        model = _served_model(d) if d.HasField("identity") else None
        if model is not None:
            out.append(model)
            if len(out) == MAX_REMOTE_MODEL_LIST_LEN:
                break
    return tuple(out)


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
        hosted_models=cap_model_names(ann.hosted_models) if known else (),
        serving_models=cap_model_names(ann.serving_models),
        requested_models=cap_model_names(ann.requested_models),
        catalog_models=cap_model_names(ann.catalog_models),
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
        explicit_model_interests=cap_model_names(ann.explicit_model_interests),
        inference_admission_state=(
            _enum_or_none(InferenceAdmission, ann.inference_admission_state)  # type: ignore[arg-type]
            if ann.HasField("inference_admission_state")
            else None
        ),
        mesh_policy_hash=_opt_str(ann, "mesh_policy_hash"),
        latency_ms=ann.latency_ms if ann.HasField("latency_ms") else None,
        latency_source=(
            _enum_or_none(LatencySource, ann.latency_source)  # type: ignore[arg-type]
            if ann.HasField("latency_source")
            else None
        ),
        latency_age_ms=ann.latency_age_ms if ann.HasField("latency_age_ms") else None,
        latency_observer_id=_observer_id(ann),
        served_descriptors=_served_descriptors(ann),
    )


def _observer_id(ann: node_pb2.PeerAnnouncement) -> bytes | None:
    if not ann.HasField("latency_observer_id"):
        return None
    observer = bytes(ann.latency_observer_id)
    return observer if is_valid_ed25519_point(observer) else None


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


_CAPPED_LISTS = ("catalog_models", "serving_models", "hosted_models", "requested_models", "explicit_model_interests")


def sanitize_relayed_announcement(ann: node_pb2.PeerAnnouncement) -> node_pb2.PeerAnnouncement:
    """A copy of another peer's entry as it should be relayed: no ``mesh_id``, no ``demand``
    (self-entry-only fields), none of the deprecated ``available_*`` lists, no 0.76 self-only
    proofs (``release_attestation``, ``direct_admission_proof``), no latency fields (they described
    what another node measured; mesh-llm puts its own there) and model lists within the ingest
    caps. Fields this code does not know (newer mesh-llm) pass through unchanged."""
    copy = node_pb2.PeerAnnouncement()
    copy.CopyFrom(ann)
    for field in (
        "mesh_id",
        "demand",
        "available_models",
        "available_model_metadata",
        "available_model_sizes",
        "release_attestation",
        "direct_admission_proof",
        "latency_ms",
        "latency_source",
        "latency_age_ms",
        "latency_observer_id",
    ):
        copy.ClearField(field)
    for field in _CAPPED_LISTS:
        values = getattr(copy, field)
        capped = cap_model_names(values)
        if len(capped) != len(values):
            del values[:]
            values.extend(capped)
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


def direct_entry(frame: node_pb2.GossipFrame, remote_id: bytes) -> node_pb2.PeerAnnouncement | None:
    """The sender's own entry in a frame it sent us directly (0.76 §2.3): the entry whose address id
    (the id inside ``serialized_addr`` when that parses, else ``endpoint_id``) is the remote's, with
    both ids agreeing; None when the frame has none."""
    for ann in frame.peers:
        if bytes(ann.endpoint_id) != remote_id:
            continue
        if ann.serialized_addr:
            try:
                addr = EndpointAddr.from_json(bytes(ann.serialized_addr).decode("utf-8"))
            except (InvalidToken, UnicodeDecodeError):
                addr = None
            if addr is not None and addr.id != remote_id:
                continue
        return ann
    return None
