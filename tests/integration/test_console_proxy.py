"""The console's chat proxy on real sockets: a meshd host in front of a real llama-server, a meshd client
whose API and console listen on 127.0.0.1, and raw HTTP read off the sockets (#14.8); then the same chat
with ``--api-key`` and the host's served count through real ``twistd -n meshd`` daemons (#16.10, #14.12).
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor

from meshd.config import Config, Role
from meshd.host import BackendWatch
from meshd.identity import Identity
from meshd.node import Node, NodeState
from meshd.protocol.streams import StreamType
from meshd.tunnel import Backend
from meshd.web.api import APIApp
from meshd.web.console import ConsoleApp
from tests.integration import local_mesh
from tests.integration.backend import LlamaBackend
from tests.integration.daemon import Daemon
from tests.integration.test_client_api import aio, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello mesh"}], "max_tokens": 6, "temperature": 0}


@attrs.define
class RawResponse:
    status_line: str
    headers: list[tuple[str, str]]
    body: bytes

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


async def raw_request(port: int, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> RawResponse:
    """One request on a fresh socket with ``Connection: close``; the response exactly as it came off the wire."""

    async def run() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head += f"Content-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
        data = await reader.read()  # to EOF
        writer.close()
        return data

    data = await aio(asyncio.wait_for(run(), 30))
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    pairs = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        assert sep, f"malformed header line {line!r}"
        pairs.append((name, value.strip()))
    return RawResponse(lines[0], pairs, body)


def dechunk(body: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out += rest[:size]
        body = rest[size + 2 :]


@attrs.define
class Pair:
    host: Node
    watch: BackendWatch
    client: Node
    api_port: int
    console_port: int
    console: ConsoleApp
    api: APIApp


@pytest_twisted.async_yield_fixture
async def cleanup() -> AsyncIterator[list[Any]]:
    things: list[Any] = []
    yield things
    for t in reversed(things):
        if isinstance(t, ConsoleApp):
            t.close()
            continue
        d = t.stopService() if hasattr(t, "stopService") else t.stopListening()
        if d is not None:
            await d


async def start_pair(tmp: Path, cleanup: list[Any], backend_url: str, **client_config: Any) -> Pair:
    """A host relaying to ``backend_url`` and a client (API + console) joined to it."""
    host_cfg = Config(role=Role.HOST, serve_url=backend_url, bind_address="127.0.0.1", state_dir=tmp / "h", api_port=0)
    host = Node(host_cfg, Identity.generate(), reactor)
    watch = BackendWatch(reactor, host, Backend(reactor, backend_url))
    host.streams.register(StreamType.TUNNEL_HTTP, watch.tunnel_for)
    host.startService()
    watch.startService()
    cleanup.extend([host, watch])
    await wait_for(lambda: bool(host.hosted_models), within=20)
    cfg = Config(
        role=Role.CLIENT,
        join_tokens=(host.token or "",),
        bind_address="127.0.0.1",
        state_dir=tmp / "c",
        api_port=0,
        **client_config,
    )
    client = Node(cfg, Identity.generate(), reactor)
    client.startService()
    cleanup.append(client)
    api = APIApp(client, reactor)
    api_port = reactor.listenTCP(0, api.site(), interface="127.0.0.1")
    cleanup.append(api_port)
    console = ConsoleApp(client, api_credential=api.gate.console_credential)
    console_port = reactor.listenTCP(0, console.site(), interface="127.0.0.1")
    cleanup.extend([console_port, console])
    client.ports_bound(api_port.getHost().port, console_port.getHost().port)
    await wait_for(lambda: client.state is NodeState.JOINED and bool(client.mesh.routable_models()), within=20)
    return Pair(host, watch, client, client.api_port, client.console_port, console, api)


def browser_headers(console_port: int, **extra: str) -> dict[str, str]:
    """What the chat page's fetch sends (the parts the console looks at)."""
    return {
        "Origin": f"http://127.0.0.1:{console_port}",
        "Sec-Fetch-Site": "same-origin",
        "Content-Type": "application/json",
        **extra,
    }


@pytest.mark.parametrize("stream", [False, True])
@pytest_twisted.ensureDeferred
async def test_chat_response_headers_appear_once_and_none_is_empty(
    tmp_path: Path, cleanup: list[Any], llama_backend: LlamaBackend, stream: bool
) -> None:
    pair = await start_pair(tmp_path, cleanup, llama_backend.url)
    body = json.dumps(CHAT | {"stream": stream}).encode()
    resp = await raw_request(
        pair.console_port, "POST", "/api/chat", browser_headers(pair.console_port, Accept="*/*"), body
    )
    assert resp.status_line == "HTTP/1.1 200 OK", resp
    names = [k.lower() for k, _ in resp.headers]
    assert sorted(n for n in set(names) if names.count(n) > 1) == [], resp.headers
    assert [(k, v) for k, v in resp.headers if not v] == [], resp.headers
    assert resp.values("content-encoding") == []
    assert len(resp.values("server")) == 1 and len(resp.values("date")) == 1
    assert resp.values("x-mesh-served-by") == [pair.host.identity.endpoint_id]
    # The body is the backend's answer, framed once (chunked or with its length, never both).
    framed = resp.values("transfer-encoding") + resp.values("content-length")
    assert len(framed) == 1, resp.headers
    payload = dechunk(resp.body) if resp.values("transfer-encoding") == ["chunked"] else resp.body
    if stream:
        assert payload.rstrip().endswith(b"data: [DONE]")
        assert resp.values("content-type")[0].startswith("text/event-stream")
    else:
        if resp.values("content-length"):
            assert int(resp.values("content-length")[0]) == len(payload)
        reply = json.loads(payload)
        assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["content"]


@pytest_twisted.ensureDeferred
async def test_api_port_answers_cors_once_in_front_of_a_backend_that_answers_it_too(
    tmp_path: Path, cleanup: list[Any], llama_backend: LlamaBackend
) -> None:
    """llama-server sends its own Access-Control-Allow-Origin; a second one (the gate's) makes browsers
    refuse the response, so the API port passes on only its own."""
    pair = await start_pair(tmp_path, cleanup, llama_backend.url)
    body = json.dumps(CHAT).encode()
    for origin in ("http://page.example", None):
        headers = {"Content-Type": "application/json"} | ({"Origin": origin} if origin else {})
        resp = await raw_request(pair.api_port, "POST", "/v1/chat/completions", headers, body)
        assert resp.status_line == "HTTP/1.1 200 OK", resp
        assert resp.values("access-control-allow-origin") == ["*"], resp.headers
        assert len(resp.values("access-control-expose-headers")) == 1
        assert [(k, v) for k, v in resp.headers if not v] == [], resp.headers


# -- the same through real daemons (build_service's wiring) -----------------------------------------------


def _http(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def until(pred: Any, within: float, what: str) -> Any:
    """Nothing is retried here: an error reading the status fails the test at once."""
    return local_mesh.until(pred, within, what, step=0.2, retry_on=())


def test_daemons_console_chat_with_api_key_and_host_served_counts(tmp_path: Path, llama_backend: LlamaBackend) -> None:
    common = ["--port", "0", "--console", "0", "--bind-address", "127.0.0.1", "--nostr-relay", "ws://127.0.0.1:9"]
    daemons: list[Daemon] = []
    try:
        host = Daemon(["--serve", llama_backend.url, *common, "--state-dir", str(tmp_path / "h")], cwd=tmp_path)
        daemons.append(host)
        host_console = host.wait_event("ready", timeout=30)["console_url"]
        token = until(lambda: _http(host_console + "/api/status")[1]["token"], 20, "the host's token")
        until(lambda: _http(host_console + "/api/status")[1]["hosted_models"] == ["tiny"], 30, "host serving")
        args = ["--client", "--join", token, "--api-key", "sk-daemon-key", *common, "--state-dir", str(tmp_path / "c")]
        client = Daemon(args, cwd=tmp_path)
        daemons.append(client)
        ready = client.wait_event("ready", timeout=30)
        api, console = ready["api_url"], ready["console_url"]
        until(lambda: _http(console + "/api/status")[1]["meshd"]["mesh_models"], 30, "the client sees the model")
        chat = json.dumps(CHAT).encode()
        code, reply = _http(console + "/api/chat", chat, {"Content-Type": "application/json", "Origin": console})
        assert code == 200, reply
        assert reply["choices"][0]["message"]["content"]
        code, err = _http(api + "/v1/chat/completions", chat, {"Content-Type": "application/json"})
        assert code == 401 and err["error"]["code"] == "invalid_api_key"
        served = until(
            lambda: [r for r in list(client.records) if r.get("event") == "access" and r.get("status") == 200],
            10,
            "the access line of the console's request",
        )
        assert [(r["key_id"], r["path"]) for r in served] == [("console", "/v1/chat/completions")]
        # The host counted the request it served for the client.
        status = until(
            lambda: (s := _http(host_console + "/api/status")[1]["meshd"])["backend"]["served"] and s,
            10,
            "served count",
        )
        assert status["backend"]["served"] == {"tiny": 1}
        assert [m["served_count"] for m in status["mesh_models"] if m["name"] == "tiny"] == [1]
    finally:
        for d in daemons:
            d.kill()
