"""BLAKE3 for short inputs (one 1 KiB chunk), in pure Python: just what the relay handshake needs.

The relay challenge signature signs ``blake3.derive_key("iroh-relay handshake v1 challenge signature",
challenge)`` (IROH_RELAY.md §1.3). The challenge is 16 bytes and the context string 43, so one chunk is
always enough; longer inputs raise ``ValueError`` rather than being hashed wrongly. Written from the
BLAKE3 specification (compression function, chunk flags, derive-key mode).
"""

from __future__ import annotations

import struct

__all__ = ["derive_key", "hash", "keyed_hash"]

_IV = (0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19)
_PERM = (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8)
_CHUNK_START = 1
_CHUNK_END = 2
_ROOT = 8
_KEYED_HASH = 16
_DERIVE_KEY_CONTEXT = 32
_DERIVE_KEY_MATERIAL = 64
_BLOCK = 64
_CHUNK = 1024
_M = 0xFFFFFFFF


def _g(v: list[int], a: int, b: int, c: int, d: int, x: int, y: int) -> None:
    v[a] = (v[a] + v[b] + x) & _M
    t = v[d] ^ v[a]
    v[d] = ((t >> 16) | (t << 16)) & _M
    v[c] = (v[c] + v[d]) & _M
    t = v[b] ^ v[c]
    v[b] = ((t >> 12) | (t << 20)) & _M
    v[a] = (v[a] + v[b] + y) & _M
    t = v[d] ^ v[a]
    v[d] = ((t >> 8) | (t << 24)) & _M
    v[c] = (v[c] + v[d]) & _M
    t = v[b] ^ v[c]
    v[b] = ((t >> 7) | (t << 25)) & _M


def _compress(cv: tuple[int, ...], block: bytes, counter: int, block_len: int, flags: int) -> tuple[int, ...]:
    m = list(struct.unpack("<16I", block))
    v = [*cv, *_IV[:4], counter & _M, (counter >> 32) & _M, block_len, flags]
    for round_no in range(7):
        _g(v, 0, 4, 8, 12, m[0], m[1])
        _g(v, 1, 5, 9, 13, m[2], m[3])
        _g(v, 2, 6, 10, 14, m[4], m[5])
        _g(v, 3, 7, 11, 15, m[6], m[7])
        _g(v, 0, 5, 10, 15, m[8], m[9])
        _g(v, 1, 6, 11, 12, m[10], m[11])
        _g(v, 2, 7, 8, 13, m[12], m[13])
        _g(v, 3, 4, 9, 14, m[14], m[15])
        if round_no < 6:
            m = [m[i] for i in _PERM]
    return tuple(v[i] ^ v[i + 8] for i in range(8))


def _one_chunk(data: bytes, key: tuple[int, ...], mode: int) -> bytes:
    if len(data) > _CHUNK:
        raise ValueError(f"this BLAKE3 handles inputs up to {_CHUNK} bytes, got {len(data)}")
    blocks = [data[i : i + _BLOCK] for i in range(0, len(data), _BLOCK)] or [b""]
    cv = key
    for index, block in enumerate(blocks):
        flags = mode
        if index == 0:
            flags |= _CHUNK_START
        if index == len(blocks) - 1:
            flags |= _CHUNK_END | _ROOT
        cv = _compress(cv, block.ljust(_BLOCK, b"\0"), 0, len(block), flags)
    return struct.pack("<8I", *cv)


def hash(data: bytes) -> bytes:
    """The 32-byte BLAKE3 hash of *data* (at most 1024 bytes)."""
    return _one_chunk(data, _IV, 0)


def keyed_hash(key: bytes, data: bytes) -> bytes:
    """BLAKE3 keyed hash with a 32-byte *key*."""
    if len(key) != 32:
        raise ValueError("a BLAKE3 key is 32 bytes")
    return _one_chunk(data, struct.unpack("<8I", key), _KEYED_HASH)


def derive_key(context: str, material: bytes) -> bytes:
    """BLAKE3 ``derive_key(context, material)``, 32 bytes."""
    context_key = _one_chunk(context.encode("utf-8"), _IV, _DERIVE_KEY_CONTEXT)
    return _one_chunk(material, struct.unpack("<8I", context_key), _DERIVE_KEY_MATERIAL)
