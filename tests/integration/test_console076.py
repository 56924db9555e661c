"""mesh-llm 0.76's own console renders meshd's state.

Headless Chromium loads the console of the npm package ``@mesh-llm/sdk`` 0.76.2 (``console/``, from the cache
of ``scripts/install-mesh-sdk``, see ``tests.integration.console076``), served from 127.0.0.1 with its
``/api/*`` calls forwarded to a real meshd client's console port, then to a real meshd host's
(``twistd -n meshd`` processes; the host shares a real llama-server).

Before ``/api/status`` took 0.76's shape this failed on the dashboard with "RENDER FAULT: Something went
wrong" and the page error ``TypeError: Cannot read properties of undefined (reading 'map')`` (the dashboard
maps ``status.serving_models``, which meshd did not send), and the console's ``GET /api/plugins`` got 404s.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from tests.integration.backend import LlamaBackend
from tests.integration.console076 import ConsoleServer
from tests.integration.daemon import Daemon
from tests.integration.local_mesh import Mesh, get_json
from tests.integration.test_client_api import aio
from tests.integration.test_console_browser import Browser, browser  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

RENDER_FAULT = "RENDER FAULT"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
#: Anything the console fetches from outside 127.0.0.1 (it asks Google for web fonts).
EXTERNAL = re.compile(r"^https?://(?!127\.0\.0\.1[:/])")
#: How long the dashboard may take to show what meshd reported.
RENDER_WAIT_MS = 30_000


@pytest.fixture
def mesh(tmp_path: Path, llama_backend: LlamaBackend) -> Iterator[Mesh]:
    m = Mesh(tmp_path)
    try:
        m.host("host", llama_backend.url)
        m.client()
        m.wait_models(m.api, ["tiny"])
        yield m
    finally:
        m.stop()


def console_of(daemon: Daemon) -> str:
    return str(daemon.wait_event("ready")["console_url"])


class Offline:
    """Keeps the page on 127.0.0.1: web-font CSS is answered empty, anything else outside is refused
    (and remembered, so a test sees it)."""

    def __init__(self) -> None:
        self.refused: list[str] = []

    async def __call__(self, route: Any) -> None:
        url = route.request.url
        if url.startswith("https://fonts.googleapis.com/") or url.startswith("https://fonts.gstatic.com/"):
            await route.fulfill(status=200, content_type="text/css", body="")
            return
        self.refused.append(url)
        await route.abort()


async def dashboard(chromium: Browser, server: ConsoleServer, name: str, wanted: list[str]) -> str:
    """Open the console's dashboard, wait until its text shows every string of ``wanted``, screenshot it
    and return the page's text."""
    page = await aio(chromium.page())
    try:
        await aio(page.goto(server.url + "/"))
        for text in wanted:
            await aio(
                page.wait_for_function(
                    "t => document.body.innerText.includes(t) || document.body.innerText.includes('RENDER FAULT')",
                    arg=text,
                    timeout=RENDER_WAIT_MS,
                )
            )
        ARTIFACTS.mkdir(exist_ok=True)
        await aio(page.screenshot(path=str(ARTIFACTS / f"console076-{name}.png"), full_page=True))
        return str(await aio(page.inner_text("body")))
    finally:
        await aio(page.close())


def check(text: str, wanted: list[str], chromium: Browser, server: ConsoleServer, offline: Offline) -> None:
    assert RENDER_FAULT not in text, text[:2000]
    missing = [w for w in wanted if w not in text]
    assert not missing, (missing, text[:3000])
    assert chromium.errors == [], chromium.errors
    assert offline.refused == []
    calls = server.calls()
    assert {path for _, path, _ in calls} >= {"/api/status", "/api/models", "/api/events", "/api/plugins"}, calls
    assert [c for c in calls if c[2] >= 400] == [], calls


@pytest_twisted.ensureDeferred
async def test_the_076_console_renders_a_meshd_client_and_a_meshd_host(
    mesh: Mesh,
    console_server: ConsoleServer,
    browser: Browser,  # noqa: F811
) -> None:
    offline = Offline()
    await aio(browser.context.route(EXTERNAL, offline))
    host_daemon = mesh.hosts["host"]
    client_daemon = next(d for d in mesh.daemons if "--client" in d.args)

    # The client: itself, the host it reaches (as a peer), the host's model (remote).
    console_server.point_at(console_of(client_daemon))
    status = get_json(console_of(client_daemon) + "/api/status")
    assert status["node_state"] == "client"
    (host_row,) = status["peers"]
    assert (host_row["role"], host_row["state"], host_row["hosted_models"]) == ("Host", "serving", ["tiny"])
    wanted = [
        status["node_id"],  # the NODE ID card
        "1 you · 1 peers",
        "0 loaded locally · 1 remote",  # ACTIVE MODELS: the host's model
        host_row["id"][:8],  # the peers table: the host's short id, hostname and model
        host_row["hostname"],
        "tiny",
        status["version"],
    ]
    text = await dashboard(browser, console_server, "client", wanted)
    check(text, wanted, browser, console_server, offline)

    # The host: serving its backend's model, with the client as its peer.
    console_server.api_calls.clear()
    console_server.point_at(console_of(host_daemon))
    status = get_json(console_of(host_daemon) + "/api/status")
    assert (status["node_state"], status["serving_models"]) == ("serving", ["tiny"])
    (client_row,) = status["peers"]
    assert client_row["role"] == "Client"
    wanted = [status["node_id"], "serving", "1 loaded locally · 0 remote", client_row["id"][:8], "tiny"]
    text = await dashboard(browser, console_server, "host", wanted)
    check(text, wanted, browser, console_server, offline)
