"""CORS answers of the API port (sans-IO)."""

from __future__ import annotations

import re
from collections.abc import Iterable

EXPOSED_HEADERS = (
    "x-request-id, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, "
    "retry-after, x-mesh-served-by, x-meshd-host"
)
DEFAULT_ALLOWED_HEADERS = "authorization, content-type, x-request-id"
_TOKEN_LIST = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*$")


class CORSPolicy:
    """``Access-Control-*`` answers for allowed origins (``*`` allows any)."""

    def __init__(self, origins: Iterable[str]) -> None:
        self.origins = tuple(o.rstrip("/") for o in origins)
        self.any = "*" in self.origins

    def allow(self, origin: bytes | None) -> bytes | None:
        if not self.origins:
            return None
        if self.any:
            return b"*"
        if origin is None:
            return None
        text = origin.decode("latin-1").rstrip("/")
        return origin if text in self.origins else None

    def headers(self, origin: bytes | None) -> dict[bytes, bytes]:
        allowed = self.allow(origin)
        if allowed is None:
            return {}
        out = {b"access-control-allow-origin": allowed, b"access-control-expose-headers": EXPOSED_HEADERS.encode()}
        if not self.any:
            out[b"vary"] = b"Origin"
        return out

    def preflight(
        self, origin: bytes | None, method: bytes | None, request_headers: bytes | None
    ) -> dict[bytes, bytes]:
        out = self.headers(origin)
        if not out:
            return {}
        out.pop(b"access-control-expose-headers", None)
        out[b"access-control-allow-methods"] = b"GET, POST, PUT, PATCH, DELETE, OPTIONS"
        allowed_headers = DEFAULT_ALLOWED_HEADERS.encode()
        if request_headers:
            text = request_headers.decode("latin-1").strip()
            if len(text) <= 2048 and _TOKEN_LIST.match(text):
                allowed_headers = text.lower().encode()
        out[b"access-control-allow-headers"] = allowed_headers
        out[b"access-control-max-age"] = b"600"
        if not self.any:
            out[b"vary"] = b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
        return out
