"""Is a request to a state-changing console route from the console's own pages? (CSRF, DNS rebinding)

Pure functions over header values. A browser sends ``Origin`` with every POST, and recent browsers
also send ``Sec-Fetch-Site``; a page on another origin cannot make either say "same origin". The
console's own pages always send ``Content-Type: application/json``, which a cross-site form or a
``no-cors`` fetch cannot send. A page on a rebinding name (``evil.example`` resolving to 127.0.0.1)
*is* same-origin with itself, so a caller trusted for being on loopback must also have named the
console by a loopback name in ``Host``.
"""

from __future__ import annotations

import enum
import ipaddress
from urllib.parse import SplitResult, urlsplit

#: ``Sec-Fetch-Site`` values that mean the console's own page (or the user, typing the URL).
SAME_SITE_FETCH = frozenset({"same-origin", "none"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Longest header value looked at (real ones are far shorter).
MAX_VALUE = 2048


class Provenance(enum.Enum):
    SAME_ORIGIN = "same-origin"
    CROSS_SITE = "cross-site"
    #: Neither ``Origin`` nor ``Sec-Fetch-Site``: not a browser (curl, a script), or a very old one.
    UNKNOWN = "unknown"


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    if len(value) > MAX_VALUE:
        return ""
    return value.decode("latin-1").strip()


def is_json(content_type: bytes | None) -> bool:
    """``Content-Type: application/json`` (any parameters, any case)."""
    text = _text(content_type) or ""
    return text.split(";", 1)[0].strip().lower() == "application/json"


def _authority(parts: SplitResult) -> tuple[str, int | None] | None:
    """(host, port) of a parsed ``//host[:port]`` with nothing else in it, else None."""
    if parts.username is not None or parts.password is not None or parts.path or parts.query or parts.fragment:
        return None
    if "@" in parts.netloc:
        return None
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or any(c.isspace() or c in "/\\?#" for c in host):
        return None
    return host.rstrip("."), port


def parse_origin(value: bytes | None) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an ``Origin`` header; None for ``null``, absent or malformed."""
    text = _text(value)
    if not text:
        return None
    try:
        parts = urlsplit(text)
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not text.lower().startswith(scheme + "://"):
        return None
    auth = _authority(parts)
    if auth is None:
        return None
    host, port = auth
    return scheme, host, _DEFAULT_PORTS[scheme] if port is None else port


def parse_host(value: bytes | None) -> tuple[str, int | None] | None:
    """(host, port or None) of a ``Host`` header; None if absent or malformed."""
    text = _text(value)
    if not text:
        return None
    try:
        parts = urlsplit("//" + text)
    except ValueError:
        return None
    return _authority(parts)


def same_origin(origin: bytes | None, host: bytes | None) -> bool:
    """Does ``Origin`` name the server the request was sent to (its ``Host``)?

    The scheme is not compared: the console speaks plain HTTP but may sit behind a TLS proxy that
    passes ``Host`` through; a ``Host`` without a port means the default port of the origin's scheme.
    """
    o, h = parse_origin(origin), parse_host(host)
    if o is None or h is None:
        return False
    scheme, o_host, o_port = o
    h_host, h_port = h
    return o_host == h_host and o_port == (_DEFAULT_PORTS[scheme] if h_port is None else h_port)


def provenance(origin: bytes | None, fetch_site: bytes | None, host: bytes | None) -> Provenance:
    """Where a request comes from, by the headers a browser sets (and pages cannot)."""
    if origin is None and fetch_site is None:
        return Provenance.UNKNOWN
    if origin is not None and not same_origin(origin, host):
        return Provenance.CROSS_SITE
    if fetch_site is not None and (_text(fetch_site) or "").lower() not in SAME_SITE_FETCH:
        return Provenance.CROSS_SITE
    return Provenance.SAME_ORIGIN


def names_loopback(host: bytes | None) -> bool:
    """Does ``Host`` name this machine by a loopback name (not a name that could be rebound)?"""
    parsed = parse_host(host)
    if parsed is None:
        return False
    name = parsed[0].lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_loopback(host: str | None) -> bool:
    """Is a socket peer address (text) on loopback (IPv4-mapped included)?"""
    if not host:
        return False
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return bool(addr.is_loopback or (mapped is not None and mapped.is_loopback))
