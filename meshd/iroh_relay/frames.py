"""iroh relay protocol codec (v1 and v2): frames, handshake, limits. Pure: bytes in, values out.

Every relay frame is one websocket binary message: ``QUIC-varint(type) || payload``, no length field
(IROH_RELAY.md §1.2). Handshake payloads use postcard encoding (LEB128 lengths, §1.3). :func:`decode`
checks every length against the limits below and raises :class:`FrameError` with a reason; it never
returns a partly parsed frame.
"""

from __future__ import annotations

import enum
from typing import Union

import attrs
import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

__all__ = [
    "CHALLENGE_SIGNATURE_CONTEXT",
    "MAX_FRAME_SIZE",
    "MAX_PACKET_SIZE",
    "PROTOCOL_V1",
    "PROTOCOL_V2",
    "SUBPROTOCOLS",
    "ClientAuth",
    "ClientToRelayDatagram",
    "ClientToRelayDatagramBatch",
    "EndpointGone",
    "Frame",
    "FrameError",
    "FrameType",
    "Health",
    "Ping",
    "Pong",
    "RelayToClientDatagram",
    "RelayToClientDatagramBatch",
    "Restarting",
    "ServerChallenge",
    "ServerConfirmsAuth",
    "ServerDeniesAuth",
    "Status",
    "StatusCode",
    "challenge_message",
    "decode",
    "encode",
    "make_client_auth",
    "split_segments",
    "verify_client_auth",
]

PROTOCOL_V1 = "iroh-relay-v1"
PROTOCOL_V2 = "iroh-relay-v2"
#: Preferred first (the client offers both, the server picks the highest common one).
SUBPROTOCOLS = (PROTOCOL_V2, PROTOCOL_V1)

#: Largest websocket message either end accepts (``protos/relay.rs`` MAX_FRAME_SIZE).
MAX_FRAME_SIZE = 1024 * 1024
#: Largest payload after the type byte (``MAX_PACKET_SIZE``); also the largest frame a client sends.
MAX_PACKET_SIZE = 64 * 1024
CHALLENGE_SIGNATURE_CONTEXT = "iroh-relay handshake v1 challenge signature"
_MAX_REASON = 1024


class FrameError(ValueError):
    """A relay frame that cannot be decoded (or encoded): bad type, length or field."""


class FrameType(enum.IntEnum):
    SERVER_CHALLENGE = 0
    CLIENT_AUTH = 1
    SERVER_CONFIRMS_AUTH = 2
    SERVER_DENIES_AUTH = 3
    CLIENT_TO_RELAY_DATAGRAM = 4
    CLIENT_TO_RELAY_DATAGRAM_BATCH = 5
    RELAY_TO_CLIENT_DATAGRAM = 6
    RELAY_TO_CLIENT_DATAGRAM_BATCH = 7
    ENDPOINT_GONE = 8
    PING = 9
    PONG = 10
    HEALTH = 11
    RESTARTING = 12
    STATUS = 13


class StatusCode(enum.IntEnum):
    HEALTHY = 0
    SAME_ENDPOINT_ID_CONNECTED = 1
    RATE_LIMITED = 2


def _key(value: bytes) -> bytes:
    if len(value) != 32:
        raise FrameError(f"an EndpointId is 32 bytes, got {len(value)}")
    return bytes(value)


def _ecn(value: int) -> int:
    if not 0 <= value <= 3:
        raise FrameError(f"ECN codepoint must be 0..3, got {value}")
    return value


@attrs.frozen
class ServerChallenge:
    challenge: bytes


@attrs.frozen
class ClientAuth:
    public_key: bytes
    signature: bytes


@attrs.frozen
class ServerConfirmsAuth:
    pass


@attrs.frozen
class ServerDeniesAuth:
    reason: str


@attrs.frozen
class ClientToRelayDatagram:
    dst: bytes
    data: bytes
    ecn: int = 0


@attrs.frozen
class ClientToRelayDatagramBatch:
    dst: bytes
    segment_size: int
    data: bytes
    ecn: int = 0


@attrs.frozen
class RelayToClientDatagram:
    src: bytes
    data: bytes
    ecn: int = 0


@attrs.frozen
class RelayToClientDatagramBatch:
    src: bytes
    segment_size: int
    data: bytes
    ecn: int = 0


@attrs.frozen
class EndpointGone:
    endpoint_id: bytes


@attrs.frozen
class Ping:
    data: bytes


@attrs.frozen
class Pong:
    data: bytes


@attrs.frozen
class Health:
    problem: str


@attrs.frozen
class Restarting:
    reconnect_in_ms: int
    try_for_ms: int


@attrs.frozen
class Status:
    code: int


Frame = Union[  # noqa: UP007 - a runtime alias
    ServerChallenge,
    ClientAuth,
    ServerConfirmsAuth,
    ServerDeniesAuth,
    ClientToRelayDatagram,
    ClientToRelayDatagramBatch,
    RelayToClientDatagram,
    RelayToClientDatagramBatch,
    EndpointGone,
    Ping,
    Pong,
    Health,
    Restarting,
    Status,
]


# -- primitive codecs ------------------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """RFC 9000 variable-length integer."""
    if value < 0:
        raise FrameError("varints are unsigned")
    if value < 1 << 6:
        return bytes([value])
    if value < 1 << 14:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 1 << 30:
        return (value | 0x8000_0000).to_bytes(4, "big")
    if value < 1 << 62:
        return (value | 0xC000_0000_0000_0000).to_bytes(8, "big")
    raise FrameError(f"varint too large: {value}")


def decode_varint(data: bytes, offset: int = 0) -> tuple[int, int]:
    """Return ``(value, next_offset)``."""
    if offset >= len(data):
        raise FrameError("empty frame")
    first = data[offset]
    length = 1 << (first >> 6)
    if offset + length > len(data):
        raise FrameError("truncated varint")
    value = first & 0x3F
    for b in data[offset + 1 : offset + length]:
        value = (value << 8) | b
    return value, offset + length


def encode_leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_leb128(data: bytes, offset: int, max_bytes: int = 5) -> tuple[int, int]:
    value = 0
    for i in range(max_bytes):
        if offset + i >= len(data):
            raise FrameError("truncated length")
        byte = data[offset + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, offset + i + 1
    raise FrameError("length prefix too long")


# -- frames ----------------------------------------------------------------------------------------


def encode(frame: Frame) -> bytes:
    """The websocket message for *frame* (raises :class:`FrameError` on an invalid field)."""
    if isinstance(frame, ServerChallenge):
        if len(frame.challenge) != 16:
            raise FrameError("a challenge is 16 bytes")
        return bytes([FrameType.SERVER_CHALLENGE]) + frame.challenge
    if isinstance(frame, ClientAuth):
        if len(frame.signature) != 64:
            raise FrameError("an Ed25519 signature is 64 bytes")
        return bytes([FrameType.CLIENT_AUTH]) + _key(frame.public_key) + encode_leb128(64) + frame.signature
    if isinstance(frame, ServerConfirmsAuth):
        return bytes([FrameType.SERVER_CONFIRMS_AUTH])
    if isinstance(frame, ServerDeniesAuth):
        reason = frame.reason.encode("utf-8")[:_MAX_REASON]
        return bytes([FrameType.SERVER_DENIES_AUTH]) + encode_leb128(len(reason)) + reason
    if isinstance(frame, (ClientToRelayDatagram, RelayToClientDatagram)):
        kind = (
            FrameType.CLIENT_TO_RELAY_DATAGRAM
            if isinstance(frame, ClientToRelayDatagram)
            else FrameType.RELAY_TO_CLIENT_DATAGRAM
        )
        peer = frame.dst if isinstance(frame, ClientToRelayDatagram) else frame.src
        out = bytes([kind]) + _key(peer) + bytes([_ecn(frame.ecn)]) + frame.data
    elif isinstance(frame, (ClientToRelayDatagramBatch, RelayToClientDatagramBatch)):
        kind = (
            FrameType.CLIENT_TO_RELAY_DATAGRAM_BATCH
            if isinstance(frame, ClientToRelayDatagramBatch)
            else FrameType.RELAY_TO_CLIENT_DATAGRAM_BATCH
        )
        peer = frame.dst if isinstance(frame, ClientToRelayDatagramBatch) else frame.src
        if not 1 <= frame.segment_size <= 0xFFFF:
            raise FrameError(f"segment size must be 1..65535, got {frame.segment_size}")
        out = bytes([kind]) + _key(peer) + bytes([_ecn(frame.ecn)]) + frame.segment_size.to_bytes(2, "big") + frame.data
    elif isinstance(frame, EndpointGone):
        return bytes([FrameType.ENDPOINT_GONE]) + _key(frame.endpoint_id)
    elif isinstance(frame, (Ping, Pong)):
        if len(frame.data) != 8:
            raise FrameError("ping/pong data is 8 bytes")
        return bytes([FrameType.PING if isinstance(frame, Ping) else FrameType.PONG]) + frame.data
    elif isinstance(frame, Health):
        return bytes([FrameType.HEALTH]) + frame.problem.encode("utf-8")[:_MAX_REASON]
    elif isinstance(frame, Restarting):
        return (
            bytes([FrameType.RESTARTING])
            + frame.reconnect_in_ms.to_bytes(4, "big")
            + frame.try_for_ms.to_bytes(4, "big")
        )
    elif isinstance(frame, Status):
        if not 0 <= frame.code <= 255:
            raise FrameError("a status is one byte")
        return bytes([FrameType.STATUS, frame.code])
    else:
        raise FrameError(f"not a relay frame: {frame!r}")
    if len(out) - 1 > MAX_PACKET_SIZE:
        raise FrameError(f"frame payload of {len(out) - 1} bytes exceeds {MAX_PACKET_SIZE}")
    return out


def decode(message: bytes, version: str = PROTOCOL_V2) -> Frame:
    """Parse one websocket message. Raises :class:`FrameError` for anything malformed or not allowed."""
    kind, offset = decode_varint(message)
    payload = message[offset:]
    if len(payload) > MAX_PACKET_SIZE:
        raise FrameError(f"frame payload of {len(payload)} bytes exceeds {MAX_PACKET_SIZE}")
    n = len(payload)
    if kind == FrameType.SERVER_CHALLENGE:
        _exact(kind, n, 16)
        return ServerChallenge(payload)
    if kind == FrameType.CLIENT_AUTH:
        _exact(kind, n, 97)
        length, sig_at = decode_leb128(payload, 32)
        if length != 64 or sig_at != 33:
            raise FrameError("ClientAuth signature must be 64 bytes")
        return ClientAuth(payload[:32], payload[33:])
    if kind == FrameType.SERVER_CONFIRMS_AUTH:
        _exact(kind, n, 0)
        return ServerConfirmsAuth()
    if kind == FrameType.SERVER_DENIES_AUTH:
        length, at = decode_leb128(payload, 0)
        if at + length != n:
            raise FrameError("ServerDeniesAuth length does not match")
        try:
            return ServerDeniesAuth(payload[at:].decode("utf-8"))
        except UnicodeDecodeError as e:
            raise FrameError("ServerDeniesAuth reason is not UTF-8") from e
    if kind in (FrameType.CLIENT_TO_RELAY_DATAGRAM, FrameType.RELAY_TO_CLIENT_DATAGRAM):
        if n < 34:
            raise FrameError("datagram frame too short")
        if n == 33:
            raise FrameError("empty datagram")
        peer, ecn, data = payload[:32], _ecn(payload[32]), payload[33:]
        if kind == FrameType.CLIENT_TO_RELAY_DATAGRAM:
            return ClientToRelayDatagram(peer, data, ecn)
        return RelayToClientDatagram(peer, data, ecn)
    if kind in (FrameType.CLIENT_TO_RELAY_DATAGRAM_BATCH, FrameType.RELAY_TO_CLIENT_DATAGRAM_BATCH):
        if n < 36:
            raise FrameError("batch frame too short")
        peer, ecn = payload[:32], _ecn(payload[32])
        segment = int.from_bytes(payload[33:35], "big")
        if segment == 0:
            raise FrameError("batch segment size 0")
        data = payload[35:]
        if kind == FrameType.CLIENT_TO_RELAY_DATAGRAM_BATCH:
            return ClientToRelayDatagramBatch(peer, segment, data, ecn)
        return RelayToClientDatagramBatch(peer, segment, data, ecn)
    if kind == FrameType.ENDPOINT_GONE:
        _exact(kind, n, 32)
        return EndpointGone(payload)
    if kind in (FrameType.PING, FrameType.PONG):
        _exact(kind, n, 8)
        return Ping(payload) if kind == FrameType.PING else Pong(payload)
    if kind == FrameType.HEALTH:
        if version != PROTOCOL_V1:
            raise FrameError("Health frames are not allowed in v2")
        return Health(payload.decode("utf-8", errors="replace"))
    if kind == FrameType.RESTARTING:
        _exact(kind, n, 8)
        return Restarting(int.from_bytes(payload[:4], "big"), int.from_bytes(payload[4:], "big"))
    if kind == FrameType.STATUS:
        if version == PROTOCOL_V1:
            raise FrameError("Status frames are not allowed in v1")
        _exact(kind, n, 1)
        return Status(payload[0])
    raise FrameError(f"unknown frame type {kind}")


def _exact(kind: int, got: int, want: int) -> None:
    if got != want:
        raise FrameError(f"{FrameType(kind).name} payload must be {want} bytes, got {got}")


def split_segments(segment_size: int, data: bytes) -> list[bytes]:
    """GSO-style batch payload into datagrams (every one ``segment_size`` except maybe the last)."""
    if segment_size <= 0:
        raise FrameError("segment size must be positive")
    return [data[i : i + segment_size] for i in range(0, len(data), segment_size)]


# -- handshake -------------------------------------------------------------------------------------


def challenge_message(challenge: bytes) -> bytes:
    """What a client signs: BLAKE3 ``derive_key(CHALLENGE_SIGNATURE_CONTEXT, challenge)``, 32 bytes."""
    return blake3.blake3(challenge, derive_key_context=CHALLENGE_SIGNATURE_CONTEXT).digest()


def make_client_auth(private_key: ed25519.Ed25519PrivateKey, challenge: bytes) -> ClientAuth:
    from cryptography.hazmat.primitives import serialization

    public = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return ClientAuth(public, private_key.sign(challenge_message(challenge)))


def verify_client_auth(auth: ClientAuth, challenge: bytes) -> bool:
    """True when *auth* is a valid signature by ``auth.public_key`` over this challenge."""
    try:
        key = ed25519.Ed25519PublicKey.from_public_bytes(auth.public_key)
        key.verify(auth.signature, challenge_message(challenge))
    except (InvalidSignature, ValueError):
        return False
    return True
