"""meshd.shared against a real ``redis-server`` (in this process, on the asyncio reactor).

The Lua token bucket is checked against the in-process core it replaces (same decisions, to the bit), leases
against a clock we drive (so expiry needs no waiting), the key set through the real admin operations, the
link against a Redis that hangs (SIGSTOP) and one that is killed and started again, and the response store.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from typing import Any

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater

from meshd.shared import scripts
from meshd.shared.keys import UNAVAILABLE, SharedKeys, add_key, digest, list_keys, revoke
from meshd.shared.limits import FULL, Admitted, SharedLeases, SharedRateLimiter, admit
from meshd.shared.link import RedisLink, SharedUnavailable
from meshd.shared.policy import Lease, Policy, SharedGate
from meshd.shared.store import RedisResponseStore
from meshd.web.gate import RequestRateLimiter
from tests.integration.daemon import REPO, repo_env
from tests.integration.redis_server import RedisServer, redis_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
__all__ = ["redis_server"]  # the fixture


async def started(link: RedisLink) -> RedisLink:
    link.startService()
    deadline = time.monotonic() + 5
    while link.health.state != "up":
        assert time.monotonic() < deadline, link.status()
        await deferLater(reactor, 0.01, lambda: None)
    return link


async def until(pred: Any, within: float, what: str) -> float:
    """Seconds it took ``pred()`` to hold (checked every 10 ms), or an AssertionError after ``within``."""
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < within, f"timed out waiting for {what}"
        await deferLater(reactor, 0.01, lambda: None)
    return time.monotonic() - t0


@pytest_twisted.ensureDeferred
async def test_the_lua_bucket_decides_exactly_as_the_in_process_core(redis_server: RedisServer) -> None:
    link = await started(RedisLink(reactor, redis_server.url, timeout=2.0))
    try:
        rng = random.Random(20261201)
        for rpm in (1, 3, 60, 1000):
            shared = SharedRateLimiter(link, rpm)
            local = RequestRateLimiter(rpm)
            now = 1_700_000_000.0 + rng.random()
            callers = [f"ip:10.{rpm % 256}.0.{i}" for i in range(3)] + [f"key:{rng.getrandbits(32):08x}"]
            for _ in range(150):
                # bursts (no time passes), small steps, and long idle gaps (a full refill, the key's expiry)
                now += rng.choice([0.0, 0.0, 0.001, rng.random(), rng.random() * 10, 61.0])
                caller = rng.choice(callers)
                if rng.random() < 0.5:
                    got = await shared.check(caller, now)
                else:  # the admit script runs the same bucket
                    got = (await admit(link, None, At(now), caller, rpm=rpm, stream_limit=0, inflight_limit=0)).rate
                want = local.check(caller, now)
                assert got == want, (rpm, caller, now)
        # namespaced, and expiring: nothing stays after a minute of silence
        ttl = redis_server.client().pttl(link.ns.rate("ip:10.232.0.1"))
        assert 0 < ttl <= 61_000
    finally:
        await link.stopService()


@pytest_twisted.ensureDeferred
async def test_a_clean_stop_gives_back_the_slots_at_once(redis_server: RedisServer) -> None:
    link = RedisLink(reactor, redis_server.url, timeout=2.0)
    gate = SharedGate(link, reactor, rate_limit_streams=2, max_inflight_global=5, lease_ttl=60)
    gate.startService()
    await until(lambda: link.health.state == "up", 5, "the link up")
    r = redis_server.client()
    got = [await gate.admit(f"ip:{i}", stream=True, inflight=True) for i in range(3)]
    assert all(len(a.leases()) == 2 for a in got) and r.zcard(link.ns.inflight()) == 3
    await gate.stopService()
    assert r.zcard(link.ns.inflight()) == 0 and r.keys(f"{link.ns.prefix}:lease:*") == []
    assert link.client is None  # closed after the leases went back, with its connections
    await until(lambda: not [c for c in r.client_list() if c["name"] == "meshd"], 5, "meshd's connections closed")


class At:
    def __init__(self, now: float) -> None:
        self.now = now

    def seconds(self) -> float:
        return self.now


@pytest_twisted.ensureDeferred
async def test_one_admit_call_checks_in_the_gates_order_and_gives_back_what_a_later_check_refused(
    redis_server: RedisServer,
) -> None:
    link = await started(RedisLink(reactor, redis_server.url, timeout=2.0))
    r = redis_server.client()
    clock = Clock()
    clock.advance(1_800_000_000)
    leases = SharedLeases(link, clock, ttl=30, owner="m")
    ns = link.ns
    try:

        async def go(caller: str, rpm: int = 3, stream: int = 1, inflight: int = 2) -> Any:
            return await admit(link, leases, clock, caller, rpm=rpm, stream_limit=stream, inflight_limit=inflight)

        first = await go("ip:a")
        assert first.rate.remaining == 2 and first.stream == "m-1" and first.inflight == "m-2"
        assert r.zrange(ns.streams("ip:a"), 0, -1) == [b"m-1"] and r.zrange(ns.inflight(), 0, -1) == [b"m-2"]
        assert leases.held == {ns.streams("ip:a"): {"m-1"}, ns.inflight(): {"m-2"}}  # renewed from now on
        full = await go("ip:a")  # its one stream slot is taken: no in-flight slot taken either
        assert full.rate.allowed and full.stream == FULL and full.inflight is None
        assert r.zcard(ns.inflight()) == 1
        await go("ip:b")  # the second in-flight slot
        third = await go("ip:c")  # the cluster cap is full: ip:c's stream slot goes back at once
        assert third.stream is None and third.inflight == FULL and r.zcard(ns.streams("ip:c")) == 0
        for _ in range(2):
            await go("ip:c")
        refused = await go("ip:c")  # ip:c's bucket (3) is spent: nothing else is looked at
        assert not refused.rate.allowed and refused.stream is None and refused.inflight is None
        plain = await go("ip:d", rpm=0, stream=0, inflight=0)
        assert plain == Admitted(None, None, None) and r.exists(ns.rate("ip:d")) == 0
    finally:
        leases.stop()
        await link.stopService()


@pytest_twisted.ensureDeferred
async def test_two_links_spend_one_bucket(redis_server: RedisServer) -> None:
    a = await started(RedisLink(reactor, redis_server.url, timeout=2.0))
    b = await started(RedisLink(reactor, redis_server.url, timeout=2.0))
    try:
        la, lb = SharedRateLimiter(a, 10), SharedRateLimiter(b, 10)
        now = time.time()
        allowed = [(await (la if i % 2 else lb).check("ip:1.2.3.4", now)).allowed for i in range(30)]
        assert allowed == [True] * 10 + [False] * 20
    finally:
        await a.stopService()
        await b.stopService()


@pytest_twisted.ensureDeferred
async def test_leases_fill_expire_and_are_renewed_while_held(redis_server: RedisServer) -> None:
    link = await started(RedisLink(reactor, redis_server.url, timeout=2.0))
    r = redis_server.client()
    clock_a, clock_b = Clock(), Clock()
    clock_a.advance(1_800_000_000)
    clock_b.advance(1_800_000_000)
    a = SharedLeases(link, clock_a, ttl=30, owner="machine-a")
    b = SharedLeases(link, clock_b, ttl=30, owner="machine-b")
    pool = link.ns.streams("ip:9.9.9.9")
    try:
        first = await a.acquire(pool, 2)
        second = await b.acquire(pool, 2)
        assert first == "machine-a-1" and second == "machine-b-1"
        assert await b.acquire(pool, 2) is None  # full
        assert r.zcard(pool) == 2 and 0 < r.pttl(pool) <= 31_000

        # a renews every ttl/3; b "crashed" (its clock never moves again, so it never renews)
        clock_a.advance(10)
        await until(lambda: r.zscore(pool, first) == 1_800_000_040.0, 5, "a's renewal")
        assert a.renewals == 1
        for n in (2, 3):  # each renewal is armed when the last one answered
            clock_a.advance(10)
            await until(lambda n=n: a.renewals == n, 5, "a's renewals")
        # now 1_800_000_030: b's lease (expiry ...030) is due, a's (renewed to ...060) is not
        third = await a.acquire(pool, 2)  # b's lease is dropped on the way: its machine is gone
        assert third == "machine-a-2"
        assert sorted(m.decode() for m in r.zrange(pool, 0, -1)) == ["machine-a-1", "machine-a-2"]

        await a.release(pool, first)
        await a.release(pool, third)
        assert r.zcard(pool) == 0 and len(a) == 0
        # a lease released while a renewal was on its way is not brought back (ZADD XX)
        fourth = await a.acquire(pool, 1)
        assert fourth is not None
        r.zrem(pool, fourth)
        clock_a.advance(10)
        await until(lambda: a.renewals >= 4, 5, "renewal of a released lease")
        assert r.zcard(pool) == 0
    finally:
        a.stop()
        b.stop()
        await link.stopService()


@pytest_twisted.ensureDeferred
async def test_the_key_set_syncs_revokes_and_goes_stale(redis_server: RedisServer) -> None:
    link = await started(RedisLink(reactor, redis_server.url, timeout=2.0))
    admin = redis_server.client()
    clock = Clock()
    closed = SharedKeys(link, clock, max_age=2.0)
    opened = SharedKeys(link, clock, max_age=2.0, fail_open=True)
    try:
        assert closed.check("sk-anything") is UNAVAILABLE  # never read: only Redis could tell
        assert opened.check("sk-anything") is None
        assert closed.check(None) is None  # no key at all is a 401, whatever Redis says
        key, entry = add_key(admin, link.ns, label="team a", now=time.time())
        await closed.sync()
        await opened.sync()
        assert closed.check(key) == entry.key_id == digest(key)[:8]
        assert closed.check(key + "x") is None
        # only the digest is stored
        stored = admin.hgetall(link.ns.keys())
        assert list(stored) == [digest(key).encode()] and key.encode() not in b"".join(stored.values())
        assert [e.label for e in list_keys(admin, link.ns)] == ["team a"]
        version = closed.version
        await closed.sync()  # unchanged: the version alone comes back
        assert closed.version == version and closed.syncs == 2

        gone = revoke(admin, link.ns, entry.key_id)
        assert [e.key_id for e in gone] == [entry.key_id]
        await closed.sync()
        assert closed.check(key) is None

        key2, entry2 = add_key(admin, link.ns, now=time.time())
        await closed.sync()
        await opened.sync()
        key3, _ = add_key(admin, link.ns, now=time.time())
        clock.advance(2.5)  # no read for longer than max_age
        assert closed.check(key2) is UNAVAILABLE
        assert opened.check(key2) == entry2.key_id  # fail-open: the last set read stays in force...
        assert opened.check(key3) is None  # ...and nothing it did not hold
        await closed.sync()
        assert closed.check(key2) == entry2.key_id and closed.check(key3) is not None
    finally:
        await link.stopService()


@pytest_twisted.ensureDeferred
async def test_a_hung_redis_costs_one_timeout_then_nothing_and_is_found_again(redis_server: RedisServer) -> None:
    link = await started(RedisLink(reactor, redis_server.url, timeout=0.2))
    gate = SharedGate(link, reactor, rate_limit_rpm=2, rate_limit_streams=1, limits_fail=Policy.OPEN)
    closed_link = await started(RedisLink(reactor, redis_server.url, timeout=0.2))
    closed = SharedGate(closed_link, reactor, rate_limit_rpm=2, limits_fail=Policy.CLOSED)
    try:
        assert (await gate.check_rate("ip:a")).allowed
        redis_server.pause()
        t0 = time.monotonic()
        decision = await gate.check_rate("ip:a")  # Redis hangs: the timeout, then this process's bucket
        took = time.monotonic() - t0
        assert 0.15 < took < 1.0, took
        assert decision.allowed and decision.remaining == 1  # a fresh local bucket of 2
        assert link.health.state == "down" and link.health.errors["timeout"] == 1
        t0 = time.monotonic()
        assert (await gate.check_rate("ip:a")).allowed  # down: no waiting at all
        assert not (await gate.check_rate("ip:a")).allowed  # the local bucket is spent
        assert time.monotonic() - t0 < 0.1
        lease = await gate.acquire_stream("ip:a")
        assert lease == Lease("local", caller="ip:a")
        assert await gate.acquire_stream("ip:a") is None
        gate.release(lease)
        assert gate.fallbacks[("rate", "open")] == 3 and gate.fallbacks[("streams", "open")] == 2
        assert await closed.check_rate("ip:b") is UNAVAILABLE
        assert closed.fallbacks[("rate", "closed")] == 1
        assert "limits fail closed" in (closed.ready_problem() or "")

        redis_server.resume()
        await until(lambda: link.health.state == "up", 3, "the probe finding Redis again")
        # the shared buckets again (a call that timed out may still have run when Redis woke up: not "ip:a")
        assert [(await gate.check_rate("ip:c")).allowed for _ in range(3)] == [True, True, False]
        assert gate.fallbacks[("rate", "open")] == 3

        redis_server.stop()
        with pytest.raises(SharedUnavailable):
            await link.run(lambda c: c.ping())
        assert link.health.state == "down"
        redis_server.start()
        await until(lambda: link.health.state == "up", 3, "Redis started again")
        assert (await gate.check_rate("ip:z")).remaining == 1  # an empty Redis: a fresh shared bucket
        m = scrape(gate)
        assert m[("meshd_redis_up", ())] == 1
        assert m[("meshd_redis_fallbacks_total", (("check", "rate"), ("policy", "open")))] == 3
        assert m[("meshd_redis_errors_total", (("kind", "timeout"),))] >= 1
        assert m[("meshd_redis_latency_seconds_count", ())] >= 5
    finally:
        redis_server.resume()
        await gate.stopService() if gate.running else None
        await link.stopService()
        await closed_link.stopService()


def scrape(gate: SharedGate) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The gate's metric families, rendered by prometheus_client and parsed back."""

    class Collector:
        def collect(self) -> Any:
            yield from gate.metric_families()

    registry = CollectorRegistry()
    registry.register(Collector())  # type: ignore[arg-type]
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in fam.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


class Record:
    def __init__(self, id: str, body: dict[str, Any]) -> None:
        self.id = id
        self.body = body

    def to_json(self) -> bytes:
        return json.dumps({"id": self.id, "body": self.body}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Record:
        obj = json.loads(data)
        return cls(obj["id"], obj["body"])


@pytest_twisted.ensureDeferred
async def test_the_response_store_keeps_records_for_their_ttl(redis_server: RedisServer) -> None:
    link = await started(RedisLink(reactor, redis_server.url, timeout=2.0))
    other = await started(RedisLink(reactor, redis_server.url, timeout=2.0))
    store = RedisResponseStore(link, decode=Record.from_json, ttl=30, max_record_bytes=1000)
    seen_by_other = RedisResponseStore(other, decode=Record.from_json, ttl=30)
    r = redis_server.client()
    try:
        assert await store.put(Record("resp_1", {"text": "hello"}))
        got = await seen_by_other.get("resp_1")  # another machine sees it
        assert got is not None and got.body == {"text": "hello"}
        assert 0 < r.pttl(link.ns.response("resp_1")) <= 30_000
        assert not await store.put(Record("resp_big", {"text": "x" * 2000}))  # over max_record_bytes
        assert await store.get("resp_big") is None
        assert await store.get("../../etc") is None and not await store.put(Record("a b", {}))
        r.set(link.ns.response("resp_bad"), b"\xff not json")
        assert await store.get("resp_bad") is None
        assert await store.delete("resp_1") and await store.get("resp_1") is None
        redis_server.stop()
        assert not await store.put(Record("resp_2", {}))  # served, just not kept
        with pytest.raises(SharedUnavailable):
            await store.get("resp_2")
    finally:
        await link.stopService()
        await other.stopService()


def meshd_keys(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshd.cli", "keys", *args],
        cwd=REPO,
        env={**repo_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_meshd_keys_add_list_revoke(redis_server: RedisServer) -> None:
    url = redis_server.url
    added = meshd_keys("add", "--label", "ci bot", "--redis", url)
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    assert key.startswith("sk-mesh-") and len(key) > 40 and "\n" not in key
    kid = digest(key)[:8]
    assert f"added key {kid}" in added.stderr
    listed = meshd_keys("list", "--json", env={"MESHD_REDIS_URL": url})  # the URL from the environment
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["label"]) for r in rows] == [(kid, "ci bot")] and key not in listed.stdout
    again = meshd_keys("add", "--key", key, "--redis", url)
    assert again.returncode == 1 and "already" in again.stderr
    gone = meshd_keys("revoke", kid, "--redis", url)
    assert gone.returncode == 0 and gone.stdout == f"revoked key {kid} (ci bot)\n"
    assert meshd_keys("revoke", kid, "--redis", url).returncode == 1
    assert redis_server.client().hlen(scripts.Namespace().keys()) == 0

    usage_error = meshd_keys("list", "--redis", "http://127.0.0.1:1")
    assert usage_error.returncode == 2 and "redis://" in usage_error.stderr
    redis_server.stop()
    down = meshd_keys("list", "--redis", f"redis://:hunter2@127.0.0.1:{redis_server.port}/0")
    assert down.returncode == 1 and "hunter2" not in down.stderr and ":***@" in down.stderr
