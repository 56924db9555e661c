"""The real daemon: ``twistd -n meshd`` in a subprocess, its ports, logs and shutdown."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.daemon import REPO, Daemon, repo_env, twistd_cmd

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def http_json(url: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, json.loads(resp.read())


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.kill()


def test_client_with_dead_relay_stays_up_and_exits_on_sigterm(tmp_path: Path, daemons: list[Daemon]) -> None:
    state = tmp_path / "state"
    d = Daemon(
        [
            "--client",
            "--auto",
            "--nostr-relay",
            "ws://127.0.0.1:9",
            "--port",
            "0",
            "--console",
            "0",
            "--state-dir",
            str(state),
        ],
        cwd=tmp_path,
    )
    daemons.append(d)
    ready = d.wait_event("ready")
    api, console = ready["api_url"], ready["console_url"]
    assert api.startswith("http://127.0.0.1:") and console.startswith("http://127.0.0.1:")
    assert http_json(api + "/health") == (200, {"status": "ok"})
    assert http_json(console + "/health") == (200, {"status": "ok"})
    deadline = time.monotonic() + 20
    relay: dict = {}
    while time.monotonic() < deadline:
        _, st = http_json(console + "/api/status")
        relays = st["meshd"]["nostr_discovery"]
        assert [r["url"] for r in relays] == ["ws://127.0.0.1:9"]
        relay = relays[0]
        if relay["state"] == "failing":
            break
        time.sleep(0.2)
    assert relay["state"] == "failing", relay
    assert relay["last_error"]
    assert st["meshd"]["node_state"] == "discovering"
    assert (st["node_state"], st["nostr_discovery"]) == ("client", True)  # mesh-llm 0.76's keys: joins by Nostr
    assert st["is_client"] is True
    assert st["api_port"] == int(api.rsplit(":", 1)[1])
    # still up after the relay failed at least once
    assert http_json(api + "/health")[0] == 200
    assert d.terminate() == 0
    assert not d.bad_lines, d.bad_lines
    assert d.records, "no log lines"
    for rec in d.records:
        assert {"ts", "level", "event", "msg"} <= set(rec)
    # a client never writes a key
    assert not (state / "key").exists()


def test_host_role_persists_its_key(tmp_path: Path, daemons: list[Daemon]) -> None:
    state = tmp_path / "hoststate"
    args = ["--serve", "http://127.0.0.1:9", "--port", "0", "--console", "0", "--state-dir", str(state)]
    d = Daemon(args, cwd=tmp_path)
    daemons.append(d)
    first = d.wait_event("ready")["node_id"]
    assert d.terminate() == 0
    assert (state / "key").stat().st_mode & 0o777 == 0o600
    d2 = Daemon(args, cwd=tmp_path)
    daemons.append(d2)
    assert d2.wait_event("ready")["node_id"] == first
    assert d2.terminate() == 0


def test_refuses_a_world_readable_key(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir(mode=0o700)
    (state / "key").write_text("11" * 32)
    (state / "key").chmod(0o644)
    proc = subprocess.run(
        twistd_cmd("--serve", "http://127.0.0.1:9", "--port", "0", "--console", "0", "--state-dir", str(state)),
        cwd=tmp_path,
        env=repo_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "readable by group or others" in proc.stderr


@pytest.mark.parametrize(("flag", "what"), [("--port", "API port"), ("--console", "console port")])
def test_bind_error_stops_at_once_and_names_the_flag(tmp_path: Path, flag: str, what: str) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    ports = {"--port": "0", "--console": "0", flag: str(port)}
    try:
        proc = subprocess.run(
            twistd_cmd("--client", *(a for kv in ports.items() for a in kv), "--nostr-relay", "ws://127.0.0.1:9"),
            cwd=tmp_path,
            env=repo_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        busy.close()
    assert proc.returncode != 0
    # twistd routes stderr into its log once logging has begun: the message is in one of the two
    out = proc.stderr + proc.stdout
    assert f"cannot listen on 127.0.0.1:{port} (the {what}): " in out
    assert f"choose another with {flag} N (0 = any free port)" in out


def test_usage_error_exits_2_before_binding(tmp_path: Path) -> None:
    proc = subprocess.run(
        twistd_cmd("--client", "--serve", "http://127.0.0.1:1"),
        cwd=tmp_path,
        env=repo_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["meshd: error: --client and --serve are different roles; choose one"]


def test_conflicting_reactor_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run(
        twistd_cmd("--client", reactor="select"),
        cwd=tmp_path,
        env=repo_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "asyncio reactor" in proc.stderr and "SelectReactor" in proc.stderr


def test_explicit_asyncio_reactor_is_accepted(tmp_path: Path) -> None:
    cmd = twistd_cmd("--log-format", "json", "--client", "--port", "0", "--console", "0", reactor="asyncio")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=repo_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            rec = json.loads(line)
            if rec.get("reactor"):
                assert rec["reactor"].endswith("AsyncioSelectorReactor")
            if rec.get("event") == "ready":
                break
        else:
            pytest.fail("no ready event")
    finally:
        proc.terminate()
        assert proc.wait(10) in (0, -signal.SIGTERM)


def test_plugin_found_from_an_installed_wheel(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("meshd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/meshd_plugin.py" in names
    assert "twisted/plugins/__init__.py" not in names
    assert "twisted/__init__.py" not in names
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = repo_env()
    env["PYTHONPATH"] = str(target)  # only the installed wheel, not the checkout
    run = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    out = subprocess.run([*run, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "meshd" in out.stdout
    out = subprocess.run(
        [*run, "-n", "meshd", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    for flag in (
        "--client", "--auto", "--join", "-j,", "--port", "--console", "--listen-all", "--headless",
        "--nostr-relay", "--mesh-name", "--region", "--publish", "--max-clients", "--serve",
        "--bind-port", "--state-dir", "--log-format",
    ):  # fmt: skip
        assert flag in out.stdout, flag
    where = subprocess.run(
        [sys.executable, "-c", "import meshd; print(meshd.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(target))


def test_no_console_runs_the_api_alone(tmp_path: Path, daemons: list[Daemon]) -> None:
    d = Daemon(["--client", "--no-console", "--port", "0", "--nostr-relay", "ws://127.0.0.1:9"], cwd=tmp_path)
    daemons.append(d)
    ready = d.wait_event("ready")
    assert ready["console_url"] is None
    assert http_json(ready["api_url"] + "/health") == (200, {"status": "ok"})
    assert d.terminate() == 0


def test_an_undecodable_join_token_stops_meshd_with_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        twistd_cmd("--client", "--join", "not-a-token", "--port", "0", "--console", "0"),
        cwd=tmp_path,
        env=repo_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("meshd: error: --join: not an invite token ("), proc.stderr


def test_a_host_says_its_backend_is_down_at_once_and_ready_names_it(tmp_path: Path, daemons: list[Daemon]) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    url = f"http://127.0.0.1:{dead.getsockname()[1]}"
    d = Daemon(
        ["--serve", url, "--port", "0", "--console", "0", "--state-dir", str(tmp_path / "s"), "--no-nostr"],
        cwd=tmp_path,
    )
    daemons.append(d)
    ready = d.wait_event("ready")
    down = d.wait_event("backend_state", timeout=10)  # the first poll's answer, not only a change
    assert down["level"] == "warn" and down["state"] == "down" and url in down["msg"]
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(ready["api_url"] + "/ready", timeout=5)
    body = json.loads(e.value.read())
    assert e.value.code == 503 and body["reason"].startswith(f"backend {url} is down")
    dead.close()


def test_a_joining_client_leaves_nostr_alone_and_logs_a_readable_story(tmp_path: Path, daemons: list[Daemon]) -> None:
    host = Daemon(
        ["--serve", "http://127.0.0.1:9", "--port", "0", "--console", "0", "--state-dir", str(tmp_path / "h")],
        cwd=tmp_path,
    )
    daemons.append(host)
    token = host.wait_event("node_start")["token"]
    client = Daemon(["--client", "--join", token, "--port", "0", "--console", "0"], cwd=tmp_path)
    daemons.append(client)
    ready = client.wait_event("ready")
    _, st = http_json(ready["console_url"] + "/api/status")
    assert st["meshd"]["nostr_discovery"] == []  # no Nostr relay contacted: a joining client does not need one
    assert st["nostr_discovery"] is False
    off = Daemon(["--client", "--no-nostr", "--port", "0", "--console", "0"], cwd=tmp_path)
    daemons.append(off)
    off_ready = off.wait_event("ready")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(off_ready["console_url"] + "/api/discover", timeout=5)
    assert e.value.code == 503 and "--no-nostr" in json.loads(e.value.read())["error"]
    host.wait_event("backend_state")  # the host has polled its (dead) backend over HTTP at least once
    for d in (host, client, off):
        assert d.terminate() == 0
        for rec in d.records:
            assert rec["level"] != "debug", rec
            assert not rec["msg"].startswith(("Starting factory", "Stopping factory", "Scheduling retry")), rec
            assert " object at 0x" not in rec["msg"], rec
            assert "nostr relay" not in rec["msg"], rec
