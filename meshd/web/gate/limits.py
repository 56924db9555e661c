"""Per-caller limits (sans-IO: they take ``now`` and return decisions): requests per minute as a token
bucket per caller, and concurrent streams per caller. ``meshd.shared`` keeps the same limits in Redis."""

from __future__ import annotations

import math
from collections import OrderedDict

import attrs

#: Callers whose request buckets are kept (least recently seen are forgotten first).
MAX_CALLERS = 10_000


@attrs.define
class _Bucket:
    tokens: float
    updated: float


@attrs.frozen
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_secs: float  # until the bucket is full again
    retry_after: int  # whole seconds until one request is allowed (0 when allowed)

    def headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(self.remaining),
            "x-ratelimit-reset-requests": format_duration(self.reset_secs),
        }


def format_duration(secs: float) -> str:
    """OpenAI's reset format: ``120ms``, ``1s``, ``6m0s``."""
    if secs <= 0:
        return "0s"
    if secs < 1:
        return f"{max(1, math.ceil(secs * 1000))}ms"
    whole = math.ceil(secs * 1000) / 1000
    minutes, rest = divmod(whole, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


class RequestRateLimiter:
    """Requests per minute per caller: a token bucket of ``rpm`` tokens refilled at ``rpm``/60 per second."""

    def __init__(self, rpm: int, max_callers: int = MAX_CALLERS) -> None:
        if rpm < 1:
            raise ValueError("rpm must be at least 1")
        self.rpm = rpm
        self.rate = rpm / 60.0
        self.max_callers = max_callers
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, caller: str, now: float) -> RateDecision:
        b = self._buckets.get(caller)
        if b is None:
            b = self._buckets[caller] = _Bucket(float(self.rpm), now)
            while len(self._buckets) > self.max_callers:
                self._buckets.popitem(last=False)
        else:
            b.tokens = min(float(self.rpm), b.tokens + max(0.0, now - b.updated) * self.rate)
            b.updated = now
            self._buckets.move_to_end(caller)
        allowed = b.tokens >= 1.0
        if allowed:
            b.tokens -= 1.0
        retry = 0 if allowed else max(1, math.ceil((1.0 - b.tokens) / self.rate))
        return RateDecision(
            allowed=allowed,
            limit=self.rpm,
            remaining=int(b.tokens),
            reset_secs=(self.rpm - b.tokens) / self.rate,
            retry_after=retry,
        )


class StreamLimiter:
    """Concurrent streaming requests per caller."""

    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        self._active: dict[str, int] = {}

    def active(self, caller: str) -> int:
        return self._active.get(caller, 0)

    def acquire(self, caller: str) -> bool:
        n = self._active.get(caller, 0)
        if n >= self.max_streams:
            return False
        self._active[caller] = n + 1
        return True

    def release(self, caller: str) -> None:
        n = self._active.get(caller, 0) - 1
        if n > 0:
            self._active[caller] = n
        else:
            self._active.pop(caller, None)
