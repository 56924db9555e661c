"""Strict Ed25519 verification (ed25519-dalek's ``verify_strict`` rules) against attacks that plain
RFC 8032 verification, as OpenSSL/``cryptography`` does it, lets through."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.protocol.ed25519 import GROUP_ORDER, decompress_point, is_small_order, verify_strict

# ---- an independent point arithmetic (RFC 8032 §5.1.4, extended coordinates) as the oracle ----
P = 2**255 - 19
D = -121665 * pow(121666, P - 2, P) % P
L = 2**252 + 27742317777372353535851937790883648493
Ext = tuple[int, int, int, int]


def ext_add(a: Ext, b: Ext) -> Ext:
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % P
    bb = (y1 + x1) * (y2 + x2) % P
    cc = t1 * 2 * D * t2 % P
    dd = z1 * 2 * z2 % P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def ext_mul(k: int, point: Ext) -> Ext:
    result: Ext = (0, 1, 1, 0)
    while k:
        if k & 1:
            result = ext_add(result, point)
        point = ext_add(point, point)
        k >>= 1
    return result


def encode(point: Ext) -> bytes:
    x, y, z, _ = point
    zi = pow(z, P - 2, P)
    x, y = x * zi % P, y * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def to_ext(xy: tuple[int, int]) -> Ext:
    return (xy[0], xy[1], 1, xy[0] * xy[1] % P)


def torsion_points() -> list[bytes]:
    """The 8 points of order dividing 8, as canonical encodings: [L]Q for a random point Q has
    order dividing 8; find one of order exactly 8 and take its multiples."""
    for i in range(1000):
        q = decompress_point(hashlib.sha256(b"torsion %d" % i).digest())
        if q is None:
            continue
        t = ext_mul(L, to_ext(q))
        if encode(ext_mul(4, t)) != encode((0, 1, 1, 0)):
            return sorted({encode(ext_mul(k, t)) for k in range(8)})
    raise AssertionError("no point with an order-8 component found")


TORSION = torsion_points()
IDENTITY = (1).to_bytes(32, "little")


def k_of(r: bytes, a: bytes, message: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r + a + message).digest(), "little") % L


def plain_verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def secret_scalar(key: Ed25519PrivateKey) -> int:
    h = hashlib.sha512(key.private_bytes_raw()).digest()
    a = int.from_bytes(h[:32], "little")
    return (a & ((1 << 254) - 8)) | (1 << 254)


def test_torsion_points_are_the_eight_small_order_points() -> None:
    assert len(TORSION) == 8
    assert IDENTITY in TORSION
    assert bytes(32) in TORSION  # y = 0: the two points of order 4 (x = ±sqrt(-1)), one of them
    for encoding in TORSION:
        point = decompress_point(encoding)
        assert point is not None and is_small_order(point)


def test_valid_signature_verifies() -> None:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    signature = key.sign(b"message")
    assert verify_strict(public, signature, b"message")
    assert not verify_strict(public, signature, b"messagf")
    assert not is_small_order(decompress_point(public))  # type: ignore[arg-type]


@pytest.mark.parametrize("index", range(8))
def test_small_order_key_forgery_rejected(index: int) -> None:
    # Signature (R = identity, s = 0) is valid under RFC 8032's cofactorless equation for any
    # message whose k is a multiple of the key's order: for the identity key, every message.
    weak_key = TORSION[index]
    signature = IDENTITY + bytes(32)
    message = next(m for m in (b"forged %d" % i for i in range(200)) if k_of(IDENTITY, weak_key, m) % 8 == 0)
    assert plain_verify(weak_key, signature, message), "the forgery plain verification lets through"
    assert not verify_strict(weak_key, signature, message)


def test_identity_key_forgery_verifies_every_message_plainly() -> None:
    signature = IDENTITY + bytes(32)
    for message in (b"", b"a", b"pay 100 to mallory"):
        assert plain_verify(IDENTITY, signature, message)
        assert not verify_strict(IDENTITY, signature, message)


def test_small_order_r_rejected() -> None:
    # R = identity and s = k·a satisfy [s]B = R + [k]A for an honest key: a valid plain signature
    # whose R has small order, which verify_strict refuses.
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    message = b"small R"
    s = k_of(IDENTITY, public, message) * secret_scalar(key) % L
    signature = IDENTITY + s.to_bytes(32, "little")
    assert plain_verify(public, signature, message)
    assert not verify_strict(public, signature, message)
    for r in TORSION:
        assert not verify_strict(public, r + signature[32:], message)


def test_non_canonical_s_rejected() -> None:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    signature = key.sign(b"m")
    s = int.from_bytes(signature[32:], "little")
    bigger = signature[:32] + (s + GROUP_ORDER).to_bytes(32, "little")
    assert not plain_verify(public, bigger, b"m")
    assert not verify_strict(public, bigger, b"m")


def test_non_canonical_encodings_do_not_decode() -> None:
    # y = p + 1 is a second spelling of the identity; x = 0 with the sign bit set is non-canonical.
    assert decompress_point((P + 1).to_bytes(32, "little")) is None
    assert decompress_point(((1 << 255) | 1).to_bytes(32, "little")) is None
    assert decompress_point(IDENTITY) == (0, 1)
    non_canonical_identity = (P + 1).to_bytes(32, "little")
    assert not verify_strict(non_canonical_identity, IDENTITY + bytes(32), b"x")
    assert not verify_strict(IDENTITY, non_canonical_identity + bytes(32), b"x")


def test_not_a_point_and_bad_lengths() -> None:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    signature = key.sign(b"m")
    not_a_point = (2).to_bytes(32, "little")  # y = 2 has no x on the curve
    assert decompress_point(not_a_point) is None
    assert not verify_strict(not_a_point, signature, b"m")
    assert not verify_strict(public[:31], signature, b"m")
    assert not verify_strict(public, signature[:63], b"m")
    assert not verify_strict(public, signature + b"\x00", b"m")


@settings(max_examples=60, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), message=st.binary(max_size=300), bit=st.integers(0, 767))
def test_any_single_bit_flip_breaks_the_signature(seed: bytes, message: bytes, bit: int) -> None:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    public = key.public_key().public_bytes_raw()
    signature = key.sign(message)
    assert verify_strict(public, signature, message)
    blob = bytearray(public + signature)
    blob[bit // 8] ^= 1 << (bit % 8)
    assert not verify_strict(bytes(blob[:32]), bytes(blob[32:]), message)


@settings(max_examples=200, deadline=None)
@given(public=st.binary(max_size=40), signature=st.binary(max_size=70), message=st.binary(max_size=64))
def test_arbitrary_bytes_never_raise(public: bytes, signature: bytes, message: bytes) -> None:
    assert verify_strict(public, signature, message) in (True, False)
