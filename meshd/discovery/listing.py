"""mesh-llm's Nostr listing (MESH_PROTOCOL.md §1.1, §1.2, §1.4) — pure, no reactor, no I/O.

* :class:`MeshListing` is the event content, serialized with the exact key order of mesh-llm's struct.
* :func:`build_listing_event` signs the kind-31990 replaceable event (tags ``d``, ``k``, ``expiration``).
* :func:`process_events` is the whole client-side pipeline of §1.4 as one pure function.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from twisted.logger import Logger

from meshd import jsonbound
from meshd.discovery.errors import InvalidEvent, InvalidListing
from meshd.discovery.keys import NostrKeys, npub_encode
from meshd.discovery.nip01 import Event, loads_strict, validate_event
from meshd.protocol.errors import InvalidToken
from meshd.protocol.token import decode_token

__all__ = [
    "LISTING_D_TAG",
    "LISTING_TTL",
    "MESH_SERVICE_KIND",
    "PUBLISH_INTERVAL",
    "DiscoveredMesh",
    "MeshFilter",
    "MeshListing",
    "build_listing_event",
    "default_token_ok",
    "discovery_filter",
    "listing_coordinate",
    "process_events",
]

_log = Logger()

MESH_SERVICE_KIND = 31990
LISTING_D_TAG = "mesh-llm"
PUBLISH_INTERVAL = 60
LISTING_TTL = 2 * PUBLISH_INTERVAL
DISCOVERY_LIMIT = 100

_U64_MAX = 2**64 - 1
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def discovery_filter() -> dict[str, Any]:
    """A fresh copy of ``{"kinds":[31990],"#k":["mesh-llm"],"limit":100}``."""
    return {"kinds": [MESH_SERVICE_KIND], "#k": [LISTING_D_TAG], "limit": DISCOVERY_LIMIT}


def listing_coordinate(pubkey_hex: str) -> str:
    """NIP-33 address of a publisher's listing: ``31990:<pubkey>:mesh-llm``."""
    return f"{MESH_SERVICE_KIND}:{pubkey_hex}:{LISTING_D_TAG}"


def _to_str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _str_list(value: object, field: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise InvalidListing(f"{field} must be an array of strings")
    return tuple(value)


def _uint(value: object, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _U64_MAX:
        raise InvalidListing(f"{field} must be a non-negative integer (u64)")
    return value


def _opt_str(value: object, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidListing(f"{field} must be a string")


@attrs.frozen(kw_only=True)
class MeshListing:
    """Content of a kind-31990 listing. Attribute order is the wire key order (§1.2)."""

    invite_token: str
    serving: tuple[str, ...] = attrs.field(converter=_to_str_tuple)
    wanted: tuple[str, ...] = attrs.field(default=(), converter=_to_str_tuple)
    on_disk: tuple[str, ...] = attrs.field(default=(), converter=_to_str_tuple)
    total_vram_bytes: int
    node_count: int
    client_count: int = 0
    max_clients: int = 0
    name: str | None = None
    region: str | None = None
    mesh_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "invite_token": self.invite_token,
            "serving": list(self.serving),
            "wanted": list(self.wanted),
            "on_disk": list(self.on_disk),
            "total_vram_bytes": self.total_vram_bytes,
            "node_count": self.node_count,
            "client_count": self.client_count,
            "max_clients": self.max_clients,
        }
        for key in ("name", "region", "mesh_id"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    def to_json(self) -> str:
        """Compact JSON like ``serde_json::to_string`` (non-ASCII written raw)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, obj: object) -> MeshListing:
        """Decode like serde: required keys checked, wrong types rejected, unknown keys ignored."""
        if not isinstance(obj, Mapping):
            raise InvalidListing("listing is not a JSON object")
        for key in ("invite_token", "serving", "total_vram_bytes", "node_count"):
            if key not in obj:
                raise InvalidListing(f"missing required field {key!r}")
        token = obj["invite_token"]
        if not isinstance(token, str):
            raise InvalidListing("invite_token must be a string")
        return cls(
            invite_token=token,
            serving=_str_list(obj["serving"], "serving"),
            wanted=_str_list(obj["wanted"], "wanted") if "wanted" in obj else (),
            on_disk=_str_list(obj["on_disk"], "on_disk") if "on_disk" in obj else (),
            total_vram_bytes=_uint(obj["total_vram_bytes"], "total_vram_bytes"),
            node_count=_uint(obj["node_count"], "node_count"),
            client_count=_uint(obj["client_count"], "client_count") if "client_count" in obj else 0,
            max_clients=_uint(obj["max_clients"], "max_clients") if "max_clients" in obj else 0,
            name=_opt_str(obj.get("name"), "name"),
            region=_opt_str(obj.get("region"), "region"),
            mesh_id=_opt_str(obj.get("mesh_id"), "mesh_id"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> MeshListing:
        try:
            obj = loads_strict(text)
        except jsonbound.BadJSON as e:
            raise InvalidListing(f"content is not acceptable JSON: {e.reason}") from None
        return cls.from_dict(obj)


@attrs.frozen(kw_only=True)
class DiscoveredMesh:
    listing: MeshListing
    publisher_npub: str
    published_at: int
    expires_at: int | None

    def to_json(self) -> dict[str, Any]:
        """The §1.4 JSON object (also the element shape of ``GET /api/discover``)."""
        return {
            "listing": self.listing.to_dict(),
            "publisher_npub": self.publisher_npub,
            "published_at": self.published_at,
            "expires_at": self.expires_at,
        }


def _ascii_lower(text: str) -> str:
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def ascii_casefold_equal(a: str, b: str) -> bool:
    """Rust's ``eq_ignore_ascii_case``."""
    return _ascii_lower(a) == _ascii_lower(b)


@attrs.frozen(kw_only=True)
class MeshFilter:
    """§1.4 filter. ``model``: case-insensitive substring of any serving/wanted/on_disk entry;
    ``min_vram_gb``: ``total_vram_bytes / 1e9 >= min``; ``region``: ASCII case-insensitive equality."""

    model: str | None = None
    min_vram_gb: float | None = None
    region: str | None = None

    def matches(self, listing: MeshListing) -> bool:
        if self.model is not None:
            needle = self.model.lower()
            names = (*listing.serving, *listing.wanted, *listing.on_disk)
            if not any(needle in m.lower() for m in names):
                return False
        if self.min_vram_gb is not None and listing.total_vram_bytes / 1e9 < self.min_vram_gb:
            return False
        if self.region is not None:
            if listing.region is None or not ascii_casefold_equal(listing.region, self.region):
                return False
        return True


def default_token_ok(token: str) -> bool:
    """An invite token a node could use: a plain one (iroh's ``EndpointAddr``) or a 0.76 signed bootstrap
    token that verifies now (signature, policy hash, expiry); mesh-llm's discovery drops every other listing
    (MESH_PROTOCOL_076.md §12), padded base64 included."""
    try:
        decode_token(token)
    except InvalidToken:
        return False
    return True


def build_listing_event(keys: NostrKeys, listing: MeshListing, *, now: int, ttl: int = LISTING_TTL) -> Event:
    """Sign the kind-31990 listing: tags ``d``, ``k`` = ``mesh-llm`` and ``expiration`` = now + ttl."""
    tags = [["d", LISTING_D_TAG], ["k", LISTING_D_TAG], ["expiration", str(now + ttl)]]
    return keys.sign(kind=MESH_SERVICE_KIND, tags=tags, content=listing.to_json(), created_at=now)


def _expiration(event: Event) -> int | None:
    """First ``expiration`` tag parsed as u64 (mesh-llm ignores an unparsable value)."""
    value = event.tag_value("expiration")
    if value is None or not value.isascii() or not value.isdigit():
        return None
    n = int(value)
    return n if n <= _U64_MAX else None


def process_events(
    events: Iterable[Mapping[str, Any] | Event],
    *,
    now: int,
    mesh_filter: MeshFilter | None = None,
    token_ok: Callable[[str], bool] = default_token_ok,
) -> list[DiscoveredMesh]:
    """§1.4 pipeline over raw events from any number of relays.

    Drops: bad structure/id/signature, wrong kind, no ``["k","mesh-llm"]`` tag; keeps the newest event per
    pubkey (first seen wins a tie); drops expired (``expiration < now``), unparsable content and listings
    whose invite token fails ``token_ok``; applies ``mesh_filter``; sorts by node_count then
    total_vram_bytes, both descending (stable).
    """
    latest: dict[str, Event] = {}
    seen_ids: set[str] = set()
    for raw in events:
        try:
            event = validate_event(raw.to_dict() if isinstance(raw, Event) else raw)
        except InvalidEvent as e:
            _log.debug("dropping Nostr event: {reason}", reason=str(e))
            continue
        except Exception as e:  # one event never ends a discovery round, whatever is wrong with it
            _log.info("dropping Nostr event: {error}", error=_describe(e), event="nostr_event_dropped")
            continue
        if event.id in seen_ids:
            continue
        seen_ids.add(event.id)
        if event.kind != MESH_SERVICE_KIND or not event.has_tag("k", LISTING_D_TAG):
            continue
        current = latest.get(event.pubkey)
        if current is None or event.created_at > current.created_at:
            latest[event.pubkey] = event

    meshes: list[DiscoveredMesh] = []
    for event in latest.values():
        try:
            found = _mesh_of(event, now=now, mesh_filter=mesh_filter, token_ok=token_ok)
        except Exception as e:  # a bug or a case nobody foresaw: drop this listing, keep the others
            _log.info(
                "skipping Nostr listing {event_id}: {error}",
                event_id=event.id,
                error=_describe(e),
                event="nostr_event_dropped",
            )
            continue
        if found is not None:
            meshes.append(found)
    meshes.sort(key=lambda m: (m.listing.node_count, m.listing.total_vram_bytes), reverse=True)
    return meshes


def _mesh_of(
    event: Event, *, now: int, mesh_filter: MeshFilter | None, token_ok: Callable[[str], bool]
) -> DiscoveredMesh | None:
    """The mesh a verified listing event describes, or None when it is expired, unusable or filtered."""
    expires_at = _expiration(event)
    if expires_at is not None and expires_at < now:
        return None
    npub = npub_encode(event.pubkey)
    try:
        listing = MeshListing.from_json(event.content)
    except InvalidListing as e:
        _log.info("skipping Nostr listing from {npub}: {reason}", npub=npub, reason=e.reason)
        return None
    if not token_ok(listing.invite_token):
        _log.info("skipping Nostr listing from {npub}: undecodable invite token", npub=npub)
        return None
    if mesh_filter is not None and not mesh_filter.matches(listing):
        return None
    return DiscoveredMesh(listing=listing, publisher_npub=npub, published_at=event.created_at, expires_at=expires_at)


def _describe(exc: BaseException) -> str:
    text = str(exc)[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
