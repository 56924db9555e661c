"""The gate's sans-IO cores: keys, token buckets, stream and in-flight limits, CORS, readiness, options."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from meshd.apirequest import inspect_body
from meshd.concurrency import Admission, ConcurrencyLimiter
from meshd.tap import Options
from meshd.web.gate import (
    APIKeys,
    CORSPolicy,
    RequestRateLimiter,
    StreamLimiter,
    bearer_token,
    client_ip,
    format_duration,
    key_id,
    parse_keys,
    readiness,
    route_label,
)

# -- keys ---------------------------------------------------------------------------------------


def test_key_id_is_first_8_hex_of_sha256() -> None:
    assert key_id("sk-one") == hashlib.sha256(b"sk-one").hexdigest()[:8]
    assert len(key_id("x")) == 8


def test_parse_keys_skips_comments_and_blank_lines_and_reports_bad_lines() -> None:
    keys, bad = parse_keys("# team keys\nsk-a\n\n   sk-b  \nnot a key\n#sk-c\n")
    assert keys == ["sk-a", "sk-b"]
    assert bad == [5]


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (b"Bearer sk-a", "sk-a"),
        (b"bearer   sk-a ", "sk-a"),
        (b"Basic abc", None),
        (b"Bearer", None),
        (b"", None),
        (None, None),
    ],
)
def test_bearer_token(header: bytes | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_keys_accept_reject_and_open_when_none() -> None:
    open_keys = APIKeys()
    assert not open_keys.required
    keys = APIKeys(["sk-a", "sk-b"])
    assert keys.required and keys.count == 2
    assert keys.check("sk-a") == key_id("sk-a")
    assert keys.check("sk-b") == key_id("sk-b")
    assert keys.check("sk-c") is None
    assert keys.check("") is None
    assert keys.check(None) is None
    assert keys.check("sk-a ") is None


def test_keys_file_reload_adds_and_removes(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text("sk-old\n")
    keys = APIKeys(["sk-flag"], f)
    assert keys.check("sk-old") and keys.check("sk-flag")
    f.write_text("# rotated\nsk-new\n")
    assert keys.check("sk-new") is None  # not before the reload
    assert keys.reload()
    assert keys.check("sk-new") == key_id("sk-new")
    assert keys.check("sk-old") is None
    assert keys.check("sk-flag") == key_id("sk-flag")  # flag keys stay


def test_keys_file_unreadable_on_reload_keeps_the_old_keys(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text("sk-a\n")
    keys = APIKeys((), f)
    f.unlink()
    assert not keys.reload()
    assert keys.check("sk-a") == key_id("sk-a")


def test_empty_keys_file_keeps_the_api_closed(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text("# nobody yet\n")
    keys = APIKeys((), f)
    assert keys.required and keys.count == 0
    assert keys.check("anything") is None


# -- rate limits --------------------------------------------------------------------------------


def test_token_bucket_allows_rpm_then_refills() -> None:
    rl = RequestRateLimiter(3)
    got = [rl.check("k", 100.0) for _ in range(4)]
    assert [d.allowed for d in got] == [True, True, True, False]
    assert [d.remaining for d in got] == [2, 1, 0, 0]
    assert got[0].limit == 3
    assert got[3].retry_after == 20  # one token per 20 s at 3 rpm
    assert rl.check("other", 100.0).allowed  # per caller
    assert not rl.check("k", 119.0).allowed
    later = rl.check("k", 120.0)
    assert later.allowed and later.remaining == 0
    assert rl.check("k", 300.0).remaining == 2  # full again (3), minus this one


def test_bucket_reset_is_time_to_full() -> None:
    rl = RequestRateLimiter(60)
    d = rl.check("k", 0.0)
    assert d.reset_secs == pytest.approx(1.0)
    assert d.headers() == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
    }


@pytest.mark.parametrize(
    ("secs", "text"), [(0, "0s"), (0.12, "120ms"), (1, "1s"), (1.5, "1.5s"), (60, "1m0s"), (372, "6m12s")]
)
def test_format_duration_like_openai(secs: float, text: str) -> None:
    assert format_duration(secs) == text


def test_caller_table_is_bounded() -> None:
    rl = RequestRateLimiter(10, max_callers=3)
    for i in range(10):
        rl.check(f"c{i}", 0.0)
    assert len(rl) == 3


def test_stream_limiter_per_caller() -> None:
    sl = StreamLimiter(2)
    assert sl.acquire("a") and sl.acquire("a")
    assert not sl.acquire("a")
    assert sl.acquire("b")
    sl.release("a")
    assert sl.acquire("a")
    for _ in range(5):
        sl.release("a")
    assert sl.active("a") == 0


# -- in-flight cap ------------------------------------------------------------------------------


def test_concurrency_hard_cap_without_queue() -> None:
    c = ConcurrencyLimiter(2, queue_timeout=0)
    assert [c.admit(i, 0.0)[0] for i in range(4)] == [
        Admission.ADMIT,
        Admission.ADMIT,
        Admission.REJECT,
        Admission.REJECT,
    ]
    assert c.release() is None
    assert c.inflight == 1
    assert c.admit(9, 0.0)[0] is Admission.ADMIT


def test_concurrency_queue_hands_slots_over_in_order_and_expires() -> None:
    c = ConcurrencyLimiter(1, queue_timeout=2.0, max_queue=2)
    assert c.admit(1, 0.0)[0] is Admission.ADMIT
    assert c.admit(2, 0.0) == (Admission.QUEUED, 2.0)
    assert c.admit(3, 1.0) == (Admission.QUEUED, 3.0)
    assert c.admit(4, 1.0)[0] is Admission.REJECT  # queue full
    assert c.release() == 2  # slot handed to the oldest waiter
    assert c.inflight == 1 and c.queued == 1
    assert c.expired(2.5) == []
    assert c.expired(3.0) == [3]
    assert c.release() is None
    assert c.inflight == 0


def test_concurrency_withdraw_and_unlimited() -> None:
    c = ConcurrencyLimiter(1, queue_timeout=5.0)
    c.admit(1, 0.0)
    c.admit(2, 0.0)
    assert c.withdraw(2) and not c.withdraw(2)
    assert c.release() is None
    unlimited = ConcurrencyLimiter(0, queue_timeout=0)
    assert all(unlimited.admit(i, 0.0)[0] is Admission.ADMIT for i in range(100))


# -- CORS, readiness, callers ---------------------------------------------------------------------


def test_cors_any_origin() -> None:
    cors = CORSPolicy(["*"])
    h = cors.headers(b"http://a.example")
    assert h[b"access-control-allow-origin"] == b"*"
    assert b"x-ratelimit-remaining-requests" in h[b"access-control-expose-headers"]
    pre = cors.preflight(b"http://a.example", b"POST", b"Authorization, Content-Type")
    assert pre[b"access-control-allow-headers"] == b"authorization, content-type"
    assert b"POST" in pre[b"access-control-allow-methods"]


def test_cors_listed_origins_only() -> None:
    cors = CORSPolicy(["http://ok.example:8080"])
    assert cors.headers(b"http://ok.example:8080")[b"access-control-allow-origin"] == b"http://ok.example:8080"
    assert cors.headers(b"http://ok.example:8080")[b"vary"] == b"Origin"
    assert cors.headers(b"http://evil.example") == {}
    assert cors.headers(None) == {}
    assert cors.preflight(b"http://evil.example", b"POST", None) == {}
    bad = cors.preflight(b"http://ok.example:8080", b"POST", b"x\r\ninjected: 1")
    assert bad[b"access-control-allow-headers"] == b"authorization, content-type, x-request-id"


def test_readiness() -> None:
    assert readiness("joined", ["b", "a"]) == (200, {"status": "ready", "node_state": "joined", "models": ["a", "b"]})
    code, body = readiness("joined", [])
    assert code == 503 and body["status"] == "not_ready" and "no routable model" in body["reason"]
    code, body = readiness("joining", ["a"])
    assert code == 503 and body["reason"] == "node state is joining"


def test_readiness_of_a_host_serving_its_own_models() -> None:
    code, body = readiness("standalone", [], own_models=["mine"])
    assert code == 200 and body["models"] == ["mine"]
    code, body = readiness("standalone", [], own_models=[])
    assert code == 503


def test_readiness_names_a_hosts_dead_backend_as_the_reason() -> None:
    problem = "backend http://127.0.0.1:1 is down: connection refused"
    assert readiness("standalone", [], (), problem) == (
        503,
        {"status": "not_ready", "reason": problem, "node_state": "standalone"},
    )
    # other hosts in the mesh still serve: a host whose backend is down can route to them
    assert readiness("joined", ["a"], (), problem)[0] == 200


def test_client_ip_trusts_proxy_headers_only_when_told() -> None:
    assert client_ip("10.0.0.1", b"1.2.3.4", b"5.6.7.8", trust_proxy=False) == "10.0.0.1"
    assert client_ip("10.0.0.1", b"1.2.3.4", b"5.6.7.8", trust_proxy=True) == "1.2.3.4"
    assert client_ip("10.0.0.1", None, b"5.6.7.8, 10.0.0.9", trust_proxy=True) == "5.6.7.8"
    assert client_ip("10.0.0.1", b"junk", b"also junk", trust_proxy=True) == "10.0.0.1"


def test_route_labels_are_bounded_and_body_inspection() -> None:
    assert route_label("/v1/chat/completions") == "/v1/chat/completions"
    assert route_label("/models") == "/v1/models"
    assert route_label("/v1/anything/else") == "other"
    assert inspect_body(b'{"model": "m", "stream": true}') == ("m", True)
    assert inspect_body(b'{"model": 3, "stream": "yes"}') == (None, False)
    assert inspect_body(b"[1]") == (None, False)
    assert inspect_body(b"{bad") == (None, False)


# -- options --------------------------------------------------------------------------------------


def _config(*args: str) -> object:
    opts = Options()
    opts.parseOptions(list(args))
    return opts.config


def test_gate_options_defaults_and_values(tmp_path: Path) -> None:
    c = _config()
    assert (c.max_inflight, c.queue_timeout, c.rate_limit_rpm, c.rate_limit_streams) == (0, 30.0, 0, 0)  # type: ignore[attr-defined]
    assert c.max_queue is None and c.backend_max_inflight is None and c.backend_queue_timeout == 30.0  # type: ignore[attr-defined]
    assert c.cors_origins == ("*",) and not c.metrics and not c.trust_proxy  # type: ignore[attr-defined]
    f = tmp_path / "keys"
    f.write_text("sk-file\n")
    c = _config(
        "--max-inflight", "5", "--queue-timeout", "0", "--rate-limit-rpm", "60", "--rate-limit-streams", "2",
        "--trust-proxy", "--api-key", "sk-a", "--api-key", "sk-b", "--api-keys-file", str(f), "--metrics",
        "--cors-origin", "http://a.example", "--cors-origin", "https://b.example:8443", "--max-queue", "100",
    )  # fmt: skip
    assert c.max_inflight == 5 and c.queue_timeout == 0.0 and c.max_queue == 100  # type: ignore[attr-defined]
    assert c.rate_limit_rpm == 60 and c.rate_limit_streams == 2  # type: ignore[attr-defined]
    assert c.trust_proxy and c.metrics  # type: ignore[attr-defined]
    assert c.api_keys == ("sk-a", "sk-b") and c.api_keys_file == f  # type: ignore[attr-defined]
    assert c.cors_origins == ("http://a.example", "https://b.example:8443")  # type: ignore[attr-defined]
    assert "sk-a" not in repr(c)


@pytest.mark.parametrize(
    "args",
    [
        ["--max-inflight", "-1"],
        ["--max-inflight", "many"],
        ["--queue-timeout", "soon"],
        ["--queue-timeout", "-1"],
        ["--rate-limit-rpm", "1.5"],
        ["--api-key", ""],
        ["--api-key", "two words"],
        ["--api-keys-file", "/nonexistent/keys"],
        ["--cors-origin", "a.example"],
        ["--cors-origin", "http://a.example/path"],
    ],
)
def test_bad_gate_options_exit_2(args: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        _config(*args)
    assert e.value.code == 2


def test_concurrency_waiter_timeouts_and_raised_limit() -> None:
    c = ConcurrencyLimiter(1, queue_timeout=30.0)
    assert c.admit(1, 0.0)[0] is Admission.ADMIT
    assert c.admit(2, 0.0, timeout=0)[0] is Admission.REJECT  # "answer busy at once" waiters never queue
    assert c.admit(3, 0.0, timeout=5.0) == (Admission.QUEUED, 5.0)
    assert c.admit(4, 0.0, timeout=99.0) == (Admission.QUEUED, 30.0)  # capped by the limiter's own wait
    assert c.set_limit(2) == [3]  # a raised cap hands slots to the oldest waiters at once
    assert c.inflight == 2 and c.queued == 1
    assert c.set_limit(1) == []  # lowering never takes a slot back...
    assert c.release() is None  # ...but a freed slot is not handed on while over the new cap
    assert c.release() == 4 and c.inflight == 1
