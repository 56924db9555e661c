"""Helpers for tests that run whole meshes of real processes: backends, ``meshd --serve`` hosts and
``meshd --client`` clients on 127.0.0.1, with no Nostr and no relay."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import openai

from tests.integration.backend import free_port
from tests.integration.daemon import REPO, Daemon, repo_env


def until(
    pred: Any,
    within: float,
    what: str,
    step: float = 0.1,
    retry_on: tuple[type[Exception], ...] = (OSError,),
) -> Any:
    """Poll ``pred`` until it returns something true (within ``within`` seconds, else AssertionError).
    An exception of ``retry_on`` (the daemon not listening yet, a half-written file) counts as "not yet"."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except retry_on as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as resp:
        return json.loads(resp.read())


def start_odd_backend(
    style: str, model: str, log: Path, delay: float = 0.0, think: float = 0.0
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.odd_backends", style, str(port), model, str(delay), str(think)],
            cwd=REPO,
            env=repo_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"backend {style} exited: {log.read_text(errors='replace')[-2000:]}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    until(listening, 20, f"backend {style} listening")
    return proc, url


class Mesh:
    """One client and one host per backend, all in one mesh (every host joins the first)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.daemons: list[Daemon] = []
        self.backends: list[subprocess.Popen[bytes]] = []
        self.direct: dict[str, str] = {}  # model -> backend base URL
        self.first_token: str | None = None
        self.api = ""
        self.consoles: dict[str, str] = {}  # host name -> console URL
        self.hosts: dict[str, Daemon] = {}

    def host(self, name: str, url: str, *extra: str) -> Daemon:
        """A host for ``url``: the first one starts the mesh, the others join it."""
        args = ["--serve", url, "--port", "0", "--console", "0", "--no-nostr", "--bind-address", "127.0.0.1"]
        if self.first_token is not None:
            args += ["--join", self.first_token]
        d = Daemon([*args, "--state-dir", str(self.tmp / name), *extra], cwd=self.tmp)
        self.daemons.append(d)
        self.hosts[name] = d
        token = d.wait_event("node_start")["token"]
        self.consoles[name] = str(d.wait_event("ready")["console_url"])
        if self.first_token is None:
            self.first_token = token
        return d

    def client(self, *extra: str) -> str:
        """A client joined to the mesh; returns its API URL (``self.api`` is the first client's)."""
        assert self.first_token is not None
        d = Daemon(
            ["--client", "--join", self.first_token, "--port", "0", "--console", "0", "--no-nostr", *extra],
            cwd=self.tmp,
        )
        self.daemons.append(d)
        api = str(d.wait_event("ready")["api_url"])
        self.api = self.api or api
        return api

    def wait_models(
        self, api: str, wanted: list[str], within: float = 60, headers: dict[str, str] | None = None
    ) -> None:
        """Until ``/v1/models`` lists exactly ``wanted`` (and the virtual ``mesh`` entry 0.76 adds to any list)."""
        expected = sorted([*wanted, "mesh"]) if wanted else []

        def listed() -> list[str]:
            return sorted(x["id"] for x in get_json(api + "/v1/models", headers)["data"])

        until(lambda: listed() == expected, within, "models")

    def stop(self) -> None:
        for d in self.daemons:
            d.kill()
        for p in self.backends:
            p.kill()
            p.wait(10)


def sdk(base: str, timeout: float = 60) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=timeout)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
