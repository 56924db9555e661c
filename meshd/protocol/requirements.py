"""Mesh requirements of mesh-llm 0.76: genesis policies and signed bootstrap tokens
(MESH_PROTOCOL_076.md §5.2, §6), sans-IO.

A *gated* mesh is defined by an owner-signed :class:`MeshGenesisPolicy`. Its hash
(:meth:`MeshGenesisPolicy.policy_hash`, SHA-256 of a canonical byte encoding) is also the mesh id.
Invites to a gated mesh are :class:`SignedBootstrapToken` s: ``base64url_nopad(serde_json(token))``,
JSON in which every ``Vec<u8>`` is an array of integers. :meth:`SignedBootstrapToken.verify_at`
runs mesh-llm's checks in mesh-llm's order and raises :class:`RequirementError` with mesh-llm's
snake_case reason code (``bootstrap_token_expired``, ``mesh_policy_mismatch``,
``bootstrap_token_invalid``, or a genesis-validation code such as ``node_version_bounds_invalid``).

Canonical encodings (the bytes that are hashed and signed) use these helpers: ``str``/``bytes`` =
``u64le(len) ‖ data``, ``opt_*`` = ``0x00`` or ``0x01 ‖ value``, ``list`` = ``u64le(count) ‖ items``.
Strings are trimmed with Rust's ``str::trim`` where mesh-llm trims them.

Signatures are checked with :func:`meshd.protocol.ed25519.verify_strict` (dalek's
``verify_strict`` rules). Nothing here reads the clock: callers pass ``now_ms``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from collections.abc import Iterable, Sequence
from typing import Any, Final

import attrs
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshd import jsonbound
from meshd.protocol import node_pb2
from meshd.protocol.ed25519 import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, decompress_point, public_key_bytes, verify_strict
from meshd.protocol.errors import ProtocolError
from meshd.protocol.semver import SemVer, SemVerError, parse_node_version, precedence_key, rust_trim

__all__ = [
    "ED25519",
    "MAX_TOKEN_JSON_BYTES",
    "MAX_TOKEN_JSON_DEPTH",
    "REASONS",
    "SIGNED_BOOTSTRAP_TOKEN_LIFETIME_MS",
    "MeshGenesisPolicy",
    "MeshRequirementState",
    "MeshRequirements",
    "NodeVersionBounds",
    "ProtocolGenerationBounds",
    "ReleaseAttestationRequirement",
    "RequirementError",
    "SignedBootstrapToken",
    "SignedMeshGenesisPolicy",
    "canonical_bytes_field",
    "canonical_str",
    "owner_id",
    "parse_json_strict",
    "requirements_summary",
]

ED25519: Final = "ed25519"
#: Lifetime mesh-llm gives the tokens it signs (``SIGNED_BOOTSTRAP_TOKEN_LIFETIME_MS``, 24 h).
SIGNED_BOOTSTRAP_TOKEN_LIFETIME_MS: Final = 24 * 60 * 60 * 1000
#: Deepest nesting of JSON arrays/objects accepted in a token (serde_json's default limit is 128).
MAX_TOKEN_JSON_DEPTH: Final = jsonbound.MAX_DEPTH
#: Largest token JSON decoded (a 64 Ki-character base64 token decodes to 48 KiB).
MAX_TOKEN_JSON_BYTES: Final = 64 * 1024

_GENESIS_POLICY_VERSION = 1
_SIGNED_GENESIS_POLICY_VERSION = 1
_BOOTSTRAP_TOKEN_VERSION = 1
_GENESIS_TAG = b"mesh-llm-genesis-policy-v1:"
_SIGNED_GENESIS_TAG = b"mesh-llm-signed-genesis-policy-v1:"
_TOKEN_TAG = b"mesh-llm-bootstrap-token-v1:"
_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1

#: Reason codes (``MeshRequirementRejectReason::code``) with a short explanation each.
REASONS: Final = {
    "origin_owner_missing": "the genesis policy names no origin owner",
    "node_version_bounds_invalid": "the node-version range of the mesh policy is invalid",
    "node_version_malformed": "a node version is not semver",
    "node_version_below_minimum": "the peer's version is below the mesh minimum",
    "node_version_above_maximum": "the peer's version is above the mesh maximum",
    "protocol_generation_bounds_invalid": "the protocol-generation range of the mesh policy is invalid",
    "protocol_generation_below_minimum": "the peer's protocol generation is below the mesh minimum",
    "protocol_generation_above_maximum": "the peer's protocol generation is above the mesh maximum",
    "protocol_generation_unknown": "the peer's protocol generation is unknown",
    "certified_binary_required": "the mesh requires a release-attested binary",
    "build_proof_missing": "the build proof lacks signer metadata",
    "build_proof_invalid": "a signed proof could not be verified",
    "release_signer_untrusted": "the release signer is not trusted by the mesh",
    "attestation_policy_mismatch": "unsupported policy or attestation version",
    "mesh_policy_mismatch": "a different mesh policy than this mesh's",
    "bootstrap_token_invalid": "the bootstrap token is invalid",
    "bootstrap_token_expired": "the bootstrap token has expired",
    "direct_proof_missing": "the peer sent no direct admission proof",
    "direct_proof_stale": "the peer's direct admission proof is outside the allowed clock skew",
    "direct_proof_sender_id_mismatch": "the admission proof names another sender",
    "topology_disclosure_denied": "topology disclosure denied before admission",
    "release_signer_list_empty": "release attestation is required but no release signer is trusted",
    "release_signer_key_malformed": "a release signer key is not 'ed25519:<64 hex>'",
}


class RequirementError(ProtocolError):
    """A mesh-requirement check failed; ``code`` is mesh-llm's snake_case reason code."""

    def __init__(self, code: str, detail: str | None = None) -> None:
        if code not in REASONS:
            raise ValueError(f"unknown mesh requirement reason code {code!r}")
        text = REASONS[code] if detail is None else f"{REASONS[code]} ({detail})"
        super().__init__(f"{code}: {text}")
        self.code = code
        self.detail = detail


# ---- canonical byte helpers ----


def canonical_str(value: str) -> bytes:
    data = value.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def canonical_bytes_field(value: bytes) -> bytes:
    return struct.pack("<Q", len(value)) + value


def _opt_str(value: str | None) -> bytes:
    return b"\x00" if value is None else b"\x01" + canonical_str(value)


def _opt_u32(value: int | None) -> bytes:
    return b"\x00" if value is None else b"\x01" + struct.pack("<I", value)


def _opt_u64(value: int | None) -> bytes:
    return b"\x00" if value is None else b"\x01" + struct.pack("<Q", value)


def _str_tuple(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


def _bytes_tuple(values: Iterable[bytes]) -> tuple[bytes, ...]:
    return tuple(values)


def owner_id(public_key: bytes) -> str:
    """mesh-llm's owner id of an Ed25519 owner key: ``hex(sha256(public key))``."""
    return hashlib.sha256(public_key).hexdigest()


# ---- requirements ----


@attrs.frozen
class NodeVersionBounds:
    min: str | None = None
    max: str | None = None

    def normalized(self) -> tuple[SemVer | None, SemVer | None]:
        """The bounds parsed as semver; ``node_version_malformed`` / ``_bounds_invalid``."""
        try:
            low = parse_node_version(self.min) if self.min is not None else None
            high = parse_node_version(self.max) if self.max is not None else None
        except SemVerError as exc:
            raise RequirementError("node_version_malformed", str(exc)) from None
        if low is not None and high is not None and precedence_key(low) > precedence_key(high):
            raise RequirementError("node_version_bounds_invalid", f"{low} > {high}")
        return low, high


@attrs.frozen
class ProtocolGenerationBounds:
    min: int | None = None
    max: int | None = None

    def normalized(self) -> tuple[int | None, int | None]:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise RequirementError("protocol_generation_bounds_invalid", f"{self.min} > {self.max}")
        return self.min, self.max


@attrs.frozen
class ReleaseAttestationRequirement:
    required: bool = False
    allowed_signer_keys: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)

    def normalized(self) -> tuple[bool, tuple[str, ...]]:
        """``(required, trimmed signer keys sorted and de-duplicated)``."""
        keys = []
        for key in self.allowed_signer_keys:
            trimmed = rust_trim(key)
            if not trimmed:
                raise RequirementError("release_signer_untrusted", "blank release signer key")
            keys.append(trimmed)
        unique = tuple(sorted(set(keys), key=lambda k: k.encode("utf-8")))
        if self.required and not unique:
            raise RequirementError("release_signer_list_empty")
        return self.required, unique


@attrs.frozen
class MeshRequirements:
    node_version: NodeVersionBounds = NodeVersionBounds()
    protocol_generation: ProtocolGenerationBounds = ProtocolGenerationBounds()
    release_attestation: ReleaseAttestationRequirement = ReleaseAttestationRequirement()

    def validate(self) -> None:
        self.node_version.normalized()
        self.protocol_generation.normalized()
        self.release_attestation.normalized()

    def evaluate(
        self,
        *,
        node_version: str | None,
        protocol_generation: int | None,
        release_signer_key: str | None = None,
        release_attestation_valid: bool | None = None,
    ) -> None:
        """mesh-llm's ``MeshRequirements::evaluate`` for one peer; raises :class:`RequirementError`.

        ``release_attestation_valid`` is None when the peer sent no attestation, else whether it
        verified; ``release_signer_key`` is its (trimmed) signer key id when it verified.
        """
        low, high = self.node_version.normalized()
        if low is not None or high is not None:
            if node_version is None:
                raise RequirementError("node_version_malformed", "no version announced")
            try:
                version = parse_node_version(node_version)
            except SemVerError as exc:
                raise RequirementError("node_version_malformed", str(exc)) from None
            if low is not None and precedence_key(version) < precedence_key(low):
                raise RequirementError("node_version_below_minimum", f"{version} < {low}")
            if high is not None and precedence_key(version) > precedence_key(high):
                raise RequirementError("node_version_above_maximum", f"{version} > {high}")
        gen_min, gen_max = self.protocol_generation.normalized()
        if gen_min is not None or gen_max is not None:
            if protocol_generation is None:
                raise RequirementError("protocol_generation_unknown")
            if gen_min is not None and protocol_generation < gen_min:
                raise RequirementError("protocol_generation_below_minimum")
            if gen_max is not None and protocol_generation > gen_max:
                raise RequirementError("protocol_generation_above_maximum")
        required, signers = self.release_attestation.normalized()
        if required:
            if release_attestation_valid is None:
                raise RequirementError("certified_binary_required")
            if not release_attestation_valid:
                raise RequirementError("build_proof_invalid", "release attestation does not verify")
            if signers:
                if release_signer_key is None:
                    raise RequirementError("build_proof_missing")
                if rust_trim(release_signer_key) not in signers:
                    raise RequirementError("release_signer_untrusted")

    def to_jsonable(self) -> dict[str, Any]:
        node_version: dict[str, Any] = {}
        if self.node_version.min is not None:
            node_version["min"] = self.node_version.min
        if self.node_version.max is not None:
            node_version["max"] = self.node_version.max
        generation: dict[str, Any] = {}
        if self.protocol_generation.min is not None:
            generation["min"] = self.protocol_generation.min
        if self.protocol_generation.max is not None:
            generation["max"] = self.protocol_generation.max
        return {
            "node_version": node_version,
            "protocol_generation": generation,
            "release_attestation": {
                "required": self.release_attestation.required,
                "allowed_signer_keys": list(self.release_attestation.allowed_signer_keys),
            },
        }

    def to_proto(self) -> node_pb2.MeshRequirements:
        message = node_pb2.MeshRequirements()
        nv, pg, ra = self.node_version, self.protocol_generation, self.release_attestation
        message.node_version.SetInParent()
        if nv.min is not None:
            message.node_version.min = nv.min
        if nv.max is not None:
            message.node_version.max = nv.max
        message.protocol_generation.SetInParent()
        if pg.min is not None:
            message.protocol_generation.min = pg.min
        if pg.max is not None:
            message.protocol_generation.max = pg.max
        message.release_attestation.required = ra.required
        message.release_attestation.allowed_signer_keys.extend(ra.allowed_signer_keys)
        return message

    @classmethod
    def from_proto(cls, message: node_pb2.MeshRequirements) -> MeshRequirements:
        nv, pg, ra = message.node_version, message.protocol_generation, message.release_attestation
        requirements = cls(
            NodeVersionBounds(
                nv.min if nv.HasField("min") else None,
                nv.max if nv.HasField("max") else None,
            ),
            ProtocolGenerationBounds(
                pg.min if pg.HasField("min") else None,
                pg.max if pg.HasField("max") else None,
            ),
            ReleaseAttestationRequirement(
                ra.required if ra.HasField("required") else False,
                tuple(ra.allowed_signer_keys),
            ),
        )
        requirements.validate()
        return requirements


@attrs.frozen
class MeshGenesisPolicy:
    """The owner's policy that founds a gated mesh; its hash is the mesh id."""

    origin_owner_id: str
    created_at_unix_ms: int
    requirements: MeshRequirements = MeshRequirements()
    version: int = _GENESIS_POLICY_VERSION

    def validate(self) -> None:
        if not rust_trim(self.origin_owner_id):
            raise RequirementError("origin_owner_missing")
        if self.version != _GENESIS_POLICY_VERSION:
            raise RequirementError("attestation_policy_mismatch", f"genesis policy version {self.version}")
        self.requirements.validate()

    def canonical_bytes(self) -> bytes:
        self.validate()
        low, high = self.requirements.node_version.normalized()
        gen_min, gen_max = self.requirements.protocol_generation.normalized()
        required, signers = self.requirements.release_attestation.normalized()
        return b"".join(
            [
                _GENESIS_TAG,
                struct.pack("<I", self.version),
                canonical_str(rust_trim(self.origin_owner_id)),
                struct.pack("<Q", self.created_at_unix_ms),
                _opt_str(None if low is None else str(low)),
                _opt_str(None if high is None else str(high)),
                _opt_u32(gen_min),
                _opt_u32(gen_max),
                bytes([int(required)]),
                struct.pack("<Q", len(signers)),
                *(canonical_str(key) for key in signers),
            ]
        )

    def policy_hash(self) -> str:
        """``hex(sha256(canonical bytes))``: the policy hash, and the gated mesh's id."""
        return hashlib.sha256(self.canonical_bytes()).hexdigest()

    def to_jsonable(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "origin_owner_id": self.origin_owner_id,
            "created_at_unix_ms": self.created_at_unix_ms,
            "requirements": self.requirements.to_jsonable(),
        }

    def to_proto(self) -> node_pb2.MeshGenesisPolicy:
        return node_pb2.MeshGenesisPolicy(
            version=self.version,
            origin_owner_id=self.origin_owner_id,
            created_at_unix_ms=self.created_at_unix_ms,
            requirements=self.requirements.to_proto(),
        )

    @classmethod
    def from_proto(cls, message: node_pb2.MeshGenesisPolicy) -> MeshGenesisPolicy:
        """mesh-llm's ``from_proto``: raises :class:`RequirementError` when it does not validate."""
        requirements = (
            MeshRequirements.from_proto(message.requirements)
            if message.HasField("requirements")
            else MeshRequirements()
        )
        policy = cls(message.origin_owner_id, message.created_at_unix_ms, requirements, message.version)
        policy.validate()
        return policy


@attrs.frozen
class SignedMeshGenesisPolicy:
    """A genesis policy with the owner's signature (gossip field 46)."""

    policy: MeshGenesisPolicy
    origin_sign_public_key: bytes
    signature: bytes
    signature_algorithm: str = ED25519
    version: int = _SIGNED_GENESIS_POLICY_VERSION

    def canonical_bytes(self) -> bytes:
        self.policy.validate()
        return b"".join(
            [
                _SIGNED_GENESIS_TAG,
                struct.pack("<I", self.version),
                self.policy.canonical_bytes(),
                canonical_bytes_field(self.origin_sign_public_key),
                canonical_str(rust_trim(self.signature_algorithm)),
            ]
        )

    def verify(self) -> None:
        """mesh-llm's ``SignedMeshGenesisPolicy::verify``; raises :class:`RequirementError`."""
        if self.version != _SIGNED_GENESIS_POLICY_VERSION:
            raise RequirementError("attestation_policy_mismatch", f"signed policy version {self.version}")
        if len(self.origin_sign_public_key) != PUBLIC_KEY_BYTES or len(self.signature) != SIGNATURE_BYTES:
            raise RequirementError("build_proof_invalid", "bad key or signature length")
        if rust_trim(self.signature_algorithm) != ED25519:
            raise RequirementError("build_proof_invalid", "signature algorithm is not ed25519")
        if decompress_point(self.origin_sign_public_key) is None:
            raise RequirementError("build_proof_invalid", "owner key is not a curve point")
        if owner_id(self.origin_sign_public_key) != self.policy.origin_owner_id:
            raise RequirementError("build_proof_invalid", "owner key does not match origin_owner_id")
        if not verify_strict(self.origin_sign_public_key, self.signature, self.canonical_bytes()):
            raise RequirementError("build_proof_invalid", "bad owner signature")

    @classmethod
    def sign(cls, policy: MeshGenesisPolicy, owner_key: Ed25519PrivateKey) -> SignedMeshGenesisPolicy:
        unsigned = cls(policy, public_key_bytes(owner_key), b"")
        signed = attrs.evolve(unsigned, signature=owner_key.sign(unsigned.canonical_bytes()))
        signed.verify()
        return signed

    def to_proto(self) -> node_pb2.SignedMeshGenesisPolicy:
        return node_pb2.SignedMeshGenesisPolicy(
            version=self.version,
            policy=self.policy.to_proto(),
            origin_sign_public_key=self.origin_sign_public_key,
            signature_algorithm=self.signature_algorithm,
            signature=self.signature,
        )

    @classmethod
    def from_proto(cls, message: node_pb2.SignedMeshGenesisPolicy) -> SignedMeshGenesisPolicy:
        """Shape-only conversion, as mesh-llm's: the policy must validate; call :meth:`verify`."""
        if not message.HasField("policy"):
            raise RequirementError("attestation_policy_mismatch", "signed genesis policy without a policy")
        return cls(
            MeshGenesisPolicy.from_proto(message.policy),
            bytes(message.origin_sign_public_key),
            bytes(message.signature),
            message.signature_algorithm,
            message.version,
        )


# ---- the signed bootstrap token (JSON) ----


class _JsonObject(dict[str, Any]):
    """A JSON object that remembers which keys appeared more than once."""

    duplicates: frozenset[str] = frozenset()


def _object_pairs(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject()
    dupes = set()
    for key, value in pairs:
        if key in obj:
            dupes.add(key)
        obj[key] = value
    obj.duplicates = frozenset(dupes)
    return obj


def _invalid(detail: str) -> RequirementError:
    return RequirementError("bootstrap_token_invalid", detail)


class _Fields:
    """Reads the fields of one JSON object the way serde's derived ``Deserialize`` does: unknown
    keys are ignored, duplicate known keys and wrong types are errors."""

    def __init__(self, value: Any, what: str) -> None:
        if not isinstance(value, dict):
            raise _invalid(f"{what} must be a JSON object")
        self.obj = value
        self.what = what
        self.duplicates: frozenset[str] = getattr(value, "duplicates", frozenset())

    def _get(self, key: str) -> tuple[bool, Any]:
        if key in self.duplicates:
            raise _invalid(f"duplicate field {key!r} in {self.what}")
        if key not in self.obj:
            return False, None
        return True, self.obj[key]

    def _required(self, key: str) -> Any:
        present, value = self._get(key)
        if not present:
            raise _invalid(f"missing field {key!r} in {self.what}")
        return value

    def uint(self, key: str, limit: int) -> int:
        return self._int(key, self._required(key), limit)

    def opt_uint(self, key: str, limit: int) -> int | None:
        present, value = self._get(key)
        return None if not present or value is None else self._int(key, value, limit)

    def _int(self, key: str, value: Any, limit: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
            raise _invalid(f"{self.what}.{key} must be an integer in 0..={limit}")
        return value

    def string(self, key: str) -> str:
        return self._str(key, self._required(key))

    def opt_string(self, key: str) -> str | None:
        present, value = self._get(key)
        return None if not present or value is None else self._str(key, value)

    def _str(self, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise _invalid(f"{self.what}.{key} must be a string")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escape: serde_json rejects it
            raise _invalid(f"{self.what}.{key} is not valid Unicode") from None
        return value

    def byte_array(self, key: str) -> bytes:
        return self._bytes(key, self._required(key))

    def _bytes(self, key: str, value: Any) -> bytes:
        if not isinstance(value, list):
            raise _invalid(f"{self.what}.{key} must be an array of integers 0..=255")
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item <= 255:
                raise _invalid(f"{self.what}.{key} must be an array of integers 0..=255")
        return bytes(value)

    def byte_arrays(self, key: str) -> tuple[bytes, ...]:
        value = self._required(key)
        if not isinstance(value, list):
            raise _invalid(f"{self.what}.{key} must be an array of byte arrays")
        return tuple(self._bytes(key, item) for item in value)

    def default_bool(self, key: str) -> bool:
        present, value = self._get(key)
        if not present:
            return False
        if not isinstance(value, bool):
            raise _invalid(f"{self.what}.{key} must be a boolean")
        return value

    def default_strings(self, key: str) -> tuple[str, ...]:
        present, value = self._get(key)
        if not present:
            return ()
        if not isinstance(value, list):
            raise _invalid(f"{self.what}.{key} must be an array of strings")
        return tuple(self._str(key, item) for item in value)

    def default_object(self, key: str) -> _Fields:
        present, value = self._get(key)
        return _Fields(value if present else {}, f"{self.what}.{key}")

    def object(self, key: str) -> _Fields:
        return _Fields(self._required(key), f"{self.what}.{key}")


def _requirements_from_fields(fields: _Fields) -> MeshRequirements:
    nv = fields.default_object("node_version")
    pg = fields.default_object("protocol_generation")
    ra = fields.default_object("release_attestation")
    return MeshRequirements(
        NodeVersionBounds(nv.opt_string("min"), nv.opt_string("max")),
        ProtocolGenerationBounds(pg.opt_uint("min", _U32_MAX), pg.opt_uint("max", _U32_MAX)),
        ReleaseAttestationRequirement(ra.default_bool("required"), ra.default_strings("allowed_signer_keys")),
    )


def _policy_from_fields(fields: _Fields) -> MeshGenesisPolicy:
    return MeshGenesisPolicy(
        version=fields.uint("version", _U32_MAX),
        origin_owner_id=fields.string("origin_owner_id"),
        created_at_unix_ms=fields.uint("created_at_unix_ms", _U64_MAX),
        requirements=_requirements_from_fields(fields.object("requirements")),
    )


def parse_json_strict(
    data: bytes, *, max_depth: int = MAX_TOKEN_JSON_DEPTH, max_bytes: int = MAX_TOKEN_JSON_BYTES
) -> Any:
    """JSON as serde_json reads it: UTF-8, no NaN/Infinity, bounded nesting, numbers and size, no
    trailing data (:func:`meshd.jsonbound.loads`).

    Duplicate keys are kept on the objects (:class:`_JsonObject`) for the field readers.
    Raises :class:`meshd.jsonbound.BadJSON` (a ``ValueError``).
    """
    return jsonbound.loads(data, max_bytes=max_bytes, max_depth=max_depth, object_pairs_hook=_object_pairs)


@attrs.frozen
class SignedBootstrapToken:
    """mesh-llm's ``SignedBootstrapToken``: an owner-signed invite to a gated mesh."""

    serialized_addrs: tuple[bytes, ...] = attrs.field(converter=_bytes_tuple)
    mesh_id: str
    policy_hash: str
    genesis_policy: MeshGenesisPolicy
    expires_at_unix_ms: int | None
    origin_sign_public_key: bytes
    signature: bytes
    signature_algorithm: str = ED25519
    version: int = _BOOTSTRAP_TOKEN_VERSION

    # -- JSON --

    @classmethod
    def from_json(cls, data: bytes) -> SignedBootstrapToken:
        """Parse the token's JSON (the decoded invite string); ``bootstrap_token_invalid`` if it
        is not a well-formed token. Nothing is verified here: see :meth:`verify_at`.

        Like serde, unknown keys are ignored and a missing ``expires_at_unix_ms`` means none.
        Unlike serde, the array form of the struct (fields by position) is not accepted; mesh-llm
        never writes it.
        """
        try:
            value = parse_json_strict(data)
        except jsonbound.BadJSON as exc:
            raise _invalid(exc.reason) from None
        return cls.from_jsonable(value)

    @classmethod
    def from_jsonable(cls, value: Any) -> SignedBootstrapToken:
        fields = _Fields(value, "token")
        return cls(
            version=fields.uint("version", _U32_MAX),
            serialized_addrs=fields.byte_arrays("serialized_addrs"),
            mesh_id=fields.string("mesh_id"),
            policy_hash=fields.string("policy_hash"),
            genesis_policy=_policy_from_fields(fields.object("genesis_policy")),
            expires_at_unix_ms=fields.opt_uint("expires_at_unix_ms", _U64_MAX),
            origin_sign_public_key=fields.byte_array("origin_sign_public_key"),
            signature_algorithm=fields.string("signature_algorithm"),
            signature=fields.byte_array("signature"),
        )

    def to_jsonable(self) -> dict[str, Any]:
        """The serde field order and shapes (``Vec<u8>`` as integer arrays)."""
        return {
            "version": self.version,
            "serialized_addrs": [list(addr) for addr in self.serialized_addrs],
            "mesh_id": self.mesh_id,
            "policy_hash": self.policy_hash,
            "genesis_policy": self.genesis_policy.to_jsonable(),
            "expires_at_unix_ms": self.expires_at_unix_ms,
            "origin_sign_public_key": list(self.origin_sign_public_key),
            "signature_algorithm": self.signature_algorithm,
            "signature": list(self.signature),
        }

    def to_json(self) -> bytes:
        """Compact JSON, byte-identical to ``serde_json::to_vec`` of the Rust struct."""
        text = json.dumps(self.to_jsonable(), separators=(",", ":"), ensure_ascii=False)
        return text.encode("utf-8")

    def encode(self) -> str:
        """The invite string: base64url without padding of :meth:`to_json`."""
        return base64.urlsafe_b64encode(self.to_json()).rstrip(b"=").decode("ascii")

    # -- checks --

    def _validate_unsigned_shape(self) -> None:
        if (
            self.version != _BOOTSTRAP_TOKEN_VERSION
            or not rust_trim(self.mesh_id)
            or not rust_trim(self.policy_hash)
            or len(self.origin_sign_public_key) != PUBLIC_KEY_BYTES
            or not rust_trim(self.signature_algorithm)
        ):
            raise _invalid("bad version, blank mesh id or policy hash, or bad owner key length")
        self.genesis_policy.validate()

    def validate(self) -> None:
        """Shape checks (mesh-llm's ``validate``): the genesis policy keeps its own codes."""
        self._validate_unsigned_shape()
        if not self.signature:
            raise _invalid("empty signature")

    def canonical_bytes(self) -> bytes:
        self._validate_unsigned_shape()
        return b"".join(
            [
                _TOKEN_TAG,
                struct.pack("<I", self.version),
                struct.pack("<Q", len(self.serialized_addrs)),
                *(canonical_bytes_field(addr) for addr in self.serialized_addrs),
                canonical_str(rust_trim(self.mesh_id)),
                canonical_str(rust_trim(self.policy_hash)),
                self.genesis_policy.canonical_bytes(),
                _opt_u64(self.expires_at_unix_ms),
                canonical_bytes_field(self.origin_sign_public_key),
                canonical_str(rust_trim(self.signature_algorithm)),
            ]
        )

    def verify_at(self, now_ms: int) -> None:
        """mesh-llm's ``verify_at``, in its order; raises :class:`RequirementError`:

        1. shape (``bootstrap_token_invalid``) and genesis-policy validation (its own codes);
        2. algorithm ``ed25519`` and a 64-byte signature (``bootstrap_token_invalid``);
        3. ``policy_hash`` and ``mesh_id`` equal the policy's hash (``mesh_policy_mismatch``);
        4. not expired: ``now_ms > expires_at_unix_ms`` fails (``bootstrap_token_expired``);
        5. the owner key hashes to ``origin_owner_id`` and strictly verifies the signature over
           the canonical bytes (``bootstrap_token_invalid``).
        """
        self.validate()
        if rust_trim(self.signature_algorithm) != ED25519 or len(self.signature) != SIGNATURE_BYTES:
            raise _invalid("signature algorithm must be ed25519 with a 64-byte signature")
        expected = self.genesis_policy.policy_hash()
        if rust_trim(self.policy_hash) != expected:
            raise RequirementError("mesh_policy_mismatch", "policy_hash is not the genesis policy's hash")
        if rust_trim(self.mesh_id) != expected:
            raise RequirementError("mesh_policy_mismatch", "mesh_id is not the genesis policy's hash")
        if self.expires_at_unix_ms is not None and now_ms > self.expires_at_unix_ms:
            raise RequirementError("bootstrap_token_expired", f"expired at {self.expires_at_unix_ms} ms")
        if decompress_point(self.origin_sign_public_key) is None:
            raise _invalid("owner key is not a curve point")
        if owner_id(self.origin_sign_public_key) != self.genesis_policy.origin_owner_id:
            raise _invalid("owner key does not match origin_owner_id")
        if not verify_strict(self.origin_sign_public_key, self.signature, self.canonical_bytes()):
            raise _invalid("bad owner signature")

    @classmethod
    def sign(
        cls,
        serialized_addrs: Sequence[bytes],
        signed_policy: SignedMeshGenesisPolicy,
        owner_key: Ed25519PrivateKey,
        *,
        expires_at_unix_ms: int | None,
    ) -> SignedBootstrapToken:
        """A token signed by the owner of ``signed_policy`` (as mesh-llm's ``sign``)."""
        signed_policy.verify()
        if public_key_bytes(owner_key) != signed_policy.origin_sign_public_key:
            raise _invalid("the owner key did not sign the genesis policy")
        policy_hash = signed_policy.policy.policy_hash()
        unsigned = cls(
            serialized_addrs=tuple(serialized_addrs),
            mesh_id=policy_hash,
            policy_hash=policy_hash,
            genesis_policy=signed_policy.policy,
            expires_at_unix_ms=expires_at_unix_ms,
            origin_sign_public_key=signed_policy.origin_sign_public_key,
            signature=b"",
        )
        return attrs.evolve(unsigned, signature=owner_key.sign(unsigned.canonical_bytes()))


@attrs.frozen
class MeshRequirementState:
    """What a node joining a gated mesh keeps (mesh-llm's "requirement-aware mesh state"): every
    GossipFrame it sends then carries ``mesh_id``, ``mesh_policy_hash`` and a fresh admission proof
    (see :mod:`meshd.protocol.admission`)."""

    mesh_id: str
    policy_hash: str
    policy: MeshGenesisPolicy
    token: SignedBootstrapToken | None = None

    @classmethod
    def from_token(cls, token: SignedBootstrapToken) -> MeshRequirementState:
        """For a token that passed :meth:`SignedBootstrapToken.verify_at`."""
        return cls(rust_trim(token.mesh_id), rust_trim(token.policy_hash), token.genesis_policy, token)


def requirements_summary(state: MeshRequirementState) -> dict[str, Any]:
    """The ``mesh_requirements`` object of mesh-llm's ``/api/status`` (§10)."""
    return {"policy_hash": state.policy_hash, "requirements": state.policy.requirements.to_jsonable()}
