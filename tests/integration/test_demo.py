"""`meshd demo` as a user runs it: a real llama-server, a meshd host and a meshd client; a completion through the
printed API URL with the openai SDK; every socket on 127.0.0.1; SIGINT/SIGTERM end every process it started.

The demo passes `--no-nostr` to its meshd processes. Until meshd has that flag the tests that start meshd
processes are skipped (tests/unit/test_cli.py checks the demo's command lines meanwhile)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from meshd.llamacpp import find_llama_server
from tests.integration.backend import INSTALL_HINT, LlamaBackend
from tests.integration.daemon import repo_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _meshd_has_no_nostr() -> bool:
    from meshd.tap import Options

    return re.search(r"^\s*--no-nostr\b", str(Options()), re.MULTILINE) is not None  # its --help lists it


needs_no_nostr = pytest.mark.skipif(
    not _meshd_has_no_nostr(), reason="meshd demo passes --no-nostr, which this meshd does not have yet"
)
MSGS: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "hello mesh"}]


@pytest.fixture(scope="module")
def llama_server() -> Path:
    binary = find_llama_server()
    if binary is None:
        if os.environ.get("MESHD_SKIP_LLAMA") == "1":
            pytest.skip("llama-server not installed and MESHD_SKIP_LLAMA=1")
        pytest.fail(INSTALL_HINT, pytrace=False)
    return binary


# -- processes and sockets, read from /proc (not from what the demo says about itself) ---------------------------


def _stat(pid: int) -> tuple[int, int] | None:
    """``(parent pid, start time)`` of a live process, None if it is gone (or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """Every live process below ``root``: pid → start time (so that a reused pid is not mistaken for it)."""
    parents: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                parents[int(entry.name)] = stat
    found: dict[int, int] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, start) in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = start
                frontier.append(pid)
    return found


def still_running(processes: dict[int, int]) -> list[int]:
    return [pid for pid, start in processes.items() if (stat := _stat(pid)) is not None and stat[1] == start]


def processes_mentioning(text: str) -> dict[int, list[str]]:
    """Live processes anywhere whose command line contains ``text`` (every demo child names its state dir)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _stat(int(entry.name)) is not None:
            try:
                argv = cmdline(int(entry.name))
            except OSError:
                continue
            if any(text in arg for arg in argv) and int(entry.name) != os.getpid():
                found[int(entry.name)] = argv
    return found


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]


def _address(hex_addr: str) -> tuple[str, int]:
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    # /proc/net prints each 32-bit word of the address in host (little-endian) order
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words)), int(port, 16)


def sockets_of(pids: list[int]) -> list[tuple[str, tuple[str, int], tuple[str, int]]]:
    """``(protocol, local address, remote address)`` of every inet socket the processes hold."""
    inodes: set[str] = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/net/{proto}").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[9] in inodes:
                found.append((proto, _address(cols[1]), _address(cols[2])))
    return found


class DemoRun:
    """``meshd demo`` in a subprocess; its stdout is read line by line as it comes."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        argv = [sys.executable, "-m", "meshd", "demo", "--state-dir", str(tmp_path / "state"), *args]
        self.proc = subprocess.Popen(
            argv, cwd=tmp_path, env=repo_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if m := re.search(pattern, line):
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    err = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
                    raise AssertionError(f"no line like {pattern!r}; stdout={self.lines} stderr={err}")
                self._cond.wait(min(left, 0.5))

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(60)
        self._reader.join(10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[list[DemoRun]]:
    started: list[DemoRun] = []
    yield started
    for run in started:
        run.kill()
    # A failing test must not leave the demo's children behind either (orphans are no one's descendants).
    for pid in processes_mentioning(str(tmp_path)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def check_local_only(pids: list[int]) -> None:
    found = sockets_of(pids)
    assert found, "the demo's processes hold no inet socket"
    for proto, (local, _lport), (remote, rport) in found:
        assert ipaddress.ip_address(local).is_loopback, (proto, local)
        assert rport == 0 or ipaddress.ip_address(remote).is_loopback, (proto, remote, rport)


def completion(api: str, model: str) -> tuple[str, str | None]:
    client = openai.OpenAI(base_url=api, api_key="unused", max_retries=0, timeout=30)
    raw = client.chat.completions.with_raw_response.create(model=model, messages=MSGS, max_tokens=12, temperature=0)
    answer = raw.parse()
    return answer.choices[0].message.content or "", raw.headers.get("x-mesh-served-by")


@needs_no_nostr
def test_demo_serves_through_the_mesh_and_stops_everything_on_sigint(
    tmp_path: Path, llama_server: Path, runs: list[DemoRun]
) -> None:
    run = DemoRun(tmp_path, "--llama-server", str(llama_server), "--port", "0", "--console", "0")
    runs.append(run)
    run.wait_line(r"Ctrl-C stops everything")
    api = run.wait_line(r"^  API       (http://127\.0\.0\.1:\d+/v1) ").group(1)
    console_port = run.wait_line(r"^  console   http://127\.0\.0\.1:(\d+)/ ").group(1)
    backend = run.wait_line(r"^  backend   llama-server (http://127\.0\.0\.1:\d+) ").group(1)
    assert run.wait_line(r"^  model     (\S+): a 0\.7 MB model with random weights").group(1) == "tiny-random"
    assert "random text" in "\n".join(run.lines)

    children = descendants(run.proc.pid)
    commands = [cmdline(pid) for pid in children]
    assert len(children) == 3, commands
    assert sum(Path(c[0]).name == "llama-server" for c in commands) == 1
    assert sum(c[1:4] == ["-m", "meshd", "--serve"] for c in commands) == 1
    assert sum(c[1:5] == ["-m", "meshd", "--client", "--join"] for c in commands) == 1
    check_local_only(list(children))

    text, served_by = completion(api, "tiny-random")
    direct = openai.OpenAI(base_url=backend + "/v1", api_key="unused", max_retries=0, timeout=30)
    expected = direct.chat.completions.create(model="tiny-random", messages=MSGS, max_tokens=12, temperature=0)
    assert text and text == expected.choices[0].message.content  # the same model answered, through the mesh
    assert served_by and re.fullmatch(r"[0-9a-f]{64}", served_by)

    status = subprocess.run(
        [sys.executable, "-m", "meshd", "status", "--console", console_port],
        env=repo_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert " · client · joined · " in status.stdout.splitlines()[0]
    assert "models     tiny-random (warm, 1 node, 1 request)" in status.stdout

    assert run.stop(signal.SIGINT) == -signal.SIGINT
    assert still_running(children) == []
    assert processes_mentioning(str(tmp_path)) == {}
    assert run.lines[-1] == "meshd demo: stopped"


@needs_no_nostr
def test_demo_with_your_own_server_leaves_it_running_after_sigterm(
    tmp_path: Path, llama_backend: LlamaBackend, runs: list[DemoRun]
) -> None:
    run = DemoRun(tmp_path, "--serve", llama_backend.url, "--port", "0", "--console", "0")
    runs.append(run)
    run.wait_line(r"Ctrl-C stops everything")
    api = run.wait_line(r"^  API       (http://127\.0\.0\.1:\d+/v1) ").group(1)
    assert run.wait_line(r"^  model     (\S+): served by your backend (\S+)").groups() == ("tiny", llama_backend.url)
    children = descendants(run.proc.pid)
    assert len(children) == 2 and all(cmdline(pid)[1:3] == ["-m", "meshd"] for pid in children)
    check_local_only(list(children))
    assert completion(api, "tiny")[0]

    assert run.stop(signal.SIGTERM) == -signal.SIGTERM
    assert still_running(children) == []
    assert processes_mentioning(str(tmp_path)) == {}
    assert llama_backend.proc.poll() is None  # the user's server is theirs: the demo does not stop it


@needs_no_nostr
def test_demo_with_a_taken_port_names_the_flag_and_leaves_nothing_behind(
    tmp_path: Path, llama_server: Path, runs: list[DemoRun]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        run = DemoRun(tmp_path, "--llama-server", str(llama_server), "--port", str(port), "--console", "0")
        runs.append(run)
        code = run.proc.wait(120)
    assert code == 1
    assert run.proc.stderr is not None
    err = run.proc.stderr.read()
    assert "the mesh client exited" in err
    assert f"cannot listen on 127.0.0.1:{port} (the API port)" in err
    assert "choose another with --port N (0 = any free port)" in err
    logs = tmp_path / "state" / "demo"
    assert {"llama-server.log", "host.log", "client.log"} <= {p.name for p in logs.iterdir()}  # all three ran
    assert processes_mentioning(str(tmp_path)) == {}


def test_demo_without_llama_server_says_how_to_get_it(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "meshd", "demo", "--state-dir", str(tmp_path), "--llama-server", "/nonexistent/ls"],
        env=repo_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("meshd demo: llama-server not found at /nonexistent/ls.\n")
    assert "scripts/install-llama-server" in proc.stderr
    assert "meshd demo --serve http://127.0.0.1:8080" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_demo_without_the_gguf_package_says_how_to_get_it(tmp_path: Path) -> None:
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "gguf.py").write_text("raise ImportError('gguf is not installed (test)')\n")
    env = repo_env(str(blocker))
    proc = subprocess.run(
        # the "binary" is never started: the model comes first
        [sys.executable, "-m", "meshd", "demo", "--state-dir", str(tmp_path / "s"), "--llama-server", sys.executable],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "the demo's model is written with the `gguf` package, which is missing here" in proc.stderr
    assert f"{sys.executable} -m pip install 'gguf==0.19.0'" in proc.stderr
    assert "meshd demo --gguf FILE" in proc.stderr and "meshd demo --serve URL" in proc.stderr
    assert "Traceback" not in proc.stderr
