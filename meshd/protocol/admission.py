"""Direct admission on a gated mesh (MESH_PROTOCOL_076.md §6.2), sans-IO.

On a mesh with requirements, every GossipFrame's self entry carries ``mesh_id``,
``mesh_policy_hash`` and a fresh :class:`~meshd.protocol.node_pb2.DirectNodeAdmissionProof`: an
Ed25519 signature by the **node** key (the EndpointId) over::

    "mesh-llm-direct-node-admission-proof-v1:" ‖ u32le(1) ‖ bytes(sender_id)
    ‖ str(mesh_id.trim()) ‖ str(policy_hash.trim()) ‖ str(attestation_hash.trim())
    ‖ u64le(timestamp_unix_ms) ‖ str("ed25519")

whose timestamp must be within 30 s of the receiver's clock. ``attestation_hash`` is
``"missing-release-attestation"`` for a node without a :class:`ReleaseBuildAttestation` (meshd has
none). A receiver that fails any check does not answer the gossip (§2.3).

:func:`add_gated_self_fields` is what a joiner adds to its own entry; :func:`check_direct_peer` is
what a receiver checks on a directly gossiping peer's self entry. Neither reads the clock.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshd.protocol import node_pb2
from meshd.protocol.ed25519 import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, decompress_point, public_key_bytes, verify_strict
from meshd.protocol.requirements import (
    ED25519,
    MeshRequirementState,
    RequirementError,
    SignedMeshGenesisPolicy,
    canonical_bytes_field,
    canonical_str,
)
from meshd.protocol.semver import rust_trim
from meshd.protocol.streams import PROTOCOL_GENERATION

__all__ = [
    "MAX_CLOCK_SKEW_MS",
    "MISSING_RELEASE_ATTESTATION",
    "add_gated_self_fields",
    "admission_proof_canonical_bytes",
    "build_admission_proof",
    "check_admission_proof_shape",
    "check_direct_peer",
    "release_attestation_hash",
    "verify_admission_proof",
    "verify_release_attestation",
]

#: ``DIRECT_NODE_ADMISSION_PROOF_MAX_CLOCK_SKEW_MS``.
MAX_CLOCK_SKEW_MS: Final = 30_000
#: ``attestation_hash`` of a node that sends no release attestation.
MISSING_RELEASE_ATTESTATION: Final = "missing-release-attestation"
#: ``attestation_hash`` mesh-llm uses when its own attestation cannot be hashed.
INVALID_RELEASE_ATTESTATION: Final = "invalid-release-attestation"

_PROOF_VERSION = 1
_PROOF_TAG = b"mesh-llm-direct-node-admission-proof-v1:"
_ATTESTATION_VERSION = 1
_ATTESTATION_TAG = b"mesh-llm-release-attestation-v1:"
_HEX = frozenset("0123456789abcdefABCDEF")


def _proof_shape_ok(proof: node_pb2.DirectNodeAdmissionProof, *, signed: bool) -> bool:
    return (
        proof.version == _PROOF_VERSION
        and len(proof.sender_id) == PUBLIC_KEY_BYTES
        and bool(rust_trim(proof.mesh_id))
        and bool(rust_trim(proof.policy_hash))
        and bool(rust_trim(proof.attestation_hash))
        and rust_trim(proof.signature_algorithm) == ED25519
        and (not signed or len(proof.signature) == SIGNATURE_BYTES)
    )


def check_admission_proof_shape(proof: node_pb2.DirectNodeAdmissionProof) -> None:
    """mesh-llm's ``validate_shape`` (a proof failing it is treated as absent on ingest)."""
    if not _proof_shape_ok(proof, signed=True):
        raise RequirementError("build_proof_invalid", "malformed direct admission proof")


def admission_proof_canonical_bytes(proof: node_pb2.DirectNodeAdmissionProof) -> bytes:
    """The signed bytes of a proof (its ``signature`` field is not part of them)."""
    if not _proof_shape_ok(proof, signed=False):
        raise RequirementError("build_proof_invalid", "malformed direct admission proof")
    return b"".join(
        [
            _PROOF_TAG,
            struct.pack("<I", proof.version),
            canonical_bytes_field(proof.sender_id),
            canonical_str(rust_trim(proof.mesh_id)),
            canonical_str(rust_trim(proof.policy_hash)),
            canonical_str(rust_trim(proof.attestation_hash)),
            struct.pack("<Q", proof.timestamp_unix_ms),
            canonical_str(rust_trim(proof.signature_algorithm)),
        ]
    )


def build_admission_proof(
    node_key: Ed25519PrivateKey,
    *,
    mesh_id: str,
    policy_hash: str,
    now_ms: int,
    attestation_hash: str = MISSING_RELEASE_ATTESTATION,
) -> node_pb2.DirectNodeAdmissionProof:
    """A fresh proof signed with the node (EndpointId) key, timestamped ``now_ms``."""
    proof = node_pb2.DirectNodeAdmissionProof(
        version=_PROOF_VERSION,
        sender_id=public_key_bytes(node_key),
        mesh_id=mesh_id,
        policy_hash=policy_hash,
        attestation_hash=attestation_hash,
        timestamp_unix_ms=now_ms,
        signature_algorithm=ED25519,
    )
    proof.signature = node_key.sign(admission_proof_canonical_bytes(proof))
    return proof


def verify_admission_proof(proof: node_pb2.DirectNodeAdmissionProof, live_sender_id: bytes, now_ms: int) -> None:
    """mesh-llm's ``verify_for_live_sender``: shape, sender = the TLS identity, clock skew, and a
    strict signature by that identity. Raises :class:`RequirementError`
    (``build_proof_invalid``, ``direct_proof_sender_id_mismatch``, ``direct_proof_stale``)."""
    check_admission_proof_shape(proof)
    if len(live_sender_id) != PUBLIC_KEY_BYTES or proof.sender_id != live_sender_id:
        raise RequirementError("direct_proof_sender_id_mismatch")
    skew = abs(proof.timestamp_unix_ms - now_ms)
    if skew > MAX_CLOCK_SKEW_MS:
        raise RequirementError("direct_proof_stale", f"{skew} ms from our clock")
    if decompress_point(live_sender_id) is None:
        raise RequirementError("build_proof_invalid", "sender id is not a curve point")
    if not verify_strict(live_sender_id, proof.signature, admission_proof_canonical_bytes(proof)):
        raise RequirementError("build_proof_invalid", "bad admission proof signature")


# ---- release build attestations (only hashed and checked; meshd sends none) ----


def _attestation_signer_key(signer_key_id: str) -> bytes | None:
    text = rust_trim(signer_key_id)
    if not text.startswith("ed25519:"):
        return None
    encoded = text[len("ed25519:") :]
    if len(encoded) != 2 * PUBLIC_KEY_BYTES or not set(encoded) <= _HEX:
        return None
    key = bytes.fromhex(encoded)
    return key if decompress_point(key) is not None else None


def _attestation_canonical_bytes(att: node_pb2.ReleaseBuildAttestation) -> bytes | None:
    gen_min = att.supported_protocol_generation_min if att.HasField("supported_protocol_generation_min") else None
    gen_max = att.supported_protocol_generation_max if att.HasField("supported_protocol_generation_max") else None
    if (
        att.version != _ATTESTATION_VERSION
        or not all(rust_trim(v) for v in (att.node_version, att.build_id, att.commit, att.target_triple))
        or not rust_trim(att.signer_key_id)
        or not att.signature
        or rust_trim(att.signature_algorithm) != ED25519
        or (gen_min is not None and gen_max is not None and gen_min > gen_max)
        or _attestation_signer_key(att.signer_key_id) is None
    ):
        return None

    def opt_u32(value: int | None) -> bytes:
        return b"\x00" if value is None else b"\x01" + struct.pack("<I", value)

    digest = b"\x01" + canonical_str(att.artifact_digest) if att.HasField("artifact_digest") else b"\x00"
    return b"".join(
        [
            _ATTESTATION_TAG,
            struct.pack("<I", att.version),
            canonical_str(rust_trim(att.node_version)),
            canonical_str(rust_trim(att.build_id)),
            canonical_str(rust_trim(att.commit)),
            canonical_str(rust_trim(att.target_triple)),
            opt_u32(gen_min),
            opt_u32(gen_max),
            digest,
            canonical_str(rust_trim(att.signer_key_id)),
            canonical_str(rust_trim(att.signature_algorithm)),
        ]
    )


def release_attestation_hash(att: node_pb2.ReleaseBuildAttestation | None) -> str:
    """The ``attestation_hash`` a node with this attestation puts in its admission proof."""
    if att is None:
        return MISSING_RELEASE_ATTESTATION
    data = _attestation_canonical_bytes(att)
    return INVALID_RELEASE_ATTESTATION if data is None else hashlib.sha256(data).hexdigest()


def verify_release_attestation(att: node_pb2.ReleaseBuildAttestation) -> bool:
    """Whether the attestation is well formed and strictly signed by its ``signer_key_id``."""
    data = _attestation_canonical_bytes(att)
    key = _attestation_signer_key(att.signer_key_id)
    if data is None or key is None or len(att.signature) != SIGNATURE_BYTES:
        return False
    return verify_strict(key, att.signature, data)


# ---- self entry and peer checks ----


def add_gated_self_fields(
    ann: node_pb2.PeerAnnouncement,
    state: MeshRequirementState,
    node_key: Ed25519PrivateKey,
    now_ms: int,
) -> node_pb2.PeerAnnouncement:
    """Put ``mesh_id``, ``mesh_policy_hash`` and a fresh admission proof into our own entry (in
    place; returned for chaining). Call it for **every** GossipFrame sent on a gated mesh."""
    if ann.endpoint_id != public_key_bytes(node_key):
        raise ValueError("the announcement is not this node's own entry")
    ann.mesh_id = state.mesh_id
    ann.mesh_policy_hash = state.policy_hash
    ann.direct_admission_proof.CopyFrom(
        build_admission_proof(node_key, mesh_id=state.mesh_id, policy_hash=state.policy_hash, now_ms=now_ms)
    )
    return ann


def check_direct_peer(
    state: MeshRequirementState | None,
    ann: node_pb2.PeerAnnouncement,
    remote_id: bytes,
    now_ms: int,
    *,
    protocol_generation: int = PROTOCOL_GENERATION,
) -> None:
    """mesh-llm's ``validate_direct_peer_requirements`` on the self entry of a peer gossiping
    directly with us (raises :class:`RequirementError`; then send no gossip reply).

    Without requirement state (an ungated mesh) everything passes. Otherwise, in mesh-llm's order:
    the entry's ``mesh_id``/``mesh_policy_hash`` match ours; an included ``genesis_policy`` verifies
    and equals ours; the admission proof is present and valid for ``remote_id`` and matches the
    entry and our state (a stale or foreign proof keeps its own code, another bad proof becomes
    ``build_proof_invalid``); then the policy's version, generation and attestation bounds.
    """
    if state is None:
        return
    if not ann.HasField("mesh_id") or ann.mesh_id != state.mesh_id:
        raise RequirementError("mesh_policy_mismatch", "the peer announces another mesh id")
    if not ann.HasField("mesh_policy_hash") or ann.mesh_policy_hash != state.policy_hash:
        raise RequirementError("mesh_policy_mismatch", "the peer announces another policy hash")
    if ann.HasField("genesis_policy"):
        signed = SignedMeshGenesisPolicy.from_proto(ann.genesis_policy)
        signed.verify()
        if signed.policy != state.policy or signed.policy.policy_hash() != state.policy_hash:
            raise RequirementError("mesh_policy_mismatch", "the peer's genesis policy is not ours")
    if not ann.HasField("direct_admission_proof"):
        raise RequirementError("direct_proof_missing")
    proof = ann.direct_admission_proof
    attestation = ann.release_attestation if ann.HasField("release_attestation") else None
    try:
        verify_admission_proof(proof, remote_id, now_ms)
        if rust_trim(proof.mesh_id) != state.mesh_id or rust_trim(proof.policy_hash) != state.policy_hash:
            raise RequirementError("build_proof_invalid", "the proof is for another mesh")
        if proof.mesh_id != ann.mesh_id or proof.policy_hash != ann.mesh_policy_hash:
            raise RequirementError("build_proof_invalid", "the proof does not match the entry")
        if rust_trim(proof.attestation_hash) != release_attestation_hash(attestation):
            raise RequirementError("build_proof_invalid", "the proof names another release attestation")
    except RequirementError as exc:
        if exc.code in ("direct_proof_stale", "direct_proof_sender_id_mismatch"):
            raise
        raise RequirementError("build_proof_invalid", exc.detail) from None
    attestation_valid = None if attestation is None else verify_release_attestation(attestation)
    signer = rust_trim(attestation.signer_key_id) if attestation is not None and attestation_valid else None
    state.policy.requirements.evaluate(
        node_version=ann.version if ann.HasField("version") else None,
        protocol_generation=protocol_generation,
        release_signer_key=signer,
        release_attestation_valid=attestation_valid,
    )
