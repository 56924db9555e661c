"""Several API processes sharing one Redis: real ``twistd -n meshd`` clients in front of one mesh (a meshd host
and Python's ``http.server`` as its backend), a real ``redis-server``, the openai SDK and urllib as callers.

What the issue asks for, each in its own test: one caller's rate limit is shared (the sum let through is the
limit within one bucket refill), a key revoked in Redis is refused by every process within a second, a
concurrency lease held by a process killed with SIGKILL is freed by expiry, and a Redis that hangs or dies
mid-load gives the chosen fail-open/fail-closed answers with no hung request, then is picked up again.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from tests.integration.daemon import REPO, Daemon, repo_env
from tests.integration.local_mesh import Mesh, start_odd_backend, until
from tests.integration.redis_server import RedisServer, redis_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
__all__ = ["redis_server"]  # the fixture

MODEL = "slow"
#: 20 words: a stream of 22 events, 0.25 s apart (5.5 s), long enough to hold a lease through renewals.
PROMPT = " ".join(f"w{i}" for i in range(20))
MSGS: Any = [{"role": "user", "content": PROMPT}]
CALLER = "ip:127.0.0.1"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("redis-cluster")
    m = Mesh(tmp)
    try:
        proc, url = start_odd_backend("stdlib", MODEL, tmp / "backend.log", delay=0.25)
        m.backends.append(proc)
        m.host("h", url)
        yield m
    finally:
        m.stop()


class Client:
    """One API process: ``meshd --client`` joined to the mesh, with the given flags."""

    def __init__(self, mesh: Mesh, *extra: str) -> None:
        assert mesh.first_token is not None
        self.daemon = Daemon(
            ["--client", "--join", mesh.first_token, "--port", "0", "--console", "0", "--no-nostr", *extra],
            cwd=mesh.tmp,
        )
        ready = self.daemon.wait_event("ready")
        self.api = str(ready["api_url"])
        self.console = str(ready["console_url"])
        # /ready needs no key and spends no limit: joined, with the model routable
        until(lambda: http(self.api + "/ready")[0] == 200, 60, "client ready")

    def status(self) -> dict[str, Any]:
        return json.loads(http(self.console + "/api/status")[1])["meshd"]  # type: ignore[no-any-return]

    def metrics(self) -> str:
        return http(self.api + "/metrics")[1].decode()


@pytest.fixture
def clients(mesh: Mesh) -> Iterator[list[Client]]:
    started: list[Client] = []
    yield started
    for c in started:
        c.daemon.kill()


def start(clients: list[Client], mesh: Mesh, *extra: str) -> Client:
    c = Client(mesh, *extra)
    clients.append(c)
    return c


def http(url: str, key: str | None = None, body: Any = None, timeout: float = 10.0) -> tuple[int, bytes, float]:
    """(status, body, seconds) of one request; every request has a deadline."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers)
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read(), time.monotonic() - t0
    except urllib.error.HTTPError as e:
        return e.code, e.read(), time.monotonic() - t0


def chat(api: str, key: str | None = None) -> int:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    return http(api + "/v1/chat/completions", key, body)[0]


def sdk(api: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=api + "/v1", api_key=key, max_retries=0, timeout=30)


def meshd_keys(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "meshd.cli", "keys", *args],
        cwd=REPO,
        env=repo_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.strip()


def test_two_api_processes_share_one_callers_rate_limit(
    mesh: Mesh, clients: list[Client], redis_server: RedisServer
) -> None:
    rpm = 20
    a = start(clients, mesh, "--redis", redis_server.url, "--rate-limit-rpm", str(rpm))
    b = start(clients, mesh, "--redis", redis_server.url, "--rate-limit-rpm", str(rpm))
    sdks = [sdk(a.api), sdk(b.api)]
    outcomes: list[tuple[int, int]] = []  # (process, status)
    t0 = time.monotonic()
    for i in range(2 * rpm):  # twice what one caller may send: each process alone would let `rpm` through
        try:
            sdks[i % 2].chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            outcomes.append((i % 2, 200))
        except openai.RateLimitError as e:
            assert e.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
            outcomes.append((i % 2, 429))
    elapsed = time.monotonic() - t0
    allowed = sum(1 for _, s in outcomes if s == 200)
    refill = elapsed * rpm / 60.0
    assert rpm <= allowed <= rpm + math.ceil(refill), (allowed, elapsed)
    assert {p for p, s in outcomes if s == 200} == {0, 1}  # both processes served from the one bucket
    assert {p for p, s in outcomes if s == 429} == {0, 1}  # and both refused when it was empty
    # The bucket is one namespaced key that expires a minute after its last use.
    r = redis_server.client()
    assert r.keys("meshd:*") == [f"meshd:rate:{CALLER}".encode()]
    assert 0 < r.pttl(f"meshd:rate:{CALLER}") <= 61_000
    for s in sdks:
        s.close()


def test_a_key_revoked_in_redis_is_refused_by_every_process_within_a_second(
    mesh: Mesh, clients: list[Client], redis_server: RedisServer
) -> None:
    url = redis_server.url
    a = start(clients, mesh, "--redis", url, "--redis-keys")
    b = start(clients, mesh, "--redis", url, "--redis-keys")
    key = meshd_keys("add", "--label", "test", "--redis", url)
    t0 = time.monotonic()
    until(lambda: chat(a.api, key) == 200 and chat(b.api, key) == 200, 5, "the new key accepted by both")
    assert time.monotonic() - t0 < 1.0
    assert sdk(b.api, key).models.list().data[0].id == MODEL  # the openai SDK as the caller
    with pytest.raises(openai.AuthenticationError):
        sdk(b.api, "sk-not-a-key").models.list()

    meshd_keys("revoke", key, "--redis", url)
    t0 = time.monotonic()
    refused_at: dict[str, float] = {}

    def both_refuse() -> bool:
        for name, c in (("a", a), ("b", b)):
            if name not in refused_at and http(c.api + "/v1/models", key)[0] == 401:
                refused_at[name] = time.monotonic() - t0
        return len(refused_at) == 2

    until(both_refuse, 5, "the revoked key refused by both")
    assert max(refused_at.values()) < 1.0, refused_at
    for c in (a, b):
        text = "\n".join(json.dumps(r) for r in c.daemon.records)
        assert key not in text  # keys never reach the logs
        assert c.status()["redis"]["api_keys"]["keys"] == 0
    assert b.daemon.terminate() == 0  # SIGTERM: the Redis link closes with the rest, cleanly
    assert not [r for r in b.daemon.records if r.get("level") in ("error", "critical")]


def test_a_lease_held_by_a_process_killed_with_sigkill_is_freed_by_expiry(
    mesh: Mesh, clients: list[Client], redis_server: RedisServer
) -> None:
    ttl = 2.0
    flags = ("--redis", redis_server.url, "--rate-limit-streams", "1", "--redis-lease-ttl", str(ttl))
    a = start(clients, mesh, *flags)
    b = start(clients, mesh, *flags)
    r = redis_server.client()
    pool = f"meshd:lease:streams:{CALLER}"
    first_chunk = threading.Event()

    def hold() -> None:
        try:
            for chunk in sdk(a.api).chat.completions.create(model=MODEL, messages=MSGS, stream=True):
                if chunk.choices:
                    first_chunk.set()
        except (openai.APIError, OSError):
            pass  # its process is killed under it

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert first_chunk.wait(30)
    assert r.zcard(pool) == 1
    score = r.zscore(pool, r.zrange(pool, 0, -1)[0])
    until(lambda: r.zscore(pool, r.zrange(pool, 0, -1)[0]) != score, ttl, "the lease renewed while its stream lives")

    def open_stream_on_b() -> int:
        try:
            stream = sdk(b.api).chat.completions.create(model=MODEL, messages=MSGS, stream=True)
        except openai.RateLimitError:
            return 429
        stream.close()  # the caller hangs up: b gives its lease back
        return 200

    assert open_stream_on_b() == 429  # one stream per caller across both processes
    a.daemon.proc.send_signal(signal.SIGKILL)
    a.daemon.proc.wait(10)
    killed = time.monotonic()
    attempts: list[int] = []

    def b_admits() -> bool:
        attempts.append(open_stream_on_b())
        return attempts[-1] == 200

    until(b_admits, ttl + 5, "b admitting a stream once the dead process's lease expired")
    freed_after = time.monotonic() - killed
    assert attempts[0] == 429  # the lease outlived its process...
    assert freed_after <= ttl + 1.0, freed_after  # ...until its TTL, not forever
    until(lambda: r.zcard(pool) == 0, 5, "b's lease given back when its caller hung up")
    holder.join(30)


def test_redis_hanging_or_dying_mid_load_follows_the_policy_and_is_picked_up_again(
    mesh: Mesh, clients: list[Client], redis_server: RedisServer
) -> None:
    url = redis_server.url
    # a: keys fail closed and limits fail open (the defaults); b: limits fail closed
    limits = ("--redis", url, "--rate-limit-rpm", "100000", "--metrics")
    a = start(clients, mesh, *limits, "--redis-keys", "--api-key", "sk-static")
    b = start(clients, mesh, *limits, "--redis-limits-fail", "closed")
    rkey = meshd_keys("add", "--redis", url)
    until(lambda: chat(a.api, rkey) == 200, 5, "the Redis key accepted")

    # -- a Redis that hangs (SIGSTOP): one timeout, then no waiting at all --------------------------------
    redis_server.pause()
    hung = [
        (name, http(c.api + "/v1/chat/completions", k, {"model": MODEL, "messages": MSGS[:1]}, timeout=10))
        for _ in range(4)
        for name, c, k in (("a", a, "sk-static"), ("b", b, None))
    ]
    assert max(t for _, (_, _, t) in hung) < 2.0  # bounded by --redis-timeout (0.25 s), never by Redis
    assert {s for n, (s, _, _) in hung if n == "a"} == {200}  # fail-open: this process's own limits
    assert {s for n, (s, _, _) in hung if n == "b"} == {503}  # fail-closed
    assert a.status()["redis"]["state"] == "down"
    redis_server.resume()
    until(lambda: a.status()["redis"]["state"] == "up" and b.status()["redis"]["state"] == "up", 5, "Redis up")
    assert chat(b.api) == 200

    # -- a Redis that dies (SIGKILL) under load ------------------------------------------------------------
    results: list[tuple[str, int, float, float]] = []  # (who, status, seconds, when)
    stop = threading.Event()
    targets = [("a-static", a.api, "sk-static"), ("a-redis-key", a.api, rkey), ("b", b.api, None)]

    def load(i: int) -> None:
        n = i
        while not stop.is_set():
            who, api, key = targets[n % len(targets)]
            n += 1
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            status, _, took = http(api + "/v1/chat/completions", key, body, timeout=10)
            results.append((who, status, took, time.monotonic()))

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(load, i) for i in range(3)]
        until(lambda: len(results) >= 30, 30, "load before the outage")
        redis_server.stop()
        stopped = time.monotonic()

        def outage_seen() -> bool:
            after = {(w, s) for w, s, _, t in results if t > stopped}
            return ("b", 503) in after and ("a-redis-key", 503) in after and ("a-static", 200) in after

        until(outage_seen, 15, "the fail-open and fail-closed answers during the outage")
        down_a, down_b = a.status()["redis"], b.status()["redis"]
        metrics_a, metrics_b = a.metrics(), b.metrics()
        ready_a, ready_b = http(a.api + "/ready"), http(b.api + "/ready")
        stop.set()
        for f in futures:
            f.result(30)

    assert max(took for _, _, took, _ in results) < 2.0  # no request waited on the dead Redis
    by = {w: {s for ww, s, _, _ in results if ww == w} for w, _, _ in targets}
    assert by["a-static"] == {200}  # keys from flags need no Redis; limits fell back to this process's
    assert by["a-redis-key"] <= {200, 503} and by["b"] <= {200, 503}  # never 401, never 500
    assert down_a["state"] == "down" and down_a["api_keys"]["fresh"] is False
    assert down_a["fallbacks"].get("rate:open", 0) > 0 and down_a["fallbacks"].get("keys:closed", 0) > 0
    assert down_b["fallbacks"].get("rate:closed", 0) > 0
    assert ready_a[0] == 503 and "key set in Redis" in json.loads(ready_a[1])["reason"]
    assert ready_b[0] == 503 and "limits fail closed" in json.loads(ready_b[1])["reason"]
    assert json.loads(ready_b[1])["redis"]["state"] == "down"
    assert (
        "meshd_redis_up 0.0" in metrics_a and 'meshd_redis_fallbacks_total{check="keys",policy="closed"}' in metrics_a
    )
    assert 'meshd_rejections_total{reason="redis_unavailable"}' in metrics_b
    assert any(r.get("event") == "redis_down" for r in a.daemon.records)
    assert any(r.get("event") == "redis_fallback" and r.get("policy") == "open" for r in a.daemon.records)

    # -- Redis started again (empty: it kept nothing on disk) ----------------------------------------------
    redis_server.start()
    until(lambda: http(b.api + "/ready")[0] == 200 and chat(b.api) == 200, 10, "b sharing limits again")
    assert b.status()["redis"]["state"] == "up"
    until(lambda: chat(a.api, rkey) == 401, 5, "a reading the (now empty) key set again")
    meshd_keys("add", "--key", rkey, "--redis", url)
    t0 = time.monotonic()
    until(lambda: chat(a.api, rkey) == 200, 5, "the key added again")
    assert time.monotonic() - t0 < 1.0
    assert http(a.api + "/ready")[0] == 200
    assert redis_server.client().exists(f"meshd:rate:key:{rkey_id(rkey)}") == 1  # shared buckets in use again


def rkey_id(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()[:8]
