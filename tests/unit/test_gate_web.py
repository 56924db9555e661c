"""The gate's twisted.web adapter without sockets (StubTreq, a Clock)."""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from meshd.config import Config, Role
from meshd.identity import Identity
from meshd.metrics import Metrics
from meshd.node import Node, NodeState
from meshd.protocol.peers import Role as PeerRole
from meshd.protocol.peers import build_self_announcement, peer_info_from_announcement
from meshd.protocol.token import EndpointAddr
from meshd.status import StatusView
from meshd.web.api import APIApp
from meshd.web.console import ConsoleApp
from meshd.web.gate import APIKeys, Gate, GateResource, key_id
from meshd.web.http import LimitedSite


def make_node(clock: Clock | None = None, **kw: Any) -> Node:
    cfg = Config(role=kw.pop("role", Role.CLIENT), **kw)
    return Node(cfg, Identity.generate(), clock or Clock())


def _result(d: Any) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "deferred did not fire"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


class Reply:
    def __init__(self, resp: Any) -> None:
        self.code = resp.code
        self.headers = {k.decode().lower(): [v.decode() for v in vs] for k, vs in resp.headers.getAllRawHeaders()}
        self.body = _result(resp.content())

    def header(self, name: str) -> str | None:
        vs = self.headers.get(name)
        return vs[0] if vs else None

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    resource: Any, path: str, method: str = "GET", headers: dict[str, str] | None = None, body: Any = None
) -> Reply:
    stub = StubTreq(resource)
    data = json.dumps(body).encode() if body is not None else None
    hdrs = {k: [v] for k, v in (headers or {}).items()}
    if data is not None:
        hdrs.setdefault("content-type", ["application/json"])
    resp = _result(stub.request(method, "http://x" + path, headers=hdrs, data=data))
    reply = Reply(resp)
    stub.flush()
    return reply


class Access:
    """Collects ``event="access"`` log events."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("event") == "access":
            self.events.append(event)

    def __enter__(self) -> Access:
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        globalLogPublisher.removeObserver(self)


# -- keys -----------------------------------------------------------------------------------------


def test_open_api_passes_without_a_key_and_says_so() -> None:
    app = APIApp(make_node())
    assert app.gate.describe_keys() == "API open: no keys configured"
    r = call(app.resource(), "/v1/models")
    assert r.code == 200


def test_keys_required_401_in_openai_shape_and_bypass_paths() -> None:
    app = APIApp(make_node(api_keys=("sk-good",)))
    assert app.gate.describe_keys() == "API keys required (1 keys)"
    for headers in ({}, {"authorization": "Bearer sk-bad"}, {"authorization": "Basic sk-good"}):
        r = call(app.resource(), "/v1/models", headers=headers)
        assert r.code == 401
        assert r.header("www-authenticate") == "Bearer"
        assert r.json() == {
            "error": {
                "message": r.json()["error"]["message"],
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }
        assert "sk-good" not in r.body.decode()
    ok = call(app.resource(), "/v1/models", headers={"authorization": "Bearer sk-good"})
    assert ok.code == 200
    for path in ("/health", "/ready", "/metrics"):
        assert call(app.resource(), path).code != 401
    pre = call(
        app.resource(),
        "/v1/chat/completions",
        "OPTIONS",
        headers={"origin": "http://page.example", "access-control-request-method": "POST"},
    )
    assert pre.code == 204
    assert pre.header("access-control-allow-origin") == "*"


def test_access_log_has_key_id_never_the_key() -> None:
    app = APIApp(make_node(api_keys=("sk-secret-value",)))
    with Access() as log:
        call(app.resource(), "/v1/models", headers={"authorization": "Bearer sk-secret-value", "x-request-id": "abc-1"})
        call(app.resource(), "/v1/models", headers={"authorization": "Bearer sk-wrong"})
    assert len(log.events) == 2
    ok, bad = log.events
    assert ok["key_id"] == key_id("sk-secret-value")
    assert ok["request_id"] == "abc-1"
    assert (ok["status"], ok["method"], ok["path"]) == (200, "GET", "/v1/models")
    assert ok["bytes"] > 0 and ok["ttfb_ms"] is not None and ok["duration_ms"] >= 0
    assert bad["status"] == 401 and bad["key_id"] is None and len(bad["request_id"]) == 32
    for ev in log.events:
        assert "sk-secret-value" not in repr(ev) and "sk-wrong" not in repr(ev)


def test_keys_file_reload_through_the_service(tmp_path: Any) -> None:
    f = tmp_path / "keys"
    f.write_text("sk-1\n")
    app = APIApp(make_node(api_keys_file=f))
    auth = {"authorization": "Bearer sk-2"}
    assert call(app.resource(), "/v1/models", headers=auth).code == 401
    f.write_text("sk-2\n")
    assert app.gate.keys.reload()
    assert call(app.resource(), "/v1/models", headers=auth).code == 200
    assert call(app.resource(), "/v1/models", headers={"authorization": "Bearer sk-1"}).code == 401


# -- rate limits ----------------------------------------------------------------------------------


def test_rpm_limit_per_key_with_headers_on_every_response() -> None:
    clock = Clock()
    clock.advance(1000)
    app = APIApp(make_node(clock, api_keys=("sk-a", "sk-b"), rate_limit_rpm=2))
    a = {"authorization": "Bearer sk-a"}
    r1 = call(app.resource(), "/v1/models", headers=a)
    r2 = call(app.resource(), "/v1/models", headers=a)
    r3 = call(app.resource(), "/v1/models", headers=a)
    assert [r.code for r in (r1, r2, r3)] == [200, 200, 429]
    assert [r.header("x-ratelimit-remaining-requests") for r in (r1, r2, r3)] == ["1", "0", "0"]
    assert all(r.header("x-ratelimit-limit-requests") == "2" for r in (r1, r2, r3))
    assert r3.header("x-ratelimit-reset-requests") == "1m0s"
    assert r3.header("retry-after") == "30"
    assert r3.json()["error"]["code"] == "rate_limit_exceeded"
    assert r3.json()["error"]["type"] == "requests"
    # Another key has its own bucket; /health is not limited.
    assert call(app.resource(), "/v1/models", headers={"authorization": "Bearer sk-b"}).code == 200
    assert call(app.resource(), "/health").code == 200
    clock.advance(30)
    assert call(app.resource(), "/v1/models", headers=a).code == 200


def test_failed_keys_spend_the_client_address_bucket() -> None:
    app = APIApp(make_node(api_keys=("sk-good",), rate_limit_rpm=2))
    bad = {"authorization": "Bearer sk-guess"}
    r1, r2, r3 = (call(app.resource(), "/v1/models", headers=bad) for _ in range(3))
    assert [r.code for r in (r1, r2, r3)] == [401, 401, 429]
    assert r1.header("x-ratelimit-remaining-requests") == "1"
    assert r3.json()["error"]["code"] == "rate_limit_exceeded"
    assert call(app.resource(), "/v1/models", headers={"authorization": "Bearer sk-good"}).code == 200


def test_without_keys_the_client_ip_is_the_caller_and_trust_proxy_changes_it() -> None:
    app = APIApp(make_node(rate_limit_rpm=1, trust_proxy=True))
    h1 = {"fly-client-ip": "203.0.113.1"}
    assert call(app.resource(), "/v1/models", headers=h1).code == 200
    assert call(app.resource(), "/v1/models", headers=h1).code == 429
    assert call(app.resource(), "/v1/models", headers={"x-forwarded-for": "203.0.113.2, 10.0.0.1"}).code == 200
    plain = APIApp(make_node(rate_limit_rpm=1))
    assert call(plain.resource(), "/v1/models", headers=h1).code == 200
    assert call(plain.resource(), "/v1/models", headers={"fly-client-ip": "203.0.113.9"}).code == 429


# -- in-flight cap and stream limits with a held inner resource -------------------------------------


class Held(Resource):
    """Holds every request open until the test finishes it."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.open: list[Any] = []

    def render(self, request: Any) -> Any:
        self.open.append(request)
        return NOT_DONE_YET

    def finish_one(self) -> None:
        req = self.open.pop(0)
        req.write(b"done")
        req.finish()


def _pending(stub: StubTreq, path: str = "/v1/chat/completions", body: Any = None, key: str | None = None) -> Any:
    headers = {"content-type": ["application/json"]}
    if key:
        headers["authorization"] = [f"Bearer {key}"]
    data = json.dumps(body or {"model": "m"}).encode()
    return stub.request("POST", "http://x" + path, headers=headers, data=data)


def test_accepted_key_is_not_passed_on() -> None:
    held = Held()
    stub = StubTreq(GateResource(held, Gate(Clock(), keys=APIKeys(["sk-a"]))))
    _pending(stub, key="sk-a")
    stub.flush()
    assert held.open[0].getHeader(b"authorization") is None
    held.finish_one()
    stub.flush()
    open_gate = StubTreq(GateResource(held, Gate(Clock())))
    _pending(open_gate, key="caller-own-token")  # an open API passes the caller's header through as before
    open_gate.flush()
    assert held.open[0].getHeader(b"authorization") == b"Bearer caller-own-token"
    held.finish_one()
    open_gate.flush()


def test_in_flight_cap_queues_then_hands_over_or_rejects() -> None:
    clock = Clock()
    held = Held()
    gate = Gate(clock, max_inflight=2, queue_timeout=2.0)
    stub = StubTreq(GateResource(held, gate))
    ds = [_pending(stub) for _ in range(4)]
    stub.flush()
    assert len(held.open) == 2
    assert gate.concurrency.queued == 2 and gate.status()["queued"] == 2
    held.finish_one()  # its slot goes to the first waiter
    stub.flush()
    assert len(held.open) == 2
    assert Reply(_result(ds[0])).code == 200
    clock.advance(2.0)  # the other waiter times out
    stub.flush()
    late = Reply(_result(ds[3]))
    assert late.code == 503
    assert late.header("retry-after") == "2"
    assert late.json()["error"]["code"] == "server_busy"
    held.finish_one()
    held.finish_one()
    stub.flush()
    assert [Reply(_result(d)).code for d in ds[1:3]] == [200, 200]
    assert gate.concurrency.inflight == 0 and gate.concurrency.queued == 0


def test_in_flight_cap_rejects_at_once_with_queue_timeout_zero_and_local_routes_skip_it() -> None:
    clock = Clock()
    held = Held()
    gate = Gate(clock, max_inflight=1, queue_timeout=0)
    stub = StubTreq(GateResource(held, gate))
    first = _pending(stub)
    second = _pending(stub)
    stub.flush()
    assert Reply(_result(second)).code == 503
    _pending(stub, "/v1/models")  # answered locally: no slot needed
    stub.flush()
    assert len(held.open) == 2
    held.finish_one()
    held.finish_one()
    stub.flush()
    assert Reply(_result(first)).code == 200
    assert gate.concurrency.inflight == 0


def test_queued_caller_that_goes_away_leaves_the_queue() -> None:
    clock = Clock()
    held = Held()
    gate = Gate(clock, max_inflight=1, queue_timeout=5.0)
    stub = StubTreq(GateResource(held, gate))
    _pending(stub)
    waiting = _pending(stub)
    stub.flush()
    assert gate.concurrency.queued == 1
    gone: list[Any] = []
    waiting.addErrback(gone.append)
    waiting.cancel()  # the caller disconnects
    stub.flush()
    assert gate.concurrency.queued == 0
    held.finish_one()
    stub.flush()
    assert gate.concurrency.inflight == 0 and held.open == []
    assert len(gone) == 1


def test_concurrent_streams_per_caller() -> None:
    clock = Clock()
    held = Held()
    gate = Gate(clock, keys=APIKeys(["sk-a", "sk-b"]), rate_limit_streams=1)
    stub = StubTreq(GateResource(held, gate))
    stream = {"model": "m", "stream": True}
    first = _pending(stub, body=stream, key="sk-a")
    second = _pending(stub, body=stream, key="sk-a")
    other = _pending(stub, body=stream, key="sk-b")
    plain = _pending(stub, body={"model": "m"}, key="sk-a")  # not a stream: not counted
    stub.flush()
    r = Reply(_result(second))
    assert r.code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded" and r.header("retry-after") == "1"
    assert len(held.open) == 3
    held.finish_one()
    stub.flush()
    assert Reply(_result(first)).code == 200
    again = _pending(stub, body=stream, key="sk-a")
    stub.flush()
    assert len(held.open) == 3
    for _ in range(3):
        held.finish_one()
    stub.flush()
    assert [Reply(_result(d)).code for d in (other, plain, again)] == [200, 200, 200]


# -- CORS -----------------------------------------------------------------------------------------


def test_cors_on_responses_and_errors_and_restricted_origins() -> None:
    app = APIApp(make_node(api_keys=("sk",)))
    r = call(app.resource(), "/v1/models", headers={"origin": "http://page.example"})
    assert r.code == 401
    assert r.header("access-control-allow-origin") == "*"
    assert "x-request-id" in (r.header("access-control-expose-headers") or "")
    strict = APIApp(make_node(cors_origins=("http://ok.example",)))
    assert call(strict.resource(), "/v1/models", headers={"origin": "http://ok.example"}).header(
        "access-control-allow-origin"
    ) == ("http://ok.example")
    assert (
        call(strict.resource(), "/v1/models", headers={"origin": "http://evil.example"}).header(
            "access-control-allow-origin"
        )
        is None
    )
    pre = call(
        strict.resource(),
        "/v1/chat/completions",
        "OPTIONS",
        headers={
            "origin": "http://ok.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )
    assert pre.code == 204
    assert pre.header("access-control-allow-headers") == "authorization, content-type"
    assert pre.header("access-control-allow-origin") == "http://ok.example"


# -- /ready and /metrics --------------------------------------------------------------------------


def _add_host(node: Node, model: str, n: int = 5) -> None:
    peer = bytes([n]) * 32
    ann = build_self_announcement(
        addr=EndpointAddr(peer), version="0.65.0", role=PeerRole.HOST, http_port=9337, hosted_models=(model,)
    )
    node.mesh.ingest_gossip(peer, [peer_info_from_announcement(ann)], 0.0)


def test_ready_flips_on_both_ports() -> None:
    node = make_node(join_tokens=("t",))
    api, console = APIApp(node), ConsoleApp(node)
    for app in (api, console):
        r = call(app.resource(), "/ready")
        assert r.code == 503 and r.json()["reason"] == "node state is joining"
    node.set_state(NodeState.JOINED)
    assert call(api.resource(), "/ready").json()["reason"] == "no routable model in the mesh"
    _add_host(node, "tiny")
    for app in (api, console):
        r = call(app.resource(), "/ready")
        assert r.code == 200 and r.json() == {"status": "ready", "node_state": "joined", "models": ["tiny"]}


def test_metrics_off_by_default_and_on_with_flag() -> None:
    node = make_node()
    assert call(APIApp(node).resource(), "/metrics").code == 404
    assert call(ConsoleApp(node).resource(), "/metrics").code == 404
    node = make_node(metrics=True)
    api = APIApp(node)
    console = ConsoleApp(node, metrics=api.metrics)
    for app in (api, console):
        r = call(app.resource(), "/metrics")
        assert r.code == 200 and (r.header("content-type") or "").startswith("text/plain")
        assert b"meshd_requests_total" in r.body or b"# TYPE meshd_requests counter" in r.body


def test_status_has_the_gate_section() -> None:
    node = make_node(max_inflight=3)
    api = APIApp(node)
    st = StatusView(node, gate=api.gate, proxy=api.proxy).status()["meshd"]["gate"]
    assert st["max_inflight"] == 3 and st["inflight"] == 0 and st["api_keys"] is None


def test_metrics_model_label_is_bounded_to_routable_models() -> None:
    node = make_node(metrics=True)
    m = Metrics(node)
    assert m.model_label("tiny") == "other"
    _add_host(node, "tiny")
    assert m.model_label("tiny") == "tiny"
    assert m.model_label("made-up-by-a-caller") == "other"
    assert m.model_label(None) == "other"


# -- the console's credential -------------------------------------------------------------------------


def _raw_gate(resource: Any, request: bytes, peer: str) -> bytes:
    """Feed raw HTTP to a site around ``resource`` as if it came from ``peer``; what was written back."""
    site = LimitedSite(resource, lambda status, message, code: message.encode())
    site.reactor = Clock()  # type: ignore[attr-defined]
    addr = IPv4Address("TCP", peer, 5555)
    proto = site.buildProtocol(addr)
    assert proto is not None
    transport = StringTransport(peerAddress=addr, hostAddress=IPv4Address("TCP", "127.0.0.1", 9337))
    proto.makeConnection(transport)
    proto.dataReceived(request)
    return transport.value()


def _chat(path: str, credential: str | None) -> bytes:
    body = b'{"model": "m"}'
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:9337\r\nContent-Type: application/json\r\n"
    if credential is not None:
        head += f"x-meshd-console: {credential}\r\n"
    return head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body


def test_console_credential_opens_only_the_chat_route_and_only_from_loopback() -> None:
    held = Held()
    gate = Gate(Clock(), keys=APIKeys(["sk-a"]))
    cred = gate.console_credential
    assert len(cred) >= 40 and cred != Gate(Clock()).console_credential  # 32 random bytes, per gate
    resource = GateResource(held, gate)
    with Access() as log:
        for path, peer, given in (
            ("/v1/chat/completions", "127.0.0.1", None),  # absent
            ("/v1/chat/completions", "127.0.0.1", cred[:-1] + ("A" if cred[-1] != "A" else "B")),  # guessed
            ("/v1/chat/completions", "127.0.0.1", ""),
            ("/v1/chat/completions", "10.0.0.7", cred),  # right, but not from this machine
            ("/v1/embeddings", "127.0.0.1", cred),  # right, but another route
            ("/v1/chat/completionsX", "127.0.0.1", cred),
            ("/v1/models", "127.0.0.1", cred),
        ):
            out = _raw_gate(resource, _chat(path, given), peer)
            assert out.startswith(b"HTTP/1.1 401 "), (path, peer, given, out[:80])
        assert held.open == []
        _raw_gate(resource, _chat("/v1/chat/completions", cred), "127.0.0.1")
        assert len(held.open) == 1
        # Nothing behind the gate (the app, the tunnel, a host) ever sees it.
        assert held.open[0].getHeader(b"x-meshd-console") is None
        assert held.open[0].getHeader(b"authorization") is None
        held.finish_one()
    assert [e["key_id"] for e in log.events][-1] == "console"
    assert [e["status"] for e in log.events] == [401] * 7 + [200]
    for event in log.events:
        assert cred not in repr(event)
    assert cred not in json.dumps(gate.status())


def test_console_credential_header_is_dropped_by_an_open_gate_too() -> None:
    held = Held()
    gate = Gate(Clock())
    _raw_gate(GateResource(held, gate), _chat("/v1/chat/completions", "anything"), "127.0.0.1")
    _raw_gate(GateResource(held, gate), _chat("/v1/embeddings", gate.console_credential), "10.0.0.7")
    assert len(held.open) == 2
    assert [r.getHeader(b"x-meshd-console") for r in held.open] == [None, None]
