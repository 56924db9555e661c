"""Errors raised by the pure mesh-llm/1 codec.

Every error is a :class:`ProtocolError`; the specific subclasses carry the offending values as
attributes so that an adapter can log them as structured fields and reset the stream.
"""

from __future__ import annotations

__all__ = [
    "BadGeneration",
    "ForgedSender",
    "FrameTooLarge",
    "InvalidFrame",
    "InvalidIdLength",
    "InvalidSubprotocol",
    "InvalidToken",
    "MalformedMessage",
    "MissingHttpPort",
    "ProtocolError",
    "TruncatedFrame",
    "UnknownStreamType",
]


class ProtocolError(Exception):
    """Base class of every error in :mod:`meshd.protocol`."""


class FrameTooLarge(ProtocolError):
    """A length prefix (or a body to encode) exceeds the control-frame cap."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"control frame too large: {length} bytes (limit {limit})")
        self.length = length
        self.limit = limit


class TruncatedFrame(ProtocolError):
    """The stream ended before a complete frame (or the stream type byte) arrived."""

    def __init__(self, needed: int, received: int, what: str = "frame") -> None:
        super().__init__(f"truncated {what}: stream ended after {received} of {needed} bytes")
        self.needed = needed
        self.received = received
        self.what = what


class UnknownStreamType(ProtocolError):
    """The first byte of an inbound stream is not a known stream type."""

    def __init__(self, byte: int) -> None:
        super().__init__(f"unknown stream type 0x{byte:02x}")
        self.byte = byte


class InvalidFrame(ProtocolError):
    """A complete frame whose content is not acceptable (§5.3)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MalformedMessage(InvalidFrame):
    """The body is not a valid protobuf encoding of the expected message."""

    def __init__(self, message_type: str, detail: str) -> None:
        super().__init__(f"cannot decode {message_type}: {detail}")
        self.message_type = message_type
        self.detail = detail


class BadGeneration(InvalidFrame):
    """The message's ``gen`` field is not the supported protocol generation."""

    def __init__(self, message_type: str, got: int, expected: int) -> None:
        super().__init__(f"{message_type}: bad protocol generation {got} (expected {expected})")
        self.message_type = message_type
        self.got = got
        self.expected = expected


class InvalidIdLength(InvalidFrame):
    """An endpoint id field does not hold exactly 32 bytes."""

    def __init__(self, field: str, got: int) -> None:
        super().__init__(f"invalid {field} length: expected 32, got {got}")
        self.field = field
        self.got = got


class MissingHttpPort(InvalidFrame):
    """A HOST announcement without ``http_port``."""

    def __init__(self, endpoint_id: bytes) -> None:
        super().__init__(f"HOST announcement for {endpoint_id[:5].hex()} has no http_port")
        self.endpoint_id = endpoint_id


class ForgedSender(InvalidFrame):
    """An id field that must equal the connection's TLS identity does not."""

    def __init__(self, field: str, claimed: bytes, remote: bytes) -> None:
        super().__init__(f"{field} {claimed[:5].hex()} does not match the connection identity {remote[:5].hex()}")
        self.field = field
        self.claimed = claimed
        self.remote = remote


class InvalidSubprotocol(InvalidFrame):
    """A ``subprotocols`` entry (or a ``MeshSubprotocolOpen``) with a blank name or major 0. In a
    GossipFrame it rejects the whole frame, as mesh-llm 0.76 does."""

    def __init__(self, name: str, major: int) -> None:
        super().__init__(f"invalid subprotocol {name!r} major {major}: needs a name and a non-zero major")
        self.name = name
        self.major = major


class InvalidToken(ProtocolError):
    """An invite token (or EndpointAddr JSON) that cannot be decoded or does not verify.

    ``code`` is mesh-llm's reason code: ``bootstrap_token_invalid`` for anything that does not
    decode (as mesh-llm reports it), or the code of the failed signed-token check, e.g.
    ``bootstrap_token_expired`` or ``mesh_policy_mismatch``.
    """

    def __init__(self, reason: str, code: str = "bootstrap_token_invalid") -> None:
        super().__init__(f"invalid invite token: {reason}")
        self.reason = reason
        self.code = code
