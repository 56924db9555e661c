"""Endpoint ids: the 32-byte Ed25519 public keys that name iroh / mesh-llm nodes (§3).

Text forms follow iroh-base ``key.rs``: lowercase hex (64 chars) is what iroh prints; parsing
also accepts the 52-char RFC 4648 base32 form (standard alphabet ``A-Z2-7``, no padding,
case-insensitive; iroh prints it lowercase).

Point validity: iroh builds a ``PublicKey`` with ed25519-dalek's ``VerifyingKey::from_bytes``,
which succeeds when the compressed point decompresses. OpenSSL (and so ``cryptography``'s
``Ed25519PublicKey.from_public_bytes``) accepts any 32 bytes without checking the point, so it
cannot be used to reproduce that check; :func:`is_valid_ed25519_point` does the decompression
test itself with the curve equation from RFC 8032 §5.1.3, with dalek's leniency: the y
coordinate is taken modulo p (non-canonical encodings pass) and x = 0 with the sign bit set
passes. Small-order points pass too (dalek only rejects them when verifying signatures).
"""

from __future__ import annotations

import base64
import binascii
import functools

__all__ = [
    "ENDPOINT_ID_BYTES",
    "endpoint_id_base32",
    "endpoint_id_hex",
    "is_valid_ed25519_point",
    "parse_endpoint_id",
    "short_id",
]

ENDPOINT_ID_BYTES = 32

_P = 2**255 - 19
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_B32_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
_B32_CHARS_VALUE = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz234567")}


def _check_len(endpoint_id: bytes) -> None:
    if len(endpoint_id) != ENDPOINT_ID_BYTES:
        raise ValueError(f"endpoint id must be {ENDPOINT_ID_BYTES} bytes, got {len(endpoint_id)}")


def endpoint_id_hex(endpoint_id: bytes) -> str:
    """64 lowercase hex chars (iroh's ``Display``)."""
    _check_len(endpoint_id)
    return endpoint_id.hex()


def short_id(endpoint_id: bytes) -> str:
    """First 5 bytes as 10 lowercase hex chars (iroh's ``fmt_short``)."""
    _check_len(endpoint_id)
    return endpoint_id[:5].hex()


def endpoint_id_base32(endpoint_id: bytes) -> str:
    """52 lowercase base32 chars without padding (iroh's base32 form)."""
    _check_len(endpoint_id)
    return base64.b32encode(endpoint_id).decode("ascii").rstrip("=").lower()


def parse_endpoint_id(text: str) -> bytes:
    """Parse 64 hex chars or 52 base32 chars into 32 bytes; raise ``ValueError`` otherwise.

    This checks the encoding only; see :func:`is_valid_ed25519_point` for the curve check.
    """
    if len(text) == 2 * ENDPOINT_ID_BYTES:
        if not set(text) <= _HEX_DIGITS:
            raise ValueError("endpoint id is 64 chars but not hex")
        return bytes.fromhex(text)
    if len(text) == 52:
        if not set(text) <= _B32_CHARS:
            raise ValueError("endpoint id is 52 chars but not base32")
        try:
            raw = base64.b32decode(text.upper() + "====")
        except binascii.Error as exc:  # pragma: no cover - alphabet checked above
            raise ValueError(f"endpoint id is not base32: {exc}") from None
        # 52 chars carry 260 bits; the 4 bits past the 32 bytes must be zero (iroh's decoder
        # checks trailing bits), so each id has exactly one base32 spelling.
        if _B32_CHARS_VALUE[text[-1].lower()] & 0x0F:
            raise ValueError("endpoint id base32 has non-zero trailing bits")
        return raw
    raise ValueError(f"endpoint id must be 64 hex or 52 base32 chars, got {len(text)} chars")


def _jacobi(a: int, n: int) -> int:
    """Jacobi symbol (a/n) for odd n > 0, by quadratic reciprocity (no modular exponentiation)."""
    a %= n
    result = 1
    while a:
        while not a & 1:
            a >>= 1
            if n & 7 in (3, 5):
                result = -result
        a, n = n, a
        if a & 3 == 3 and n & 3 == 3:
            result = -result
        a %= n
    return result if n == 1 else 0


@functools.lru_cache(maxsize=4096)
def is_valid_ed25519_point(endpoint_id: bytes) -> bool:
    """Whether 32 bytes decompress to an Ed25519 curve point (ed25519-dalek's rule).

    Results are cached: gossip repeats the same ids every round.
    """
    if len(endpoint_id) != ENDPOINT_ID_BYTES:
        return False
    y = (int.from_bytes(endpoint_id, "little") & ((1 << 255) - 1)) % _P
    yy = y * y % _P
    u = (yy - 1) % _P  # the curve -x^2 + y^2 = 1 + d x^2 y^2 gives x^2 = u / v
    v = (_D * yy + 1) % _P  # never 0: -1/d is not a square mod p
    # u / v is a square iff u * v is (v != 0); p is prime, so the Jacobi symbol is Legendre's.
    return _jacobi(u * v, _P) != -1
