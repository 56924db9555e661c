"""The console in real headless Chromium against a running in-process mesh.

Two meshd hosts (each with a streaming OpenAI-compatible backend) and a meshd client whose API and
console listen on 127.0.0.1. Chromium is driven by Playwright's async API on the reactor's own
asyncio loop. Screenshots go to tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.logger import globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import Site

from meshd.autojoin import Discovery, listing_for
from meshd.config import Config, Role
from meshd.discovery.keys import NostrKeys
from meshd.discovery.listing import build_listing_event
from meshd.discovery.nostr_pool import NostrPool
from meshd.identity import Identity
from meshd.node import Node, NodeState
from meshd.protocol.peers import Role as PeerRole
from meshd.protocol.peers import build_self_announcement, peer_info_from_announcement
from meshd.protocol.token import EndpointAddr
from meshd.status import StatusView
from meshd.web.api import APIApp
from meshd.web.console import ConsoleApp
from tests.integration.relays import RelayProcess, rust_relay_fixture  # noqa: F401  (fixture)
from tests.integration.test_client_api import FakeLLM, aio, node, start_client, start_host, wait_for
from tests.integration.test_console_proxy import browser_headers, raw_request

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

CHROMIUM = os.environ.get("MESHD_CHROMIUM", "/usr/bin/chromium")
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
#: A name that resolves to 127.0.0.1 inside the test's Chromium only: a page served under it is what a
#: DNS-rebinding attack ends with (an attacker's name, now pointing at this machine).
REBIND_NAME = "rebind.test"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


class Browser:
    """One Chromium with a fresh profile; ``errors`` collects console errors and page exceptions."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.profile = tempfile.mkdtemp(prefix="meshd-chromium-")
        self._pw: Any = None
        self.context: Any = None

    async def start(self) -> None:
        from playwright.async_api import async_playwright

        self._pw = await async_playwright().start()
        self.context = await self._pw.chromium.launch_persistent_context(
            self.profile,
            executable_path=CHROMIUM,
            args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {REBIND_NAME} 127.0.0.1"],
            headless=True,
            viewport={"width": 1440, "height": 900},
        )

    async def page(self) -> Any:
        page = await self.context.new_page()
        page.on(
            "console",
            lambda m: (
                self.errors.append(f"console {m.type}: {m.text} at {m.location.get('url')}")
                if m.type == "error"
                else None
            ),
        )
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: self._failed(r))
        return page

    def _failed(self, request: Any) -> None:
        # A fetch the page aborts on purpose (the chat's stop button) is not an error.
        if "/api/chat" not in request.url and "/api/events" not in request.url:
            self.errors.append(f"request failed: {request.url} {request.failure}")

    async def stop(self) -> None:
        if self.context is not None:
            await self.context.close()
        if self._pw is not None:
            await self._pw.stop()
        shutil.rmtree(self.profile, ignore_errors=True)


def unexpected_errors(browser: Browser) -> list[str]:
    """The page errors, but the 503 of ``/api/discover`` on a console started without Nostr discovery."""
    return [e for e in browser.errors if not ("status of 503" in e and e.endswith("/api/discover"))]


def chromium_missing() -> bool:
    return not Path(CHROMIUM).exists()


@pytest_twisted.async_yield_fixture
async def browser() -> AsyncIterator[Browser]:
    if chromium_missing():
        if os.environ.get("MESHD_SKIP_BROWSER") == "1":
            pytest.skip("MESHD_SKIP_BROWSER=1 and no Chromium")
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (or set MESHD_SKIP_BROWSER=1)")
    b = Browser()
    await aio(b.start())
    try:
        yield b
    finally:
        await aio(b.stop())


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


class Mesh:
    def __init__(self) -> None:
        self.hosts: list[tuple[Node, FakeLLM, Any]] = []
        self.client: Node | None = None
        self.console_url = ""
        self.api: APIApp | None = None


async def start_mesh(
    tmp: Path, cleanup: list[Any], relay_url: str | None = None, api_keys: tuple[str, ...] = ()
) -> Mesh:
    mesh = Mesh()
    for name in ("A", "B"):
        mesh.hosts.append(await start_host(tmp / name, cleanup, name))
    host_a, host_b = mesh.hosts[0][0], mesh.hosts[1][0]
    await host_b.join_any([host_a.token or ""])  # one mesh of two hosts
    client = node(tmp / "c", Role.CLIENT, (host_a.token or "",))  # learns host B through gossip
    if api_keys:
        config = Config(
            role=Role.CLIENT,
            join_tokens=(host_a.token or "",),
            bind_address="127.0.0.1",
            state_dir=tmp / "c",
            api_port=0,
            api_keys=api_keys,
        )
        client = Node(config, Identity.generate(), reactor)
    client.startService()
    cleanup.append(client)
    api = APIApp(client, reactor)
    mesh.api = api
    api_port = reactor.listenTCP(0, api.site(), interface="127.0.0.1")
    cleanup.append(api_port)
    discovery = None
    if relay_url is not None:
        # Host A publishes its listing on a real relay; the client's console discovers it.
        await wait_for(lambda: host_a.mesh_id is not None)
        pub = NostrPool(reactor, [relay_url])
        pub.startService()
        cleanup.append(pub)
        await pub.wait_settled(10)
        listing = listing_for(host_a)
        assert listing is not None
        results = await pub.publish(build_listing_event(NostrKeys.generate(), listing, now=int(time.time())))
        assert [r.accepted for r in results] == [True], results
        pool = NostrPool(reactor, [relay_url])
        pool.startService()
        cleanup.append(pool)
        await pool.wait_settled(10)
        discovery = Discovery(reactor, client, pool)
    console = ConsoleApp(client, discovery, api_credential=api.gate.console_credential)
    console_port = reactor.listenTCP(0, console.site(), interface="127.0.0.1")
    cleanup.extend([console_port, console])
    client.ports_bound(api_port.getHost().port, console_port.getHost().port)
    await wait_for(lambda: client.state is NodeState.JOINED and len(client.mesh.hosts()) == 2)
    mesh.client = client
    mesh.console_url = f"http://127.0.0.1:{client.console_port}"
    return mesh


async def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    await aio(page.screenshot(path=str(path), full_page=True))
    return path


@pytest_twisted.ensureDeferred
async def test_dashboard_shows_the_mesh_live(
    tmp_path: Path, rust_relay: RelayProcess, cleanup: list[Any], browser: Browser
) -> None:
    mesh = await start_mesh(tmp_path, cleanup, rust_relay.url)
    resp = await treq.get(mesh.console_url + "/api/status")
    status = json.loads(await resp.content())
    page = await aio(browser.page())
    await aio(page.goto(mesh.console_url + "/dashboard"))
    await aio(page.wait_for_function(f"document.getElementById('node-id').textContent === {status['node_id']!r}"))
    for host, _, _ in mesh.hosts:
        hid = host.identity.short_id
        row = page.locator(f'#peers-table tr[data-peer-id="{hid}"]')
        await aio(row.wait_for())
        text = await aio(row.inner_text())
        assert "tiny" in text and "Host" in text
        await aio(page.locator(f'#topology g.peer-node[data-peer-id="{hid}"]').wait_for())
    model_row = await aio(page.locator('#models-table tr[data-model="tiny"]').inner_text())
    assert "warm" in model_row and "2" in model_row
    assert await aio(page.locator("#stat-hosts").inner_text()) == "2"
    assert await aio(page.locator("#token").inner_text()) == status["token"]
    assert await aio(page.locator("#conn").inner_text()) == "live"
    # The mesh host A published on Nostr, with its score, marked as the mesh we are in.
    listed = page.locator(f'#discover-table tr[data-mesh-id="{status["mesh_id"]}"]')
    await aio(listed.wait_for())
    text = await aio(listed.inner_text())
    assert "tiny" in text and "this mesh" in text
    resp = await treq.get(mesh.console_url + "/api/discover")
    found = json.loads(await resp.content())
    assert [m["listing"]["mesh_id"] for m in found] == [status["mesh_id"]]
    assert str(round(found[0]["score"])) in text
    await screenshot(page, "dashboard-1440.png")
    await aio(page.set_viewport_size({"width": 375, "height": 812}))
    await screenshot(page, "dashboard-375.png")
    width = await aio(page.evaluate("document.documentElement.scrollWidth"))
    assert width <= 375, f"the dashboard scrolls sideways at 375 px ({width} px wide)"
    await aio(page.set_viewport_size({"width": 1440, "height": 900}))

    # A host stops: it disappears from the open page, no reload.
    gone, _, _ = mesh.hosts[1]
    await gone.stopService()
    gid = gone.identity.short_id
    await aio(page.locator(f'#peers-table tr[data-peer-id="{gid}"]').wait_for(state="detached"))
    await aio(page.locator(f'#topology g.peer-node[data-peer-id="{gid}"]').wait_for(state="detached"))
    assert await aio(page.locator("#stat-hosts").inner_text()) == "1"
    assert await aio(page.evaluate("performance.getEntriesByType('navigation').length")) == 1
    # Keyboard: Tab reaches the copy button.
    for _ in range(12):
        await aio(page.keyboard.press("Tab"))
        if await aio(page.evaluate("document.activeElement && document.activeElement.id")) == "copy-token":
            break
    else:
        raise AssertionError("the copy button is not reachable with Tab")
    await aio(page.close())
    assert browser.errors == []


@pytest_twisted.ensureDeferred
async def test_chat_streams_shows_the_host_and_stop_cancels(
    tmp_path: Path, cleanup: list[Any], browser: Browser
) -> None:
    mesh = await start_mesh(tmp_path, cleanup)
    by_id = {h.identity.short_id: llm for h, llm, _ in mesh.hosts}
    for llm in by_id.values():
        llm.chunks, llm.delay = 30, 0.05
    page = await aio(browser.page())
    await aio(page.goto(mesh.console_url + "/chat"))
    await aio(page.wait_for_function("document.getElementById('model').value === 'tiny'"))
    await aio(page.fill("#prompt", "hello mesh"))
    await aio(page.keyboard.press("Enter"))
    # While streaming the reply holds part of the text.
    partial = await aio(
        page.wait_for_function(
            "(() => { const b = document.querySelector('.msg.assistant.streaming .bubble');"
            " return b && b.textContent.startsWith('w0 ') && !b.textContent.includes('w29') && b.textContent; })()"
        )
    )
    assert (await aio(partial.json_value())).startswith("w0")
    await aio(page.wait_for_selector(".msg.assistant:not(.streaming) [data-testid=served-by]"))
    reply = await aio(page.locator(".msg.assistant .bubble").last.inner_text())
    assert reply.strip() == " ".join(f"w{i}" for i in range(30))
    served_by = page.locator("[data-testid=served-by] b").last
    served = (await aio(served_by.inner_text())).strip()
    assert served in by_id
    full = {h.identity.short_id: h.identity.endpoint_id for h, _, _ in mesh.hosts}[served]
    assert await aio(served_by.get_attribute("title")) == full  # from x-mesh-served-by
    assert [r["messages"][-1]["content"] for r in by_id[served].requests] == ["hello mesh"]
    assert await aio(page.locator("[data-testid=ttft]").count()) == 1
    assert await aio(page.locator("[data-testid=tps]").count()) == 1
    await screenshot(page, "chat-1440.png")

    # Stop: the browser aborts, the console drops the upstream, the host's backend sees the cancel.
    for llm in by_id.values():
        llm.chunks, llm.delay = 400, 0.05
    cancelled_before = sum(llm.cancelled for llm in by_id.values())
    await aio(page.fill("#prompt", "a long one"))
    await aio(page.click("#send"))
    await aio(page.wait_for_function("(document.querySelector('.msg.assistant.streaming .bubble') || {}).textContent"))
    assert await aio(page.is_enabled("#stop"))
    await aio(page.click("#stop"))
    await aio(page.wait_for_selector("[data-testid=stopped]"))
    await wait_for(lambda: sum(llm.cancelled for llm in by_id.values()) == cancelled_before + 1)
    assert mesh.client is not None
    await wait_for(lambda: mesh.client is not None and mesh.client.inflight_requests == 0)
    assert not await aio(page.is_enabled("#stop"))

    # Conversations survive a reload.
    await aio(page.reload())
    await aio(page.wait_for_selector(".msg.assistant [data-testid=stopped]"))
    assert await aio(page.locator("#conversations li").count()) == 1
    await aio(page.set_viewport_size({"width": 375, "height": 812}))
    await screenshot(page, "chat-375.png")
    width = await aio(page.evaluate("document.documentElement.scrollWidth"))
    assert width <= 375, f"the chat page scrolls sideways at 375 px ({width} px wide)"
    await aio(page.close())
    assert browser.errors == []


@pytest_twisted.ensureDeferred
async def test_chat_proxy_reports_an_unreachable_api_port_as_502(tmp_path: Path, cleanup: list[Any]) -> None:
    client = node(tmp_path, Role.CLIENT)
    closed = reactor.listenTCP(0, APIApp(client, reactor).site(), interface="127.0.0.1")
    client.ports_bound(closed.getHost().port, None)
    await closed.stopListening()  # nothing listens there any more
    console = ConsoleApp(client)
    port = reactor.listenTCP(0, console.site(), interface="127.0.0.1")
    cleanup.extend([port, console])
    console_url = f"http://127.0.0.1:{port.getHost().port}"
    resp = await treq.post(
        console_url + "/api/chat",
        data=b'{"model":"tiny","messages":[]}',
        headers={"content-type": "application/json", "origin": console_url},
    )
    assert resp.code == 502
    assert json.loads(await resp.content()) == {"error": "Cannot reach LLM server"}


# -- the topology drawing (#14.10) ---------------------------------------------------------------------

LONG_MODELS = ("Qwen3-Coder-480B-A35B-Instruct-GGUF:Q4_K_M", "tiny", "Llama-3.3-70B-Instruct-Q8_0")


def gossip_peers(target: Node, hosts: int, clients: int) -> None:
    """Peers as ``target`` would learn them by gossip (not connected: drawn 'via gossip')."""
    target.mesh.peers.clear()
    infos = []
    for i in range(hosts + clients):
        is_host = i < hosts
        ann = build_self_announcement(
            addr=EndpointAddr(Identity.generate().public_bytes),
            version="0.65.0",
            role=PeerRole.HOST if is_host else PeerRole.CLIENT,
            http_port=9337 if is_host else None,
            hosted_models=LONG_MODELS[i % len(LONG_MODELS) :] if is_host else (),
        )
        infos.append(peer_info_from_announcement(ann))
    if infos:
        target.mesh.ingest_gossip(infos[0].endpoint_id, infos, target.now())


#: Every text of the drawing whose box is not inside the SVG's box (CSS pixels, half a pixel of slack).
LABELS_OUTSIDE = """() => {
  const svg = document.querySelector('#topology svg');
  const box = svg.getBoundingClientRect();
  const texts = [...svg.querySelectorAll('text')];
  const rect = (r) => [r.left, r.top, r.right, r.bottom].map(Math.round).join(",");
  const out = texts.map((t) => [t.textContent, t.getBoundingClientRect()])
    .filter(([, r]) => r.left < box.left - 0.5 || r.right > box.right + 0.5 || r.top < box.top - 0.5
                       || r.bottom > box.bottom + 0.5)
    .map(([text, r]) => `${text}: ${rect(r)} outside ${rect(box)}`);
  return {count: texts.length, outside: out, viewBox: svg.getAttribute('viewBox')};
}"""


@pytest_twisted.ensureDeferred
async def test_topology_labels_stay_inside_the_drawing(tmp_path: Path, cleanup: list[Any], browser: Browser) -> None:
    target = node(tmp_path, Role.HOST)
    target.set_hosted_models(("tiny",))
    console = ConsoleApp(target)
    port = reactor.listenTCP(0, console.site(), interface="127.0.0.1")
    cleanup.extend([port, console])
    url = f"http://127.0.0.1:{port.getHost().port}/dashboard"
    page = await aio(browser.page())
    for width in (1440, 375):
        await aio(page.set_viewport_size({"width": width, "height": 900}))
        for hosts, clients in ((1, 0), (2, 0), (5, 0), (0, 1), (0, 4), (1, 1), (6, 5), (10, 10), (0, 0)):
            gossip_peers(target, hosts, clients)
            await aio(page.goto(url))
            await aio(
                page.wait_for_function(
                    f"document.querySelectorAll('#topology g.peer-node').length === {hosts + clients}"
                    f" && document.getElementById('stat-hosts').textContent === '{hosts + 1}'"
                )
            )
            found = await aio(page.evaluate(LABELS_OUTSIDE))
            # ids, node letters, "YOU", this node's two lines, models, edge labels (at least)
            assert found["count"] >= 3 + 3 * (hosts + clients), found
            assert found["outside"] == [], (width, hosts, clients, found)
            # The layout itself leaves room: the view box did not have to grow (the text is not shrunk).
            assert found["viewBox"].startswith("0 0 "), (width, hosts, clients, found)
            if (hosts, clients) in ((1, 0), (6, 5)):
                await screenshot(page, f"topology-{hosts}h{clients}c-{width}.png")
    # Longer ids and names than the mesh ever sends: the page's own drawing code still keeps them in.
    await aio(
        page.evaluate(
            """() => renderTopology({node_id: 'f'.repeat(64), is_client: false}, Array.from({length: 9}, (_, i) => ({
                 id: String(i).repeat(64), role: i < 5 ? 'Host' : 'Client', path: i % 2 ? 'relay' : 'direct',
                 rtt_ms: 123.4, models: ['m'.repeat(90), 'x']})))"""
        )
    )
    found = await aio(page.evaluate(LABELS_OUTSIDE))
    assert found["outside"] == [], found
    await screenshot(page, "topology-long-375.png")
    await aio(page.close())
    assert unexpected_errors(browser) == []


# -- cross-site requests against the console (#16.7) -----------------------------------------------------

ATTACK_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>cute cats</title></head><body>
<iframe name="sink1"></iframe><iframe name="sink2"></iframe>
<form id="plain" method="POST" enctype="text/plain" target="sink1" action="CONSOLE/api/join">
<input type="hidden" name='{"token": "TOKEN", "x": "' value='"}'></form>
<form id="urlenc" method="POST" target="sink2" action="CONSOLE/api/join">
<input type="hidden" name="token" value="TOKEN"></form>
<script>
window.attack = async function () {
  const url = "CONSOLE/api/join";
  const body = JSON.stringify({token: "TOKEN"});
  const out = {};
  // No preflight for these: a simple content type in no-cors mode (the response is opaque).
  const noCors = (type) => fetch(url, {mode: "no-cors", method: "POST", body, headers: {"Content-Type": type}});
  out.plain = (await noCors("text/plain")).type;
  out.json = (await noCors("application/json")).type;
  // JSON in cors mode needs a preflight the console does not grant.
  try {
    await fetch(url, {method: "POST", body, headers: {"Content-Type": "application/json"}});
    out.cors = "sent";
  } catch (e) {
    out.cors = "blocked";
  }
  // Forms: text/plain whose body is valid JSON, and urlencoded.
  for (const [form, frame] of [["plain", "sink1"], ["urlenc", "sink2"]]) {
    await new Promise((resolve) => {
      document.getElementsByName(frame)[0].onload = resolve;
      document.getElementById(form).submit();
    });
  }
  return out;
};
</script></body></html>"""


class Page(Resource):
    """The attacker's site: one HTML page at every path."""

    isLeaf = True

    def __init__(self, html: bytes) -> None:
        super().__init__()
        self.html = html

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return self.html


class Events:
    """Log events of the given kinds, while it is installed."""

    def __init__(self, *names: str) -> None:
        self.names = names
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("event") in self.names:
            self.events.append(event)

    def of(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name]


@pytest_twisted.ensureDeferred
async def test_pages_of_other_sites_cannot_make_the_node_join(
    tmp_path: Path, cleanup: list[Any], browser: Browser
) -> None:
    mesh = await start_mesh(tmp_path, cleanup)
    client = mesh.client
    assert client is not None
    evil, _, _ = await start_host(tmp_path / "evil", cleanup, "E")  # the attacker's own mesh
    evil_token = evil.token or ""
    own_mesh = client.mesh_id
    html = ATTACK_PAGE.replace("CONSOLE", mesh.console_url).replace("TOKEN", evil_token).encode()
    attacker = reactor.listenTCP(0, Site(Page(html)), interface="127.0.0.1")
    cleanup.append(attacker)
    attacker_origin = f"http://127.0.0.1:{attacker.getHost().port}"
    seen = Events("console_refused", "console_join")
    globalLogPublisher.addObserver(seen)
    try:
        page = await aio(browser.page())
        await aio(page.goto(attacker_origin + "/"))
        out = await aio(page.evaluate("window.attack()"))
        assert out == {"plain": "opaque", "json": "opaque", "cors": "blocked"}
        # The join handler never ran, and the node is where it was.
        assert seen.of("console_join") == []
        status = json.loads(await (await treq.get(mesh.console_url + "/api/status")).content())
        assert status["mesh_id"] == own_mesh
        assert evil.identity.endpoint_id not in [p["meshd"]["endpoint_id"] for p in status["peers"]]
        assert evil.mesh.peers == {}
        # Four POSTs reached the console (the preflighted one never did) and each was refused.
        refused = seen.of("console_refused")
        assert len(refused) == 4, refused
        assert {e["origin"] for e in refused} == {attacker_origin}
        assert {e["status"] for e in refused} <= {403, 415}
        await aio(page.close())
        # The attacker's page logs its refused requests, and nothing else.
        assert browser.errors and all("/api/join" in e for e in browser.errors), browser.errors
        browser.errors.clear()

        # After a DNS rebinding the attacker's page is same-origin with the console: the name gives it away.
        page = await aio(browser.page())
        rebound = f"http://{REBIND_NAME}:{client.console_port}"
        await aio(page.goto(rebound + "/dashboard"))
        await aio(page.fill("#join-token", evil_token))
        await aio(page.click("#join-form button[type=submit]"))
        await aio(
            page.wait_for_function("document.getElementById('join-msg').textContent.startsWith('Could not join')")
        )
        assert "loopback" in await aio(page.locator("#join-msg").inner_text())
        assert seen.of("console_join") == [] and len(seen.of("console_refused")) == 5
        await aio(page.close())
        assert evil.mesh.peers == {}

        # The dashboard's own join button, on the console's own address, still works.
        assert any("403" in e and e.endswith(rebound + "/api/join") for e in browser.errors), browser.errors
        browser.errors.clear()
        page = await aio(browser.page())
        await aio(page.goto(mesh.console_url + "/dashboard"))
        await aio(page.fill("#join-token", evil_token))
        await aio(page.click("#join-form button[type=submit]"))
        await aio(page.wait_for_function("document.getElementById('join-msg').textContent.startsWith('Joined')"))
        assert len(seen.of("console_join")) == 1
        await wait_for(lambda: evil.identity.public_bytes in client.mesh.peers)
        await aio(page.close())
    finally:
        globalLogPublisher.removeObserver(seen)
    assert unexpected_errors(browser) == []


# -- the chat page with API keys on (#16.10) -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_chat_works_with_api_keys_and_the_page_never_gets_the_console_credential(
    tmp_path: Path, cleanup: list[Any], browser: Browser
) -> None:
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        mesh = await start_mesh(tmp_path, cleanup, api_keys=("sk-operator-key",))
        assert mesh.api is not None and mesh.client is not None
        credential = mesh.api.gate.console_credential
        headers_seen: list[str] = []
        page = await aio(browser.page())
        page.on("response", lambda r: headers_seen.append(json.dumps(r.headers)))
        await aio(page.goto(mesh.console_url + "/chat"))
        await aio(page.wait_for_function("document.getElementById('model').value === 'tiny'"))
        await aio(page.fill("#prompt", "hello with keys"))
        await aio(page.keyboard.press("Enter"))
        await aio(page.wait_for_selector(".msg.assistant:not(.streaming) [data-testid=served-by]"))
        reply = await aio(page.locator(".msg.assistant .bubble").last.inner_text())
        assert reply.strip() == "w0 w1 w2 w3 w4"
        llms = [llm for _, llm, _ in mesh.hosts if llm.requests]
        assert len(llms) == 1 and llms[0].requests[-1]["messages"][-1]["content"] == "hello with keys"
        # Neither the console's credential nor any key travelled to the host's backend.
        sent = llms[0].request_headers[-1]
        assert b"x-meshd-console" not in sent and b"authorization" not in sent

        # Nothing the page can read holds the credential: the DOM, storage, any response header or body.
        page_state = await aio(
            page.evaluate("document.documentElement.outerHTML + JSON.stringify(localStorage) + document.cookie")
        )
        assert credential not in page_state
        assert all(credential not in h for h in headers_seen) and headers_seen
        for path in ("/", "/dashboard", "/chat", "/api/status", "/api/models", "/api/discover"):
            resp = await treq.get(mesh.console_url + path)
            text = (await resp.content()).decode("utf-8", "replace") + repr(list(resp.headers.getAllRawHeaders()))
            assert credential not in text, path
        for name in ("chat.js", "common.js", "dashboard.js", "style.css"):
            body = await (await treq.get(f"{mesh.console_url}/assets/{name}")).content()
            assert credential.encode() not in body
        chat = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}).encode()
        port = mesh.client.console_port or 0
        answer = await raw_request(port, "POST", "/api/chat", browser_headers(port), chat)
        assert answer.status_line == "HTTP/1.1 200 OK"
        assert credential not in repr(answer)

        # The API port itself still wants a key; the credential is not one, and guesses do not pass.
        api = f"http://127.0.0.1:{mesh.client.api_port}/v1/chat/completions"
        for extra in (
            {},
            {"x-meshd-console": "guess"},
            {"x-meshd-console": credential[:-2]},
            {"authorization": f"Bearer {credential}"},
        ):
            resp = await treq.post(api, data=chat, headers={"content-type": "application/json", **extra})
            assert resp.code == 401, extra
            await resp.content()
        ok = await treq.post(
            api, data=chat, headers={"content-type": "application/json", "authorization": "Bearer sk-operator-key"}
        )
        assert ok.code == 200
        await ok.content()
        await aio(page.close())
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert all(credential not in repr(event) for event in seen)
    assert any(e.get("event") == "access" and e.get("key_id") == "console" for e in seen)
    assert browser.errors == []


# -- a host's dashboard counts what it served for the mesh (#14.12) ------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_host_dashboard_counts_requests_it_served_for_clients(
    tmp_path: Path, cleanup: list[Any], browser: Browser
) -> None:
    host, llm, watch = await start_host(tmp_path / "h", cleanup, "A")
    console = ConsoleApp(host, status=StatusView(host, backend=watch))  # as build_service wires a host
    port = reactor.listenTCP(0, console.site(), interface="127.0.0.1")
    cleanup.extend([port, console])
    _, base = await start_client(tmp_path / "c", cleanup, (host.token or "",))
    page = await aio(browser.page())
    await aio(page.goto(f"http://127.0.0.1:{port.getHost().port}/dashboard"))
    served = page.locator('#models-table tr[data-model="tiny"] [data-testid=served]')
    await aio(page.wait_for_function("document.getElementById('conn').textContent === 'live'"))
    assert await aio(served.inner_text()) == "0"
    sdk = openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0)
    for i in range(100):
        reply = await aio(
            sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"n{i}"}], max_tokens=4)
        )
        assert reply.choices[0].message.content == "w0 w1 w2 w3 w4 A"
    await aio(sdk.close())
    assert len(llm.requests) == 100
    # The open page follows: no reload.
    await aio(page.wait_for_function(f"{served_js()} === '100'"))
    assert await aio(page.locator("#models-table th.served-col").is_visible())
    status = json.loads(await (await treq.get(f"http://127.0.0.1:{port.getHost().port}/api/status")).content())["meshd"]
    assert status["backend"]["served"] == {"tiny": 100}
    assert [m["served_count"] for m in status["mesh_models"] if m["name"] == "tiny"] == [100]
    assert await aio(page.evaluate("performance.getEntriesByType('navigation').length")) == 1
    await screenshot(page, "host-dashboard-served.png")
    await aio(page.close())
    assert unexpected_errors(browser) == []


def served_js() -> str:
    return "(document.querySelector('#models-table tr[data-model=\"tiny\"] [data-testid=served]') || {}).textContent"
