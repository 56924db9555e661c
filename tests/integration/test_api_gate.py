"""The API gate end to end: openai SDK (and headless Chromium) -> meshd client with the gate -> QUIC
tunnel -> meshd host -> a streaming OpenAI-compatible backend; plus a real ``twistd -n meshd`` for SIGHUP."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor, threads
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from meshd.config import Config, Role
from meshd.host import BackendWatch
from meshd.identity import Identity
from meshd.node import Node, NodeState
from meshd.protocol.streams import StreamType
from meshd.status import StatusView
from meshd.tunnel import Backend
from meshd.web.api import APIApp
from meshd.web.console import ConsoleApp
from meshd.web.gate import key_id
from tests.integration.daemon import Daemon
from tests.integration.test_client_api import FakeLLM, aio, cleanup, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
__all__ = ["cleanup"]  # the fixture, re-used

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class HeldLLM(FakeLLM):
    """Streams the first chunk at once and the rest only after ``release()``: streams overlap for sure."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.started = 0
        self.finished = 0
        self._held: list[Callable[[], None]] = []
        self.released = False

    def release(self) -> None:
        self.released = True
        held, self._held = self._held, []
        for resume in held:
            resume()

    def render_POST(self, request: Any) -> Any:
        body = json.loads(request.content.read())
        if not body.get("stream"):
            request.content.seek(0)
            return super().render_POST(request)
        self.requests.append(body)
        self.started += 1
        request.setHeader(b"content-type", b"text/event-stream")
        gone = {"v": False}

        def lost(_: Any) -> None:
            gone["v"] = True
            self.cancelled += 1

        request.notifyFinish().addErrback(lost)
        words = [f"w{i} " for i in range(self.chunks)]

        def chunk(word: str) -> bytes:
            payload = {
                "id": "c1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "tiny",
                "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
            }
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        request.write(chunk(words[0]))

        def rest() -> None:
            if gone["v"]:
                return
            for w in words[1:]:
                request.write(chunk(w))
            request.write(b"data: [DONE]\n\n")
            request.finish()
            self.finished += 1

        if self.released:
            reactor.callLater(0, rest)
        else:
            self._held.append(rest)
        return NOT_DONE_YET


async def start_host(tmp: Path, cleanup: list[Any], llm: FakeLLM) -> Node:
    port = reactor.listenTCP(0, Site(llm), interface="127.0.0.1")
    cleanup.append(port)
    url = f"http://127.0.0.1:{port.getHost().port}"
    cfg = Config(role=Role.HOST, serve_url=url, bind_address="127.0.0.1", state_dir=tmp, api_port=0)
    host = Node(cfg, Identity.generate(), reactor)
    host.ports_bound(9337, None)
    watch = BackendWatch(reactor, host, Backend(reactor, url, 64))
    host.streams.register(StreamType.TUNNEL_HTTP, watch.tunnel_for)
    host.startService()
    watch.startService()
    cleanup.extend([host, watch])
    await wait_for(lambda: host.hosted_models == ("tiny",))
    return host


async def start_client(tmp: Path, cleanup: list[Any], token: str, **gate: Any) -> tuple[Node, APIApp, str]:
    cfg = Config(role=Role.CLIENT, join_tokens=(token,), bind_address="127.0.0.1", state_dir=tmp, api_port=0, **gate)
    client = Node(cfg, Identity.generate(), reactor)
    client.startService()
    cleanup.append(client)
    app = APIApp(client, reactor)
    port = reactor.listenTCP(0, app.site(), interface="127.0.0.1")
    cleanup.append(port)
    await wait_for(lambda: client.state is NodeState.JOINED and bool(client.mesh.routable_models()))
    return client, app, f"http://127.0.0.1:{port.getHost().port}"


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    import treq

    resp = await treq.get(url, headers=headers or {})
    body = await treq.content(resp)
    hdrs = {k.decode().lower(): vs[0].decode() for k, vs in resp.headers.getAllRawHeaders()}
    return resp.code, hdrs, body


MSG = [{"role": "user", "content": "hi"}]


@pytest_twisted.ensureDeferred
async def test_burst_of_50_streams_against_max_inflight_5(tmp_path: Path, cleanup: list[Any]) -> None:
    llm = HeldLLM("A")
    host = await start_host(tmp_path / "h", cleanup, llm)
    client, app, base = await start_client(
        tmp_path / "c", cleanup, host.token or "", max_inflight=5, queue_timeout=0.0, metrics=True
    )
    sdk = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    outcomes: list[Any] = []

    async def one() -> None:
        try:
            s = await sdk.chat.completions.create(model="tiny", messages=MSG, stream=True)
        except openai.APIStatusError as e:
            outcomes.append(("rejected", e.status_code, e.response.headers.get("retry-after"), e.body))
            return
        parts = [chunk.choices[0].delta.content or "" async for chunk in s]
        outcomes.append(("served", parts))

    tasks = [asyncio.ensure_future(one()) for _ in range(50)]
    # Hold the backend until every request got its answer or its first byte: all 50 overlap.
    await wait_for(lambda: len(outcomes) == 45 and llm.started == 5, within=30)
    assert app.gate.concurrency.inflight == 5
    assert StatusView(client, gate=app.gate).status()["meshd"]["gate"]["inflight"] == 5
    llm.release()
    await aio(asyncio.gather(*tasks))
    served = [o for o in outcomes if o[0] == "served"]
    rejected = [o for o in outcomes if o[0] == "rejected"]
    assert len(served) == 5 and len(rejected) == 45
    assert all(o[1] == ["w0 ", "w1 ", "w2 ", "w3 ", "w4 "] for o in served)  # every served stream complete
    assert all(o[1] == 503 and o[2] == "2" and o[3]["code"] == "server_busy" for o in rejected)
    assert llm.started == 5 and llm.finished == 5
    await wait_for(lambda: app.gate.concurrency.inflight == 0)

    code, headers, body = await http_get(base + "/metrics")
    assert code == 200 and headers["content-type"].startswith("text/plain")
    m = scrape(body.decode())
    route = ("route", "/v1/chat/completions")
    assert m[("meshd_requests_total", (("model", "tiny"), route, ("status", "200")))] == 5
    assert m[("meshd_requests_total", (("model", "tiny"), route, ("status", "503")))] == 45
    assert m[("meshd_rejections_total", (("reason", "busy"),))] == 45
    assert m[("meshd_request_ttfb_seconds_count", (("model", "tiny"), route))] == 50
    assert m[("meshd_inflight_requests", ())] == 0
    assert m[("meshd_peers", (("role", "host"),))] == 1
    assert m[("meshd_model_hosts", (("model", "tiny"),))] == 1
    await aio(sdk.close())


@pytest_twisted.ensureDeferred
async def test_keys_rate_limits_ready_and_metrics_through_the_sdk(tmp_path: Path, cleanup: list[Any]) -> None:
    llm = HeldLLM("A")
    llm.release()
    host = await start_host(tmp_path / "h", cleanup, llm)
    keys = tmp_path / "keys"
    keys.write_text("# test keys\nsk-alpha\n")
    client, app, base = await start_client(
        tmp_path / "c",
        cleanup,
        host.token or "",
        api_keys=("sk-flag",),
        api_keys_file=keys,
        rate_limit_rpm=3,
        metrics=True,
    )
    alpha = openai.AsyncOpenAI(base_url=base + "/v1", api_key="sk-alpha", max_retries=0)
    flag = openai.AsyncOpenAI(base_url=base + "/v1", api_key="sk-flag", max_retries=0)
    wrong = openai.AsyncOpenAI(base_url=base + "/v1", api_key="sk-wrong", max_retries=0)
    beta = openai.AsyncOpenAI(base_url=base + "/v1", api_key="sk-beta", max_retries=0)

    with pytest.raises(openai.AuthenticationError) as bad:
        await aio(wrong.models.list())
    assert bad.value.status_code == 401
    assert bad.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    assert bad.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert bad.value.response.headers["www-authenticate"] == "Bearer"

    raw = await aio(alpha.chat.completions.with_raw_response.create(model="tiny", messages=MSG))
    assert raw.headers["x-ratelimit-limit-requests"] == "3"
    assert raw.headers["x-ratelimit-remaining-requests"] == "2"
    assert raw.headers["x-ratelimit-reset-requests"] == "20s"
    assert raw.parse().choices[0].message.content == "w0 w1 w2 w3 w4 A"
    s = await aio(alpha.chat.completions.create(model="tiny", messages=MSG, stream=True))

    async def drain(stream: Any) -> list[str]:
        return [c.choices[0].delta.content or "" async for c in stream]

    assert await aio(drain(s)) == ["w0 ", "w1 ", "w2 ", "w3 ", "w4 "]
    await aio(alpha.models.list())
    with pytest.raises(openai.RateLimitError) as limited:
        await aio(alpha.models.list())
    h = limited.value.response.headers
    assert h["x-ratelimit-remaining-requests"] == "0" and int(h["retry-after"]) >= 1
    assert limited.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
    assert limited.value.body["type"] == "requests"  # type: ignore[index]
    # Per key: the flag key has its own bucket.
    assert [m.id for m in (await aio(flag.models.list())).data] == ["tiny", "mesh"]

    # Reload: sk-beta joins, sk-alpha leaves; the flag key stays.
    with pytest.raises(openai.AuthenticationError):
        await aio(beta.models.list())
    keys.write_text("sk-beta\n")
    assert app.gate.keys.reload()
    await aio(beta.models.list())
    with pytest.raises(openai.AuthenticationError):
        await aio(alpha.models.list())
    await aio(flag.models.list())

    # /ready and /metrics need no key; /ready flips when the host leaves the mesh.
    code, _, body = await http_get(base + "/ready")
    assert code == 200 and json.loads(body)["models"] == ["tiny"]
    m = scrape((await http_get(base + "/metrics"))[2].decode())
    chat = (("model", "tiny"), ("route", "/v1/chat/completions"))
    models = (("model", "other"), ("route", "/v1/models"))
    assert m[("meshd_requests_total", (*chat, ("status", "200")))] == 2
    assert m[("meshd_requests_total", (*models, ("status", "200")))] == 4  # alpha, flag, beta, flag
    assert m[("meshd_requests_total", (*models, ("status", "401")))] == 3  # wrong, beta, alpha
    assert m[("meshd_requests_total", (*models, ("status", "429")))] == 1
    assert m[("meshd_requests_total", (("model", "other"), ("route", "/ready"), ("status", "200")))] == 1
    assert m[("meshd_rejections_total", (("reason", "auth"),))] == 3
    assert m[("meshd_rejections_total", (("reason", "rate_limit_requests"),))] == 1

    await host.stopService()
    await wait_for(lambda: not client.mesh.routable_models() or client.state is not NodeState.JOINED, within=30)
    code, _, body = await http_get(base + "/ready")
    assert code == 503 and json.loads(body)["status"] == "not_ready"
    console = ConsoleApp(client)
    cport = reactor.listenTCP(0, console.site(), interface="127.0.0.1")
    cleanup.append(cport)
    code, _, body = await http_get(f"http://127.0.0.1:{cport.getHost().port}/ready")
    assert code == 503 and json.loads(body)["status"] == "not_ready"
    for sdk in (alpha, flag, wrong, beta):
        await aio(sdk.close())


@pytest.fixture
def chromium() -> str:
    """The system Chromium for Playwright. Missing = a failure, unless MESHD_SKIP_BROWSER=1."""
    if os.environ.get("MESHD_SKIP_BROWSER") == "1":
        pytest.skip("MESHD_SKIP_BROWSER=1")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (or set MESHD_SKIP_BROWSER=1)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("playwright is missing: pip install playwright (never `playwright install`)")
    return CHROMIUM


PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>cross-origin</title></head><body><script>
window.gotFirst = false;
window.run = async function (api, key) {
  const resp = await fetch(api + "/v1/chat/completions", {
    method: "POST",
    headers: {"Authorization": "Bearer " + key, "Content-Type": "application/json"},
    body: JSON.stringify({model: "tiny", stream: true, messages: [{role: "user", content: "hi"}]}),
  });
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let text = "", chunks = 0;
  for (;;) {
    const {done, value} = await reader.read();
    if (done) break;
    chunks += 1;
    text += dec.decode(value, {stream: true});
    window.gotFirst = true;
  }
  return {status: resp.status, text: text, chunks: chunks,
          remaining: resp.headers.get("x-ratelimit-remaining-requests"),
          requestId: resp.headers.get("x-request-id")};
};
</script></body></html>"""


START_JS = (
    "([api, key]) => { window.result = window.run(api, key)"
    ".catch((e) => { window.failed = String(e); return {error: window.failed}; }); }"
)


class Page(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return PAGE


def drive_browser(executable: str, page_url: str, api: str, key: str, release: Callable[[], None]) -> dict[str, Any]:
    """Runs in a thread: Playwright's sync API with the system Chromium and a fresh profile."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="meshd-chromium-")
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                profile, executable_path=executable, args=CHROMIUM_ARGS, headless=True
            )
            try:
                page = ctx.new_page()
                page.goto(page_url)
                page.evaluate(START_JS, [api, key])
                # The first SSE chunk reached the page while the backend still holds the rest: streaming.
                page.wait_for_function("window.gotFirst === true || window.failed !== undefined", timeout=30_000)
                reactor.callFromThread(release)
                result: dict[str, Any] = page.evaluate("window.result")
                return result
            finally:
                ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_cross_origin_streaming_fetch_from_headless_chromium(
    tmp_path: Path, cleanup: list[Any], chromium: str
) -> None:
    llm = HeldLLM("A")
    host = await start_host(tmp_path / "h", cleanup, llm)
    page_port = reactor.listenTCP(0, Site(Page()), interface="127.0.0.1")
    cleanup.append(page_port)
    origin = f"http://127.0.0.1:{page_port.getHost().port}"
    _, app, base = await start_client(
        tmp_path / "c", cleanup, host.token or "", api_keys=("sk-browser",), rate_limit_rpm=10, cors_origins=(origin,)
    )
    seen: list[dict[str, Any]] = []
    from twisted.logger import globalLogPublisher

    def observe(ev: dict[str, Any]) -> None:
        if ev.get("event") == "access":
            seen.append(ev)

    globalLogPublisher.addObserver(observe)
    try:
        result = await threads.deferToThread(drive_browser, chromium, origin + "/", base, "sk-browser", llm.release)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert result.get("error") is None, result
    assert result["status"] == 200
    assert result["text"].count("data: ") == 6 and result["text"].rstrip().endswith("data: [DONE]")
    assert [f"w{i} " in result["text"] for i in range(5)] == [True] * 5
    assert result["chunks"] >= 2  # the first chunk arrived before the rest existed
    assert result["remaining"] == "9"  # an exposed header
    assert result["requestId"]
    methods = [(e["method"], e["status"]) for e in seen]
    assert ("OPTIONS", 204) in methods and ("POST", 200) in methods  # preflight, then the request
    post = next(e for e in seen if e["method"] == "POST")
    assert post["key_id"] == key_id("sk-browser") and post["model"] == "tiny" and post["ttfb_ms"] is not None
    assert app.gate.concurrency.inflight == 0


# -- a real daemon: SIGHUP reloads the keys file --------------------------------------------------


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    ds: list[Daemon] = []
    yield ds
    for d in ds:
        d.kill()


def _status(url: str, key: str) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_daemon_reloads_the_keys_file_on_sighup(tmp_path: Path, daemons: list[Daemon]) -> None:
    keys = tmp_path / "keys"
    keys.write_text("sk-first\n")
    d = Daemon(
        [
            "--client",
            "--nostr-relay",
            "ws://127.0.0.1:9",
            "--port",
            "0",
            "--console",
            "0",
            "--state-dir",
            str(tmp_path / "state"),
            "--api-keys-file",
            str(keys),
        ],
        cwd=tmp_path,
    )
    daemons.append(d)
    ready = d.wait_event("ready")
    started = d.wait_event("api_keys")
    assert started["msg"] == "API keys required (1 keys)"
    models = ready["api_url"] + "/v1/models"
    assert _status(models, "sk-first") == 200
    assert _status(models, "sk-second") == 401
    keys.write_text("# rotated\nsk-second\n")
    d.proc.send_signal(signal.SIGHUP)
    reloaded = d.wait_event("api_keys_reloaded")
    assert reloaded["n"] == 1 and reloaded["added"] == 1 and reloaded["removed"] == 1
    assert _status(models, "sk-second") == 200
    assert _status(models, "sk-first") == 401
    text = "\n".join(json.dumps(r) for r in d.records)
    assert "sk-first" not in text and "sk-second" not in text
    assert d.terminate() == 0
