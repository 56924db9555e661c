"""NIP-01 events and relay messages (pure: no reactor, no I/O).

Event id = sha256 of the UTF-8 bytes of ``[0,pubkey,created_at,kind,tags,content]`` serialized with no
whitespace. NIP-01 names the escapes ``\\n \\" \\\\ \\r \\t \\b \\f`` and asks every other character to be
written verbatim. Python's ``json.dumps(..., ensure_ascii=False, separators=(",", ":"))`` does exactly that
for every character that may legally appear raw in JSON; the remaining C0 control characters (which JSON
forbids raw) come out as ``\\u00XX`` with lowercase hex, which is byte-for-byte what rust-nostr (serde_json)
and nostr-tools (``JSON.stringify``) produce, so ids agree with the implementations relays actually run.
U+007F, U+2028/U+2029 and all non-ASCII text are written raw.

Signatures are BIP-340 Schnorr over the 32-byte id, via ``coincurve``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from coincurve import PrivateKey, PublicKeyXOnly

from meshd import jsonbound
from meshd.discovery.errors import InvalidEvent, MalformedMessage

__all__ = [
    "MAX_NOSTR_JSON_BYTES",
    "MAX_SUBSCRIPTION_ID_LENGTH",
    "Event",
    "RelayClosed",
    "RelayEOSE",
    "RelayEvent",
    "RelayMessage",
    "RelayNotice",
    "RelayOK",
    "RelayUnknown",
    "canonical_serialization",
    "compute_event_id",
    "event_from_dict",
    "format_close",
    "format_event",
    "format_req",
    "parse_relay_message",
    "sign_event",
    "validate_event",
    "verify_event_signature",
]

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")
MAX_SUBSCRIPTION_ID_LENGTH = 64
#: Largest Nostr JSON text decoded (a relay message, or a listing's content inside one). The relay
#: pool already refuses websocket messages over 512 KiB; this bound holds for any other caller too.
MAX_NOSTR_JSON_BYTES = 1024 * 1024


def loads_strict(text: str | bytes, *, max_bytes: int = MAX_NOSTR_JSON_BYTES) -> Any:
    """Bounded JSON (:func:`meshd.jsonbound.loads`): UTF-8 only, no NaN/Infinity, at most 127 levels
    deep, numbers of at most 100 characters, at most ``max_bytes``. Raises ``jsonbound.BadJSON``."""
    return jsonbound.loads(text, max_bytes=max_bytes)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def canonical_serialization(
    pubkey: str, created_at: int, kind: int, tags: Sequence[Sequence[str]], content: str
) -> bytes:
    """The exact bytes NIP-01 hashes to obtain the event id."""
    payload = [0, pubkey, created_at, kind, [list(t) for t in tags], content]
    try:
        return _dumps(payload).encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates cannot be UTF-8
        raise InvalidEvent("event text is not valid Unicode (lone surrogate)") from e


def compute_event_id(pubkey: str, created_at: int, kind: int, tags: Sequence[Sequence[str]], content: str) -> str:
    return hashlib.sha256(canonical_serialization(pubkey, created_at, kind, tags, content)).hexdigest()


@attrs.frozen
class Event:
    """A signed NIP-01 event. Build with :func:`sign_event` or :func:`validate_event`."""

    id: str
    pubkey: str
    created_at: int
    kind: int
    tags: tuple[tuple[str, ...], ...]
    content: str
    sig: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pubkey": self.pubkey,
            "created_at": self.created_at,
            "kind": self.kind,
            "tags": [list(t) for t in self.tags],
            "content": self.content,
            "sig": self.sig,
        }

    def to_json(self) -> str:
        return _dumps(self.to_dict())

    def tag_value(self, name: str) -> str | None:
        """Second element of the first tag named ``name`` (``None`` if absent or too short)."""
        for tag in self.tags:
            if tag and tag[0] == name:
                return tag[1] if len(tag) > 1 else None
        return None

    def has_tag(self, name: str, value: str) -> bool:
        return any(len(t) > 1 and t[0] == name and t[1] == value for t in self.tags)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def event_from_dict(obj: object) -> Event:
    """Structural validation only (types, hex shapes). Does not check id or signature."""
    if not isinstance(obj, Mapping):
        raise InvalidEvent("event is not a JSON object")
    raw_id = obj.get("id")
    if not isinstance(raw_id, str) or not _HEX64.fullmatch(raw_id):
        raise InvalidEvent("id is not 64 lowercase hex chars")
    pubkey = obj.get("pubkey")
    if not isinstance(pubkey, str) or not _HEX64.fullmatch(pubkey):
        raise InvalidEvent("pubkey is not 64 lowercase hex chars", raw_id)
    sig = obj.get("sig")
    if not isinstance(sig, str) or not _HEX128.fullmatch(sig):
        raise InvalidEvent("sig is not 128 lowercase hex chars", raw_id)
    created_at = obj.get("created_at")
    if not _is_int(created_at) or created_at < 0:  # type: ignore[operator]
        raise InvalidEvent("created_at is not a non-negative integer", raw_id)
    kind = obj.get("kind")
    if not _is_int(kind) or not 0 <= kind <= 65535:  # type: ignore[operator]
        raise InvalidEvent("kind is not an integer in 0..65535", raw_id)
    tags = obj.get("tags")
    if not isinstance(tags, list) or not all(isinstance(t, list) and all(isinstance(s, str) for s in t) for t in tags):
        raise InvalidEvent("tags is not a list of lists of strings", raw_id)
    content = obj.get("content")
    if not isinstance(content, str):
        raise InvalidEvent("content is not a string", raw_id)
    return Event(
        id=raw_id,
        pubkey=pubkey,
        created_at=created_at,  # type: ignore[arg-type]
        kind=kind,  # type: ignore[arg-type]
        tags=tuple(tuple(t) for t in tags),
        content=content,
        sig=sig,
    )


def verify_event_signature(event: Event) -> bool:
    """Recompute the id and check the BIP-340 signature. Never raises for bad data."""
    try:
        expected = compute_event_id(event.pubkey, event.created_at, event.kind, event.tags, event.content)
    except InvalidEvent:
        return False
    if expected != event.id:
        return False
    try:
        key = PublicKeyXOnly(bytes.fromhex(event.pubkey))
        return bool(key.verify(bytes.fromhex(event.sig), bytes.fromhex(event.id)))
    except (ValueError, TypeError):  # pubkey not on the curve, malformed signature
        return False


def validate_event(obj: object) -> Event:
    """Full validation: structure, id == sha256(serialization), signature verifies."""
    event = event_from_dict(obj)
    expected = compute_event_id(event.pubkey, event.created_at, event.kind, event.tags, event.content)
    if expected != event.id:
        raise InvalidEvent("id does not match the event's serialization", event.id)
    if not verify_event_signature(event):
        raise InvalidEvent("signature does not verify", event.id)
    return event


def sign_event(
    secret: bytes,
    *,
    kind: int,
    tags: Sequence[Sequence[str]],
    content: str,
    created_at: int,
    aux_randomness: bytes | None = None,
) -> Event:
    """Build and sign an event with a 32-byte secp256k1 secret key."""
    if len(secret) != 32:
        raise ValueError("secret key must be 32 bytes")
    key = PrivateKey(secret)
    pubkey = key.public_key_xonly.format().hex()
    frozen_tags = tuple(tuple(str(s) for s in t) for t in tags)
    event_id = compute_event_id(pubkey, created_at, kind, frozen_tags, content)
    aux = os.urandom(32) if aux_randomness is None else aux_randomness
    sig = key.sign_schnorr(bytes.fromhex(event_id), aux).hex()
    return Event(
        id=event_id,
        pubkey=pubkey,
        created_at=created_at,
        kind=kind,
        tags=frozen_tags,
        content=content,
        sig=sig,
    )


# --------------------------------------------------------------------------------------------------
# Client -> relay messages


def _check_sub_id(sub_id: str) -> None:
    if not isinstance(sub_id, str) or not 0 < len(sub_id) <= MAX_SUBSCRIPTION_ID_LENGTH:
        raise ValueError(f"subscription id must be 1..{MAX_SUBSCRIPTION_ID_LENGTH} chars")


def format_req(sub_id: str, filters: Sequence[Mapping[str, Any]]) -> str:
    _check_sub_id(sub_id)
    if not filters:
        raise ValueError("REQ needs at least one filter")
    return _dumps(["REQ", sub_id, *[dict(f) for f in filters]])


def format_close(sub_id: str) -> str:
    _check_sub_id(sub_id)
    return _dumps(["CLOSE", sub_id])


def format_event(event: Event) -> str:
    return _dumps(["EVENT", event.to_dict()])


# --------------------------------------------------------------------------------------------------
# Relay -> client messages


@attrs.frozen
class RelayEvent:
    sub_id: str
    event: dict[str, Any]


@attrs.frozen
class RelayEOSE:
    sub_id: str


@attrs.frozen
class RelayOK:
    event_id: str
    accepted: bool
    message: str


@attrs.frozen
class RelayNotice:
    message: str


@attrs.frozen
class RelayClosed:
    sub_id: str
    message: str


@attrs.frozen
class RelayUnknown:
    """A well-formed JSON array whose first element names a message type we do not handle."""

    type: str
    payload: tuple[Any, ...]


RelayMessage = RelayEvent | RelayEOSE | RelayOK | RelayNotice | RelayClosed | RelayUnknown


def _str_at(msg: list[Any], i: int, what: str) -> str:
    if len(msg) <= i or not isinstance(msg[i], str):
        raise MalformedMessage(f"{msg[0]}: {what} missing or not a string")
    value: str = msg[i]
    return value


def parse_relay_message(data: str | bytes) -> RelayMessage:
    """Parse one websocket text message from a relay. Raises :class:`MalformedMessage`."""
    try:
        msg = loads_strict(data)
    except jsonbound.BadJSON as e:
        raise MalformedMessage(e.reason) from None
    if not isinstance(msg, list) or not msg or not isinstance(msg[0], str):
        raise MalformedMessage("not a JSON array starting with a message type string")
    kind = msg[0]
    if kind == "EVENT":
        sub_id = _str_at(msg, 1, "subscription id")
        if len(msg) != 3 or not isinstance(msg[2], dict):
            raise MalformedMessage('EVENT: expected ["EVENT", sub_id, {event}]')
        return RelayEvent(sub_id=sub_id, event=msg[2])
    if kind == "EOSE":
        return RelayEOSE(sub_id=_str_at(msg, 1, "subscription id"))
    if kind == "OK":
        event_id = _str_at(msg, 1, "event id")
        if len(msg) < 3 or not isinstance(msg[2], bool):
            raise MalformedMessage("OK: accepted flag missing or not a boolean")
        message = msg[3] if len(msg) > 3 and isinstance(msg[3], str) else ""
        return RelayOK(event_id=event_id, accepted=msg[2], message=message)
    if kind == "NOTICE":
        return RelayNotice(message=_str_at(msg, 1, "message"))
    if kind == "CLOSED":
        sub_id = _str_at(msg, 1, "subscription id")
        message = msg[2] if len(msg) > 2 and isinstance(msg[2], str) else ""
        return RelayClosed(sub_id=sub_id, message=message)
    return RelayUnknown(type=kind, payload=tuple(msg[1:]))
