"""`meshd discover` against a real Nostr relay (rust-nostr's), `meshd status` against a real running meshd, and
`meshd status`'s errors against Python's http.server. The commands run as processes (`python -m meshd ...`)."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nostr_sdk
import pytest

from meshd.commands.status import StatusError, fetch_status
from tests.integration.daemon import Daemon, repo_env
from tests.integration.relays import SDK_CLIENT_SCRIPT, RelayProcess, dead_relay_url
from tests.integration.test_nostr_discovery import mesh_llm_listing_json, sdk_listing_event, token

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def meshd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshd", *args], cwd=cwd, env=repo_env(), capture_output=True, text=True, timeout=60
    )


def publish(url: str, events: list[dict[str, Any]], tmp_path: Path) -> list[Any]:
    """Publish signed events with nostr_sdk + websockets (another client than meshd's); returns the relay's OKs."""
    path = tmp_path / f"events-{time.monotonic_ns()}.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    proc = subprocess.run(
        [sys.executable, "-c", SDK_CLIENT_SCRIPT, "publish", url, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def http_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


# -- meshd discover ------------------------------------------------------------------------------------------------


@pytest.fixture
def listed_relay(rust_relay: RelayProcess, tmp_path: Path) -> tuple[RelayProcess, dict[str, Any]]:
    """The relay with two good listings (one community, one named "bobs") and one that is not a listing."""
    now = int(time.time())
    keys = {name: nostr_sdk.Keys.generate() for name in ("a", "b", "junk")}
    events = {
        "a": sdk_listing_event(keys["a"], mesh_llm_listing_json(1, node_count=3, mesh_id="m-a"), created_at=now - 5),
        "b": sdk_listing_event(
            keys["b"],
            mesh_llm_listing_json(2, name="bobs", region="EU", serving=["Llama-3-70B"], total_vram_bytes=80 * 10**9),
            created_at=now - 5,
        ),
        "junk": sdk_listing_event(keys["junk"], '{"not": "a listing"}', created_at=now - 5),
    }
    oks = publish(rust_relay.url, list(events.values()), tmp_path)
    assert [ok[1] for ok in oks] == [True, True, True], oks
    return rust_relay, {"keys": keys, "events": events}


def test_discover_lists_the_relays_meshes_with_scores(
    listed_relay: tuple[RelayProcess, dict[str, Any]], tmp_path: Path
) -> None:
    relay, published = listed_relay
    state = tmp_path / "state"
    state.mkdir()
    (state / "last-mesh").write_text("m-a\n")  # the sticky mesh: +500
    proc = meshd("discover", "--nostr-relay", relay.url, "--state-dir", str(state), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    npub = {name: k.public_key().to_bech32() for name, k in published["keys"].items()}
    assert [m["publisher_npub"] for m in listed] == [npub["a"], npub["b"]]  # the junk event is no listing
    for mesh, name in zip(listed, ("a", "b"), strict=True):
        assert mesh["listing"] == json.loads(published["events"][name]["content"])
        assert mesh["published_at"] == published["events"][name]["created_at"]
    # mesh-llm's score: 100, +300 unnamed/community, +500 sticky, +5 a node, +10 a served, +15 a wanted model
    assert [m["score"] for m in listed] == [100 + 300 + 500 + 15 + 10 + 15, 100 + 10 + 10 + 15]

    human = meshd("discover", "--nostr-relay", relay.url, "--state-dir", str(state), cwd=tmp_path)
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert lines[0] == "2 meshes on Nostr (1 of 1 relays answered), best score first:"
    assert "* (unnamed)  score 940" in lines and "  bobs  score 135" in lines
    assert f"    join      meshd --client --join {token(1)}" in lines
    assert f"    join      meshd --client --join {token(2)}" in lines
    assert "    nodes 2 · clients 0 · VRAM 80.0 GB · region EU" in lines
    assert lines[-1] == "* the mesh `meshd --client --auto` would join"

    named = meshd(
        "discover", "--nostr-relay", relay.url, "--state-dir", str(state), "--mesh-name", "BOBS", cwd=tmp_path
    )
    assert named.returncode == 0, named.stderr
    lines = named.stdout.splitlines()
    assert "* bobs  score 135" in lines and "  (unnamed)  score 940" in lines
    assert lines[-1] == "* the mesh `meshd --client --auto --mesh-name BOBS` would join"


@pytest.mark.parametrize(
    ("filters", "names"),
    [
        (["--region", "eu"], ["bobs"]),
        (["--model", "QWEN3"], [None]),
        (["--model", "glm-4.7"], [None, "bobs"]),  # a wanted model counts
        (["--model", "llama-3"], ["bobs"]),
        (["--min-vram", "50"], ["bobs"]),
        (["--min-vram", "24", "--region", "AU"], []),
    ],
)
def test_discover_filters_like_the_console(
    listed_relay: tuple[RelayProcess, dict[str, Any]], tmp_path: Path, filters: list[str], names: list[str | None]
) -> None:
    relay, _ = listed_relay
    proc = meshd("discover", "--nostr-relay", relay.url, "--state-dir", str(tmp_path), "--json", *filters, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [m["listing"].get("name") for m in json.loads(proc.stdout)] == names


def test_discover_reports_relays_that_did_not_answer(
    listed_relay: tuple[RelayProcess, dict[str, Any]], tmp_path: Path
) -> None:
    relay, _ = listed_relay
    dead = dead_relay_url()
    proc = meshd(
        "discover", "--nostr-relay", dead, "--nostr-relay", relay.url, "--state-dir", str(tmp_path), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "2 meshes on Nostr (1 of 2 relays answered), best score first:"
    assert lines[-2] == "Relays that did not answer:"
    assert lines[-1].startswith(f"  {dead} (failing): ") and "refused" in lines[-1].lower()


def test_discover_without_any_relay_fails_clearly(tmp_path: Path) -> None:
    dead = dead_relay_url()
    proc = meshd("discover", "--nostr-relay", dead, "--wait", "5", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == f"meshd discover: could not reach any Nostr relay within 5 s (tried {dead})\n"


# -- meshd status --------------------------------------------------------------------------------------------------


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Daemon]:
    """A real meshd host whose backend is down (nothing listens on port 9) and whose Nostr relay is dead."""
    d = Daemon(
        [
            "--serve",
            "http://127.0.0.1:9",
            "--port",
            "0",
            "--console",
            "0",
            "--nostr-relay",
            dead_relay_url(),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        cwd=tmp_path,
    )
    try:
        yield d
    finally:
        d.kill()


def test_status_of_a_running_node(host: Daemon, tmp_path: Path) -> None:
    console = host.wait_event("ready")["console_url"]
    port = console.rsplit(":", 1)[1]
    truth = http_json(console + "/api/status")

    proc = meshd("status", "--console", port, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    # meshd's own version and state (the payload's top level is mesh-llm 0.76's: 0.76.0+meshd.X, serving...)
    mine = truth["meshd"]
    assert lines[0].startswith(f"meshd {mine['version']} · node {truth['node_id']} · host · {mine['node_state']}")
    assert f"API        http://127.0.0.1:{truth['api_port']}/v1" in lines
    assert f"console    http://127.0.0.1:{port}/" in lines
    assert f"token      {truth['token']}" in lines
    assert any(line.startswith("backend    http://127.0.0.1:9 NOT healthy") for line in lines), lines
    assert lines[-1] == "peers      none"

    as_json = meshd("status", "--console", console, "--json", cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["token"] == truth["token"] and data["version"] == truth["version"]  # the console's JSON, as is
    assert (data["meshd"]["endpoint_id"], data["meshd"]["role"]) == (mine["endpoint_id"], "host")

    assert host.terminate() == 0
    gone = meshd("status", "--console", port, cwd=tmp_path)
    assert gone.returncode == 1
    assert gone.stderr.startswith(f"meshd status: no meshd console on 127.0.0.1:{port} (connection refused).")
    assert "meshd status --console PORT" in gone.stderr


class _Server(http.server.ThreadingHTTPServer):
    answer: tuple[int, bytes] = (200, b"")
    release = threading.Event()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        code, body = self.server.answer
        if code == 0:  # never answer
            self.server.release.wait(30)
            return
        self.send_response(code)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def web() -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.release = threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ((404, b"no"), "answered HTTP 404: is 127.0.0.1:{port} a meshd console port?"),
        ((200, b"<html>"), "did not answer JSON: is 127.0.0.1:{port} a meshd console port?"),
        ((200, b'["a"]'), "answered JSON that is not a meshd status"),
        ((200, b'{"status": "ok"}'), "answered JSON that is not a meshd status"),
        ((200, b" " * (4 * 1024 * 1024 + 1)), "sent more than 4 MiB: not a meshd status"),
        ((0, b""), "127.0.0.1:{port} did not answer within 0.5 s"),
    ],
)
def test_status_of_something_that_is_not_meshd(web: _Server, answer: tuple[int, bytes], message: str) -> None:
    web.answer = answer
    port = web.server_address[1]
    with pytest.raises(StatusError) as e:
        fetch_status(f"http://127.0.0.1:{port}", timeout=0.5)
    assert message.format(port=port) in str(e.value)


def test_status_of_a_port_that_does_not_speak_http() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        with pytest.raises(StatusError) as e:
            fetch_status(f"http://127.0.0.1:{port}", timeout=5)
        thread.join(10)
    assert str(e.value) == f"127.0.0.1:{port} did not answer HTTP (BadStatusLine): is it a meshd console port?"
