"""Invite tokens and iroh ``EndpointAddr`` JSON (MESH_PROTOCOL.md §2.1).

A plain token is the base64url encoding, without ``=`` padding, of the compact JSON that iroh's
serde derive produces for an ``EndpointAddr``::

    {"id":"<64 lowercase hex>","addrs":[{"Relay":"https://relay.example./"},{"Ip":"1.2.3.4:5"}]}

``addrs`` is a serialized ``BTreeSet<TransportAddr>``, so the list is sorted and free of
duplicates: every ``Relay`` (ordered by URL text) comes before every ``Ip``, and IP addresses
follow Rust's ``SocketAddr`` order (all IPv4 before all IPv6, then by address, then by port).
:class:`EndpointAddr` keeps its addresses in that canonical order, so two values are equal when
iroh would consider them equal, and :meth:`EndpointAddr.to_json` reproduces iroh's bytes.

Relay URLs are kept exactly as received (mesh-llm uses a trailing-dot FQDN such as
``https://usw1-2.relay.michaelneale.mesh-llm.iroh.link./``); :func:`relay_tls_hostname` gives the
name to use for TLS (SNI and certificate checks) with the dot removed.

mesh-llm 0.76 adds a second kind, the owner-signed
:class:`~meshd.protocol.requirements.SignedBootstrapToken` of a gated mesh (MESH_PROTOCOL_076.md
§5.2): :func:`decode_invite_token` accepts both and verifies signed ones.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import attrs

from meshd import jsonbound
from meshd.protocol.errors import InvalidToken
from meshd.protocol.keys import (
    ENDPOINT_ID_BYTES,
    endpoint_id_hex,
    is_valid_ed25519_point,
    parse_endpoint_id,
    short_id,
)
from meshd.protocol.requirements import (
    MeshRequirementState,
    RequirementError,
    SignedBootstrapToken,
    parse_json_strict,
)

__all__ = [
    "MAX_TOKEN_CHARS",
    "EndpointAddr",
    "Invite",
    "IpAddr",
    "decode_invite_token",
    "decode_token",
    "decode_token_payload",
    "encode_token",
    "endpoint_id_hex",
    "format_socket_addr",
    "parse_socket_addr",
    "relay_host_port",
    "relay_tls_hostname",
    "short_id",
]

#: Longest token text :func:`decode_token` looks at (real tokens are a few hundred chars).
MAX_TOKEN_CHARS = 64 * 1024

#: One direct address: (IP literal without brackets, port).
IpAddr = tuple[str, int]

_B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_B64URL_CHARS = frozenset(_B64URL_ALPHABET)
_B64URL_VALUE = {c: i for i, c in enumerate(_B64URL_ALPHABET)}


def _ip_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(host)


def _format_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Rust's ``IpAddr`` Display: RFC 5952 text, IPv4-mapped IPv6 as ``::ffff:a.b.c.d``."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        text = f"::ffff:{ip.ipv4_mapped}"
        return f"{text}%{ip.scope_id}" if ip.scope_id else text
    return str(ip)


def _normalize_ip_addr(entry: tuple[str, int]) -> IpAddr:
    host, port = entry
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"bad port {port!r}")
    if not isinstance(host, str):
        raise ValueError(f"bad IP address {host!r}")
    return (_format_ip(_ip_of(host.strip("[]"))), port)


def _ip_sort_key(entry: IpAddr) -> tuple[int, int, int, str]:
    ip = _ip_of(entry[0])
    scope = getattr(ip, "scope_id", None) or ""
    return (ip.version, int(ip), entry[1], scope)


def _canonical_ips(entries: Iterable[tuple[str, int]]) -> tuple[IpAddr, ...]:
    return tuple(sorted({_normalize_ip_addr(tuple(e)) for e in entries}, key=_ip_sort_key))  # type: ignore[arg-type]


def _canonical_relays(urls: Iterable[str]) -> tuple[str, ...]:
    urls = tuple(urls)
    for url in urls:
        if not isinstance(url, str):
            raise ValueError(f"relay URL must be a string, got {url!r}")
        _check_relay_url(url)
    return tuple(sorted(set(urls)))


def _check_relay_url(url: str) -> None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc or any(c.isspace() for c in url):
        raise ValueError(f"bad relay URL {url!r}")


def _check_id(_instance: object, _attribute: object, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != ENDPOINT_ID_BYTES:
        raise ValueError(f"EndpointAddr.id must be {ENDPOINT_ID_BYTES} bytes")


def format_socket_addr(addr: IpAddr) -> str:
    """Rust's ``SocketAddr`` Display: ``1.2.3.4:5`` or ``[::1]:5``."""
    host, port = _normalize_ip_addr(addr)
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def parse_socket_addr(text: str) -> IpAddr:
    """Parse ``1.2.3.4:5`` or ``[v6]:5`` (Rust's ``SocketAddr`` syntax); ``ValueError`` if bad."""
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"bad IPv6 socket address {text!r}")
        ip = _ip_of(host)
        if ip.version != 6:
            raise ValueError(f"bracketed address is not IPv6: {text!r}")
        if ip.scope_id is not None and not ip.scope_id.isdigit():  # type: ignore[union-attr]
            raise ValueError(f"IPv6 scope id must be numeric: {text!r}")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"socket address without port: {text!r}")
        ip = _ip_of(host)
        if ip.version != 4:
            raise ValueError(f"IPv6 address must be bracketed: {text!r}")
    if not port_text.isdigit() or not port_text.isascii() or int(port_text) > 0xFFFF:
        raise ValueError(f"bad port in socket address {text!r}")
    return (_format_ip(ip), int(port_text))


def relay_host_port(url: str) -> tuple[str, int]:
    """TLS/TCP host (trailing dot removed, lowercase) and port of a relay URL."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise ValueError(f"relay URL has no host: {url!r}")
    port = parts.port
    if port is None:
        port = 80 if parts.scheme == "http" else 443
    return host.rstrip("."), port


def relay_tls_hostname(url: str) -> str:
    """Host name to present in SNI and check against the relay's certificate."""
    return relay_host_port(url)[0]


@attrs.frozen
class EndpointAddr:
    """iroh's ``EndpointAddr``: an endpoint id plus the relay URLs and IP addresses to dial it.

    The address tuples are kept sorted and de-duplicated in iroh's ``BTreeSet`` order.
    """

    id: bytes = attrs.field(validator=_check_id)
    relay_urls: tuple[str, ...] = attrs.field(default=(), converter=_canonical_relays)
    ip_addrs: tuple[IpAddr, ...] = attrs.field(default=(), converter=_canonical_ips)

    @property
    def id_hex(self) -> str:
        return endpoint_id_hex(self.id)

    @property
    def short_id(self) -> str:
        return short_id(self.id)

    def dialable_ip_addrs(self) -> tuple[IpAddr, ...]:
        """IP addresses worth dialling: port 0 (an unknown-port STUN guess) and the unspecified
        address are skipped."""
        result = []
        for host, port in self.ip_addrs:
            try:
                ip = _ip_of(host)
            except ValueError:  # pragma: no cover - normalized at construction
                continue
            if port == 0 or ip.is_unspecified:
                continue
            result.append((host, port))
        return tuple(result)

    def to_jsonable(self) -> dict[str, Any]:
        addrs: list[dict[str, str]] = [{"Relay": url} for url in self.relay_urls]
        addrs.extend({"Ip": format_socket_addr(ip)} for ip in self.ip_addrs)
        return {"id": self.id.hex(), "addrs": addrs}

    def to_json(self) -> str:
        """Compact JSON, byte-identical to ``serde_json::to_string`` of iroh's EndpointAddr."""
        return json.dumps(self.to_jsonable(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, data: str | bytes) -> EndpointAddr:
        """Parse iroh's EndpointAddr JSON; raise :class:`InvalidToken` when it is not one.

        Unknown address variants (e.g. iroh 0.98's ``{"Custom": ...}``) are skipped. The JSON is
        read with :func:`meshd.jsonbound.loads` (UTF-8, at most 64 KiB, 127 levels deep, numbers of
        at most 100 characters: a deeply nested gossip ``serialized_addr`` is an
        :class:`InvalidToken`, not a ``RecursionError``).
        """
        try:
            raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        except UnicodeEncodeError:
            raise InvalidToken("not JSON: lone surrogate in the text") from None
        try:
            obj = parse_json_strict(raw)
        except jsonbound.BadJSON as exc:
            raise InvalidToken(exc.reason) from None
        return cls.from_jsonable(obj)

    @classmethod
    def from_jsonable(cls, obj: object) -> EndpointAddr:
        if not isinstance(obj, dict):
            raise InvalidToken("EndpointAddr JSON is not an object")
        raw_id = obj.get("id")
        raw_addrs = obj.get("addrs")
        if not isinstance(raw_id, str):
            raise InvalidToken("EndpointAddr JSON has no string 'id'")
        if not isinstance(raw_addrs, list):
            raise InvalidToken("EndpointAddr JSON has no list 'addrs'")
        try:
            endpoint_id = parse_endpoint_id(raw_id)
        except ValueError as exc:
            raise InvalidToken(f"bad id: {exc}") from None
        if not is_valid_ed25519_point(endpoint_id):
            raise InvalidToken("bad id: not a valid Ed25519 public key")
        relays: list[str] = []
        ips: list[IpAddr] = []
        for entry in raw_addrs:
            if not isinstance(entry, dict) or len(entry) != 1:
                raise InvalidToken(f"bad address entry {entry!r}")
            ((kind, value),) = entry.items()
            if kind == "Relay":
                if not isinstance(value, str):
                    raise InvalidToken(f"bad relay address {value!r}")
                try:
                    _check_relay_url(value)
                except ValueError as exc:
                    raise InvalidToken(str(exc)) from None
                relays.append(value)
            elif kind == "Ip":
                if not isinstance(value, str):
                    raise InvalidToken(f"bad IP address {value!r}")
                try:
                    ips.append(parse_socket_addr(value))
                except ValueError as exc:
                    raise InvalidToken(f"bad IP address: {exc}") from None
            # Any other variant is a transport this implementation does not speak: skip it.
        return cls(endpoint_id, tuple(relays), tuple(ips))


def encode_token(addr: EndpointAddr) -> str:
    """Invite token: base64url (no padding) of the compact EndpointAddr JSON."""
    return base64.urlsafe_b64encode(addr.to_json().encode("utf-8")).rstrip(b"=").decode("ascii")


@attrs.frozen
class Invite:
    """A decoded invite: where to dial, and for a signed token the gated mesh it leads into."""

    #: The node to dial: the token's address, or a signed token's ``serialized_addrs[0]``.
    addr: EndpointAddr
    #: For a signed token (after full verification): mesh id, policy hash, policy and the token
    #: itself, which the joiner keeps for its gossip (§6) and may hand out again.
    mesh: MeshRequirementState | None = None

    @property
    def signed(self) -> bool:
        return self.mesh is not None


def decode_token_payload(token: str) -> bytes:
    """The bytes inside an invite token, decoded like mesh-llm's ``URL_SAFE_NO_PAD`` engine:
    base64url **without** padding (a padded token is rejected, as mesh-llm rejects it) and with zero
    trailing bits. Surrounding whitespace is ignored (a pasted token often ends in a newline)."""
    if not isinstance(token, str):
        raise InvalidToken(f"token must be text, got {type(token).__name__}")
    text = token.strip()
    if not text:
        raise InvalidToken("empty token")
    if len(text) > MAX_TOKEN_CHARS:
        raise InvalidToken(f"token too long ({len(text)} chars, limit {MAX_TOKEN_CHARS})")
    if "=" in text:
        raise InvalidToken("padded base64: invite tokens are base64url without '=' padding")
    for index, char in enumerate(text):
        if char not in _B64URL_CHARS:
            raise InvalidToken(f"not base64url: unexpected character {char!r} at offset {index}")
    rest = len(text) % 4
    if rest == 1:
        raise InvalidToken("not base64url: impossible length")
    if rest and _B64URL_VALUE[text[-1]] & (0x0F if rest == 2 else 0x03):
        raise InvalidToken("not base64url: non-zero trailing bits in the last character")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:  # pragma: no cover - alphabet and length checked above
        raise InvalidToken(f"not base64url: {exc}") from None


def _addr_from_bytes(data: bytes, what: str) -> EndpointAddr:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidToken(f"{what} is not UTF-8 text") from None
    return EndpointAddr.from_json(text)


def decode_invite_token(token: str, *, now_ms: int) -> Invite:
    """Decode either kind of invite token (MESH_PROTOCOL_076.md §5).

    A plain token (``EndpointAddr`` JSON) is tried first, as mesh-llm does. Otherwise the JSON must
    be a :class:`~meshd.protocol.requirements.SignedBootstrapToken`, which is fully verified at
    ``now_ms`` (signature, policy hash, expiry); every entry of ``serialized_addrs`` must be a
    valid address and the first one is the bootstrap address. Raises :class:`InvalidToken`, whose
    ``code`` is mesh-llm's reason (``bootstrap_token_invalid``, ``bootstrap_token_expired``,
    ``mesh_policy_mismatch``, a genesis-policy code...).
    """
    payload = decode_token_payload(token)
    try:
        obj = parse_json_strict(payload)
    except jsonbound.BadJSON as exc:
        raise InvalidToken(f"decoded token: {exc.reason}") from None
    if not (isinstance(obj, dict) and "serialized_addrs" in obj and "id" not in obj):
        duplicates: frozenset[str] = getattr(obj, "duplicates", frozenset())
        if duplicates & {"id", "addrs"}:
            raise InvalidToken("EndpointAddr JSON has duplicate fields")
        return Invite(EndpointAddr.from_jsonable(obj))
    try:
        signed = SignedBootstrapToken.from_jsonable(obj)
        signed.verify_at(now_ms)
    except RequirementError as exc:
        raise InvalidToken(str(exc), exc.code) from None
    if not signed.serialized_addrs:
        raise InvalidToken("signed token contains no endpoint address")
    addrs = [_addr_from_bytes(data, "a signed token's endpoint address") for data in signed.serialized_addrs]
    return Invite(addrs[0], MeshRequirementState.from_token(signed))


def decode_token(token: str, *, now_ms: int | None = None) -> EndpointAddr:
    """The address an invite token of either kind leads to (see :func:`decode_invite_token`).

    A signed token is verified at ``now_ms``, by default the wall clock; callers that need the
    mesh requirement state, or a reactor's clock, use :func:`decode_invite_token`.
    Raises :class:`InvalidToken` with the reason for anything else.
    """
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    return decode_invite_token(token, now_ms=now_ms).addr
