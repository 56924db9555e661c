"""What the API gate calls with ``--redis``: the shared checks wrapped in the fail-open/fail-closed policy.

:class:`SharedGate` owns the Redis link, the shared limiters and (with ``--redis-keys``) the key set. Its
checks return Deferreds that never fail for Redis's sake: when Redis does not answer in time (or the link
is down, which answers at once), the policy decides:

- limits (``--redis-limits-fail``, default ``open``): ``open`` falls back to this process's own limiters
  (``RequestRateLimiter``, ``StreamLimiter``; the cluster-wide in-flight cap is then not applied), logs the
  first fallback of each outage and counts every one; ``closed`` answers :data:`UNAVAILABLE` (the gate's
  503 ``server_busy``);
- keys (``--redis-keys-fail``, default ``closed``): see :mod:`meshd.shared.keys`.

``status()`` is the ``redis`` section of ``/api/status``, ``ready_problem()`` what makes ``/ready`` 503, and
``metric_families()`` the ``meshd_redis_*`` metrics.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Any

import attrs
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from meshd.shared.keys import UNAVAILABLE, SharedKeys, Unavailable
from meshd.shared.limits import DEFAULT_LEASE_TTL, FULL, Admitted, SharedLeases, SharedRateLimiter, admit
from meshd.shared.link import ERROR_KINDS, LATENCY_BUCKETS, RedisLink, SharedUnavailable
from meshd.web.gate.limits import RateDecision, RequestRateLimiter, StreamLimiter

__all__ = ["UNAVAILABLE", "Admission", "Lease", "Policy", "SharedGate"]

CHECKS = ("rate", "streams", "inflight_global", "keys")


class Policy(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


@attrs.define
class Lease:
    """A concurrency slot held by one request: in Redis, in this process (fail-open), or none needed."""

    kind: str  # "redis", "local", "none"
    pool: str = ""
    lease_id: str = ""
    caller: str = ""


NO_LEASE = Lease("none")


@attrs.frozen
class Admission:
    """One request's shared checks: ``rate`` (None when off), then its slots. A slot is a Lease (``none``
    when not asked, or given back because a later check refused), None when full, or UNAVAILABLE."""

    rate: RateDecision | Unavailable | None
    stream: Lease | Unavailable | None = NO_LEASE
    inflight: Lease | Unavailable | None = NO_LEASE

    def leases(self) -> list[Lease]:
        return [x for x in (self.stream, self.inflight) if isinstance(x, Lease) and x.kind != "none"]


class SharedGate(MultiService):
    """The shared limits and keys of one API port (a service: it starts the link and the key poll)."""

    _log = Logger()

    def __init__(
        self,
        link: RedisLink,
        clock: Any,
        *,
        rate_limit_rpm: int = 0,
        rate_limit_streams: int = 0,
        max_inflight_global: int = 0,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        limits_fail: Policy = Policy.OPEN,
        keys: bool = False,
        keys_fail: Policy = Policy.CLOSED,
        keys_poll: float | None = None,
        keys_max_age: float | None = None,
    ) -> None:
        super().__init__()
        self.link = link
        link.setServiceParent(self)
        self.clock = clock
        self.limits_fail = limits_fail
        self.requests = SharedRateLimiter(link, rate_limit_rpm) if rate_limit_rpm > 0 else None
        self.local_requests = RequestRateLimiter(rate_limit_rpm) if rate_limit_rpm > 0 else None
        self.max_streams = rate_limit_streams
        self.local_streams = StreamLimiter(rate_limit_streams) if rate_limit_streams > 0 else None
        self.max_inflight_global = max_inflight_global
        self.leases = (
            SharedLeases(link, clock, lease_ttl) if rate_limit_streams > 0 or max_inflight_global > 0 else None
        )
        self.keys: SharedKeys | None = None
        if keys:
            kw: dict[str, Any] = {}
            if keys_poll is not None:
                kw["poll"] = keys_poll
            if keys_max_age is not None:
                kw["max_age"] = keys_max_age
            self.keys = SharedKeys(link, clock, fail_open=keys_fail is Policy.OPEN, **kw)
        self.fallbacks: dict[tuple[str, str], int] = {(c, p.value): 0 for c in CHECKS for p in Policy}
        self._degraded = False
        link.on_up.append(self._recovered)

    # -- lifecycle --------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.keys is not None:
            self.keys.start()

    def stopService(self) -> Any:
        """Stop the key poll and the renewals, give back the slots still held (so a machine stopped cleanly
        frees them at once, not after the lease TTL), then close the link."""
        if self.keys is not None:
            self.keys.stop()
        if self.leases is None:
            return super().stopService()
        self.leases.stop()
        d: Deferred[Any] = self.leases.release_all()
        d.addBoth(lambda _: MultiService.stopService(self))
        return d

    # -- the checks -------------------------------------------------------------------------------

    def check_rate(self, caller: str) -> Deferred[RateDecision | Unavailable]:
        """Spend one request of ``caller``'s bucket (``--rate-limit-rpm`` must be on)."""
        assert self.requests is not None and self.local_requests is not None
        local = self.local_requests
        now = float(self.clock.seconds())
        d: Deferred[Any] = self.requests.check(caller, now)
        d.addErrback(self._fallback, "rate", lambda: local.check(caller, now))
        return d

    def acquire_stream(self, caller: str) -> Deferred[Lease | Unavailable | None]:
        """A stream slot of ``caller`` (``--rate-limit-streams`` must be on); None when all are taken."""
        assert self.leases is not None and self.local_streams is not None
        local = self.local_streams
        pool = self.link.ns.streams(caller)

        def locally() -> Lease | None:
            return Lease("local", caller=caller) if local.acquire(caller) else None

        d: Deferred[Any] = self.leases.acquire(pool, self.max_streams)
        d.addCallback(lambda lease_id: None if lease_id is None else Lease("redis", pool, lease_id, caller))
        d.addErrback(self._fallback, "streams", locally)
        return d

    def acquire_global(self) -> Deferred[Lease | Unavailable | None]:
        """A slot of the cluster-wide in-flight cap (``--max-inflight-global``); None when all are taken."""
        if self.leases is None or self.max_inflight_global <= 0:
            return succeed(Lease("none"))
        pool = self.link.ns.inflight()
        d: Deferred[Any] = self.leases.acquire(pool, self.max_inflight_global)
        d.addCallback(lambda lease_id: None if lease_id is None else Lease("redis", pool, lease_id))
        # Fail-open: no cluster-wide cap while Redis is away (each machine's --max-inflight still applies).
        d.addErrback(self._fallback, "inflight_global", lambda: Lease("none"))
        return d

    def admit(self, caller: str, *, stream: bool, inflight: bool) -> Deferred[Admission]:
        """The rate check and the slots a request needs (a stream slot, a cluster-wide one) in one Redis call."""
        stream = stream and self.local_streams is not None
        inflight = inflight and self.max_inflight_global > 0
        rpm = self.requests.rpm if self.requests is not None else 0
        if not (rpm or stream or inflight):
            return succeed(Admission(None))
        streams_pool = self.link.ns.streams(caller)
        d: Deferred[Any] = admit(
            self.link,
            self.leases,
            self.clock,
            caller,
            rpm=rpm,
            stream_limit=self.max_streams if stream else 0,
            inflight_limit=self.max_inflight_global if inflight else 0,
        )

        def slot(value: str | None, pool: str, caller: str = "") -> Lease | None:
            if value is None:
                return NO_LEASE
            return None if value == FULL else Lease("redis", pool, value, caller)

        def decided(a: Admitted) -> Admission:
            return Admission(a.rate, slot(a.stream, streams_pool, caller), slot(a.inflight, self.link.ns.inflight()))

        d.addCallback(decided)
        d.addErrback(self._admit_fallback, caller, rpm > 0, stream, inflight)
        return d

    def _admit_fallback(self, failure: Failure, caller: str, rate: bool, stream: bool, inflight: bool) -> Admission:
        failure.trap(SharedUnavailable)
        checks = [c for c, on in (("rate", rate), ("streams", stream), ("inflight_global", inflight)) if on]
        if self.limits_fail is Policy.CLOSED:
            for check in checks:
                self._fallback(failure, check, lambda: None)
            return Admission(
                UNAVAILABLE if rate else None,
                UNAVAILABLE if stream else NO_LEASE,
                UNAVAILABLE if inflight else NO_LEASE,
            )
        now = float(self.clock.seconds())
        decision: RateDecision | None = None
        if rate:
            requests = self.local_requests
            assert requests is not None
            decision = self._fallback(failure, "rate", lambda: requests.check(caller, now))
            assert decision is not None
            if not decision.allowed:
                return Admission(decision)
        slot: Lease | None = NO_LEASE
        if stream:
            assert self.local_streams is not None
            local = self.local_streams
            slot = self._fallback(
                failure, "streams", lambda: Lease("local", caller=caller) if local.acquire(caller) else None
            )
            if slot is None:
                return Admission(decision, None)
        if inflight:
            self._fallback(failure, "inflight_global", lambda: NO_LEASE)
        return Admission(decision, slot, NO_LEASE)

    def release(self, lease: Lease) -> None:
        if lease.kind == "redis" and self.leases is not None:
            self.leases.release(lease.pool, lease.lease_id)
        elif lease.kind == "local" and self.local_streams is not None:
            self.local_streams.release(lease.caller)

    def check_key(self, presented: str | None) -> str | Unavailable | None:
        """The key id of ``presented`` in the Redis key set, None if not there, UNAVAILABLE (fail-closed)."""
        if self.keys is None:
            return None
        result = self.keys.check(presented)
        if presented is not None and not self.keys.fresh(float(self.clock.seconds())):
            self._count("keys", Policy.CLOSED if result is UNAVAILABLE else Policy.OPEN)
        return result

    def _fallback(self, failure: Failure, check: str, local: Any) -> Any:
        failure.trap(SharedUnavailable)
        reason = failure.value.reason if isinstance(failure.value, SharedUnavailable) else ""
        policy = self.limits_fail
        self._count(check, policy)
        if not self._degraded:
            self._degraded = True
            self._log.warn(
                "Redis unavailable ({reason}): limits {what}",
                reason=reason,
                what="fall back to this process's own (fail-open)"
                if policy is Policy.OPEN
                else "refuse requests with 503 (fail-closed)",
                event="redis_fallback",
                policy=policy.value,
            )
        if policy is Policy.OPEN:
            return local()
        return UNAVAILABLE

    def _count(self, check: str, policy: Policy) -> None:
        self.fallbacks[(check, policy.value)] += 1

    def _recovered(self) -> None:
        if self._degraded:
            self._degraded = False
            self._log.info("Redis is back: limits are shared again", event="redis_recovered")

    # -- status, readiness, metrics ---------------------------------------------------------------

    def ready_problem(self) -> str | None:
        """Why this process cannot serve for Redis's sake (``/ready`` answers 503), else None."""
        now = float(self.clock.seconds())
        state = self.link.health.state
        why = self.link.health.last_error or state
        if self.keys is not None and not self.keys.fail_open and not self.keys.fresh(now):
            return f"the API key set in Redis cannot be read (Redis {state}: {why})"
        uses_limits = self.requests is not None or self.leases is not None
        if uses_limits and self.limits_fail is Policy.CLOSED and state == "down":
            return f"Redis is down and limits fail closed ({why})"
        return None

    def status(self) -> dict[str, Any]:
        out = self.link.status()
        out.update(
            {
                "limits_fail": self.limits_fail.value,
                "rate_limit_rpm": self.requests.rpm if self.requests is not None else 0,
                "rate_limit_streams": self.max_streams,
                "max_inflight_global": self.max_inflight_global,
                "lease_ttl": self.leases.ttl if self.leases is not None else None,
                "leases_held": len(self.leases) if self.leases is not None else 0,
                "api_keys": self.keys.status() if self.keys is not None else None,
                "fallbacks": {f"{c}:{p}": n for (c, p), n in self.fallbacks.items() if n},
                "ready_problem": self.ready_problem(),
            }
        )
        return out

    def metric_families(self) -> Iterator[Any]:
        h = self.link.health
        up = GaugeMetricFamily("meshd_redis_up", "1 while the link to Redis answers (--redis).")
        up.add_metric([], 1.0 if h.state == "up" else 0.0)
        yield up
        calls = CounterMetricFamily("meshd_redis_calls", "Calls to Redis (answered or not).")
        calls.add_metric([], float(h.calls))
        yield calls
        errors = CounterMetricFamily(
            "meshd_redis_errors", "Calls to Redis that failed: timeout, connection, response.", labels=["kind"]
        )
        for kind in ERROR_KINDS:
            errors.add_metric([kind], float(h.errors.get(kind, 0)))
        yield errors
        fallbacks = CounterMetricFamily(
            "meshd_redis_fallbacks",
            "Checks decided without Redis: policy open (this process's limits, or the last key set read) or "
            "closed (refused with 503).",
            labels=["check", "policy"],
        )
        for (check, policy), n in sorted(self.fallbacks.items()):
            fallbacks.add_metric([check, policy], float(n))
        yield fallbacks
        latency = HistogramMetricFamily("meshd_redis_latency_seconds", "Round trip of answered Redis calls.")
        cumulative, buckets = 0, []
        for bound, n in zip(LATENCY_BUCKETS, h.latency, strict=False):
            cumulative += n
            buckets.append((repr(bound), float(cumulative)))
        cumulative += h.latency[-1]
        buckets.append(("+Inf", float(cumulative)))
        latency.add_metric([], buckets, sum_value=h.latency_sum)
        yield latency
        leases = GaugeMetricFamily("meshd_redis_leases", "Concurrency leases in Redis held by this process.")
        leases.add_metric([], float(len(self.leases) if self.leases is not None else 0))
        yield leases
        if self.keys is not None:
            keys = GaugeMetricFamily("meshd_redis_api_keys", "Keys in the last key set read from Redis.")
            keys.add_metric([], float(self.keys.count))
            yield keys
            age = GaugeMetricFamily("meshd_redis_api_keys_age_seconds", "Seconds since the key set was last read.")
            synced = self.keys.synced_at
            age.add_metric([], float("inf") if synced is None else float(self.clock.seconds()) - synced)
            yield age
