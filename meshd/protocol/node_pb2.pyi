from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_ROLE_UNSPECIFIED: _ClassVar[NodeRole]
    WORKER: _ClassVar[NodeRole]
    HOST: _ClassVar[NodeRole]
    CLIENT: _ClassVar[NodeRole]

class CapabilityLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAPABILITY_LEVEL_UNSPECIFIED: _ClassVar[CapabilityLevel]
    CAPABILITY_LEVEL_NONE: _ClassVar[CapabilityLevel]
    CAPABILITY_LEVEL_LIKELY: _ClassVar[CapabilityLevel]
    CAPABILITY_LEVEL_SUPPORTED: _ClassVar[CapabilityLevel]

class ModelSourceKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_SOURCE_KIND_UNSPECIFIED: _ClassVar[ModelSourceKind]
    MODEL_SOURCE_KIND_CATALOG: _ClassVar[ModelSourceKind]
    MODEL_SOURCE_KIND_HUGGING_FACE: _ClassVar[ModelSourceKind]
    MODEL_SOURCE_KIND_LOCAL_GGUF: _ClassVar[ModelSourceKind]
    MODEL_SOURCE_KIND_DIRECT_URL: _ClassVar[ModelSourceKind]
    MODEL_SOURCE_KIND_UNKNOWN: _ClassVar[ModelSourceKind]

class InferenceAdmissionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INFERENCE_ADMISSION_STATE_UNSPECIFIED: _ClassVar[InferenceAdmissionState]
    INFERENCE_ADMISSION_STATE_ACCEPTING: _ClassVar[InferenceAdmissionState]
    INFERENCE_ADMISSION_STATE_ACCEPTING_DEPRIORITIZED: _ClassVar[InferenceAdmissionState]
    INFERENCE_ADMISSION_STATE_REMOTE_PAUSED: _ClassVar[InferenceAdmissionState]
    INFERENCE_ADMISSION_STATE_ALL_PAUSED: _ClassVar[InferenceAdmissionState]

class LatencySource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LATENCY_SOURCE_UNSPECIFIED: _ClassVar[LatencySource]
    LATENCY_SOURCE_DIRECT: _ClassVar[LatencySource]
    LATENCY_SOURCE_ESTIMATED: _ClassVar[LatencySource]
    LATENCY_SOURCE_UNKNOWN: _ClassVar[LatencySource]
NODE_ROLE_UNSPECIFIED: NodeRole
WORKER: NodeRole
HOST: NodeRole
CLIENT: NodeRole
CAPABILITY_LEVEL_UNSPECIFIED: CapabilityLevel
CAPABILITY_LEVEL_NONE: CapabilityLevel
CAPABILITY_LEVEL_LIKELY: CapabilityLevel
CAPABILITY_LEVEL_SUPPORTED: CapabilityLevel
MODEL_SOURCE_KIND_UNSPECIFIED: ModelSourceKind
MODEL_SOURCE_KIND_CATALOG: ModelSourceKind
MODEL_SOURCE_KIND_HUGGING_FACE: ModelSourceKind
MODEL_SOURCE_KIND_LOCAL_GGUF: ModelSourceKind
MODEL_SOURCE_KIND_DIRECT_URL: ModelSourceKind
MODEL_SOURCE_KIND_UNKNOWN: ModelSourceKind
INFERENCE_ADMISSION_STATE_UNSPECIFIED: InferenceAdmissionState
INFERENCE_ADMISSION_STATE_ACCEPTING: InferenceAdmissionState
INFERENCE_ADMISSION_STATE_ACCEPTING_DEPRIORITIZED: InferenceAdmissionState
INFERENCE_ADMISSION_STATE_REMOTE_PAUSED: InferenceAdmissionState
INFERENCE_ADMISSION_STATE_ALL_PAUSED: InferenceAdmissionState
LATENCY_SOURCE_UNSPECIFIED: LatencySource
LATENCY_SOURCE_DIRECT: LatencySource
LATENCY_SOURCE_ESTIMATED: LatencySource
LATENCY_SOURCE_UNKNOWN: LatencySource

class GossipFrame(_message.Message):
    __slots__ = ("gen", "peers", "sender_id")
    GEN_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    SENDER_ID_FIELD_NUMBER: _ClassVar[int]
    gen: int
    peers: _containers.RepeatedCompositeFieldContainer[PeerAnnouncement]
    sender_id: bytes
    def __init__(self, gen: _Optional[int] = ..., peers: _Optional[_Iterable[_Union[PeerAnnouncement, _Mapping]]] = ..., sender_id: _Optional[bytes] = ...) -> None: ...

class PeerAnnouncement(_message.Message):
    __slots__ = ("endpoint_id", "role", "http_port", "version", "gpu_name", "hostname", "is_soc", "gpu_vram", "available_models", "serving_models", "requested_models", "available_model_metadata", "experts_summary", "rtt_ms", "catalog_models", "vram_bytes", "model_source", "primary_serving", "mesh_id", "demand", "available_model_sizes", "serialized_addr", "hosted_models", "hosted_models_known", "served_model_descriptors", "served_model_identities", "served_model_runtime", "owner_attestation", "gpu_mem_bandwidth_gbps", "gpu_compute_tflops_fp32", "gpu_compute_tflops_fp16", "gpu_reserved_bytes", "hardware", "first_joined_mesh_ts", "explicit_model_interests", "subprotocols", "latency_ms", "latency_source", "latency_age_ms", "latency_observer_id", "advertised_model_throughput", "mesh_policy_hash", "genesis_policy", "release_attestation", "direct_admission_proof", "inference_admission_state")
    class AvailableModelSizesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    HTTP_PORT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    GPU_NAME_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    IS_SOC_FIELD_NUMBER: _ClassVar[int]
    GPU_VRAM_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_MODELS_FIELD_NUMBER: _ClassVar[int]
    SERVING_MODELS_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_MODELS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_MODEL_METADATA_FIELD_NUMBER: _ClassVar[int]
    EXPERTS_SUMMARY_FIELD_NUMBER: _ClassVar[int]
    RTT_MS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_MODELS_FIELD_NUMBER: _ClassVar[int]
    VRAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_SOURCE_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_SERVING_FIELD_NUMBER: _ClassVar[int]
    MESH_ID_FIELD_NUMBER: _ClassVar[int]
    DEMAND_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_MODEL_SIZES_FIELD_NUMBER: _ClassVar[int]
    SERIALIZED_ADDR_FIELD_NUMBER: _ClassVar[int]
    HOSTED_MODELS_FIELD_NUMBER: _ClassVar[int]
    HOSTED_MODELS_KNOWN_FIELD_NUMBER: _ClassVar[int]
    SERVED_MODEL_DESCRIPTORS_FIELD_NUMBER: _ClassVar[int]
    SERVED_MODEL_IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    SERVED_MODEL_RUNTIME_FIELD_NUMBER: _ClassVar[int]
    OWNER_ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    GPU_MEM_BANDWIDTH_GBPS_FIELD_NUMBER: _ClassVar[int]
    GPU_COMPUTE_TFLOPS_FP32_FIELD_NUMBER: _ClassVar[int]
    GPU_COMPUTE_TFLOPS_FP16_FIELD_NUMBER: _ClassVar[int]
    GPU_RESERVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    FIRST_JOINED_MESH_TS_FIELD_NUMBER: _ClassVar[int]
    EXPLICIT_MODEL_INTERESTS_FIELD_NUMBER: _ClassVar[int]
    SUBPROTOCOLS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_OBSERVER_ID_FIELD_NUMBER: _ClassVar[int]
    ADVERTISED_MODEL_THROUGHPUT_FIELD_NUMBER: _ClassVar[int]
    MESH_POLICY_HASH_FIELD_NUMBER: _ClassVar[int]
    GENESIS_POLICY_FIELD_NUMBER: _ClassVar[int]
    RELEASE_ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    DIRECT_ADMISSION_PROOF_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_ADMISSION_STATE_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: bytes
    role: NodeRole
    http_port: int
    version: str
    gpu_name: str
    hostname: str
    is_soc: bool
    gpu_vram: str
    available_models: _containers.RepeatedScalarFieldContainer[str]
    serving_models: _containers.RepeatedScalarFieldContainer[str]
    requested_models: _containers.RepeatedScalarFieldContainer[str]
    available_model_metadata: _containers.RepeatedCompositeFieldContainer[CompactModelMetadata]
    experts_summary: ExpertsSummary
    rtt_ms: int
    catalog_models: _containers.RepeatedScalarFieldContainer[str]
    vram_bytes: int
    model_source: str
    primary_serving: str
    mesh_id: str
    demand: _containers.RepeatedCompositeFieldContainer[ModelDemandEntry]
    available_model_sizes: _containers.ScalarMap[str, int]
    serialized_addr: bytes
    hosted_models: _containers.RepeatedScalarFieldContainer[str]
    hosted_models_known: bool
    served_model_descriptors: _containers.RepeatedCompositeFieldContainer[ServedModelDescriptor]
    served_model_identities: _containers.RepeatedCompositeFieldContainer[ServedModelIdentity]
    served_model_runtime: _containers.RepeatedCompositeFieldContainer[ModelRuntimeDescriptor]
    owner_attestation: SignedNodeOwnership
    gpu_mem_bandwidth_gbps: str
    gpu_compute_tflops_fp32: str
    gpu_compute_tflops_fp16: str
    gpu_reserved_bytes: str
    hardware: HardwareInfo
    first_joined_mesh_ts: int
    explicit_model_interests: _containers.RepeatedScalarFieldContainer[str]
    subprotocols: _containers.RepeatedCompositeFieldContainer[MeshSubprotocol]
    latency_ms: int
    latency_source: LatencySource
    latency_age_ms: int
    latency_observer_id: bytes
    advertised_model_throughput: _containers.RepeatedCompositeFieldContainer[AdvertisedModelThroughput]
    mesh_policy_hash: str
    genesis_policy: SignedMeshGenesisPolicy
    release_attestation: ReleaseBuildAttestation
    direct_admission_proof: DirectNodeAdmissionProof
    inference_admission_state: InferenceAdmissionState
    def __init__(self, endpoint_id: _Optional[bytes] = ..., role: _Optional[_Union[NodeRole, str]] = ..., http_port: _Optional[int] = ..., version: _Optional[str] = ..., gpu_name: _Optional[str] = ..., hostname: _Optional[str] = ..., is_soc: _Optional[bool] = ..., gpu_vram: _Optional[str] = ..., available_models: _Optional[_Iterable[str]] = ..., serving_models: _Optional[_Iterable[str]] = ..., requested_models: _Optional[_Iterable[str]] = ..., available_model_metadata: _Optional[_Iterable[_Union[CompactModelMetadata, _Mapping]]] = ..., experts_summary: _Optional[_Union[ExpertsSummary, _Mapping]] = ..., rtt_ms: _Optional[int] = ..., catalog_models: _Optional[_Iterable[str]] = ..., vram_bytes: _Optional[int] = ..., model_source: _Optional[str] = ..., primary_serving: _Optional[str] = ..., mesh_id: _Optional[str] = ..., demand: _Optional[_Iterable[_Union[ModelDemandEntry, _Mapping]]] = ..., available_model_sizes: _Optional[_Mapping[str, int]] = ..., serialized_addr: _Optional[bytes] = ..., hosted_models: _Optional[_Iterable[str]] = ..., hosted_models_known: _Optional[bool] = ..., served_model_descriptors: _Optional[_Iterable[_Union[ServedModelDescriptor, _Mapping]]] = ..., served_model_identities: _Optional[_Iterable[_Union[ServedModelIdentity, _Mapping]]] = ..., served_model_runtime: _Optional[_Iterable[_Union[ModelRuntimeDescriptor, _Mapping]]] = ..., owner_attestation: _Optional[_Union[SignedNodeOwnership, _Mapping]] = ..., gpu_mem_bandwidth_gbps: _Optional[str] = ..., gpu_compute_tflops_fp32: _Optional[str] = ..., gpu_compute_tflops_fp16: _Optional[str] = ..., gpu_reserved_bytes: _Optional[str] = ..., hardware: _Optional[_Union[HardwareInfo, _Mapping]] = ..., first_joined_mesh_ts: _Optional[int] = ..., explicit_model_interests: _Optional[_Iterable[str]] = ..., subprotocols: _Optional[_Iterable[_Union[MeshSubprotocol, _Mapping]]] = ..., latency_ms: _Optional[int] = ..., latency_source: _Optional[_Union[LatencySource, str]] = ..., latency_age_ms: _Optional[int] = ..., latency_observer_id: _Optional[bytes] = ..., advertised_model_throughput: _Optional[_Iterable[_Union[AdvertisedModelThroughput, _Mapping]]] = ..., mesh_policy_hash: _Optional[str] = ..., genesis_policy: _Optional[_Union[SignedMeshGenesisPolicy, _Mapping]] = ..., release_attestation: _Optional[_Union[ReleaseBuildAttestation, _Mapping]] = ..., direct_admission_proof: _Optional[_Union[DirectNodeAdmissionProof, _Mapping]] = ..., inference_admission_state: _Optional[_Union[InferenceAdmissionState, str]] = ...) -> None: ...

class SignedMeshGenesisPolicy(_message.Message):
    __slots__ = ("version", "policy", "origin_sign_public_key", "signature_algorithm", "signature")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_SIGN_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    version: int
    policy: MeshGenesisPolicy
    origin_sign_public_key: bytes
    signature_algorithm: str
    signature: bytes
    def __init__(self, version: _Optional[int] = ..., policy: _Optional[_Union[MeshGenesisPolicy, _Mapping]] = ..., origin_sign_public_key: _Optional[bytes] = ..., signature_algorithm: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class MeshGenesisPolicy(_message.Message):
    __slots__ = ("version", "origin_owner_id", "created_at_unix_ms", "requirements")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
    version: int
    origin_owner_id: str
    created_at_unix_ms: int
    requirements: MeshRequirements
    def __init__(self, version: _Optional[int] = ..., origin_owner_id: _Optional[str] = ..., created_at_unix_ms: _Optional[int] = ..., requirements: _Optional[_Union[MeshRequirements, _Mapping]] = ...) -> None: ...

class MeshRequirements(_message.Message):
    __slots__ = ("node_version", "protocol_generation", "release_attestation")
    NODE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_GENERATION_FIELD_NUMBER: _ClassVar[int]
    RELEASE_ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    node_version: NodeVersionBounds
    protocol_generation: ProtocolGenerationBounds
    release_attestation: ReleaseAttestationRequirement
    def __init__(self, node_version: _Optional[_Union[NodeVersionBounds, _Mapping]] = ..., protocol_generation: _Optional[_Union[ProtocolGenerationBounds, _Mapping]] = ..., release_attestation: _Optional[_Union[ReleaseAttestationRequirement, _Mapping]] = ...) -> None: ...

class NodeVersionBounds(_message.Message):
    __slots__ = ("min", "max")
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    min: str
    max: str
    def __init__(self, min: _Optional[str] = ..., max: _Optional[str] = ...) -> None: ...

class ProtocolGenerationBounds(_message.Message):
    __slots__ = ("min", "max")
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    min: int
    max: int
    def __init__(self, min: _Optional[int] = ..., max: _Optional[int] = ...) -> None: ...

class ReleaseAttestationRequirement(_message.Message):
    __slots__ = ("required", "allowed_signer_keys")
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_SIGNER_KEYS_FIELD_NUMBER: _ClassVar[int]
    required: bool
    allowed_signer_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, required: _Optional[bool] = ..., allowed_signer_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class SignedBootstrapToken(_message.Message):
    __slots__ = ("version", "serialized_addrs", "mesh_id", "policy_hash", "genesis_policy", "expires_at_unix_ms", "origin_sign_public_key", "signature_algorithm", "signature")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SERIALIZED_ADDRS_FIELD_NUMBER: _ClassVar[int]
    MESH_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_HASH_FIELD_NUMBER: _ClassVar[int]
    GENESIS_POLICY_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_SIGN_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    version: int
    serialized_addrs: _containers.RepeatedScalarFieldContainer[bytes]
    mesh_id: str
    policy_hash: str
    genesis_policy: MeshGenesisPolicy
    expires_at_unix_ms: int
    origin_sign_public_key: bytes
    signature_algorithm: str
    signature: bytes
    def __init__(self, version: _Optional[int] = ..., serialized_addrs: _Optional[_Iterable[bytes]] = ..., mesh_id: _Optional[str] = ..., policy_hash: _Optional[str] = ..., genesis_policy: _Optional[_Union[MeshGenesisPolicy, _Mapping]] = ..., expires_at_unix_ms: _Optional[int] = ..., origin_sign_public_key: _Optional[bytes] = ..., signature_algorithm: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ReleaseBuildAttestation(_message.Message):
    __slots__ = ("version", "node_version", "build_id", "commit", "target_triple", "supported_protocol_generation_min", "supported_protocol_generation_max", "artifact_digest", "signer_key_id", "signature_algorithm", "signature")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NODE_VERSION_FIELD_NUMBER: _ClassVar[int]
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    TARGET_TRIPLE_FIELD_NUMBER: _ClassVar[int]
    SUPPORTED_PROTOCOL_GENERATION_MIN_FIELD_NUMBER: _ClassVar[int]
    SUPPORTED_PROTOCOL_GENERATION_MAX_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIGNER_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    version: int
    node_version: str
    build_id: str
    commit: str
    target_triple: str
    supported_protocol_generation_min: int
    supported_protocol_generation_max: int
    artifact_digest: str
    signer_key_id: str
    signature_algorithm: str
    signature: bytes
    def __init__(self, version: _Optional[int] = ..., node_version: _Optional[str] = ..., build_id: _Optional[str] = ..., commit: _Optional[str] = ..., target_triple: _Optional[str] = ..., supported_protocol_generation_min: _Optional[int] = ..., supported_protocol_generation_max: _Optional[int] = ..., artifact_digest: _Optional[str] = ..., signer_key_id: _Optional[str] = ..., signature_algorithm: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class DirectNodeAdmissionProof(_message.Message):
    __slots__ = ("version", "sender_id", "mesh_id", "policy_hash", "attestation_hash", "timestamp_unix_ms", "signature_algorithm", "signature")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SENDER_ID_FIELD_NUMBER: _ClassVar[int]
    MESH_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_HASH_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_HASH_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    version: int
    sender_id: bytes
    mesh_id: str
    policy_hash: str
    attestation_hash: str
    timestamp_unix_ms: int
    signature_algorithm: str
    signature: bytes
    def __init__(self, version: _Optional[int] = ..., sender_id: _Optional[bytes] = ..., mesh_id: _Optional[str] = ..., policy_hash: _Optional[str] = ..., attestation_hash: _Optional[str] = ..., timestamp_unix_ms: _Optional[int] = ..., signature_algorithm: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class AdvertisedModelThroughput(_message.Message):
    __slots__ = ("model_name", "avg_tokens_per_second_milli", "throughput_samples")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    AVG_TOKENS_PER_SECOND_MILLI_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    avg_tokens_per_second_milli: int
    throughput_samples: int
    def __init__(self, model_name: _Optional[str] = ..., avg_tokens_per_second_milli: _Optional[int] = ..., throughput_samples: _Optional[int] = ...) -> None: ...

class MeshSubprotocol(_message.Message):
    __slots__ = ("name", "major", "features")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MAJOR_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    name: str
    major: int
    features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., major: _Optional[int] = ..., features: _Optional[_Iterable[str]] = ...) -> None: ...

class HardwareInfo(_message.Message):
    __slots__ = ("is_soc", "hostname", "gpus")
    IS_SOC_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    is_soc: bool
    hostname: str
    gpus: _containers.RepeatedCompositeFieldContainer[GpuInfo]
    def __init__(self, is_soc: _Optional[bool] = ..., hostname: _Optional[str] = ..., gpus: _Optional[_Iterable[_Union[GpuInfo, _Mapping]]] = ...) -> None: ...

class GpuInfo(_message.Message):
    __slots__ = ("name", "vram_bytes", "reserved_bytes", "mem_bandwidth_gbps", "compute_tflops_fp32", "compute_tflops_fp16")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VRAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESERVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEM_BANDWIDTH_GBPS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_TFLOPS_FP32_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_TFLOPS_FP16_FIELD_NUMBER: _ClassVar[int]
    name: str
    vram_bytes: str
    reserved_bytes: str
    mem_bandwidth_gbps: str
    compute_tflops_fp32: str
    compute_tflops_fp16: str
    def __init__(self, name: _Optional[str] = ..., vram_bytes: _Optional[str] = ..., reserved_bytes: _Optional[str] = ..., mem_bandwidth_gbps: _Optional[str] = ..., compute_tflops_fp32: _Optional[str] = ..., compute_tflops_fp16: _Optional[str] = ...) -> None: ...

class SignedNodeOwnership(_message.Message):
    __slots__ = ("version", "cert_id", "owner_id", "owner_sign_public_key", "node_endpoint_id", "issued_at_unix_ms", "expires_at_unix_ms", "node_label", "hostname_hint", "signature")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CERT_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_SIGN_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NODE_ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    NODE_LABEL_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_HINT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    version: int
    cert_id: str
    owner_id: str
    owner_sign_public_key: bytes
    node_endpoint_id: bytes
    issued_at_unix_ms: int
    expires_at_unix_ms: int
    node_label: str
    hostname_hint: str
    signature: bytes
    def __init__(self, version: _Optional[int] = ..., cert_id: _Optional[str] = ..., owner_id: _Optional[str] = ..., owner_sign_public_key: _Optional[bytes] = ..., node_endpoint_id: _Optional[bytes] = ..., issued_at_unix_ms: _Optional[int] = ..., expires_at_unix_ms: _Optional[int] = ..., node_label: _Optional[str] = ..., hostname_hint: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ServedModelDescriptor(_message.Message):
    __slots__ = ("identity", "capabilities", "topology", "capabilities_known", "metadata")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_KNOWN_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    identity: ServedModelIdentity
    capabilities: ModelCapabilities
    topology: ModelTopology
    capabilities_known: bool
    metadata: ServedModelMetadata
    def __init__(self, identity: _Optional[_Union[ServedModelIdentity, _Mapping]] = ..., capabilities: _Optional[_Union[ModelCapabilities, _Mapping]] = ..., topology: _Optional[_Union[ModelTopology, _Mapping]] = ..., capabilities_known: _Optional[bool] = ..., metadata: _Optional[_Union[ServedModelMetadata, _Mapping]] = ...) -> None: ...

class ServedModelMetadata(_message.Message):
    __slots__ = ("architecture", "parameter_size", "parameter_count_b", "quant", "native_context_length", "tokenizer", "layer_count", "embedding_size", "head_count", "kv_head_count", "expert_count", "active_expert_count")
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_SIZE_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_B_FIELD_NUMBER: _ClassVar[int]
    QUANT_FIELD_NUMBER: _ClassVar[int]
    NATIVE_CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    LAYER_COUNT_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_SIZE_FIELD_NUMBER: _ClassVar[int]
    HEAD_COUNT_FIELD_NUMBER: _ClassVar[int]
    KV_HEAD_COUNT_FIELD_NUMBER: _ClassVar[int]
    EXPERT_COUNT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_EXPERT_COUNT_FIELD_NUMBER: _ClassVar[int]
    architecture: str
    parameter_size: str
    parameter_count_b: float
    quant: str
    native_context_length: int
    tokenizer: str
    layer_count: int
    embedding_size: int
    head_count: int
    kv_head_count: int
    expert_count: int
    active_expert_count: int
    def __init__(self, architecture: _Optional[str] = ..., parameter_size: _Optional[str] = ..., parameter_count_b: _Optional[float] = ..., quant: _Optional[str] = ..., native_context_length: _Optional[int] = ..., tokenizer: _Optional[str] = ..., layer_count: _Optional[int] = ..., embedding_size: _Optional[int] = ..., head_count: _Optional[int] = ..., kv_head_count: _Optional[int] = ..., expert_count: _Optional[int] = ..., active_expert_count: _Optional[int] = ...) -> None: ...

class ServedModelIdentity(_message.Message):
    __slots__ = ("model_name", "is_primary", "source_kind", "canonical_ref", "repository", "revision", "artifact", "local_file_name", "identity_hash")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    IS_PRIMARY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_KIND_FIELD_NUMBER: _ClassVar[int]
    CANONICAL_REF_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_HASH_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    is_primary: bool
    source_kind: ModelSourceKind
    canonical_ref: str
    repository: str
    revision: str
    artifact: str
    local_file_name: str
    identity_hash: str
    def __init__(self, model_name: _Optional[str] = ..., is_primary: _Optional[bool] = ..., source_kind: _Optional[_Union[ModelSourceKind, str]] = ..., canonical_ref: _Optional[str] = ..., repository: _Optional[str] = ..., revision: _Optional[str] = ..., artifact: _Optional[str] = ..., local_file_name: _Optional[str] = ..., identity_hash: _Optional[str] = ...) -> None: ...

class ModelCapabilities(_message.Message):
    __slots__ = ("vision", "reasoning", "tool_use", "moe", "multimodal", "audio")
    VISION_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    TOOL_USE_FIELD_NUMBER: _ClassVar[int]
    MOE_FIELD_NUMBER: _ClassVar[int]
    MULTIMODAL_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    vision: CapabilityLevel
    reasoning: CapabilityLevel
    tool_use: CapabilityLevel
    moe: bool
    multimodal: bool
    audio: CapabilityLevel
    def __init__(self, vision: _Optional[_Union[CapabilityLevel, str]] = ..., reasoning: _Optional[_Union[CapabilityLevel, str]] = ..., tool_use: _Optional[_Union[CapabilityLevel, str]] = ..., moe: _Optional[bool] = ..., multimodal: _Optional[bool] = ..., audio: _Optional[_Union[CapabilityLevel, str]] = ...) -> None: ...

class ModelTopology(_message.Message):
    __slots__ = ("moe",)
    MOE_FIELD_NUMBER: _ClassVar[int]
    moe: ModelMoeInfo
    def __init__(self, moe: _Optional[_Union[ModelMoeInfo, _Mapping]] = ...) -> None: ...

class ModelRuntimeDescriptor(_message.Message):
    __slots__ = ("model_name", "identity_hash", "context_length", "ready")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_HASH_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    identity_hash: str
    context_length: int
    ready: bool
    def __init__(self, model_name: _Optional[str] = ..., identity_hash: _Optional[str] = ..., context_length: _Optional[int] = ..., ready: _Optional[bool] = ...) -> None: ...

class ModelMoeInfo(_message.Message):
    __slots__ = ("expert_count", "used_expert_count", "min_experts_per_node", "source", "ranking_source", "ranking", "ranking_prompt_count", "ranking_tokens", "ranking_layer_scope", "ranking_origin")
    EXPERT_COUNT_FIELD_NUMBER: _ClassVar[int]
    USED_EXPERT_COUNT_FIELD_NUMBER: _ClassVar[int]
    MIN_EXPERTS_PER_NODE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    RANKING_SOURCE_FIELD_NUMBER: _ClassVar[int]
    RANKING_FIELD_NUMBER: _ClassVar[int]
    RANKING_PROMPT_COUNT_FIELD_NUMBER: _ClassVar[int]
    RANKING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RANKING_LAYER_SCOPE_FIELD_NUMBER: _ClassVar[int]
    RANKING_ORIGIN_FIELD_NUMBER: _ClassVar[int]
    expert_count: int
    used_expert_count: int
    min_experts_per_node: int
    source: str
    ranking_source: str
    ranking: _containers.RepeatedScalarFieldContainer[int]
    ranking_prompt_count: int
    ranking_tokens: int
    ranking_layer_scope: str
    ranking_origin: str
    def __init__(self, expert_count: _Optional[int] = ..., used_expert_count: _Optional[int] = ..., min_experts_per_node: _Optional[int] = ..., source: _Optional[str] = ..., ranking_source: _Optional[str] = ..., ranking: _Optional[_Iterable[int]] = ..., ranking_prompt_count: _Optional[int] = ..., ranking_tokens: _Optional[int] = ..., ranking_layer_scope: _Optional[str] = ..., ranking_origin: _Optional[str] = ...) -> None: ...

class CompactModelMetadata(_message.Message):
    __slots__ = ("model_key", "context_length", "vocab_size", "embedding_size", "head_count", "layer_count", "feed_forward_length", "key_length", "value_length", "architecture", "tokenizer_model_name", "special_tokens", "rope_scale", "rope_freq_base", "is_moe", "expert_count", "used_expert_count", "quantization_type", "kv_head_count", "parameter_size")
    MODEL_KEY_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_SIZE_FIELD_NUMBER: _ClassVar[int]
    HEAD_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAYER_COUNT_FIELD_NUMBER: _ClassVar[int]
    FEED_FORWARD_LENGTH_FIELD_NUMBER: _ClassVar[int]
    KEY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    VALUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ROPE_SCALE_FIELD_NUMBER: _ClassVar[int]
    ROPE_FREQ_BASE_FIELD_NUMBER: _ClassVar[int]
    IS_MOE_FIELD_NUMBER: _ClassVar[int]
    EXPERT_COUNT_FIELD_NUMBER: _ClassVar[int]
    USED_EXPERT_COUNT_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    KV_HEAD_COUNT_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_SIZE_FIELD_NUMBER: _ClassVar[int]
    model_key: str
    context_length: int
    vocab_size: int
    embedding_size: int
    head_count: int
    layer_count: int
    feed_forward_length: int
    key_length: int
    value_length: int
    architecture: str
    tokenizer_model_name: str
    special_tokens: _containers.RepeatedCompositeFieldContainer[SpecialToken]
    rope_scale: float
    rope_freq_base: float
    is_moe: bool
    expert_count: int
    used_expert_count: int
    quantization_type: str
    kv_head_count: int
    parameter_size: str
    def __init__(self, model_key: _Optional[str] = ..., context_length: _Optional[int] = ..., vocab_size: _Optional[int] = ..., embedding_size: _Optional[int] = ..., head_count: _Optional[int] = ..., layer_count: _Optional[int] = ..., feed_forward_length: _Optional[int] = ..., key_length: _Optional[int] = ..., value_length: _Optional[int] = ..., architecture: _Optional[str] = ..., tokenizer_model_name: _Optional[str] = ..., special_tokens: _Optional[_Iterable[_Union[SpecialToken, _Mapping]]] = ..., rope_scale: _Optional[float] = ..., rope_freq_base: _Optional[float] = ..., is_moe: _Optional[bool] = ..., expert_count: _Optional[int] = ..., used_expert_count: _Optional[int] = ..., quantization_type: _Optional[str] = ..., kv_head_count: _Optional[int] = ..., parameter_size: _Optional[str] = ...) -> None: ...

class SpecialToken(_message.Message):
    __slots__ = ("name", "token_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    token_id: int
    def __init__(self, name: _Optional[str] = ..., token_id: _Optional[int] = ...) -> None: ...

class ExpertsSummary(_message.Message):
    __slots__ = ("total_experts", "expert_count_used", "top_expert_ids")
    TOTAL_EXPERTS_FIELD_NUMBER: _ClassVar[int]
    EXPERT_COUNT_USED_FIELD_NUMBER: _ClassVar[int]
    TOP_EXPERT_IDS_FIELD_NUMBER: _ClassVar[int]
    total_experts: int
    expert_count_used: int
    top_expert_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, total_experts: _Optional[int] = ..., expert_count_used: _Optional[int] = ..., top_expert_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ModelDemandEntry(_message.Message):
    __slots__ = ("model_name", "last_active", "request_count")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    last_active: int
    request_count: int
    def __init__(self, model_name: _Optional[str] = ..., last_active: _Optional[int] = ..., request_count: _Optional[int] = ...) -> None: ...

class TunnelMap(_message.Message):
    __slots__ = ("owner_peer_id", "entries")
    OWNER_PEER_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    owner_peer_id: bytes
    entries: _containers.RepeatedCompositeFieldContainer[TunnelEntry]
    def __init__(self, owner_peer_id: _Optional[bytes] = ..., entries: _Optional[_Iterable[_Union[TunnelEntry, _Mapping]]] = ...) -> None: ...

class TunnelEntry(_message.Message):
    __slots__ = ("target_peer_id", "relay_peer_id", "tunnel_port")
    TARGET_PEER_ID_FIELD_NUMBER: _ClassVar[int]
    RELAY_PEER_ID_FIELD_NUMBER: _ClassVar[int]
    TUNNEL_PORT_FIELD_NUMBER: _ClassVar[int]
    target_peer_id: bytes
    relay_peer_id: bytes
    tunnel_port: int
    def __init__(self, target_peer_id: _Optional[bytes] = ..., relay_peer_id: _Optional[bytes] = ..., tunnel_port: _Optional[int] = ...) -> None: ...

class RouteTableRequest(_message.Message):
    __slots__ = ("requester_id", "gen")
    REQUESTER_ID_FIELD_NUMBER: _ClassVar[int]
    GEN_FIELD_NUMBER: _ClassVar[int]
    requester_id: bytes
    gen: int
    def __init__(self, requester_id: _Optional[bytes] = ..., gen: _Optional[int] = ...) -> None: ...

class RouteTable(_message.Message):
    __slots__ = ("entries", "mesh_id", "gen")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    MESH_ID_FIELD_NUMBER: _ClassVar[int]
    GEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[RouteEntry]
    mesh_id: str
    gen: int
    def __init__(self, entries: _Optional[_Iterable[_Union[RouteEntry, _Mapping]]] = ..., mesh_id: _Optional[str] = ..., gen: _Optional[int] = ...) -> None: ...

class RouteEntry(_message.Message):
    __slots__ = ("endpoint_id", "model")
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: bytes
    model: str
    def __init__(self, endpoint_id: _Optional[bytes] = ..., model: _Optional[str] = ...) -> None: ...

class PeerDown(_message.Message):
    __slots__ = ("peer_id", "gen")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    GEN_FIELD_NUMBER: _ClassVar[int]
    peer_id: bytes
    gen: int
    def __init__(self, peer_id: _Optional[bytes] = ..., gen: _Optional[int] = ...) -> None: ...

class PeerLeaving(_message.Message):
    __slots__ = ("peer_id", "gen")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    GEN_FIELD_NUMBER: _ClassVar[int]
    peer_id: bytes
    gen: int
    def __init__(self, peer_id: _Optional[bytes] = ..., gen: _Optional[int] = ...) -> None: ...

class MeshSubprotocolOpen(_message.Message):
    __slots__ = ("gen", "name", "major")
    GEN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MAJOR_FIELD_NUMBER: _ClassVar[int]
    gen: int
    name: str
    major: int
    def __init__(self, gen: _Optional[int] = ..., name: _Optional[str] = ..., major: _Optional[int] = ...) -> None: ...

class DirectPathRequest(_message.Message):
    __slots__ = ("requester_id", "gen", "serialized_addr")
    REQUESTER_ID_FIELD_NUMBER: _ClassVar[int]
    GEN_FIELD_NUMBER: _ClassVar[int]
    SERIALIZED_ADDR_FIELD_NUMBER: _ClassVar[int]
    requester_id: bytes
    gen: int
    serialized_addr: bytes
    def __init__(self, requester_id: _Optional[bytes] = ..., gen: _Optional[int] = ..., serialized_addr: _Optional[bytes] = ...) -> None: ...
