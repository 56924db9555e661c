"""The gate's twisted.web adapter with shared limits (``--redis``): answers wait for Redis's Deferreds, follow
the policy when it does not answer, and give every lease back (StubTreq, a Clock, the recording fake link)."""

from __future__ import annotations

import io
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from meshd.metrics import Metrics
from meshd.shared.policy import Policy, SharedGate
from meshd.web.api import APIApp
from meshd.web.gate import Gate, GateResource
from tests.unit.test_gate_web import Reply, _result, call, make_node
from tests.unit.test_shared import FakeLink, down


def app_with(link: FakeLink, clock: Clock, metrics: bool = False, **kw: Any) -> APIApp:
    shared = SharedGate(link, clock, **kw)
    node = make_node(clock, metrics=metrics, **{k: v for k, v in kw.items() if k.startswith("rate_limit")})
    return APIApp(node, clock, gate=Gate.from_config(node.config, clock, shared=shared))


def test_without_redis_nothing_waits_and_the_gate_keeps_its_own_limiters() -> None:
    app = APIApp(make_node(rate_limit_rpm=5, rate_limit_streams=1))
    assert app.gate.shared is None and app.gate.requests is not None and app.gate.streams is not None
    assert "shared" in app.gate.status() and app.gate.status()["shared"] is False


def test_a_shared_rate_check_answers_when_redis_does() -> None:
    link, clock = FakeLink(), Clock()
    app = app_with(link, clock, rate_limit_rpm=2)
    assert app.gate.requests is None and app.gate.streams is None  # the shared gate holds them now
    pending: Deferred[Any] = Deferred()
    link.replies = [pending]
    stub = StubTreq(app.resource())
    answer = stub.get("http://x/v1/models")
    stub.flush()
    got: list[Any] = []
    answer.addBoth(got.append)
    assert got == []  # waiting for Redis
    pending.callback([1, b"1", 0, 0])  # the admit script: allowed, 1 token left, no slots asked
    stub.flush()
    r = Reply(got[0])
    assert r.code == 200 and r.header("x-ratelimit-remaining-requests") == "1"
    assert r.header("x-ratelimit-limit-requests") == "2" and r.header("x-ratelimit-reset-requests") == "30s"
    link.replies = [[0, b"0.25", 0, 0]]
    r = call(app.resource(), "/v1/models")
    assert r.code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert r.header("retry-after") == "23" and r.header("x-ratelimit-remaining-requests") == "0"  # (1 - 0.25) * 30 s
    assert app.gate.status()["rate_limit_rpm"] == 2


def test_fail_closed_limits_give_503_server_busy_and_are_counted() -> None:
    link, clock = FakeLink(), Clock()
    app = app_with(link, clock, metrics=True, rate_limit_rpm=2, limits_fail=Policy.CLOSED)
    link.replies = [down()]
    r = call(app.resource(), "/v1/models")
    assert r.code == 503 and r.json()["error"]["code"] == "server_busy" and r.header("retry-after") == "2"
    assert isinstance(app.metrics, Metrics)
    text = app.metrics.render().decode()
    assert 'meshd_rejections_total{reason="redis_unavailable"} 1.0' in text
    assert 'meshd_redis_fallbacks_total{check="rate",policy="closed"} 1.0' in text
    link.replies = [down()]  # fail-open: this process's bucket
    opened = app_with(link, clock, rate_limit_rpm=2)
    assert call(opened.resource(), "/v1/models").code == 200


def test_stream_leases_are_taken_and_given_back_when_the_response_ends() -> None:
    link, clock = FakeLink(), Clock()
    app = app_with(link, clock, rate_limit_streams=1, max_inflight_global=10)
    shared = app.gate.shared
    assert shared is not None and shared.leases is not None
    link.replies = [[1, b"", 1, 1], None, None]  # both slots in one call (no rate limit), then two releases
    body = {"model": "m", "stream": True, "messages": []}
    r = call(app.resource(), "/v1/chat/completions", "POST", body=body)
    assert r.code == 404 and r.json()["error"]["code"] == "model_not_found"  # an empty mesh: answered by the app
    assert len(link.ops) == 3 and shared.leases.held == {} and link.replies == []
    link.replies = [[1, b"", -1, 0]]
    r = call(app.resource(), "/v1/chat/completions", "POST", body=body)
    assert r.code == 429 and "concurrent streams: limit 1" in r.json()["error"]["message"]
    link.replies = [[1, b"", 0, -1]]  # the cluster-wide cap is full (the script gave the stream slot back)
    r = call(app.resource(), "/v1/chat/completions", "POST", body=body)
    assert r.code == 503 and "10 requests in flight across the cluster" in r.json()["error"]["message"]
    assert shared.leases.held == {} and link.replies == []
    link.replies = [down()]  # fail-open: this process's stream slot, no cluster-wide cap, given back at the end
    r = call(app.resource(), "/v1/chat/completions", "POST", body=body)
    assert r.code == 404 and shared.local_streams is not None and shared.local_streams.active("ip:127.0.0.1") == 0
    assert shared.fallbacks[("streams", "open")] == 1 and shared.fallbacks[("inflight_global", "open")] == 1


def test_a_caller_gone_while_redis_answers_leaves_no_lease_behind() -> None:
    link, clock = FakeLink(), Clock()
    app = app_with(link, clock, rate_limit_streams=1)
    shared = app.gate.shared
    assert shared is not None and shared.leases is not None
    pending: Deferred[Any] = Deferred()
    link.replies = [pending, None]
    request = DummyRequest([b"v1", b"chat", b"completions"])
    request.method = b"POST"
    request.path = b"/v1/chat/completions"
    request.uri = request.path
    request.content = io.BytesIO(b'{"model": "m", "stream": true}')  # type: ignore[attr-defined]
    request.requestHeaders.setRawHeaders(b"content-type", [b"application/json"])
    resource: GateResource = app.resource()
    assert resource.render(request) is NOT_DONE_YET
    request.processingFailed(Failure(ConnectionDone()))  # the caller hangs up
    pending.callback([1, b"", 1, 0])  # Redis gives the lease after all...
    assert shared.leases.held == {} and len(link.ops) == 2  # ...and it goes straight back
    assert request.written == []


def test_redis_keys_401_through_the_shared_bucket_and_503_when_the_set_cannot_be_read() -> None:
    link, clock = FakeLink(), Clock()
    clock.advance(100)
    app = app_with(link, clock, rate_limit_rpm=5, keys=True)
    assert app.gate.keys_required and "key set in Redis" in app.gate.describe_keys()
    r = call(app.resource(), "/v1/models", headers={"authorization": "Bearer sk-who"})
    assert r.code == 503 and r.json()["error"]["code"] == "server_busy"  # never read: fail-closed
    link.replies = [[1, b"4"]]  # no key at all needs no key set, but spends the address's bucket
    assert call(app.resource(), "/v1/models").code == 401
    shared = app.gate.shared
    assert shared is not None and shared.keys is not None
    link.replies = [[b"v1", []]]
    _result(shared.keys.sync())
    link.replies = [[1, b"3"]]  # a wrong key spends the address's bucket, then 401
    r = call(app.resource(), "/v1/models", headers={"authorization": "Bearer sk-who"})
    assert r.code == 401 and r.header("x-ratelimit-remaining-requests") == "3"
    link.replies = [[0, b"0.5"]]
    r = call(app.resource(), "/v1/models", headers={"authorization": "Bearer sk-who"})
    assert r.code == 429
    assert app.gate.status()["api_keys"] == 0
