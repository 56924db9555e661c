"""Reading bodies of HTTP responses from other servers (a backend, an iroh relay) with a size bound.

``treq``'s ``response.content()`` buffers whatever the server sends; :func:`read_limited` stops at
``limit`` bytes, closes the connection and fails with :class:`BodyTooLarge`.
"""

from __future__ import annotations

from typing import Any

import treq
from twisted.internet.defer import Deferred

__all__ = ["BodyTooLarge", "read_limited"]


class BodyTooLarge(Exception):
    """The response body passed the caller's limit (the connection was closed)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"response body larger than {limit} bytes")
        self.limit = limit


def read_limited(response: Any, limit: int) -> Deferred[bytes]:
    """The whole body of a treq/``IResponse`` response, or a failure with :class:`BodyTooLarge`."""
    parts: list[bytes] = []
    size = 0

    def take(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > limit:
            raise BodyTooLarge(limit)  # treq.collect then drops the connection and fails with it
        parts.append(data)

    d: Deferred[None] = treq.collect(response, take)
    return d.addCallback(lambda _: b"".join(parts))
