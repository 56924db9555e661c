"""Limits in Redis: requests per minute per caller, and concurrency leases that expire.

- :class:`SharedRateLimiter` is the asynchronous twin of ``meshd.web.gate.RequestRateLimiter``: the same
  token bucket (``rpm`` tokens, refilled at ``rpm``/60 per second), kept in one Redis hash per caller and
  updated by one Lua script, so every machine spends from the same bucket.
- :class:`SharedLeases` counts holders of a pool (a caller's streams, or the cluster's in-flight requests)
  as members of a sorted set scored by their expiry. A lease lives ``ttl`` seconds and is renewed every
  ``ttl``/3 while its request runs, so the slots of a machine that crashed (SIGKILL, power loss) are
  freed by expiry, at most ``ttl`` seconds later, by whichever machine next asks for a slot.

Both return Deferreds and fail with ``SharedUnavailable`` when Redis does not answer; the policy of what
to do then is :mod:`meshd.shared.policy`'s.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from meshd.shared import scripts
from meshd.shared.link import RedisLink, SharedUnavailable
from meshd.web.gate.limits import RateDecision

DEFAULT_LEASE_TTL = 30.0


def rate_decision(allowed: bool, tokens: float, rpm: int) -> RateDecision:
    """What ``RequestRateLimiter.check`` would say for a bucket left with ``tokens`` after the check."""
    rate = rpm / 60.0
    return RateDecision(
        allowed=allowed,
        limit=rpm,
        remaining=int(tokens),
        reset_secs=(rpm - tokens) / rate,
        retry_after=0 if allowed else max(1, math.ceil((1.0 - tokens) / rate)),
    )


class SharedRateLimiter:
    """Requests per minute per caller, in Redis (``check`` is ``RequestRateLimiter.check`` as a Deferred)."""

    def __init__(self, link: RedisLink, rpm: int) -> None:
        if rpm < 1:
            raise ValueError("rpm must be at least 1")
        self.link = link
        self.rpm = rpm
        self._script: Any = None

    def check(self, caller: str, now: float) -> Deferred[RateDecision]:
        key = self.link.ns.rate(caller)
        args = scripts.rate_args(now, self.rpm)

        async def op(client: Any) -> Any:
            if self._script is None:
                self._script = client.register_script(scripts.RATE_SCRIPT)
            return await self._script(keys=[key], args=args)

        d = self.link.run(op)
        d.addCallback(self._decide)
        return d

    def _decide(self, reply: Any) -> RateDecision:
        try:
            allowed, tokens = scripts.parse_rate_reply(reply)
        except ValueError as e:
            raise SharedUnavailable(str(e), "response") from None
        return rate_decision(allowed, tokens, self.rpm)


@attrs.frozen
class Admitted:
    """What the admit script decided. ``stream``/``inflight``: a lease id, None when not asked (or given back
    because a later check refused), ``FULL`` when the pool is full."""

    rate: RateDecision | None
    stream: str | None
    inflight: str | None


FULL = "full"


def admit(
    link: RedisLink,
    leases: SharedLeases | None,
    clock: Any,
    caller: str,
    *,
    rpm: int,
    stream_limit: int,
    inflight_limit: int,
) -> Deferred[Admitted]:
    """A request's rate check and its leases (0 = not asked) in one round trip (``scripts.ADMIT_SCRIPT``)."""
    ns = link.ns
    now = float(clock.seconds())
    ttl = leases.ttl if leases is not None else DEFAULT_LEASE_TTL
    stream_id = leases.new_id() if leases is not None and stream_limit > 0 else ""
    inflight_id = leases.new_id() if leases is not None and inflight_limit > 0 else ""
    keys = [ns.rate(caller), ns.streams(caller), ns.inflight()]
    args = [
        *scripts.rate_args(now, rpm),
        str(int(stream_limit)),
        str(int(inflight_limit)),
        repr(now + ttl),
        stream_id or "-",
        inflight_id or "-",
    ]

    async def op(client: Any) -> Any:
        return await _script(client, scripts.ADMIT_SCRIPT)(keys=keys, args=args)

    def decided(reply: Any) -> Admitted:
        try:
            allowed, tokens, s, g = scripts.parse_admit_reply(reply)
        except ValueError as e:
            raise SharedUnavailable(str(e), "response") from None
        rate = rate_decision(allowed, tokens, rpm) if rpm > 0 and tokens is not None else None
        stream = FULL if s == -1 else (stream_id if s == 1 else None)
        inflight = FULL if g == -1 else (inflight_id if g == 1 else None)
        if leases is not None:
            if stream not in (None, FULL):
                leases.adopt(keys[1], stream_id)
            if inflight not in (None, FULL):
                leases.adopt(keys[2], inflight_id)
        return Admitted(rate, stream, inflight)

    d = link.run(op)
    d.addCallback(decided)
    return d


def _script(client: Any, text: str) -> Any:
    """redis-py's Script for ``text`` (sent as EVALSHA, loaded again after a NOSCRIPT; its SHA-1 costs ~µs)."""
    return client.register_script(text)


class SharedLeases:
    """Leases on pools of limited size, kept in Redis and renewed while held.

    ``acquire(pool, limit)`` gives a lease id or None when the pool is full; ``release`` gives it back (if
    Redis is away then, the lease just expires). Held leases are renewed every ``ttl``/3 seconds in one
    script call per 200 pools. ``owner`` goes into every lease id (which machine holds it, for operators).
    """

    _log = Logger()

    def __init__(self, link: RedisLink, clock: Any, ttl: float = DEFAULT_LEASE_TTL, owner: str | None = None) -> None:
        if ttl <= 0:
            raise ValueError("the lease TTL must be positive")
        self.link = link
        self.clock = clock
        self.ttl = ttl
        self.owner = owner or secrets.token_hex(4)
        self._n = 0
        #: pool key -> lease ids held by this process (bounded by its requests in flight)
        self.held: dict[str, set[str]] = {}
        self._acquire: Any = None
        self._renew: Any = None
        self._timer: Any = None
        self.renewals = 0
        self.renew_failures = 0
        self._stopped = False

    def __len__(self) -> int:
        return sum(len(v) for v in self.held.values())

    def new_id(self) -> str:
        self._n += 1
        return f"{self.owner}-{self._n}"

    def adopt(self, pool: str, lease: str) -> None:
        """Renew ``lease`` (taken by another script, e.g. the admit script) from now on."""
        self.held.setdefault(pool, set()).add(lease)
        self._arm()

    def acquire(self, pool: str, limit: int) -> Deferred[str | None]:
        lease = self.new_id()
        now = float(self.clock.seconds())
        args = [repr(now), str(int(limit)), repr(now + self.ttl), lease]

        async def op(client: Any) -> Any:
            if self._acquire is None:
                self._acquire = client.register_script(scripts.LEASE_ACQUIRE_SCRIPT)
            return await self._acquire(keys=[pool], args=args)

        def taken(reply: Any) -> str | None:
            try:
                ok, _holders = scripts.parse_lease_reply(reply)
            except ValueError as e:
                raise SharedUnavailable(str(e), "response") from None
            if not ok:
                return None
            self.adopt(pool, lease)
            return lease

        d = self.link.run(op)
        d.addCallback(taken)
        return d

    def release(self, pool: str, lease: str) -> Deferred[None]:
        ids = self.held.get(pool)
        if ids is not None:
            ids.discard(lease)
            if not ids:
                del self.held[pool]

        async def op(client: Any) -> None:
            await client.zrem(pool, lease)

        d = self.link.run(op)
        # Not given back now: it expires within the TTL (nobody renews it any more).
        d.addErrback(lambda f: f.trap(SharedUnavailable))
        return d

    def release_all(self) -> Deferred[Any]:
        """Give back every lease held (a clean stop): one ZREM per pool; what fails just expires."""
        held, self.held = self.held, {}
        calls: list[Deferred[Any]] = []
        for pool, ids in sorted(held.items()):

            async def op(client: Any, pool: str = pool, ids: list[str] = sorted(ids)) -> None:
                await client.zrem(pool, *ids)

            d = self.link.run(op)
            d.addErrback(lambda f: f.trap(SharedUnavailable))
            calls.append(d)
        return DeferredList(calls, consumeErrors=True)

    # -- renewal --------------------------------------------------------------------------------

    def _arm(self) -> None:
        if self._stopped:
            return
        if self._timer is None or not self._timer.active():
            self._timer = self.clock.callLater(self.ttl / 3.0, self._renew_all)

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _renew_all(self) -> Deferred[None] | None:
        self._timer = None
        if not self.held:
            return None
        now = float(self.clock.seconds())
        pools = sorted(self.held)
        calls: list[Deferred[Any]] = []
        for i in range(0, len(pools), scripts.RENEW_BATCH):
            batch = pools[i : i + scripts.RENEW_BATCH]
            args = [repr(now), repr(now + self.ttl), *(" ".join(sorted(self.held[p])) for p in batch)]

            async def op(client: Any, keys: list[str] = batch, argv: list[str] = args) -> Any:
                if self._renew is None:
                    self._renew = client.register_script(scripts.LEASE_RENEW_SCRIPT)
                return await self._renew(keys=keys, args=argv)

            calls.append(self.link.run(op))

        def done(results: list[tuple[bool, Any]]) -> None:
            self._arm()
            for ok, value in results:
                if ok:
                    self.renewals += 1
                else:
                    self.renew_failures += 1
                    value.trap(SharedUnavailable)

        dl: Deferred[Any] = DeferredList(calls, consumeErrors=True)
        dl.addCallback(done)
        dl.addErrback(lambda f: self._log.failure("renewing leases", failure=f, event="redis_renew_error"))
        return dl
