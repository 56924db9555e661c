"""Stateless Retry tokens (QUIC address validation, RFC 9000 §8.1.2), sans-IO.

When inbound handshakes pile up, the endpoint answers an Initial without a token with a Retry packet
carrying a token instead of starting a handshake. A client that really sent from its source address
receives it and repeats its Initial with the token; a spoofed source never does, so a burst of
Initials from forged addresses costs no handshake slots.

A token is ``version (1) ‖ issued-at (8, ms, big endian) ‖ len ‖ original DCID ‖ len ‖ Retry SCID ‖
tag (16)``, where the tag is HMAC-SHA256 (truncated) under a per-endpoint random key over the client's
address and everything before it. Tokens are short-lived (:data:`DEFAULT_LIFETIME`) and bound to the
address and to the Retry packet's source CID, which the client must use as the DCID of its next
Initial.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

__all__ = ["DEFAULT_LIFETIME", "RetryTokens"]

#: Seconds a Retry token stays valid (a client repeats its Initial one round trip later).
DEFAULT_LIFETIME = 10.0
_VERSION = 1
_TAG_BYTES = 16
_TIME = struct.Struct(">Q")
_MAX_CID = 20


class RetryTokens:
    """Issues and checks Retry tokens; ``secret`` defaults to 32 random bytes."""

    def __init__(self, secret: bytes | None = None, lifetime: float = DEFAULT_LIFETIME) -> None:
        self._key = secret if secret is not None else os.urandom(32)
        self.lifetime = lifetime

    def issue(self, address: tuple[str, int], original_dcid: bytes, retry_scid: bytes, now: float) -> bytes:
        if len(original_dcid) > _MAX_CID or len(retry_scid) > _MAX_CID:
            raise ValueError("connection IDs are at most 20 bytes")
        body = (
            bytes((_VERSION,))
            + _TIME.pack(int(now * 1000))
            + bytes((len(original_dcid),))
            + original_dcid
            + bytes((len(retry_scid),))
            + retry_scid
        )
        return body + self._tag(address, body)

    def check(self, address: tuple[str, int], token: bytes, dcid: bytes, now: float) -> bytes | None:
        """The original DCID the token vouches for, or None when it is not a valid, fresh token for
        this address whose Retry SCID is ``dcid``."""
        if len(token) < 1 + _TIME.size + 2 + _TAG_BYTES or token[0] != _VERSION:
            return None
        body, tag = token[:-_TAG_BYTES], token[-_TAG_BYTES:]
        if not hmac.compare_digest(tag, self._tag(address, body)):
            return None
        (issued_ms,) = _TIME.unpack_from(body, 1)
        pos = 1 + _TIME.size
        odcid_len = body[pos]
        odcid = body[pos + 1 : pos + 1 + odcid_len]
        pos += 1 + odcid_len
        if pos >= len(body):
            return None
        scid_len = body[pos]
        scid = body[pos + 1 : pos + 1 + scid_len]
        if pos + 1 + scid_len != len(body) or len(odcid) != odcid_len or scid != dcid:
            return None
        age = now - issued_ms / 1000
        if not -1.0 <= age <= self.lifetime:
            return None
        return odcid

    def _tag(self, address: tuple[str, int], body: bytes) -> bytes:
        where = f"{address[0]}|{address[1]}|".encode()
        return hmac.new(self._key, where + body, hashlib.sha256).digest()[:_TAG_BYTES]
