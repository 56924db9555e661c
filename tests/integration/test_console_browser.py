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

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor

from meshd.autojoin import Discovery, listing_for
from meshd.config import Role
from meshd.discovery.keys import NostrKeys
from meshd.discovery.listing import build_listing_event
from meshd.discovery.relay import RelayPool
from meshd.node import Node, NodeState
from meshd.web.api import APIApp
from meshd.web.console import ConsoleApp
from tests.integration.relays import RelayProcess, rust_relay_fixture  # noqa: F401  (fixture)
from tests.integration.test_client_api import FakeLLM, aio, node, start_host, wait_for

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
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1440, "height": 900},
        )

    async def page(self) -> Any:
        page = await self.context.new_page()
        page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
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


async def start_mesh(tmp: Path, cleanup: list[Any], relay_url: str | None = None) -> Mesh:
    mesh = Mesh()
    for name in ("A", "B"):
        mesh.hosts.append(await start_host(tmp / name, cleanup, name))
    host_a, host_b = mesh.hosts[0][0], mesh.hosts[1][0]
    await host_b.join_any([host_a.token or ""])  # one mesh of two hosts
    client = node(tmp / "c", Role.CLIENT, (host_a.token or "",))  # learns host B through gossip
    client.startService()
    cleanup.append(client)
    api_port = reactor.listenTCP(0, APIApp(client, reactor).site(), interface="127.0.0.1")
    cleanup.append(api_port)
    discovery = None
    if relay_url is not None:
        # Host A publishes its listing on a real relay; the client's console discovers it.
        await wait_for(lambda: host_a.mesh_id is not None)
        pub = RelayPool(reactor, [relay_url])
        pub.startService()
        cleanup.append(pub)
        await pub.wait_settled(10)
        listing = listing_for(host_a)
        assert listing is not None
        results = await pub.publish(build_listing_event(NostrKeys.generate(), listing, now=int(time.time())))
        assert [r.accepted for r in results] == [True], results
        pool = RelayPool(reactor, [relay_url])
        pool.startService()
        cleanup.append(pool)
        await pool.wait_settled(10)
        client.relay_status = pool.status
        discovery = Discovery(reactor, client, pool)
    console = ConsoleApp(client, discovery)
    console_port = reactor.listenTCP(0, console.site(), interface="127.0.0.1")
    cleanup.extend([console_port, console])
    client.api_port = api_port.getHost().port
    client.console_port = console_port.getHost().port
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
    client.api_port = closed.getHost().port
    await closed.stopListening()  # nothing listens there any more
    console = ConsoleApp(client)
    port = reactor.listenTCP(0, console.site(), interface="127.0.0.1")
    cleanup.extend([port, console])
    url = f"http://127.0.0.1:{port.getHost().port}/api/chat"
    resp = await treq.post(url, data=b'{"model":"tiny","messages":[]}', headers={"content-type": "application/json"})
    assert resp.code == 502
    assert json.loads(await resp.content()) == {"error": "Cannot reach LLM server"}
