"""The client's OpenAI API end to end in one process: openai SDK -> meshd client -> QUIC tunnel ->
meshd host -> an OpenAI-compatible backend (a small Twisted server standing in for llama-server)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from meshd.config import Config, Role
from meshd.host import BackendWatch
from meshd.identity import Identity
from meshd.node import Node, NodeState
from meshd.protocol.streams import StreamType
from meshd.tunnel import Backend
from meshd.web.api import APIApp

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class FakeLLM(Resource):
    """/v1/models and /v1/chat/completions with real SSE streaming."""

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.requests: list[dict[str, Any]] = []
        #: The request headers of each POST (names lower-cased).
        self.request_headers: list[dict[bytes, list[bytes]]] = []
        self.cancelled = 0
        self.chunks = 5
        self.delay = 0.01
        #: While set, a streaming answer waits on it before its first byte (its headers included).
        self.hold: Deferred[None] | None = None

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"object": "list", "data": [{"id": "tiny", "object": "model"}]}).encode()

    def render_POST(self, request: Any) -> Any:
        body = json.loads(request.content.read())
        self.requests.append(body)
        self.request_headers.append({k.lower(): v for k, v in request.requestHeaders.getAllRawHeaders()})
        if body.get("messages", [{}])[-1].get("content") == "fail-400":
            request.setResponseCode(400)
            return json.dumps({"error": {"code": 400, "message": "bad", "type": "invalid_request_error"}}).encode()
        words = [f"w{i} " for i in range(self.chunks)]
        if not body.get("stream"):
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(
                {
                    "id": "c1",
                    "object": "chat.completion",
                    "created": 1,
                    "model": "tiny",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(words) + self.name},
                            "finish_reason": "stop",
                        }
                    ],
                }
            ).encode()
        request.setHeader(b"content-type", b"text/event-stream")
        state = {"i": 0, "gone": False}

        def gone(_: Any) -> None:
            state["gone"] = True
            self.cancelled += 1

        request.notifyFinish().addErrback(gone)

        def step(_: Any = None) -> None:
            if state["gone"]:
                return
            i = state["i"]
            if i < len(words):
                chunk = {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": "tiny",
                    "choices": [{"index": 0, "delta": {"content": words[i]}, "finish_reason": None}],
                }
                request.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                state["i"] += 1
                reactor.callLater(self.delay, step)
            else:
                request.write(b"data: [DONE]\n\n")
                request.finish()

        if self.hold is not None:
            self.hold.addCallback(step)
        else:
            step()
        return NOT_DONE_YET


async def sleep(secs: float) -> None:
    d: Deferred[None] = Deferred()
    reactor.callLater(secs, d.callback, None)
    await d


async def wait_for(pred: Any, within: float = 10.0) -> None:
    for _ in range(int(within / 0.05)):
        if pred():
            return
        await sleep(0.05)
    raise AssertionError("condition not reached")


def aio(coro: Any) -> Deferred[Any]:
    return Deferred.fromFuture(asyncio.ensure_future(coro))


@pytest_twisted.async_yield_fixture
async def cleanup() -> AsyncIterator[list[Any]]:
    things: list[Any] = []
    yield things
    for t in reversed(things):
        d = t.stopService() if hasattr(t, "stopService") else t.stopListening()
        if d is not None:
            await d


def node(tmp: Path, role: Role, tokens: tuple[str, ...] = (), serve: str | None = None) -> Node:
    cfg = Config(role=role, join_tokens=tokens, serve_url=serve, bind_address="127.0.0.1", state_dir=tmp, api_port=0)
    return Node(cfg, Identity.generate(), reactor)


async def start_host(tmp: Path, cleanup: list[Any], name: str) -> tuple[Node, FakeLLM, BackendWatch]:
    llm = FakeLLM(name)
    port = reactor.listenTCP(0, Site(llm), interface="127.0.0.1")
    cleanup.append(port)
    url = f"http://127.0.0.1:{port.getHost().port}"
    host = node(tmp, Role.HOST, serve=url)
    host.ports_bound(9337, None)
    watch = BackendWatch(reactor, host, Backend(reactor, url))
    host.streams.register(StreamType.TUNNEL_HTTP, watch.tunnel_for)
    host.startService()
    watch.startService()
    cleanup.extend([host, watch])
    await wait_for(lambda: host.hosted_models == ("tiny",))
    return host, llm, watch


async def start_client(tmp: Path, cleanup: list[Any], tokens: tuple[str, ...]) -> tuple[Node, str]:
    client = node(tmp, Role.CLIENT, tokens)
    client.startService()
    cleanup.append(client)
    port = reactor.listenTCP(0, APIApp(client, reactor).site(), interface="127.0.0.1")
    cleanup.append(port)
    await wait_for(lambda: client.state is NodeState.JOINED)
    return client, f"http://127.0.0.1:{port.getHost().port}/v1"


@pytest_twisted.ensureDeferred
async def test_openai_sdk_models_chat_and_stream(tmp_path: Path, cleanup: list[Any]) -> None:
    host, llm, _ = await start_host(tmp_path / "h", cleanup, "A")
    client, base = await start_client(tmp_path / "c", cleanup, (host.token or "",))
    sdk = openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0)
    models = await aio(sdk.models.list())
    assert [m.id for m in models.data] == ["tiny", "mesh"]
    reply = await aio(
        sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], temperature=0)
    )
    assert reply.choices[0].message.content == "w0 w1 w2 w3 w4 A"
    assert llm.requests[-1]["messages"][0]["content"] == "hi"

    async def stream() -> list[str]:
        out = []
        s = await sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], stream=True)
        async for chunk in s:
            out.append(chunk.choices[0].delta.content or "")
        return out

    parts = await aio(stream())
    assert parts == ["w0 ", "w1 ", "w2 ", "w3 ", "w4 "]
    assert client.mesh.demand["tiny"].request_count == 2
    # the demand travels in the client's own gossip entry: the host learns it at the next heartbeat
    await client.heartbeat()
    assert host.mesh.demand["tiny"].request_count == 2
    await aio(sdk.close())


@pytest_twisted.ensureDeferred
async def test_upstream_error_is_reshaped_and_unknown_model_is_404(tmp_path: Path, cleanup: list[Any]) -> None:
    host, _, _ = await start_host(tmp_path / "h", cleanup, "A")
    _, base = await start_client(tmp_path / "c", cleanup, (host.token or "",))
    sdk = openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        await aio(sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "fail-400"}]))
    assert e.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert e.value.response.headers["x-mesh-served-by"] == host.identity.endpoint_id
    with pytest.raises(openai.NotFoundError) as e2:
        await aio(sdk.chat.completions.create(model="ghost", messages=[{"role": "user", "content": "x"}]))
    assert e2.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert "'tiny'" in e2.value.body["message"]  # type: ignore[index]
    await aio(sdk.close())


@pytest_twisted.ensureDeferred
async def test_failover_to_the_next_host_before_any_byte(tmp_path: Path, cleanup: list[Any]) -> None:
    host_a, llm_a, watch_a = await start_host(tmp_path / "a", cleanup, "A")
    host_b, llm_b, _ = await start_host(tmp_path / "b", cleanup, "B")
    client, base = await start_client(tmp_path / "c", cleanup, (host_a.token or "", host_b.token or ""))
    await client.join(host_b.token or "")
    assert len(client.mesh.hosts_for_model("tiny")) == 2

    def drop(conn: Any, stream: Any) -> None:
        stream.loseWriteConnection()  # what a busy host does: EOF before any header

    first = client.mesh.hosts_for_model("tiny")[0]
    bad = host_a if first == host_a.identity.public_bytes else host_b
    good_llm = llm_b if bad is host_a else llm_a
    bad.streams.register(StreamType.TUNNEL_HTTP, drop)
    sdk = openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0)
    reply = await aio(sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}]))
    assert reply.choices[0].message.content.endswith("B" if bad is host_a else "A")
    assert len(good_llm.requests) == 1
    assert watch_a is not None
    await aio(sdk.close())


@pytest_twisted.ensureDeferred
async def test_caller_disconnect_cancels_the_backend_stream(tmp_path: Path, cleanup: list[Any]) -> None:
    host, llm, watch = await start_host(tmp_path / "h", cleanup, "A")
    llm.chunks, llm.delay = 200, 0.05
    _, base = await start_client(tmp_path / "c", cleanup, (host.token or "",))
    sdk = openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0)

    async def read_two() -> None:
        s = await sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], stream=True)
        n = 0
        async for _ in s:
            n += 1
            if n == 2:
                break
        await s.close()

    await aio(read_two())
    await wait_for(lambda: llm.cancelled == 1)
    await wait_for(lambda: watch.backend.inflight == 0)
    await aio(sdk.close())


@pytest_twisted.ensureDeferred
async def test_request_id_and_target_and_exclude_headers(tmp_path: Path, cleanup: list[Any]) -> None:
    host_a, llm_a, _ = await start_host(tmp_path / "a", cleanup, "A")
    host_b, llm_b, _ = await start_host(tmp_path / "b", cleanup, "B")
    client, base = await start_client(tmp_path / "c", cleanup, (host_a.token or "",))
    await client.join(host_b.token or "")
    sdk = openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0)
    msgs = [{"role": "user", "content": "hi"}]
    for host, name in ((host_a, "A"), (host_b, "B")):
        raw = await aio(
            sdk.chat.completions.with_raw_response.create(
                model="tiny",
                messages=msgs,
                extra_headers={"x-mesh-target": host.identity.short_id, "x-request-id": f"req-{name}"},
            )
        )
        assert raw.headers["x-mesh-served-by"] == host.identity.endpoint_id
        assert raw.headers["x-request-id"] == f"req-{name}"
        assert raw.parse().choices[0].message.content.endswith(name)
    # exclude A: every request goes to B
    for _ in range(3):
        raw = await aio(
            sdk.chat.completions.with_raw_response.create(
                model="tiny", messages=msgs, extra_headers={"x-mesh-exclude": host_a.identity.endpoint_id}
            )
        )
        assert raw.headers["x-mesh-served-by"] == host_b.identity.endpoint_id
        assert len(raw.headers["x-request-id"]) == 32  # generated
    # a target that is excluded fails closed
    with pytest.raises(openai.ConflictError) as e:
        await aio(
            sdk.chat.completions.create(
                model="tiny",
                messages=msgs,
                extra_headers={
                    "x-mesh-target": host_a.identity.endpoint_id,
                    "x-mesh-exclude": host_a.identity.short_id,
                },
            )
        )
    assert e.value.body["code"] == "target_not_available"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        await aio(sdk.chat.completions.create(model="tiny", messages=msgs, extra_headers={"x-mesh-target": "xyz"}))
    assert len(llm_a.requests) == 1 and len(llm_b.requests) == 4
    await aio(sdk.close())


@pytest_twisted.ensureDeferred
async def test_host_dying_mid_stream_ends_with_an_error_event(tmp_path: Path, cleanup: list[Any]) -> None:
    host, llm, _ = await start_host(tmp_path / "h", cleanup, "A")
    llm.chunks, llm.delay = 100, 0.05
    _, base = await start_client(tmp_path / "c", cleanup, (host.token or "",))
    sdk = openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0)

    async def read_all() -> tuple[int, Exception | None]:
        n = 0
        try:
            s = await sdk.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "x"}], stream=True
            )
            async for _ in s:
                n += 1
                if n == 3:
                    # the host's QUIC endpoint vanishes without a goodbye
                    assert host.endpoint is not None
                    for conn in list(host.endpoint.connections):
                        conn.close(1, "boom")
        except Exception as e:
            return n, e
        return n, None

    n, err = await aio(read_all())
    assert n >= 3
    assert isinstance(err, openai.APIError), err
    assert "failed" in str(err)
    await aio(sdk.close())


@pytest_twisted.ensureDeferred
async def test_a_host_serves_its_own_models_on_its_own_api(tmp_path: Path, cleanup: list[Any]) -> None:
    host, llm, watch = await start_host(tmp_path / "h", cleanup, "A")
    port = reactor.listenTCP(0, APIApp(host, reactor).site(), interface="127.0.0.1")
    cleanup.append(port)
    sdk = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port.getHost().port}/v1", api_key="x", max_retries=0)
    assert [m.id for m in (await aio(sdk.models.list())).data] == ["tiny", "mesh"]
    raw = await aio(
        sdk.chat.completions.with_raw_response.create(model="tiny", messages=[{"role": "user", "content": "a"}])
    )
    assert raw.headers["x-mesh-served-by"] == host.identity.endpoint_id
    assert raw.parse().choices[0].message.content == "w0 w1 w2 w3 w4 A"

    async def stream_some(stop_after: int | None) -> list[str]:
        out: list[str] = []
        s = await sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "b"}], stream=True)
        async for chunk in s:
            out.append(chunk.choices[0].delta.content or "")
            if stop_after is not None and len(out) == stop_after:
                await s.close()
                break
        return out

    assert await aio(stream_some(None)) == ["w0 ", "w1 ", "w2 ", "w3 ", "w4 "]
    llm.chunks, llm.delay = 100, 0.05
    assert len(await aio(stream_some(2))) == 2
    await wait_for(lambda: llm.cancelled == 1)
    await wait_for(lambda: watch.backend.inflight == 0)
    await aio(sdk.close())


def http_body(raw: bytes) -> bytes:
    from meshd.httpwire import ResponseParser

    parser = ResponseParser()
    events = parser.feed(raw) + (parser.feed_eof() if not parser.done else [])
    return b"".join(e for e in events if isinstance(e, bytes))


def raw_http(port: int, payload: bytes, wait: float = 5.0, pause: float = 0.0) -> bytes:
    """Blocking raw socket exchange (run in a thread): send, optionally stall, read until close."""
    import socket
    import time

    s = socket.create_connection(("127.0.0.1", port), timeout=wait)
    try:
        s.sendall(payload)
        if pause:
            time.sleep(pause)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


@pytest_twisted.ensureDeferred
async def test_bad_input_gets_clear_errors_without_harming_other_requests(tmp_path: Path, cleanup: list[Any]) -> None:
    from twisted.internet.threads import deferToThread

    host, llm, _ = await start_host(tmp_path / "h", cleanup, "A")
    client = node(tmp_path / "c", Role.CLIENT, (host.token or "",))
    client.startService()
    cleanup.append(client)
    site_port = reactor.listenTCP(0, APIApp(client, reactor).site(header_timeout=1.0), interface="127.0.0.1")
    cleanup.append(site_port)
    await wait_for(lambda: client.state is NodeState.JOINED)
    port = site_port.getHost().port
    sdk = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)

    # a slow caller that never finishes its headers, held open while others are served
    slow = deferToThread(raw_http, port, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n", 10.0)
    # invalid JSON: 400 in OpenAI's shape, nothing reaches a host
    bad = await deferToThread(
        raw_http,
        port,
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 9\r\nconnection: close\r\n\r\n{not json",
    )
    assert bad.startswith(b"HTTP/1.1 400")
    assert json.loads(http_body(bad))["error"]["code"] == "invalid_json"
    # a huge body: 413 before it is read
    huge = await deferToThread(
        raw_http, port, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 900000000\r\n\r\n{"
    )
    assert huge.startswith(b"HTTP/1.1 413")
    assert json.loads(http_body(huge))["error"]["code"] == "request_too_large"
    # headers over 64 KiB: 431
    big_headers = await deferToThread(
        raw_http, port, b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 70000 + b"\r\n\r\n"
    )
    assert big_headers.startswith(b"HTTP/1.1 431")
    # a good request followed by pipelined garbage: the first is answered, the garbage gets a 400
    body_ok = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "p"}]}).encode()
    pipelined = await deferToThread(
        raw_http,
        port,
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body_ok)).encode()
        + b"\r\n\r\n"
        + body_ok
        + b"\x00\x01GARBAGE\r\n\r\n",
    )
    assert pipelined.startswith(b"HTTP/1.1 200")
    assert b"w0 w1 w2 w3 w4 A" in pipelined
    assert b"HTTP/1.1 400" in pipelined
    # no model: routed to any host
    reply = await aio(sdk.chat.completions.create(model="", messages=[{"role": "user", "content": "n"}]))
    assert reply.choices[0].message.content
    # the slow caller was cut off by the header timeout, and only good requests reached the backend
    assert await slow == b""
    assert [r["messages"][0]["content"] for r in llm.requests] == ["p", "n"]
    await aio(sdk.close())


@pytest_twisted.ensureDeferred
async def test_streams_relay_raw_chunks_to_http11_and_decoded_bytes_to_http10(
    tmp_path: Path, cleanup: list[Any]
) -> None:
    from twisted.internet.threads import deferToThread

    host, _, _ = await start_host(tmp_path / "h", cleanup, "A")
    _, base = await start_client(tmp_path / "c", cleanup, (host.token or "",))
    port = int(base.rsplit(":", 1)[1].split("/")[0])
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "s"}], "stream": True}).encode()
    head = b"POST /v1/chat/completions %s\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
    # HTTP/1.1: one well-framed chunked body (the host's chunks passed through), ending in [DONE]
    raw11 = await deferToThread(raw_http, port, head % (b"HTTP/1.1", len(body)) + b"connection: close\r\n\r\n" + body)
    assert raw11.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding: chunked" in raw11.split(b"\r\n\r\n", 1)[0].lower()
    events11 = [line for line in http_body(raw11).split(b"\n") if line.startswith(b"data: ")]
    assert events11[-1] == b"data: [DONE]" and len(events11) == 6
    assert raw11.endswith(b"0\r\n\r\n")
    # HTTP/1.0 has no chunked framing: the same events, decoded, delimited by the connection's end
    raw10 = await deferToThread(raw_http, port, head % (b"HTTP/1.0", len(body)) + b"\r\n" + body)
    head10, body10 = raw10.split(b"\r\n\r\n", 1)
    assert head10.startswith(b"HTTP/1.0 200") and b"chunked" not in head10.lower()
    events10 = [line for line in body10.split(b"\n") if line.startswith(b"data: ")]
    assert events10 == events11


@pytest_twisted.ensureDeferred
async def test_a_user_sticks_to_one_host(tmp_path: Path, cleanup: list[Any]) -> None:
    from meshd.mesh.state import sticky_order

    host_a, _, _ = await start_host(tmp_path / "a", cleanup, "A")
    host_b, _, _ = await start_host(tmp_path / "b", cleanup, "B")
    client, base = await start_client(tmp_path / "c", cleanup, (host_a.token or "",))
    await client.join(host_b.token or "")
    sdk = openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0)
    msgs: Any = [{"role": "user", "content": "hi"}]
    for user in ("alice", "bob", "carol"):
        expected = sticky_order(client.mesh.hosts_for_model("tiny"), user)[0]
        for _ in range(3):
            raw = await aio(sdk.chat.completions.with_raw_response.create(model="tiny", messages=msgs, user=user))
            assert raw.headers["x-mesh-served-by"] == expected.hex()
    await aio(sdk.close())
