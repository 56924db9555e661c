"""The link to Redis: one client, bounded timeouts, and the link's health.

The client is redis-py's asyncio client (``redis.asyncio``). meshd runs on Twisted's asyncio reactor, so
its coroutines run on the reactor's own event loop; :meth:`RedisLink.run` wraps one in
``Deferred.fromFuture`` and bounds it with ``Deferred.addTimeout`` on the passed-in clock. Why redis-py
rather than the Twisted-native txredisapi: it is Redis' own maintained client (RESP3, ``rediss://`` with
ACL user and password, Lua scripts sent as EVALSHA with a NOSCRIPT fallback), a bounded blocking
connection pool, and the same package gives ``meshd keys`` a synchronous client with the same scripts.

Health (:class:`Health`, pure) is ``connecting`` until the first answer, then ``up`` or ``down``. A timeout
or a connection error marks the link down: while down, :meth:`RedisLink.run` fails at once (no request
waits on a dead Redis) and a PING every second finds Redis again (every 5 s while up). A command Redis
refused (a script error, out of memory) is counted and fails that one call, without marking the link down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.logger import Logger
from twisted.python.failure import Failure

from meshd.shared.scripts import Namespace, redact_url

T = TypeVar("T")

DEFAULT_TIMEOUT = 0.25
#: Connections to Redis at most (more concurrent calls wait for one, within their timeout).
MAX_CONNECTIONS = 16
#: Seconds between PINGs while the link is down (finding Redis again), and while it is up (noticing it leave).
PROBE_DOWN = 1.0
PROBE_UP = 5.0
#: Upper bounds (seconds) of the round-trip histogram.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
ERROR_KINDS = ("timeout", "connection", "response")


class SharedUnavailable(Exception):
    """Redis did not answer this call (down, slow, or it refused the command)."""

    def __init__(self, reason: str, kind: str = "connection") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


@attrs.define
class Health:
    """The link's state: ``connecting``, ``up`` or ``down`` (pure; ``now`` is passed in)."""

    since: float
    state: str = "connecting"
    last_error: str | None = None
    last_ok: float | None = None
    errors: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(ERROR_KINDS, 0))
    calls: int = 0
    latency: list[int] = attrs.field(factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    last_latency: float | None = None

    @property
    def usable(self) -> bool:
        return self.state != "down"

    def succeeded(self, now: float, took: float) -> bool:
        """A call answered; True when this brings the link up."""
        self.calls += 1
        self.last_ok = now
        self.last_latency = took
        self.latency_sum += took
        for i, bound in enumerate(LATENCY_BUCKETS):
            if took <= bound:
                self.latency[i] += 1
                break
        else:
            self.latency[-1] += 1
        if self.state == "up":
            return False
        self.state, self.since = "up", now
        return True

    def failed(self, now: float, kind: str, reason: str) -> bool:
        """A call failed; True when this takes the link down (a refused command never does)."""
        self.calls += 1
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.last_error = reason
        if kind == "response" or self.state == "down":
            return False
        self.state, self.since = "down", now
        return True

    def probe_delay(self) -> float:
        return PROBE_UP if self.state == "up" else PROBE_DOWN


def classify(exc: BaseException) -> tuple[str, str] | None:
    """(kind, reason) of a failed call, or None when it is not Redis's doing (a bug: let it through)."""
    from redis import exceptions as rexc

    if isinstance(
        exc, TimeoutError | CancelledError | asyncio.CancelledError | rexc.TimeoutError | asyncio.TimeoutError
    ):
        return "timeout", "no answer in time"
    if isinstance(exc, rexc.ConnectionError | OSError):
        return "connection", f"{type(exc).__name__}: {exc}"[:300]
    if isinstance(exc, rexc.RedisError):
        return "response", f"{type(exc).__name__}: {exc}"[:300]
    return None


def make_client(url: str, timeout: float, max_connections: int = MAX_CONNECTIONS) -> Any:
    """redis-py's asyncio client for ``url``: no retries of its own, every wait bounded by ``timeout``."""
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        client_name="meshd",
    )
    return Redis(connection_pool=pool)


class RedisLink(Service):
    """One Redis for this process: ``run`` a call with a deadline; ``health`` says how the link is."""

    _log = Logger()

    def __init__(
        self,
        clock: Any,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        prefix: str = "meshd",
        client_factory: Callable[[str, float], Any] = make_client,
    ) -> None:
        self.clock = clock
        self.url = url
        self.shown_url = redact_url(url)
        self.timeout = timeout
        self.ns = Namespace(prefix)
        self._factory = client_factory
        self.client: Any = None
        self.health = Health(since=float(clock.seconds()))
        self._probe: Any = None
        self._probing: Deferred[Any] | None = None
        self.on_up: list[Callable[[], None]] = []

    # -- lifecycle --------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.client = self._factory(self.url, self.timeout)
        self._log.info("shared limits in Redis at {url}", url=self.shown_url, event="redis_start")
        self._schedule(0.0)

    def stopService(self) -> Any:
        super().stopService()
        if self._probe is not None and self._probe.active():
            self._probe.cancel()
        self._probe = None
        if self._probing is not None:
            self._probing.cancel()
        client, self.client = self.client, None
        if client is None:
            return None
        d: Deferred[Any] = _from_coroutine(client.aclose(close_connection_pool=True))
        d.addTimeout(1.0, self.clock)
        d.addErrback(lambda f: self._log.debug("closing the Redis client: {f}", f=f.getErrorMessage()))
        return d

    # -- calls ------------------------------------------------------------------------------------

    def run(self, op: Callable[[Any], Awaitable[T]]) -> Deferred[T]:
        """``op(client)`` with the link's deadline. Fails with SharedUnavailable at once while the link is down."""
        if self.client is None:
            d: Deferred[T] = Deferred()
            d.errback(SharedUnavailable("the Redis link is not started"))
            return d
        if not self.health.usable:
            d = Deferred()
            d.errback(SharedUnavailable(f"Redis is down ({self.health.last_error})"))
            return d
        return self._call(op)

    def _call(self, op: Callable[[Any], Awaitable[T]]) -> Deferred[T]:
        start = float(self.clock.seconds())
        try:
            d: Deferred[T] = _from_coroutine(op(self.client))
        except Exception as e:  # the op failed before it awaited (e.g. a bad argument)
            d = Deferred()
            d.errback(e)
        d.addTimeout(self.timeout, self.clock)

        def ok(result: T) -> T:
            now = float(self.clock.seconds())
            if self.health.succeeded(now, now - start):
                self._up()
            return result

        def bad(f: Failure) -> Failure:
            what = classify(f.value) if f.value is not None else None
            if what is None:
                return f
            kind, reason = what
            if self.health.failed(float(self.clock.seconds()), kind, reason):
                self._log.warn(
                    "Redis at {url} is down: {reason}", url=self.shown_url, reason=reason, event="redis_down"
                )
                self._schedule(PROBE_DOWN)
            return Failure(SharedUnavailable(reason, kind))

        d.addCallbacks(ok, bad)
        return d

    def _up(self) -> None:
        self._log.info("Redis at {url} is up", url=self.shown_url, event="redis_up")
        for cb in list(self.on_up):
            cb()

    # -- the probe --------------------------------------------------------------------------------

    def _schedule(self, delay: float) -> None:
        if not self.running or self.client is None:
            return
        if self._probe is not None and self._probe.active():
            self._probe.cancel()
        self._probe = self.clock.callLater(delay, self._ping)

    def _ping(self) -> None:
        self._probe = None
        d = self._call(lambda c: c.ping())
        self._probing = d

        def done(_: Any) -> None:
            self._probing = None
            self._schedule(self.health.probe_delay())

        d.addErrback(lambda f: f.trap(SharedUnavailable))
        d.addBoth(done)
        d.addErrback(lambda f: self._log.failure("Redis probe", failure=f, event="redis_probe_error"))

    # -- status -----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        h = self.health
        return {
            "url": self.shown_url,
            "state": h.state,
            "since": h.since,
            "last_error": h.last_error,
            "last_latency_ms": None if h.last_latency is None else round(h.last_latency * 1000, 3),
            "errors": dict(h.errors),
            "timeout": self.timeout,
            "prefix": self.ns.prefix,
        }


def _from_coroutine(coro: Awaitable[T]) -> Deferred[T]:
    """A redis-py coroutine as a Deferred: a task on the running asyncio loop (the reactor's)."""
    return Deferred.fromFuture(asyncio.ensure_future(coro))
