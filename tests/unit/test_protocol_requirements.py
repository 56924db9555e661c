"""Gated meshes (MESH_PROTOCOL_076.md §5.2, §7): genesis-policy canonical bytes and hash, signed
bootstrap tokens (serde JSON, verification order, tampering), and mesh ids."""

from __future__ import annotations

import base64
import functools
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.protocol.errors import InvalidToken
from meshd.protocol.mesh_id import gated_mesh_id, named_mesh_id, random_mesh_id
from meshd.protocol.requirements import (
    MeshGenesisPolicy,
    MeshRequirements,
    MeshRequirementState,
    NodeVersionBounds,
    ProtocolGenerationBounds,
    ReleaseAttestationRequirement,
    RequirementError,
    SignedBootstrapToken,
    SignedMeshGenesisPolicy,
    owner_id,
    requirements_summary,
)
from meshd.protocol.token import EndpointAddr, Invite, decode_invite_token, decode_token, encode_token

GOLDEN_POLICY_HASH = "fb6461159de3e62f1debc8f490b7d10f77fb9c11519ce967a1d24e8cea19ade2"
CREATED = 1_717_171_717_000
NOW = CREATED + 1_000
HOST = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
HOST_ADDR = EndpointAddr(HOST.public_key().public_bytes_raw(), ip_addrs=(("127.0.0.1", 4242),))


def restricted() -> MeshRequirements:
    """The requirements of mesh-llm's own canonical-hash test (``requirements.rs:1228-1251``)."""
    return MeshRequirements(
        NodeVersionBounds("0.65.0", "0.66.0"),
        ProtocolGenerationBounds(1, 2),
        ReleaseAttestationRequirement(True, ("signer-b", "signer-a")),
    )


def test_golden_policy_hash_from_mesh_llm() -> None:
    policy = MeshGenesisPolicy("owner-123", CREATED, restricted())
    assert policy.policy_hash() == GOLDEN_POLICY_HASH
    assert gated_mesh_id(policy) == GOLDEN_POLICY_HASH


def test_canonical_bytes_written_out() -> None:
    # str = u64le(len) || utf-8; opt = 00 | 01 || value; list = u64le(count) || items
    policy = MeshGenesisPolicy(
        "abc", 7, MeshRequirements(NodeVersionBounds(min="0.76.0"), ProtocolGenerationBounds(max=3))
    )
    expected = (
        b"mesh-llm-genesis-policy-v1:"
        + bytes.fromhex("01000000")  # version u32le
        + bytes.fromhex("0300000000000000")
        + b"abc"  # origin_owner_id
        + bytes.fromhex("0700000000000000")  # created_at_unix_ms u64le
        + b"\x01"
        + bytes.fromhex("0600000000000000")
        + b"0.76.0"  # min
        + b"\x00"  # max: none
        + b"\x00"  # generation min: none
        + b"\x01"
        + bytes.fromhex("03000000")  # generation max: 3
        + b"\x00"  # required: false
        + bytes.fromhex("0000000000000000")  # no signer keys
    )
    assert policy.canonical_bytes() == expected


def test_policy_hash_normalises_like_mesh_llm() -> None:
    base = MeshGenesisPolicy("owner-123", CREATED, restricted())
    # trimmed owner id, 'v'-prefixed and padded versions (printed back by semver), signer keys
    # trimmed, sorted and de-duplicated: all the same canonical bytes
    same = MeshGenesisPolicy(
        " owner-123\n",
        CREATED,
        MeshRequirements(
            NodeVersionBounds(" v0.65.0", "V0.66.0 "),
            ProtocolGenerationBounds(1, 2),
            ReleaseAttestationRequirement(True, ("signer-a", " signer-b", "signer-a")),
        ),
    )
    assert same.policy_hash() == base.policy_hash()
    assert MeshGenesisPolicy("owner-123", CREATED + 1, restricted()).policy_hash() != base.policy_hash()
    # mesh-llm's "policy change changes mesh id" case: min 0.65.0 -> 0.65.1
    changed = MeshRequirements(
        NodeVersionBounds("0.65.1", "0.66.0"), ProtocolGenerationBounds(1, 2), restricted().release_attestation
    )
    assert MeshGenesisPolicy("owner-123", CREATED, changed).policy_hash() != base.policy_hash()


@pytest.mark.parametrize(
    ("policy", "code"),
    [
        (MeshGenesisPolicy("  ", CREATED), "origin_owner_missing"),
        (MeshGenesisPolicy("o", CREATED, version=2), "attestation_policy_mismatch"),
        (
            MeshGenesisPolicy("o", CREATED, MeshRequirements(NodeVersionBounds("0.66.0", "0.65.0"))),
            "node_version_bounds_invalid",
        ),
        (MeshGenesisPolicy("o", CREATED, MeshRequirements(NodeVersionBounds("0.66"))), "node_version_malformed"),
        (MeshGenesisPolicy("o", CREATED, MeshRequirements(NodeVersionBounds(max="latest"))), "node_version_malformed"),
        (
            MeshGenesisPolicy("o", CREATED, MeshRequirements(protocol_generation=ProtocolGenerationBounds(3, 2))),
            "protocol_generation_bounds_invalid",
        ),
        (
            MeshGenesisPolicy("o", CREATED, MeshRequirements(release_attestation=ReleaseAttestationRequirement(True))),
            "release_signer_list_empty",
        ),
        (
            MeshGenesisPolicy(
                "o", CREATED, MeshRequirements(release_attestation=ReleaseAttestationRequirement(False, (" ",)))
            ),
            "release_signer_untrusted",
        ),
    ],
)
def test_genesis_validation_codes(policy: MeshGenesisPolicy, code: str) -> None:
    with pytest.raises(RequirementError) as info:
        policy.policy_hash()
    assert info.value.code == code


def test_pre_release_bounds_compare_by_precedence() -> None:
    # 0.76.0-rc6 < 0.76.0, so [0.76.0-rc6, 0.76.0] is a valid range and the reverse is not
    MeshGenesisPolicy("o", CREATED, MeshRequirements(NodeVersionBounds("0.76.0-rc6", "0.76.0"))).validate()
    with pytest.raises(RequirementError, match="node_version_bounds_invalid"):
        MeshGenesisPolicy("o", CREATED, MeshRequirements(NodeVersionBounds("0.76.0", "0.76.0-rc6"))).validate()


# ---- signed bootstrap tokens ----


def make_owner() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def signed_policy(owner: Ed25519PrivateKey, requirements: MeshRequirements | None = None) -> SignedMeshGenesisPolicy:
    owner_pub = owner.public_key().public_bytes_raw()
    policy = MeshGenesisPolicy(
        owner_id(owner_pub), CREATED, requirements or MeshRequirements(NodeVersionBounds("0.76.0"))
    )
    return SignedMeshGenesisPolicy.sign(policy, owner)


def make_token(owner: Ed25519PrivateKey, *, expires: int | None = CREATED + 60_000, **kw: Any) -> SignedBootstrapToken:
    addrs = kw.pop("addrs", [HOST_ADDR.to_json().encode()])
    return SignedBootstrapToken.sign(addrs, signed_policy(owner, **kw), owner, expires_at_unix_ms=expires)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def test_signed_token_round_trip_and_join_state() -> None:
    owner = make_owner()
    token = make_token(owner)
    token.verify_at(NOW)
    assert token.mesh_id == token.policy_hash == token.genesis_policy.policy_hash()
    text = token.encode()
    assert "=" not in text
    assert SignedBootstrapToken.from_json(base64.urlsafe_b64decode(text + "==")) == token
    invite = decode_invite_token(text, now_ms=NOW)
    assert invite == Invite(
        HOST_ADDR, MeshRequirementState(token.mesh_id, token.policy_hash, token.genesis_policy, token)
    )
    assert invite.signed
    assert decode_token(text, now_ms=NOW) == HOST_ADDR
    assert requirements_summary(invite.mesh) == {  # type: ignore[arg-type]
        "policy_hash": token.policy_hash,
        "requirements": {
            "node_version": {"min": "0.76.0"},
            "protocol_generation": {},
            "release_attestation": {"required": False, "allowed_signer_keys": []},
        },
    }


def test_plain_token_has_no_mesh_state() -> None:
    invite = decode_invite_token(encode_token(HOST_ADDR), now_ms=NOW)
    assert invite == Invite(HOST_ADDR)
    assert not invite.signed


def test_serde_json_layout() -> None:
    # what serde_json::to_vec prints for the Rust struct: field order, Vec<u8> as integer arrays,
    # a None expiry as null, unset bounds omitted
    policy = MeshGenesisPolicy("ab", 5, MeshRequirements(protocol_generation=ProtocolGenerationBounds(min=1)))
    token = SignedBootstrapToken(
        serialized_addrs=(b"{}",),
        mesh_id="m",
        policy_hash="p",
        genesis_policy=policy,
        expires_at_unix_ms=None,
        origin_sign_public_key=b"\x00\xff",
        signature=b"\x07",
    )
    assert token.to_json() == (
        b'{"version":1,"serialized_addrs":[[123,125]],"mesh_id":"m","policy_hash":"p",'
        b'"genesis_policy":{"version":1,"origin_owner_id":"ab","created_at_unix_ms":5,'
        b'"requirements":{"node_version":{},"protocol_generation":{"min":1},'
        b'"release_attestation":{"required":false,"allowed_signer_keys":[]}}},'
        b'"expires_at_unix_ms":null,"origin_sign_public_key":[0,255],"signature_algorithm":"ed25519","signature":[7]}'
    )
    assert SignedBootstrapToken.from_json(token.to_json()) == token


def test_expiry_boundary_and_no_expiry() -> None:
    owner = make_owner()
    token = make_token(owner, expires=NOW)
    token.verify_at(NOW)  # expires when now > expires_at, not at equality
    with pytest.raises(RequirementError) as info:
        token.verify_at(NOW + 1)
    assert info.value.code == "bootstrap_token_expired"
    with pytest.raises(InvalidToken) as tinfo:
        decode_invite_token(token.encode(), now_ms=NOW + 1)
    assert tinfo.value.code == "bootstrap_token_expired"
    forever = make_token(owner, expires=None)
    forever.verify_at(2**64 - 1)


def _tampered(token: SignedBootstrapToken, path: list[Any], value: Any) -> str:
    obj = json.loads(token.to_json())
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return b64(json.dumps(obj, separators=(",", ":")).encode())


OTHER_ADDR = EndpointAddr(Ed25519PrivateKey.generate().public_key().public_bytes_raw(), ip_addrs=(("10.0.0.1", 1),))


@pytest.mark.parametrize(
    ("path", "value", "code"),
    [
        (["version"], 2, "bootstrap_token_invalid"),
        (["serialized_addrs"], [list(OTHER_ADDR.to_json().encode())], "bootstrap_token_invalid"),
        (["serialized_addrs"], [], "bootstrap_token_invalid"),
        (["mesh_id"], "0" * 64, "mesh_policy_mismatch"),
        (["mesh_id"], " ", "bootstrap_token_invalid"),
        (["policy_hash"], "deadbeef", "mesh_policy_mismatch"),
        (["genesis_policy", "created_at_unix_ms"], CREATED + 1, "mesh_policy_mismatch"),
        (["genesis_policy", "origin_owner_id"], "0" * 64, "mesh_policy_mismatch"),
        (["genesis_policy", "requirements", "node_version", "min"], "0.77.0", "mesh_policy_mismatch"),
        (
            ["genesis_policy", "requirements", "node_version"],
            {"min": "0.77", "max": "0.76.0"},
            "node_version_malformed",
        ),
        (["genesis_policy", "version"], 2, "attestation_policy_mismatch"),
        (["expires_at_unix_ms"], CREATED + 120_000, "bootstrap_token_invalid"),  # extended: bad signature
        (["expires_at_unix_ms"], None, "bootstrap_token_invalid"),
        (["expires_at_unix_ms"], NOW - 1, "bootstrap_token_expired"),  # expiry is checked before the signature
        (["origin_sign_public_key"], list(HOST.public_key().public_bytes_raw()), "bootstrap_token_invalid"),
        (["origin_sign_public_key"], [1] * 31, "bootstrap_token_invalid"),
        (["signature_algorithm"], "Ed25519", "bootstrap_token_invalid"),
        (["signature_algorithm"], "", "bootstrap_token_invalid"),
        (["signature"], [], "bootstrap_token_invalid"),
        (["signature"], [0] * 63, "bootstrap_token_invalid"),
        (["signature"], [0] * 64, "bootstrap_token_invalid"),
    ],
)
def test_tampering_with_any_field_fails(path: list[Any], value: Any, code: str) -> None:
    token = make_token(make_owner())
    decode_invite_token(token.encode(), now_ms=NOW)  # the untouched token is fine
    with pytest.raises(InvalidToken) as info:
        decode_invite_token(_tampered(token, path, value), now_ms=NOW)
    assert info.value.code == code


def test_every_signature_bit_matters() -> None:
    token = make_token(make_owner())
    for bit in range(0, 512, 37):
        sig = bytearray(token.signature)
        sig[bit // 8] ^= 1 << (bit % 8)
        bad = SignedBootstrapToken(**{**_fields(token), "signature": bytes(sig)})
        with pytest.raises(RequirementError, match="bootstrap_token_invalid"):
            bad.verify_at(NOW)


def _fields(token: SignedBootstrapToken) -> dict[str, Any]:
    return {
        "serialized_addrs": token.serialized_addrs,
        "mesh_id": token.mesh_id,
        "policy_hash": token.policy_hash,
        "genesis_policy": token.genesis_policy,
        "expires_at_unix_ms": token.expires_at_unix_ms,
        "origin_sign_public_key": token.origin_sign_public_key,
        "signature": token.signature,
        "signature_algorithm": token.signature_algorithm,
        "version": token.version,
    }


def test_whitespace_around_ids_is_trimmed_as_in_mesh_llm() -> None:
    # mesh_id, policy_hash and the algorithm are trimmed both for comparison and in the signed
    # bytes, so padding them keeps the token valid (as in Rust)
    token = make_token(make_owner())
    padded = _tampered(token, ["mesh_id"], f" {token.mesh_id}\n")
    invite = decode_invite_token(padded, now_ms=NOW)
    assert invite.mesh is not None and invite.mesh.mesh_id == token.mesh_id
    decode_invite_token(_tampered(token, ["signature_algorithm"], " ed25519 "), now_ms=NOW)


def test_signature_by_a_small_order_owner_key_is_refused() -> None:
    # A policy whose owner key is the identity point: OpenSSL would accept R = identity, s = 0 for
    # any message; strict verification must not.
    identity = (1).to_bytes(32, "little")
    policy = MeshGenesisPolicy(owner_id(identity), CREATED)
    token = SignedBootstrapToken(
        serialized_addrs=(HOST_ADDR.to_json().encode(),),
        mesh_id=policy.policy_hash(),
        policy_hash=policy.policy_hash(),
        genesis_policy=policy,
        expires_at_unix_ms=None,
        origin_sign_public_key=identity,
        signature=identity + bytes(32),
    )
    with pytest.raises(RequirementError) as info:
        token.verify_at(NOW)
    assert info.value.code == "bootstrap_token_invalid"


def test_bad_serialized_addrs() -> None:
    owner = make_owner()
    for addrs in ([b"not json"], [HOST_ADDR.to_json().encode(), b'{"id":"zz","addrs":[]}'], [b"\xff"]):
        token = make_token(owner, addrs=addrs)
        token.verify_at(NOW)  # the signature covers whatever bytes are there
        with pytest.raises(InvalidToken) as info:
            decode_invite_token(token.encode(), now_ms=NOW)
        assert info.value.code == "bootstrap_token_invalid"
    empty = make_token(owner, addrs=[])
    with pytest.raises(InvalidToken, match="no endpoint address"):
        decode_invite_token(empty.encode(), now_ms=NOW)


def test_second_address_is_not_the_bootstrap_address() -> None:
    token = make_token(make_owner(), addrs=[HOST_ADDR.to_json().encode(), OTHER_ADDR.to_json().encode()])
    assert decode_invite_token(token.encode(), now_ms=NOW).addr == HOST_ADDR


OWNER = Ed25519PrivateKey.from_private_bytes(b"\x11" * 32)


@functools.cache
def owner_token() -> SignedBootstrapToken:
    return make_token(OWNER)


def _valid_token_obj() -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(owner_token().to_json())
    return obj


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda o: o.pop("mesh_id"), "missing field 'mesh_id'"),
        (lambda o: o["genesis_policy"].pop("requirements"), "missing field 'requirements'"),
        (lambda o: o.__setitem__("version", 1.0), "must be an integer"),
        (lambda o: o.__setitem__("version", True), "must be an integer"),
        (lambda o: o.__setitem__("version", -1), "must be an integer"),
        (lambda o: o.__setitem__("version", 2**32), "must be an integer"),
        (lambda o: o.__setitem__("signature", "AAAA"), "array of integers"),
        (lambda o: o["signature"].__setitem__(0, 256), "array of integers"),
        (lambda o: o["signature"].__setitem__(0, 1.5), "array of integers"),
        (lambda o: o.__setitem__("expires_at_unix_ms", 2**64), "must be an integer"),
        (lambda o: o.__setitem__("mesh_id", None), "must be a string"),
        (lambda o: o["genesis_policy"]["requirements"].__setitem__("node_version", None), "must be a JSON object"),
        (lambda o: o["genesis_policy"]["requirements"]["release_attestation"].__setitem__("required", 0), "boolean"),
        (
            lambda o: o["genesis_policy"]["requirements"]["release_attestation"].__setitem__(
                "allowed_signer_keys", None
            ),
            "array of strings",
        ),
        (lambda o: o.__setitem__("serialized_addrs", [[1], "x"]), "array of integers"),
    ],
)
def test_strict_serde_shapes(mutate: Any, reason: str) -> None:
    obj = _valid_token_obj()
    mutate(obj)
    with pytest.raises(InvalidToken) as info:
        decode_invite_token(b64(json.dumps(obj).encode()), now_ms=NOW)
    assert info.value.code == "bootstrap_token_invalid"
    assert reason in str(info.value)


def test_lenient_serde_shapes() -> None:
    # unknown fields are ignored; a missing expiry means none; defaulted requirement parts may be absent
    obj = _valid_token_obj()
    obj["future_field"] = {"nested": [1, 2, {"x": None}]}
    del obj["expires_at_unix_ms"]
    token = SignedBootstrapToken.from_json(json.dumps(obj).encode())
    assert token.expires_at_unix_ms is None
    obj2 = _valid_token_obj()
    obj2["genesis_policy"]["requirements"] = {}
    assert SignedBootstrapToken.from_json(json.dumps(obj2).encode()).genesis_policy.requirements == MeshRequirements()


def test_duplicate_fields_and_non_json_numbers_rejected() -> None:
    text = owner_token().to_json().decode()
    duplicated = text.replace('"version":1,', '"version":1,"version":1,', 1)
    with pytest.raises(InvalidToken, match="duplicate field 'version'"):
        decode_invite_token(b64(duplicated.encode()), now_ms=NOW)
    nan = text.replace('"expires_at_unix_ms":' + str(CREATED + 60_000), '"expires_at_unix_ms":NaN')
    with pytest.raises(InvalidToken, match="not JSON"):
        decode_invite_token(b64(nan.encode()), now_ms=NOW)
    lone_surrogate = text.replace('"mesh_id":"', '"mesh_id":"\\ud800', 1)
    with pytest.raises(InvalidToken, match="not valid Unicode"):
        decode_invite_token(b64(lone_surrogate.encode()), now_ms=NOW)


def test_deep_nesting_is_a_clean_error() -> None:
    obj = _valid_token_obj()
    text = json.dumps(obj)[:-1] + ',"x":' + "[" * 5000 + "]" * 5000 + "}"
    with pytest.raises(InvalidToken, match="nested deeper"):
        decode_invite_token(b64(text.encode()), now_ms=NOW)
    shallow = json.dumps(obj)[:-1] + ',"x":' + "[" * 100 + "]" * 100 + "}"
    decode_invite_token(b64(shallow.encode()), now_ms=NOW)
    brackets_in_strings = json.dumps({**obj, "x": "[" * 5000})
    decode_invite_token(b64(brackets_in_strings.encode()), now_ms=NOW)


def test_oversized_token_rejected() -> None:
    token = make_token(OWNER, addrs=[HOST_ADDR.to_json().encode()] * 150)
    assert len(token.encode()) > 64 * 1024
    with pytest.raises(InvalidToken, match="too long"):
        decode_invite_token(token.encode(), now_ms=NOW)


# ---- signed genesis policy (gossip field 46) ----


def test_signed_genesis_policy_verify_and_proto_round_trip() -> None:
    owner = make_owner()
    signed = signed_policy(owner, restricted_for(owner))
    signed.verify()
    again = SignedMeshGenesisPolicy.from_proto(signed.to_proto())
    assert again == signed
    again.verify()
    for bad in (
        SignedMeshGenesisPolicy(
            signed.policy, signed.origin_sign_public_key, signed.signature[:-1] + bytes([signed.signature[-1] ^ 1])
        ),
        SignedMeshGenesisPolicy(signed.policy, HOST.public_key().public_bytes_raw(), signed.signature),
        SignedMeshGenesisPolicy(signed.policy, signed.origin_sign_public_key, signed.signature, "rsa"),
        SignedMeshGenesisPolicy(
            MeshGenesisPolicy(signed.policy.origin_owner_id, 1), signed.origin_sign_public_key, signed.signature
        ),
    ):
        with pytest.raises(RequirementError, match="build_proof_invalid"):
            bad.verify()
    with pytest.raises(RequirementError, match="attestation_policy_mismatch"):
        SignedMeshGenesisPolicy(signed.policy, signed.origin_sign_public_key, signed.signature, version=2).verify()


def restricted_for(owner: Ed25519PrivateKey) -> MeshRequirements:
    return MeshRequirements(NodeVersionBounds("0.76.0"), ProtocolGenerationBounds(1, 1))


def test_requirements_proto_round_trip_keeps_unset_bounds_unset() -> None:
    for requirements in (MeshRequirements(), restricted(), MeshRequirements(NodeVersionBounds(max="1.0.0"))):
        assert MeshRequirements.from_proto(requirements.to_proto()) == requirements


# ---- mesh ids ----


def test_mesh_ids() -> None:
    assert named_mesh_id("demo") == "e5e18ac7744a0d88db2934a5080d47a6dfe86cf6030f4fc39a1848a7611b31f8"
    published = named_mesh_id("demo", "ab" * 32)
    assert published != named_mesh_id("demo") and len(published) == 64
    assert named_mesh_id("demo", "AB" * 32) == published  # the key's hex is lowercase on the wire
    with pytest.raises(ValueError):
        named_mesh_id("demo", "ab")
    assert random_mesh_id(lambda n: bytes(range(n))) == "000102030405060708090a0b0c0d0e0f"
    with pytest.raises(ValueError):
        random_mesh_id(lambda n: b"short")


# ---- property tests ----

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)
token_keys = st.sampled_from(
    [
        "version",
        "serialized_addrs",
        "mesh_id",
        "policy_hash",
        "genesis_policy",
        "expires_at_unix_ms",
        "origin_sign_public_key",
        "signature_algorithm",
        "signature",
        "id",
        "addrs",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(token_keys, json_values, max_size=9))
def test_arbitrary_json_objects_only_raise_invalid_token(obj: dict[str, Any]) -> None:
    with pytest.raises(InvalidToken):
        decode_invite_token(b64(json.dumps(obj).encode()), now_ms=NOW)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_change_to_a_valid_token_json_is_caught(data: st.DataObject) -> None:
    raw = bytearray(owner_token().to_json())
    index = data.draw(st.integers(0, len(raw) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != raw[index]))
    raw[index] = new
    try:
        invite = decode_invite_token(b64(bytes(raw)), now_ms=NOW)
    except InvalidToken:
        return
    # the only changes that keep a token valid are insignificant JSON: whitespace around tokens or
    # the trimmed padding of mesh_id/policy_hash/algorithm; the result must be the same invite
    assert invite.addr == HOST_ADDR and invite.mesh is not None
    assert invite.mesh.policy_hash == owner_token().policy_hash


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_token_bytes_cut_anywhere_are_rejected(data: st.DataObject) -> None:
    raw = owner_token().to_json()
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(InvalidToken):
        decode_invite_token(b64(raw[:cut]), now_ms=NOW)


versions = st.builds(lambda a, b, c: f"{a}.{b}.{c}", st.integers(0, 3), st.integers(0, 99), st.integers(0, 9))


@settings(max_examples=100, deadline=None)
@given(
    owner_text=st.text(min_size=1, max_size=20).filter(lambda s: s.strip()),
    created=st.integers(0, 2**64 - 1),
    low=st.none() | versions,
    gen=st.tuples(st.none() | st.integers(0, 5), st.none() | st.integers(5, 2**32 - 1)),
    keys=st.lists(st.text(min_size=1, max_size=12).filter(lambda s: s.strip()), max_size=5),
    expires=st.none() | st.integers(NOW, 2**64 - 1),
    addr_count=st.integers(1, 4),
)
def test_signed_tokens_round_trip(
    owner_text: str,
    created: int,
    low: str | None,
    gen: tuple[int | None, int | None],
    keys: list[str],
    expires: int | None,
    addr_count: int,
) -> None:
    requirements = MeshRequirements(
        NodeVersionBounds(low),
        ProtocolGenerationBounds(*gen),
        ReleaseAttestationRequirement(bool(keys), tuple(keys)),
    )
    policy = MeshGenesisPolicy(owner_id(OWNER.public_key().public_bytes_raw()), created, requirements)
    signed = SignedMeshGenesisPolicy.sign(policy, OWNER)
    token = SignedBootstrapToken.sign(
        [HOST_ADDR.to_json().encode()] * addr_count, signed, OWNER, expires_at_unix_ms=expires
    )
    text = token.encode()
    invite = decode_invite_token(text, now_ms=NOW)
    assert invite.mesh is not None and invite.mesh.token == token
    assert invite.mesh.mesh_id == policy.policy_hash()
    assert decode_invite_token(text, now_ms=NOW).addr == HOST_ADDR
    # the hash covers the owner id: another owner text gives another mesh
    assert MeshGenesisPolicy(owner_text + "x", created, requirements).policy_hash() != policy.policy_hash()
