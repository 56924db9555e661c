"""mesh-llm 0.76's own web console, served against a meshd node, for tests.

The console is the single-page app that ships in the npm package ``@mesh-llm/sdk`` 0.76.2 under
``console/`` (the package ``scripts/install-mesh-sdk`` caches, see :mod:`tests.integration.mesh_sdk`). It
calls its management API on its own origin (``/api/status``, ``/api/events``, ``/api/models``, ...), so
:class:`ConsoleServer` serves the package's files from 127.0.0.1 and forwards every ``/api/*`` request, as
it is, to a meshd node's console port (what a reverse proxy in front of meshd would do). SSE responses are
forwarded as they arrive. The files are read from the cache at test time and never copied into the repo.

If the package is missing, the ``console076_dir`` fixture fails with the install command (set
``MESHD_SKIP_MESH_SDK=1`` to skip instead), like the SDK fixture.
"""

from __future__ import annotations

import http.client
import mimetypes
import os
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.integration.mesh_sdk import INSTALL_HINT, default_root

#: The console's build, as its release manifest names it.
CONSOLE_RELEASE = "v0.76.2"
#: Request headers not passed on (hop-by-hop, and the browser's own Host).
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "host"}
#: A forwarded request, and one read of a forwarded response, may take this long at most.
UPSTREAM_TIMEOUT = 30.0


def console_dir() -> Path:
    return default_root() / "opt" / "meshsdk" / "console"


@pytest.fixture(scope="session")
def console076_dir() -> Path:
    path = console_dir()
    if not (path / "index.html").is_file() or not (path / ".mesh-llm-ui-release.json").is_file():
        reason = f"no mesh-llm 0.76 console at {path}"
        if os.environ.get("MESHD_SKIP_MESH_SDK") == "1":
            pytest.skip(f"{reason} and MESHD_SKIP_MESH_SDK=1")
        pytest.fail(f"{reason}: {INSTALL_HINT}", pytrace=False)
    return path


class ConsoleServer:
    """Serves ``root`` on 127.0.0.1 (unknown paths get ``index.html``, as an SPA host does) and forwards
    ``/api/*`` to ``upstream`` (``http://127.0.0.1:PORT``, changeable with :meth:`point_at`).

    ``api_calls`` records ``(method, path, status)`` of every forwarded request."""

    def __init__(self, root: Path, upstream: str) -> None:
        self.root = root.resolve()
        self.upstream = upstream
        self.api_calls: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self)

            do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> ConsoleServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(10)

    def point_at(self, upstream: str) -> None:
        self.upstream = upstream

    def calls(self) -> list[tuple[str, str, int]]:
        with self._lock:
            return list(self.api_calls)

    # -- one request ----------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = urllib.parse.urlsplit(h.path).path
        if path.startswith("/api/"):
            self._forward(h)
        else:
            self._static(h, path)

    def _static(self, h: BaseHTTPRequestHandler, path: str) -> None:
        target = (self.root / urllib.parse.unquote(path).lstrip("/")).resolve()
        if not target.is_file() or self.root not in target.parents:
            target = self.root / "index.html"  # client-side routes (/dashboard, /chat, ...)
        data = target.read_bytes()
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix == ".mjs":
            ctype = "text/javascript"
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)

    def _forward(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else None
        up = urllib.parse.urlsplit(self.upstream)
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=UPSTREAM_TIMEOUT)
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP}
        try:
            conn.request(h.command, h.path, body=body, headers=headers)
            resp = conn.getresponse()
        except OSError as e:
            h.send_error(502, f"upstream: {e}")
            return
        with self._lock:
            self.api_calls.append((h.command, urllib.parse.urlsplit(h.path).path, resp.status))
        h.send_response(resp.status)
        streaming = resp.getheader("Content-Type", "").startswith("text/event-stream")
        for k, v in resp.getheaders():
            if k.lower() not in _HOP and k.lower() != "content-length":
                h.send_header(k, v)
        try:
            if streaming:
                h.send_header("Connection", "close")
                h.end_headers()
                while True:
                    chunk = resp.read1(65536)
                    if not chunk:
                        break
                    h.wfile.write(chunk)
                    h.wfile.flush()
            else:
                data = resp.read()
                h.send_header("Content-Length", str(len(data)))
                h.end_headers()
                if h.command != "HEAD":
                    h.wfile.write(data)
        except (OSError, http.client.HTTPException):
            pass  # the browser went away (an EventSource closed), or the node did
        finally:
            conn.close()
        if streaming:
            h.close_connection = True


@pytest.fixture
def console_server(console076_dir: Path) -> Iterator[ConsoleServer]:
    """A console server with no upstream yet: call ``point_at`` with a meshd console URL."""
    server = ConsoleServer(console076_dir, "http://127.0.0.1:9").start()
    try:
        yield server
    finally:
        server.stop()
