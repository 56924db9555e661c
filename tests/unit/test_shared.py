"""meshd.shared without Redis: URL checks, the parsing of Redis answers (property tests), the link's health,
the fail-open/fail-closed policy (a recording fake link and a Clock), and the flags.

The same code against a real redis-server: tests/integration/test_redis_shared.py and test_redis_cluster.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from meshd.shared import scripts
from meshd.shared.keys import UNAVAILABLE, SharedKeys
from meshd.shared.limits import rate_decision
from meshd.shared.link import PROBE_DOWN, PROBE_UP, Health, SharedUnavailable, classify
from meshd.shared.policy import Admission, Lease, Policy, SharedGate
from meshd.tap import Options
from meshd.web.gate import RateDecision, RequestRateLimiter

# -- URLs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://localhost",
        "rediss://default:s3cret@fly-meshd.upstash.io:6379",
        "redis://:pw@[::1]:7000/2",
        "rediss://user:pw@host:6380/0?ssl_cert_reqs=required",
    ],
)
def test_good_redis_urls(url: str) -> None:
    assert scripts.check_url(url) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:6379", "scheme"),
        ("127.0.0.1:6379", "scheme"),
        ("redis://", "host"),
        ("redis://h:99999", "URL"),
        ("redis://h:0", "port"),
        ("redis://h/abc", "database"),
        ("redis://h/0#x", "fragment"),
        ("unix:///tmp/redis.sock", "scheme"),
    ],
)
def test_bad_redis_urls_say_why_without_the_url(url: str, why: str) -> None:
    with pytest.raises(scripts.BadRedisURL) as e:
        scripts.check_url(url)
    assert why in str(e.value)


def test_redacted_urls_keep_what_helps_and_hide_the_password() -> None:
    assert scripts.redact_url("rediss://default:s3cret@h.upstash.io:6379") == "rediss://default:***@h.upstash.io:6379"
    assert scripts.redact_url("redis://:pw@[::1]:7000/2") == "redis://:***@[::1]:7000/2"
    assert scripts.redact_url("redis://h:1/0?password=x") == "redis://h:1/0?***"
    assert scripts.redact_url("redis://h") == "redis://h"


passwords = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="@/?#[]:%"), min_size=4
)


@given(user=st.sampled_from(["", "default", "meshd"]), password=passwords, port=st.integers(1, 65535))
def test_no_redacted_url_holds_its_password(user: str, password: str, port: int) -> None:
    url = f"rediss://{user}:{password}@redis.internal:{port}/0"
    assert scripts.check_url(url) == url
    assert scripts.redact_url(url) == f"rediss://{user}:***@redis.internal:{port}/0"


@given(st.text(max_size=300))
def test_any_text_as_a_url_is_checked_or_refused_never_crashes(text: str) -> None:
    try:
        scripts.check_url(text)
    except scripts.BadRedisURL:
        pass
    scripts.redact_url(text)


def test_namespace_names_and_bounds() -> None:
    ns = scripts.Namespace("prod-eu")
    assert ns.rate("ip:1.2.3.4") == "prod-eu:rate:ip:1.2.3.4"
    assert ns.streams("key:abcd1234") == "prod-eu:lease:streams:key:abcd1234"
    assert ns.inflight() == "prod-eu:lease:inflight"
    assert (ns.keys(), ns.keys_version()) == ("prod-eu:keys", "prod-eu:keys:version")
    assert ns.response("resp_1") == "prod-eu:resp:resp_1"
    for bad in ("", "a b", "x" * 65, "a:b"):
        with pytest.raises(ValueError):
            scripts.Namespace(bad)
    with pytest.raises(ValueError):
        ns.rate("ip:" + "1" * 200)
    with pytest.raises(ValueError):
        ns.response("../x")


# -- what Redis answers ----------------------------------------------------------------------------

# Anything a RESP reply can decode to: integers, bytes, nil, and (nested) arrays.
resp_values = st.recursive(
    st.none() | st.integers(-(2**63), 2**63 - 1) | st.binary(max_size=80) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=8),
    max_leaves=40,
)


@settings(max_examples=300)
@given(resp_values)
def test_any_reply_is_parsed_or_refused_with_value_error(reply: Any) -> None:
    parsers = (scripts.parse_rate_reply, scripts.parse_lease_reply, scripts.parse_keys_reply, scripts.parse_admit_reply)
    for parse in parsers:
        try:
            parse(reply)
        except ValueError:
            pass


digests = st.binary(min_size=1, max_size=16).map(lambda b: hashlib.sha256(b).hexdigest().encode())
metas = st.one_of(
    st.binary(max_size=50),
    st.builds(
        lambda label, created: json.dumps({"id": "x", "label": label, "created": created}).encode(),
        st.text(max_size=300),
        st.one_of(st.floats(allow_nan=True), st.integers(), st.none(), st.text(max_size=5)),
    ),
)
fields = st.one_of(digests, st.binary(max_size=70), st.integers())


@settings(max_examples=200)
@given(st.lists(st.tuples(fields, metas), max_size=30), st.integers(1, 40))
def test_key_sets_keep_only_well_formed_entries_within_the_bound(pairs: list[tuple[Any, Any]], limit: int) -> None:
    reply = [b"v1", [x for pair in pairs for x in pair]]
    try:
        got = scripts.parse_keys_reply(reply, max_keys=limit)
    except ValueError:
        assert len(pairs) > limit
        return
    assert got.version == "v1" and got.entries is not None
    good = [f for f, _ in pairs if isinstance(f, bytes) and len(f) == 64 and all(c in b"0123456789abcdef" for c in f)]
    assert set(got.entries) == {f.decode() for f in good}  # every well-formed digest, once
    assert got.bad == len(pairs) - len(good)  # everything else counted as malformed, never as a key
    for d, entry in got.entries.items():
        assert len(d) == 64 and int(d, 16) >= 0 and entry.key_id == d[:8]
        assert len(entry.label) <= scripts.MAX_LABEL and entry.label.isprintable()
        assert entry.created is None or entry.created == entry.created  # never NaN


def test_key_set_reply_shapes() -> None:
    assert scripts.parse_keys_reply([b"v"]).entries is None
    assert scripts.parse_keys_reply([b"v", 200_001]).too_many == 200_001
    d = hashlib.sha256(b"k").hexdigest()
    got = scripts.parse_keys_reply([b"v", [d.encode(), scripts.entry_json(d[:8], "ops", 5.0).encode()]])
    assert got.entries == {d: scripts.KeyEntry(d, d[:8], "ops", 5.0)}
    for bad in ([], [b"v", [b"odd"]], [b"\xff\xfe"], [b"v", b"x", b"y"], "v"):
        with pytest.raises(ValueError):
            scripts.parse_keys_reply(bad)


def test_rate_reply_becomes_the_in_process_decision() -> None:
    local = RequestRateLimiter(3)
    for now in (0.0, 0.0, 0.0, 0.0, 10.0, 30.0):
        want = local.check("c", now)
        tokens = local._buckets["c"].tokens
        allowed, parsed = scripts.parse_rate_reply([1 if want.allowed else 0, repr(tokens).encode()])
        assert rate_decision(allowed, parsed, 3) == want
    with pytest.raises(ValueError):
        scripts.parse_rate_reply([1, b"nan"])


# -- the link's health -------------------------------------------------------------------------------


def test_health_goes_down_on_timeouts_and_connection_errors_not_on_refused_commands() -> None:
    h = Health(since=0.0)
    assert h.usable and h.state == "connecting" and h.probe_delay() == PROBE_DOWN
    assert h.succeeded(1.0, 0.0004)
    assert h.state == "up" and h.probe_delay() == PROBE_UP and not h.succeeded(2.0, 0.003)
    assert not h.failed(3.0, "response", "NOSCRIPT")
    assert h.state == "up" and h.errors["response"] == 1
    assert h.failed(4.0, "timeout", "no answer in time")
    assert (h.state, h.since, h.usable, h.probe_delay()) == ("down", 4.0, False, PROBE_DOWN)
    assert not h.failed(5.0, "connection", "refused")  # already down
    assert h.succeeded(6.0, 0.5) and h.since == 6.0
    assert h.calls == 6 and h.latency[0] == 1 and h.latency[3] == 1 and h.latency[9] == 1


def test_classify_tells_redis_failures_from_bugs() -> None:
    from redis import exceptions as rexc
    from twisted.internet.defer import TimeoutError as TxTimeout

    assert classify(TxTimeout())[0] == "timeout"  # type: ignore[index]
    assert classify(rexc.TimeoutError("slow"))[0] == "timeout"  # type: ignore[index]
    assert classify(rexc.ConnectionError("refused"))[0] == "connection"  # type: ignore[index]
    assert classify(ConnectionRefusedError())[0] == "connection"  # type: ignore[index]
    assert classify(rexc.ResponseError("OOM"))[0] == "response"  # type: ignore[index]
    assert classify(TypeError("a bug")) is None


# -- the policy, over a recording fake link ------------------------------------------------------------


class FakeLink(Service):
    """Provides what SharedGate uses of RedisLink; ``run`` answers with the next scripted reply."""

    def __init__(self) -> None:
        self.ns = scripts.Namespace()
        self.health = Health(since=0.0)
        self.on_up: list[Callable[[], None]] = []
        self.replies: list[Any] = []
        self.ops: list[Any] = []

    def run(self, op: Any) -> Deferred[Any]:
        self.ops.append(op)
        reply = self.replies.pop(0)
        if isinstance(reply, Deferred):
            return reply
        if isinstance(reply, Exception):
            return fail(reply)
        return succeed(reply)

    def status(self) -> dict[str, Any]:
        return {"state": self.health.state, "since": 0.0, "last_error": self.health.last_error}


class Events:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if str(event.get("event", "")).startswith("redis"):
            self.seen.append(event["event"])


@pytest.fixture
def events() -> Any:
    e = Events()
    globalLogPublisher.addObserver(e)
    yield e
    globalLogPublisher.removeObserver(e)


def result(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def down() -> SharedUnavailable:
    return SharedUnavailable("Redis is down (refused)")


def test_fail_open_limits_use_this_process_then_share_again(events: Events) -> None:
    link, clock = FakeLink(), Clock()
    gate = SharedGate(link, clock, rate_limit_rpm=2, rate_limit_streams=1)
    link.replies = [[1, b"1"], down(), down(), down()]
    assert result(gate.check_rate("ip:a")) == RateDecision(True, 2, 1, 30.0, 0)
    # Redis away: this process's own bucket (fresh: 2 tokens), counted, logged once
    assert [result(gate.check_rate("ip:a")).allowed for _ in range(3)] == [True, True, False]
    assert gate.fallbacks[("rate", "open")] == 3
    assert events.seen == ["redis_fallback"]
    link.replies = [down(), down()]
    lease = result(gate.acquire_stream("ip:a"))
    assert lease == Lease("local", caller="ip:a")
    assert result(gate.acquire_stream("ip:a")) is None  # one local stream slot
    gate.release(lease)
    assert gate.local_streams is not None and gate.local_streams.active("ip:a") == 0
    for cb in link.on_up:
        cb()
    assert events.seen == ["redis_fallback", "redis_recovered"]
    link.replies = [[1, 1]]
    got = result(gate.acquire_stream("ip:b"))
    assert got is not None and got.kind == "redis" and got.pool == "meshd:lease:streams:ip:b"
    assert gate.ready_problem() is None


def test_fail_closed_limits_answer_unavailable_and_make_the_node_unready() -> None:
    link, clock = FakeLink(), Clock()
    gate = SharedGate(link, clock, rate_limit_rpm=5, max_inflight_global=3, limits_fail=Policy.CLOSED)
    link.replies = [down(), down()]
    assert result(gate.check_rate("ip:a")) is UNAVAILABLE
    assert result(gate.acquire_global()) is UNAVAILABLE
    assert gate.fallbacks[("rate", "closed")] == 1 and gate.fallbacks[("inflight_global", "closed")] == 1
    link.health.failed(1.0, "connection", "refused")
    assert gate.ready_problem() == "Redis is down and limits fail closed (refused)"
    assert gate.status()["fallbacks"] == {"rate:closed": 1, "inflight_global:closed": 1}


def test_one_admit_call_and_its_fallbacks() -> None:
    link, clock = FakeLink(), Clock()
    gate = SharedGate(link, clock, rate_limit_rpm=2, rate_limit_streams=1, max_inflight_global=5)
    assert gate.leases is not None
    link.replies = [[1, b"1", 1, 1]]
    got = result(gate.admit("ip:a", stream=True, inflight=True))
    assert got.rate == RateDecision(True, 2, 1, 30.0, 0)
    assert [lease.pool for lease in got.leases()] == ["meshd:lease:streams:ip:a", "meshd:lease:inflight"]
    assert len(gate.leases) == 2  # renewed from now on
    link.replies = [[0, b"0.5", 0, 0]]
    refused = result(gate.admit("ip:a", stream=True, inflight=True))
    assert refused.rate is not None and not refused.rate.allowed and refused.leases() == []  # type: ignore[union-attr]
    link.replies = [down(), down()]
    opened = [result(gate.admit("ip:b", stream=True, inflight=True)) for _ in range(2)]
    assert opened[0].stream == Lease("local", caller="ip:b") and opened[0].inflight == Lease("none")
    assert opened[1].stream is None  # this process's one stream slot is taken
    closed = SharedGate(FakeLink(), clock, rate_limit_streams=1, limits_fail=Policy.CLOSED)
    closed.link.replies = [down()]  # type: ignore[attr-defined]
    got = result(closed.admit("ip:c", stream=True, inflight=True))
    assert got == Admission(None, UNAVAILABLE, Lease("none"))
    assert result(SharedGate(FakeLink(), clock).admit("ip:d", stream=True, inflight=True)) == Admission(None)


def test_without_a_global_cap_no_lease_is_taken_and_open_fallback_takes_none() -> None:
    link = FakeLink()
    assert result(SharedGate(link, Clock()).acquire_global()) == Lease("none")
    assert link.ops == []
    gate = SharedGate(FakeLink(), Clock(), max_inflight_global=2)
    gate.link.replies = [down()]  # type: ignore[attr-defined]
    assert result(gate.acquire_global()) == Lease("none")  # fail-open: each machine's own cap only


def test_a_bug_is_not_taken_for_redis_being_down() -> None:
    link = FakeLink()
    gate = SharedGate(link, Clock(), rate_limit_rpm=5)
    link.replies = [[7, b"x"]]  # not a rate answer: counted as Redis refusing, so the policy decides
    assert result(gate.check_rate("ip:a")).allowed
    link.replies = [TypeError("bug")]
    with pytest.raises(TypeError):
        result(gate.check_rate("ip:a"))


def test_redis_keys_fail_closed_until_read_and_when_stale() -> None:
    link, clock = FakeLink(), Clock()
    clock.advance(1000)
    gate = SharedGate(link, clock, keys=True, keys_max_age=2.0)
    assert gate.keys is not None
    assert gate.check_key("sk-x") is UNAVAILABLE
    assert gate.fallbacks[("keys", "closed")] == 1
    assert "cannot be read" in (gate.ready_problem() or "")
    d = hashlib.sha256(b"sk-x").hexdigest()
    link.replies = [[b"v1", [d.encode(), b"{}"]]]
    result(gate.keys.sync())
    assert gate.check_key("sk-x") == d[:8] and gate.check_key("sk-y") is None and gate.ready_problem() is None
    assert clock.getDelayedCalls() == []  # not started: no poll scheduled
    clock.advance(2.5)
    assert gate.check_key("sk-x") is UNAVAILABLE
    opened = SharedGate(FakeLink(), clock, keys=True, keys_fail=Policy.OPEN)
    assert opened.check_key("sk-x") is None  # never read: nothing is accepted
    assert opened.fallbacks[("keys", "open")] == 1 and opened.ready_problem() is None


def test_the_key_poll_runs_every_half_second_and_survives_failures(events: Events, logged_errors: Any) -> None:
    link, clock = FakeLink(), Clock()
    keys = SharedKeys(link, clock)
    link.replies = [[b"v1", []], down(), [b"v1"], [b"v2", 5]]
    keys.start()
    clock.advance(0)
    assert keys.version == "v1" and keys.count == 0
    clock.advance(0.5)  # down: nothing changes
    clock.advance(0.5)  # unchanged
    assert keys.syncs == 2
    clock.advance(0.5)  # too many keys: refused, the last set stays
    assert keys.version == "v1" and "redis_keys_too_many" in events.seen
    assert len(logged_errors.flush(lambda e: e.get("event") == "redis_keys_too_many")) == 1
    keys.stop()
    assert clock.getDelayedCalls() == []


# -- flags ------------------------------------------------------------------------------------------


def options(*args: str) -> Any:
    o = Options()
    o.parseOptions(list(args))
    return o.config


def test_redis_flags_and_their_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHD_REDIS_URL", raising=False)
    c = options()
    assert c.redis_url is None and c.max_inflight_global == 0
    c = options("--redis", "rediss://u:pw@h:6380/1", "--redis-keys", "--max-inflight-global", "20")
    assert c.redis_url == "rediss://u:pw@h:6380/1" and c.redis_keys and c.max_inflight_global == 20
    assert (c.redis_limits_fail, c.redis_keys_fail, c.redis_timeout, c.redis_lease_ttl) == ("open", "closed", 0.25, 30)
    assert "pw" not in repr(c)
    monkeypatch.setenv("MESHD_REDIS_URL", "redis://from-env:6379")
    c = options("--redis-limits-fail", "closed", "--redis-keys-fail", "open", "--redis-prefix", "eu.1")
    assert (c.redis_url, c.redis_limits_fail, c.redis_keys_fail, c.redis_prefix) == (
        "redis://from-env:6379",
        "closed",
        "open",
        "eu.1",
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--redis-keys"], "--redis-keys needs --redis"),
        (["--max-inflight-global", "5"], "--max-inflight-global needs --redis"),
        (["--redis", "http://h:6379"], "--redis: the scheme must be"),
        (["--redis", "redis://:hunter2@h:0"], "--redis: the port must be"),
        (["--redis", "redis://h", "--redis-limits-fail", "maybe"], "open or closed"),
        (["--redis", "redis://h", "--redis-timeout", "0"], "--redis-timeout must be more than 0"),
        (["--redis", "redis://h", "--redis-lease-ttl", "x"], "--redis-lease-ttl must be a number"),
        (["--redis", "redis://h", "--redis-prefix", "a b"], "--redis-prefix must be"),
    ],
)
def test_bad_redis_flags_stop_meshd_with_a_reason(
    args: list[str], fragment: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MESHD_REDIS_URL", raising=False)
    with pytest.raises(SystemExit) as e:
        options(*args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and "hunter2" not in err


# -- deployment ---------------------------------------------------------------------------------------


def test_the_compose_file_runs_two_api_processes_on_one_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    import shlex
    from pathlib import Path

    import yaml

    compose = yaml.safe_load((Path(__file__).resolve().parents[2] / "fly" / "api" / "compose.yaml").read_text())
    services = compose["services"]
    apis = [s for name, s in services.items() if name.startswith("api")]
    assert len(apis) == 2 and "redis" in services
    assert sorted(s["ports"][0] for s in apis) == ["127.0.0.1:9337:9337", "127.0.0.1:9338:9337"]
    redis_cmd = services["redis"]["command"]
    password = redis_cmd[redis_cmd.index("--requirepass") + 1]
    for s in apis:
        env = s["environment"]
        assert env["APP_MODE"] == "api" and s["build"]["args"]["CMD"] == "api"
        assert env["MESHD_REDIS_URL"] == f"redis://:{password}@redis:6379/0"
        assert scripts.check_url(env["MESHD_REDIS_URL"])
        # what the entrypoint hands meshd parses (the URL comes from the environment)
        monkeypatch.setenv("MESHD_REDIS_URL", env["MESHD_REDIS_URL"])
        config = options(*shlex.split(env["MESH_API_LIMITS"]), *shlex.split(env["MESH_ARGS"]))
        assert config.redis_keys and config.max_inflight_global == 8 and config.redis_url == env["MESHD_REDIS_URL"]
