"""Direct admission proofs and the checks on a gated mesh's direct peers (MESH_PROTOCOL_076.md §6.2)."""

from __future__ import annotations

import hashlib
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.protocol import node_pb2
from meshd.protocol.admission import (
    MAX_CLOCK_SKEW_MS,
    MISSING_RELEASE_ATTESTATION,
    add_gated_self_fields,
    admission_proof_canonical_bytes,
    build_admission_proof,
    check_direct_peer,
    release_attestation_hash,
    verify_admission_proof,
    verify_release_attestation,
)
from meshd.protocol.peers import Role, build_self_announcement
from meshd.protocol.requirements import (
    MeshGenesisPolicy,
    MeshRequirements,
    MeshRequirementState,
    NodeVersionBounds,
    ReleaseAttestationRequirement,
    RequirementError,
    SignedMeshGenesisPolicy,
    owner_id,
)
from meshd.protocol.token import EndpointAddr
from meshd.protocol.version import ANNOUNCED_VERSION

NOW = 1_800_000_000_000
NODE = Ed25519PrivateKey.from_private_bytes(b"\x05" * 32)
NODE_ID = NODE.public_key().public_bytes_raw()
OWNER = Ed25519PrivateKey.from_private_bytes(b"\x06" * 32)
POLICY = MeshGenesisPolicy(
    owner_id(OWNER.public_key().public_bytes_raw()), 1, MeshRequirements(NodeVersionBounds("0.76.0"))
)
STATE = MeshRequirementState(POLICY.policy_hash(), POLICY.policy_hash(), POLICY)


def code_of(exc: pytest.ExceptionInfo[RequirementError]) -> str:
    return exc.value.code


def test_canonical_bytes_written_out() -> None:
    proof = node_pb2.DirectNodeAdmissionProof(
        version=1,
        sender_id=NODE_ID,
        mesh_id=" m ",
        policy_hash="p",
        attestation_hash=MISSING_RELEASE_ATTESTATION,
        timestamp_unix_ms=NOW,
        signature_algorithm="ed25519",
    )
    assert admission_proof_canonical_bytes(proof) == (
        b"mesh-llm-direct-node-admission-proof-v1:"
        + struct.pack("<I", 1)
        + struct.pack("<Q", 32)
        + NODE_ID
        + struct.pack("<Q", 1)
        + b"m"  # trimmed
        + struct.pack("<Q", 1)
        + b"p"
        + struct.pack("<Q", 27)
        + b"missing-release-attestation"
        + struct.pack("<Q", NOW)
        + struct.pack("<Q", 7)
        + b"ed25519"
    )


def test_build_and_verify() -> None:
    proof = build_admission_proof(NODE, mesh_id="m", policy_hash="p", now_ms=NOW)
    assert (proof.version, proof.sender_id, proof.timestamp_unix_ms) == (1, NODE_ID, NOW)
    assert proof.attestation_hash == MISSING_RELEASE_ATTESTATION
    NODE.public_key().verify(proof.signature, admission_proof_canonical_bytes(proof))  # a real Ed25519 signature
    verify_admission_proof(proof, NODE_ID, NOW)
    # the skew window is +-30 s inclusive
    verify_admission_proof(proof, NODE_ID, NOW + MAX_CLOCK_SKEW_MS)
    verify_admission_proof(proof, NODE_ID, NOW - MAX_CLOCK_SKEW_MS)
    for now in (NOW + MAX_CLOCK_SKEW_MS + 1, NOW - MAX_CLOCK_SKEW_MS - 1):
        with pytest.raises(RequirementError) as info:
            verify_admission_proof(proof, NODE_ID, now)
        assert code_of(info) == "direct_proof_stale"


def test_proof_for_another_sender() -> None:
    proof = build_admission_proof(NODE, mesh_id="m", policy_hash="p", now_ms=NOW)
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(RequirementError) as info:
        verify_admission_proof(proof, other, NOW)
    assert code_of(info) == "direct_proof_sender_id_mismatch"
    # a proof naming the live sender but signed by someone else
    forged = node_pb2.DirectNodeAdmissionProof()
    forged.CopyFrom(build_admission_proof(Ed25519PrivateKey.generate(), mesh_id="m", policy_hash="p", now_ms=NOW))
    forged.sender_id = NODE_ID
    with pytest.raises(RequirementError) as info:
        verify_admission_proof(forged, NODE_ID, NOW)
    assert code_of(info) == "build_proof_invalid"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("version", 2),
        ("sender_id", b"\x01" * 31),
        ("mesh_id", " "),
        ("policy_hash", ""),
        ("attestation_hash", "\n"),
        ("signature_algorithm", "ed448"),
        ("signature", b"\x00" * 63),
        ("mesh_id", "other"),  # well-formed but not what was signed
        ("timestamp_unix_ms", NOW + 1),
    ],
)
def test_any_tampered_field_fails(field: str, value: object) -> None:
    proof = build_admission_proof(NODE, mesh_id="m", policy_hash="p", now_ms=NOW)
    setattr(proof, field, value)
    with pytest.raises(RequirementError) as info:
        verify_admission_proof(proof, NODE_ID, NOW)
    assert code_of(info) in ("build_proof_invalid", "direct_proof_sender_id_mismatch")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_proof_bytes_never_crash(data: bytes) -> None:
    try:
        proof = node_pb2.DirectNodeAdmissionProof.FromString(data)
    except Exception:  # not protobuf at all
        return
    try:
        verify_admission_proof(proof, NODE_ID, NOW)
    except RequirementError:
        return
    raise AssertionError("random bytes made a valid proof")


# ---- the self entry and the receiver's checks ----


def my_entry(version: str = ANNOUNCED_VERSION) -> node_pb2.PeerAnnouncement:
    return build_self_announcement(addr=EndpointAddr(NODE_ID), version=version, role=Role.CLIENT)


def test_add_gated_self_fields_passes_the_receiver_checks() -> None:
    ann = add_gated_self_fields(my_entry(), STATE, NODE, NOW)
    assert (ann.mesh_id, ann.mesh_policy_hash) == (STATE.mesh_id, STATE.policy_hash)
    check_direct_peer(STATE, ann, NODE_ID, NOW + 10_000)
    with pytest.raises(ValueError):
        add_gated_self_fields(my_entry(), STATE, OWNER, NOW)  # not our own entry
    # round trip through the wire
    check_direct_peer(STATE, node_pb2.PeerAnnouncement.FromString(ann.SerializeToString()), NODE_ID, NOW)


def test_ungated_mesh_checks_nothing() -> None:
    check_direct_peer(None, my_entry(version="garbage"), NODE_ID, NOW)


def _gated(**changes: object) -> node_pb2.PeerAnnouncement:
    ann = add_gated_self_fields(my_entry(), STATE, NODE, NOW)
    for key, value in changes.items():
        if value is None:
            ann.ClearField(key)
        else:
            setattr(ann, key, value)
    return ann


@pytest.mark.parametrize(
    ("ann", "code"),
    [
        (_gated(mesh_id=None), "mesh_policy_mismatch"),
        (_gated(mesh_id="0" * 64), "mesh_policy_mismatch"),
        (_gated(mesh_policy_hash="ab"), "mesh_policy_mismatch"),
        (_gated(direct_admission_proof=None), "direct_proof_missing"),
        (_gated(version="0.75.9"), "node_version_below_minimum"),
        (_gated(version=None), "node_version_malformed"),
        (_gated(version="zero"), "node_version_malformed"),
    ],
)
def test_direct_peer_rejections(ann: node_pb2.PeerAnnouncement, code: str) -> None:
    with pytest.raises(RequirementError) as info:
        check_direct_peer(STATE, ann, NODE_ID, NOW)
    assert code_of(info) == code


def test_proof_must_match_state_and_entry() -> None:
    other_state = MeshRequirementState("f" * 64, "e" * 64, POLICY)
    # an entry for another mesh whose proof is self-consistent: mesh id mismatch first
    ann = add_gated_self_fields(my_entry(), other_state, NODE, NOW)
    with pytest.raises(RequirementError, match="mesh_policy_mismatch"):
        check_direct_peer(STATE, ann, NODE_ID, NOW)
    # right entry fields, but the proof was made for the other mesh
    ann = _gated()
    ann.direct_admission_proof.CopyFrom(
        build_admission_proof(NODE, mesh_id=other_state.mesh_id, policy_hash=other_state.policy_hash, now_ms=NOW)
    )
    with pytest.raises(RequirementError, match="build_proof_invalid"):
        check_direct_peer(STATE, ann, NODE_ID, NOW)
    # a stale proof keeps its own code, a foreign sender too
    with pytest.raises(RequirementError, match="direct_proof_stale"):
        check_direct_peer(STATE, _gated(), NODE_ID, NOW + 31_000)
    with pytest.raises(RequirementError, match="direct_proof_sender_id_mismatch"):
        check_direct_peer(STATE, _gated(), OWNER.public_key().public_bytes_raw(), NOW)


def test_genesis_policy_in_the_entry_must_verify_and_match() -> None:
    signed = SignedMeshGenesisPolicy.sign(POLICY, OWNER)
    ann = _gated()
    ann.genesis_policy.CopyFrom(signed.to_proto())
    check_direct_peer(STATE, ann, NODE_ID, NOW)
    ann.genesis_policy.signature = b"\x00" * 64
    with pytest.raises(RequirementError, match="build_proof_invalid"):
        check_direct_peer(STATE, ann, NODE_ID, NOW)
    other_policy = MeshGenesisPolicy(POLICY.origin_owner_id, 2, POLICY.requirements)
    ann.genesis_policy.CopyFrom(SignedMeshGenesisPolicy.sign(other_policy, OWNER).to_proto())
    with pytest.raises(RequirementError, match="mesh_policy_mismatch"):
        check_direct_peer(STATE, ann, NODE_ID, NOW)


# ---- release attestations (checked on peers; meshd sends none) ----

SIGNER = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
SIGNER_ID = "ed25519:" + SIGNER.public_key().public_bytes_raw().hex()


def attestation(**changes: object) -> node_pb2.ReleaseBuildAttestation:
    att = node_pb2.ReleaseBuildAttestation(
        version=1,
        node_version="0.76.0",
        build_id="b",
        commit="c",
        target_triple="x86_64-unknown-linux-gnu",
        signer_key_id=SIGNER_ID,
        signature_algorithm="ed25519",
    )
    for key, value in changes.items():
        setattr(att, key, value)
    att.signature = SIGNER.sign(_canonical_of(att))  # signs the default claims
    return att


def test_release_attestation_hash_and_verify() -> None:
    att = attestation()
    assert verify_release_attestation(att)
    assert release_attestation_hash(None) == MISSING_RELEASE_ATTESTATION
    digest = release_attestation_hash(att)
    assert len(digest) == 64 and digest == hashlib.sha256(_canonical_of(att)).hexdigest()
    tampered = attestation()
    tampered.commit = "d"
    assert not verify_release_attestation(tampered)
    assert not verify_release_attestation(attestation(signer_key_id="ed25519:zz"))
    assert release_attestation_hash(attestation(version=2)) == "invalid-release-attestation"


def _canonical_of(att: node_pb2.ReleaseBuildAttestation) -> bytes:
    """The canonical bytes of the default claims of :func:`attestation`, written out."""
    return (
        b"mesh-llm-release-attestation-v1:"
        + struct.pack("<I", 1)
        + b"".join(struct.pack("<Q", len(v)) + v for v in (b"0.76.0", b"b", b"c", b"x86_64-unknown-linux-gnu"))
        + b"\x00\x00\x00"
        + struct.pack("<Q", len(SIGNER_ID))
        + SIGNER_ID.encode()
        + struct.pack("<Q", 7)
        + b"ed25519"
    )


def test_required_attestation_mesh() -> None:
    policy = MeshGenesisPolicy(
        POLICY.origin_owner_id,
        1,
        MeshRequirements(release_attestation=ReleaseAttestationRequirement(True, (SIGNER_ID,))),
    )
    state = MeshRequirementState(policy.policy_hash(), policy.policy_hash(), policy)
    # meshd has no attestation: such a mesh cannot be joined (certified_binary_required)
    with pytest.raises(RequirementError, match="certified_binary_required"):
        check_direct_peer(state, add_gated_self_fields(my_entry(), state, NODE, NOW), NODE_ID, NOW)
    # a peer with a valid attestation whose proof names its hash is admitted
    ann = my_entry()
    ann.release_attestation.CopyFrom(attestation())
    ann.mesh_id, ann.mesh_policy_hash = state.mesh_id, state.policy_hash
    ann.direct_admission_proof.CopyFrom(
        build_admission_proof(
            NODE,
            mesh_id=state.mesh_id,
            policy_hash=state.policy_hash,
            now_ms=NOW,
            attestation_hash=release_attestation_hash(ann.release_attestation),
        )
    )
    check_direct_peer(state, ann, NODE_ID, NOW)
    # ... but its proof must name that hash
    ann.direct_admission_proof.CopyFrom(
        build_admission_proof(NODE, mesh_id=state.mesh_id, policy_hash=state.policy_hash, now_ms=NOW)
    )
    with pytest.raises(RequirementError, match="build_proof_invalid"):
        check_direct_peer(state, ann, NODE_ID, NOW)
