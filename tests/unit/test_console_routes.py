"""Console routes without sockets: pages, headless, /api/join access rules, /api/chat methods, SSE glue."""

from __future__ import annotations

import json
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from meshd.config import Role
from meshd.host import BackendWatch
from meshd.identity import Identity
from meshd.node import Node
from meshd.protocol.streams import StreamType
from meshd.protocol.token import EndpointAddr, encode_token
from meshd.status import StatusView
from meshd.tunnel import Backend, BackendStats
from meshd.web.console import ConsoleApp, is_loopback, mesh_models

from .test_web import _result, get, make_node

GOOD_TOKEN = encode_token(EndpointAddr(Identity.generate().public_bytes, ip_addrs=[("127.0.0.1", 9)]))


CONSOLE = "http://127.0.0.1:3131"
#: What the console's own pages send with a POST (the parts the console looks at).
SAME_ORIGIN = {"Content-Type": "application/json", "Origin": CONSOLE, "Sec-Fetch-Site": "same-origin"}


def post(app: Any, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST from loopback (StubTreq's peer is 127.0.0.1) to http://127.0.0.1:3131, as the console's page."""
    stub = StubTreq(app.resource())
    resp = _result(stub.post(CONSOLE + path, data=body, headers=SAME_ORIGIN if headers is None else headers))
    content = _result(resp.content())
    stub.flush()
    return resp.code, json.loads(content) if content else None


def raw(app: ConsoleApp, request: bytes, peer: str = "10.1.2.3") -> tuple[StringTransport, Any]:
    """Feed raw HTTP to the console's real Site as if it came from ``peer``."""
    site = app.site()
    site.reactor = Clock()  # type: ignore[attr-defined]
    addr = IPv6Address("TCP", peer, 5555) if ":" in peer else IPv4Address("TCP", peer, 5555)
    proto = site.buildProtocol(addr)
    assert proto is not None
    transport = StringTransport(peerAddress=addr, hostAddress=IPv4Address("TCP", "127.0.0.1", 3131))
    proto.makeConnection(transport)
    proto.dataReceived(request)
    return transport, proto


def join_request(
    token: str,
    auth: str | None = None,
    *,
    host: str = "127.0.0.1:3131",
    headers: dict[str, str] | None = None,
    path: str = "/api/join",
) -> bytes:
    """A raw POST; by default with the headers the dashboard's own page sends."""
    body = json.dumps({"token": token}).encode()
    fields = {"Content-Type": "application/json", "Origin": f"http://{host}"} if headers is None else headers
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n".encode()
    head += "".join(f"{k}: {v}\r\n" for k, v in fields.items()).encode()
    if auth is not None:
        head += b"Authorization: " + auth.encode() + b"\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def status_line(transport: StringTransport) -> bytes:
    return transport.value().split(b"\r\n", 1)[0]


def joining(node: Node) -> list[list[str]]:
    calls: list[list[str]] = []

    def fake_join(tokens: Any) -> Any:
        calls.append(list(tokens))
        return succeed(tokens[0])

    node.join_any = fake_join  # type: ignore[method-assign]
    return calls


def test_pages_and_assets_are_served_with_types_and_no_cache() -> None:
    app = ConsoleApp(make_node())
    for path, marker in (("/", b"dashboard.js"), ("/dashboard", b"dashboard.js"), ("/chat", b"chat.js")):
        code, headers, body = get(app, path)
        assert code == 200, path
        assert headers["content-type"] == ["text/html; charset=utf-8"]
        assert headers["cache-control"] == ["no-cache"]
        assert marker in body
    assert get(app, "/chat/abc123")[0] == 200
    code, headers, body = get(app, "/assets/style.css")
    assert code == 200 and headers["content-type"] == ["text/css; charset=utf-8"] and b".topbar" in body
    assert get(app, "/assets/dashboard.js")[1]["content-type"] == ["text/javascript; charset=utf-8"]
    assert get(app, "/assets/favicon.svg")[1]["content-type"] == ["image/svg+xml"]
    assert get(app, "/favicon.ico")[0] == 200
    for bad in ("/assets/nope.js", "/assets/..%2fconsole.py", "/assets/.hidden.js", "/assets/x.py", "/nope"):
        code, headers, body = get(app, bad)
        assert code == 404, bad
        assert json.loads(body) == {"error": "Not found"}


def test_pages_reference_only_local_assets() -> None:
    app = ConsoleApp(make_node())
    for path in ("/", "/chat"):
        body = get(app, path)[2].decode()
        assert "http://" not in body and "https://" not in body and "//cdn" not in body
        for ref in ("/assets/style.css", "/assets/common.js"):
            assert ref in body
            assert get(app, ref)[0] == 200


def test_headless_404s_every_ui_route_but_keeps_the_api() -> None:
    app = ConsoleApp(make_node(headless=True))
    for path in ("/", "/dashboard", "/chat", "/chat/x", "/assets/style.css", "/favicon.ico"):
        assert get(app, path)[0] == 404, path
    for path in ("/api/status", "/api/models", "/health"):
        assert get(app, path)[0] == 200, path
    assert get(app, "/api/chat")[0] == 405


def test_chat_rejects_other_methods_with_405() -> None:
    app = ConsoleApp(make_node())
    for method in ("GET", "PUT", "DELETE"):
        code, _, body = get(app, "/api/chat", method)
        assert code == 405, method
        assert json.loads(body) == {"error": "Method Not Allowed"}
    assert get(app, "/api/chat/completions", "GET")[0] == 405


def test_chat_without_an_api_port_is_503() -> None:
    node = make_node()
    node.ports_bound(None, node.console_port)
    code, body = post(ConsoleApp(node), "/api/chat", b"{}")
    assert code == 503 and body == {"error": "LLM not ready"}


def test_join_from_loopback_calls_the_node() -> None:
    node = make_node()
    calls = joining(node)
    code, body = post(ConsoleApp(node), "/api/join", json.dumps({"token": GOOD_TOKEN}).encode())
    assert code == 200 and body["joined"] is True
    assert calls == [[GOOD_TOKEN]]


@pytest.mark.parametrize(
    "body,message",
    [
        (b"not json", "body must be JSON"),
        (b"[1]", "missing"),
        (b'{"token": 5}', "missing"),
        (b'{"token": "  "}', "missing"),
        (b'{"token": "garbage!"}', "bad invite token"),
    ],
)
def test_join_rejects_bad_json_and_bad_tokens(body: bytes, message: str) -> None:
    node = make_node()
    calls = joining(node)
    code, out = post(ConsoleApp(node), "/api/join", body)
    assert code == 400
    assert message in out["error"]
    assert calls == []


def test_join_failure_is_502() -> None:
    node = make_node()
    node.join_any = lambda tokens: succeed(None)  # type: ignore[method-assign]
    code, out = post(ConsoleApp(node), "/api/join", json.dumps({"token": GOOD_TOKEN}).encode())
    assert code == 502 and "could not join" in out["error"]


def test_join_from_elsewhere_needs_the_console_token() -> None:
    node = make_node()
    calls = joining(node)
    transport, _ = raw(ConsoleApp(node), join_request(GOOD_TOKEN))
    assert status_line(transport) == b"HTTP/1.1 403 Forbidden"
    assert calls == []
    node = make_node(console_token="s3cret")
    calls = joining(node)
    for auth in (None, "Bearer wrong", "Basic s3cret", "Bearer s3cret-and-more"):
        transport, _ = raw(ConsoleApp(node), join_request(GOOD_TOKEN, auth))
        assert status_line(transport) == b"HTTP/1.1 403 Forbidden", auth
    assert calls == []
    transport, _ = raw(ConsoleApp(node), join_request(GOOD_TOKEN, "Bearer s3cret"))
    assert status_line(transport) == b"HTTP/1.1 200 OK"
    assert calls == [[GOOD_TOKEN]]
    transport, _ = raw(ConsoleApp(node), join_request(GOOD_TOKEN), peer="::1")
    assert status_line(transport) == b"HTTP/1.1 200 OK"


def test_read_only_routes_stay_open_to_everyone() -> None:
    app = ConsoleApp(make_node(console_token="s3cret"))
    transport, _ = raw(app, b"GET /api/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_line(transport) == b"HTTP/1.1 200 OK"


def test_is_loopback() -> None:
    for host in ("127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"):
        assert is_loopback(host), host
    for host in ("10.0.0.1", "0.0.0.0", "::", "::ffff:10.0.0.1", "", None, "localhost", "garbage"):
        assert not is_loopback(host), host


def test_events_stream_over_the_real_site() -> None:
    node = make_node()
    clock: Clock = node.clock
    clock.advance(100)
    app = ConsoleApp(node)
    transport, proto = raw(app, b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n", peer="127.0.0.1")
    head, _, rest = transport.value().partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    assert lines[0] == b"http/1.1 200 ok"
    for header in (
        b"content-type: text/event-stream",
        b"cache-control: no-cache",
        b"connection: keep-alive",
        b"x-accel-buffering: no",
    ):
        assert header in lines
    assert b'"node_id":"' + node.identity.short_id.encode() + b'"' in rest
    assert len(app.events.subscribers) == 1
    node.set_mesh_name("renamed")
    node.notify_changed()
    clock.advance(1)
    assert b'"mesh_name":"renamed"' in transport.value()
    assert b": keepalive\n\n" not in transport.value()
    clock.advance(15)
    assert b": keepalive\n\n" in transport.value()
    proto.connectionLost(Exception("gone"))
    assert app.events.subscribers == set()
    assert clock.getDelayedCalls() == [] or all(not c.active() for c in clock.getDelayedCalls())


def test_mesh_models_counts_hosts_and_demand() -> None:
    node = make_node(role=Role.HOST, serve_url="http://127.0.0.1:1")
    clock: Clock = node.clock
    clock.advance(1_000_000)
    node.set_hosted_models(("tiny",))
    node.mesh.note_models(["wanted"], node.now() - 3600)  # served somewhere in the mesh an hour ago
    node.mesh.record_request("tiny", node.now() - 30)
    node.mesh.record_request("tiny", node.now() - 30)
    node.mesh.record_request("wanted", node.now() - 5)
    node.mesh.record_request("wnated", node.now() - 5)  # a typo: never served here, so not a cold model
    rows = {m["name"]: m for m in mesh_models(node)}
    assert rows["tiny"]["status"] == "warm" and rows["tiny"]["node_count"] == 1
    assert rows["tiny"]["request_count"] == 2 and rows["tiny"]["last_active_secs_ago"] == 30
    assert rows["wanted"]["status"] == "cold" and rows["wanted"]["node_count"] == 0
    status = json.loads(get(ConsoleApp(node), "/api/status")[2])
    assert [m["name"] for m in status["meshd"]["mesh_models"]] == ["tiny", "wanted"]


# -- cross-site requests (CSRF) and rebinding names -----------------------------------------------


def body_of(transport: StringTransport) -> Any:
    head, _, rest = transport.value().partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" not in head.lower():
        return json.loads(rest)
    body = b""
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return json.loads(body)
        body, rest = body + rest[:size], rest[size + 2 :]


@pytest.mark.parametrize(
    "headers,code",
    [
        # What a cross-site page can send without a CORS preflight: the "simple" content types.
        ({"Content-Type": "text/plain;charset=UTF-8", "Origin": "http://127.0.0.1:8000"}, 415),
        ({"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://evil.example"}, 415),
        ({"Content-Type": "multipart/form-data; boundary=x", "Origin": "null"}, 415),
        ({"Origin": "http://127.0.0.1:3131"}, 415),  # no content type at all
        ({"Content-Type": "application/jsonx", "Origin": "http://127.0.0.1:3131"}, 415),
        # JSON, but from elsewhere (a page with a CORS-permitting server behind it, say).
        ({"Content-Type": "application/json", "Origin": "http://127.0.0.1:8000"}, 403),
        ({"Content-Type": "application/json", "Origin": "http://localhost:3131"}, 403),
        ({"Content-Type": "application/json", "Origin": "null"}, 403),
        ({"Content-Type": "application/json", "Origin": "http://127.0.0.1:3131", "Sec-Fetch-Site": "cross-site"}, 403),
        ({"Content-Type": "application/json", "Origin": "http://127.0.0.1:3131", "Sec-Fetch-Site": "same-site"}, 403),
        ({"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, 403),
        # No browser headers at all (curl, a script): not trusted for being on loopback alone.
        ({"Content-Type": "application/json"}, 403),
        # The console's own page (either header is enough), or the user typing the URL.
        ({"Content-Type": "application/json", "Origin": "http://127.0.0.1:3131"}, 200),
        ({"Content-Type": "application/json; charset=utf-8", "Sec-Fetch-Site": "same-origin"}, 200),
        ({"Content-Type": "Application/JSON", "Sec-Fetch-Site": "none"}, 200),
        ({"Content-Type": "application/json", "Origin": "HTTP://127.0.0.1:3131", "Sec-Fetch-Site": "same-origin"}, 200),
    ],
)
def test_join_refuses_what_another_site_could_send_even_from_loopback(headers: dict[str, str], code: int) -> None:
    node = make_node()
    calls = joining(node)
    transport, _ = raw(ConsoleApp(node), join_request(GOOD_TOKEN, headers=headers), peer="127.0.0.1")
    assert status_line(transport).split(b" ")[1] == str(code).encode(), transport.value()
    assert calls == ([[GOOD_TOKEN]] if code == 200 else [])
    if code != 200:
        assert "error" in body_of(transport)


def test_a_rebinding_name_is_not_loopback_even_when_same_origin() -> None:
    """DNS rebinding: a page at http://evil.example:3131 whose name now resolves to 127.0.0.1 is same-origin
    with itself; the socket peer is loopback, but Host says evil.example."""
    node = make_node(console_token="s3cret")
    calls = joining(node)
    app = ConsoleApp(node)
    transport, _ = raw(app, join_request(GOOD_TOKEN, host="evil.example:3131"), peer="127.0.0.1")
    assert status_line(transport) == b"HTTP/1.1 403 Forbidden"
    assert "loopback" in body_of(transport)["error"]
    assert calls == []
    # The same page cannot know the console token; an operator's proxy that sends it may use any name.
    transport, _ = raw(app, join_request(GOOD_TOKEN, "Bearer s3cret", host="evil.example:3131"), peer="127.0.0.1")
    assert status_line(transport) == b"HTTP/1.1 200 OK"
    for host in ("localhost:3131", "[::1]:3131", "127.0.0.2:3131", "app.localhost:3131"):
        transport, _ = raw(app, join_request(GOOD_TOKEN, host=host), peer="::1")
        assert status_line(transport) == b"HTTP/1.1 200 OK", host
    assert len(calls) == 5


def test_the_console_token_stands_in_for_browser_headers_but_not_for_a_cross_site_origin() -> None:
    node = make_node(console_token="s3cret")
    calls = joining(node)
    app = ConsoleApp(node)
    script = {"Content-Type": "application/json"}
    transport, _ = raw(app, join_request(GOOD_TOKEN, "Bearer s3cret", headers=script), peer="10.1.2.3")
    assert status_line(transport) == b"HTTP/1.1 200 OK"
    evil = {"Content-Type": "application/json", "Origin": "http://evil.example"}
    transport, _ = raw(app, join_request(GOOD_TOKEN, "Bearer s3cret", headers=evil), peer="10.1.2.3")
    assert status_line(transport) == b"HTTP/1.1 403 Forbidden"
    text = {"Content-Type": "text/plain", "Origin": "http://127.0.0.1:3131"}
    transport, _ = raw(app, join_request(GOOD_TOKEN, "Bearer s3cret", headers=text), peer="10.1.2.3")
    assert status_line(transport) == b"HTTP/1.1 415 Unsupported Media Type"
    assert calls == [[GOOD_TOKEN]]


def test_chat_refuses_cross_site_posts_before_touching_the_api() -> None:
    node = make_node()
    node.ports_bound(None, node.console_port)  # a request that got through would answer 503
    app = ConsoleApp(node)
    for headers in (
        {"Content-Type": "text/plain", "Origin": "http://evil.example"},
        {"Content-Type": "application/json", "Origin": "http://evil.example"},
        {"Content-Type": "application/json"},
    ):
        transport, _ = raw(app, join_request("x", headers=headers, path="/api/chat"), peer="127.0.0.1")
        assert status_line(transport).split(b" ")[1] in (b"403", b"415"), headers
    transport, _ = raw(app, join_request("x", path="/api/chat"), peer="127.0.0.1")
    assert status_line(transport) == b"HTTP/1.1 503 Service Unavailable"
    # Without API keys the chat is as open as the API port itself: any address, same-origin.
    transport, _ = raw(app, join_request("x", path="/api/chat"), peer="10.1.2.3")
    assert status_line(transport) == b"HTTP/1.1 503 Service Unavailable"


def test_with_api_keys_the_chat_is_for_loopback_or_the_console_token() -> None:
    """The console passes the API's key check for its callers, so it must not open the API to everyone."""
    node = make_node(api_keys=("sk-real",), console_token="s3cret")
    node.ports_bound(None, node.console_port)
    app = ConsoleApp(node)
    transport, _ = raw(app, join_request("x", path="/api/chat"), peer="10.1.2.3")
    assert status_line(transport) == b"HTTP/1.1 403 Forbidden"
    transport, _ = raw(app, join_request("x", path="/api/chat", host="evil.example:3131"), peer="127.0.0.1")
    assert status_line(transport) == b"HTTP/1.1 403 Forbidden"
    for peer, auth in (("127.0.0.1", None), ("10.1.2.3", "Bearer s3cret")):
        transport, _ = raw(app, join_request("x", auth, path="/api/chat"), peer=peer)
        assert status_line(transport) == b"HTTP/1.1 503 Service Unavailable", peer


def host_status(node: Node) -> tuple[StatusView, BackendStats]:
    """What build_service gives a host's console: the status with its backend watch (no poll runs)."""
    watch = BackendWatch(node.clock, node, Backend(node.clock, "http://127.0.0.1:1"))
    node.streams.register(StreamType.TUNNEL_HTTP, watch.tunnel_for)
    return StatusView(node, backend=watch), watch.backend.stats


def test_a_host_reports_what_its_backend_served_for_the_mesh() -> None:
    node = make_node(role=Role.HOST, serve_url="http://127.0.0.1:1")
    node.set_hosted_models(("tiny", "idle"))
    status, stats = host_status(node)
    app = ConsoleApp(node, status=status)
    for _ in range(3):
        stats.count_served("tiny")
    stats.count_served("not-hosted-here")
    rows = {m["name"]: m for m in json.loads(get(app, "/api/status")[2])["meshd"]["mesh_models"]}
    assert rows["tiny"]["served_count"] == 3 and rows["idle"]["served_count"] == 0
    assert "not-hosted-here" not in rows  # served names from callers do not make rows
    assert "request_count" not in rows["tiny"]  # nobody asked through this node's own API
    assert {m["name"]: m["served_count"] for m in json.loads(get(app, "/api/models")[2])["mesh_models"]} == {
        "tiny": 3,
        "idle": 0,
    }
    client = ConsoleApp(make_node())
    assert all("served_count" not in m for m in json.loads(get(client, "/api/models")[2])["mesh_models"])


def test_a_served_request_updates_the_open_dashboards() -> None:
    node = make_node(role=Role.HOST, serve_url="http://127.0.0.1:1")
    node.set_hosted_models(("tiny",))
    clock: Clock = node.clock
    clock.advance(100)
    status, stats = host_status(node)
    app = ConsoleApp(node, status=status)
    transport, proto = raw(app, b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n", peer="127.0.0.1")
    assert b'"served_count":0' in transport.value()
    transport.clear()
    stats.count_served("tiny")
    clock.advance(1)
    assert b'"served_count":1' in transport.value()
    proto.connectionLost(Exception("gone"))
    app.close()
    assert stats.on_served == []


def test_the_console_token_is_not_in_the_config_repr() -> None:
    config = make_node(console_token="s3cret-console-token").config
    assert config.console_token == "s3cret-console-token"
    assert "s3cret-console-token" not in repr(config)
