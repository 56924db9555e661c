"""Real Nostr relays for integration tests, on free 127.0.0.1 ports.

* :func:`start_rust_relay` — rust-nostr's ``LocalRelay`` from the ``nostr_sdk`` wheel, in its own Python
  subprocess (its asyncio loop is independent of the test reactor).
* :func:`start_py_relay` — PyPI ``nostr-relay`` 1.14 (``nostr-relay -c relay.yaml serve``, sqlite).
* :class:`ScriptedRelay` — a tiny in-process autobahn websocket server whose behaviour a test scripts
  (never send EOSE, send oversized or malformed messages...).
* :func:`sdk_client` — a nostr_sdk/``websockets`` client in a subprocess: publish raw events, fetch
  events and verify them with ``nostr_sdk.Event.verify()``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue

PYTHON = sys.executable
NOSTR_RELAY_BIN = str(Path(sys.executable).with_name("nostr-relay"))

RUST_RELAY_SCRIPT = """
import asyncio, sys
import nostr_sdk
async def main():
    relay = nostr_sdk.LocalRelayBuilder().addr("127.0.0.1").port(int(sys.argv[1])).build()
    await relay.run()
    print("READY", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""

PY_RELAY_CONFIG = """\
DEBUG: false
relay_name: meshd test relay
max_event_size: 65536
storage:
  sqlalchemy.url: sqlite+aiosqlite:///{db}
  validators:
    - nostr_relay.validators.is_signed
    - nostr_relay.validators.is_not_too_large
gunicorn:
  bind: 127.0.0.1:{port}
  workers: 1
  loglevel: warning
  reload: false
verification:
  nip05_verification: disabled
authentication:
  enabled: false
logging:
  version: 1
  root: {{level: WARNING}}
"""

# Subprocess client: publish events (argv: publish URL FILE) or fetch+verify (argv: fetch URL FILTER_JSON).
SDK_CLIENT_SCRIPT = """
import json, sys
import nostr_sdk
from websockets.sync.client import connect
mode, url, arg = sys.argv[1], sys.argv[2], sys.argv[3]
with connect(url, open_timeout=5, max_size=None) as ws:
    if mode == "publish":
        out = []
        for line in open(arg):
            ev = nostr_sdk.Event.from_json(line)  # must parse and verify before we send it
            ev.verify()
            ws.send(json.dumps(["EVENT", json.loads(line)]))
            while True:
                msg = json.loads(ws.recv(timeout=5))
                if msg[0] == "OK":
                    out.append(msg[1:])
                    break
        print(json.dumps(out))
    else:
        ws.send(json.dumps(["REQ", "fetch", json.loads(arg)]))
        events = []
        while True:
            msg = json.loads(ws.recv(timeout=5))
            if msg[0] == "EOSE":
                break
            if msg[0] == "EVENT":
                ev = nostr_sdk.Event.from_json(json.dumps(msg[2]))
                ev.verify()  # raises on a bad id or signature
                events.append({"json": msg[2], "author_npub": ev.author().to_bech32()})
        print(json.dumps(events))
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def dead_relay_url() -> str:
    """A ws:// URL on a port where nothing listens."""
    return f"ws://127.0.0.1:{free_port()}"


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"relay process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"relay did not listen on port {port} within {timeout} s")


@attrs.define
class RelayProcess:
    kind: str
    port: int
    argv: list[str]
    cwd: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> RelayProcess:
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port(self.port, self.proc)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # our own session: the relay and its workers only
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()


def start_rust_relay(tmp_path: Path, port: int | None = None) -> RelayProcess:
    port = port or free_port()
    return RelayProcess("rust", port, [PYTHON, "-c", RUST_RELAY_SCRIPT, str(port)], str(tmp_path)).start()


def start_py_relay(tmp_path: Path, port: int | None = None) -> RelayProcess:
    port = port or free_port()
    workdir = tmp_path / f"nostr-relay-{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "relay.yaml").write_text(PY_RELAY_CONFIG.format(db=workdir / "nostr.sqlite3", port=port))
    argv = [NOSTR_RELAY_BIN, "-c", str(workdir / "relay.yaml"), "serve"]
    return RelayProcess("nostr-relay", port, argv, str(workdir)).start()


@pytest.fixture(name="rust_relay")
def rust_relay_fixture(tmp_path: Path) -> Iterator[RelayProcess]:
    relay = start_rust_relay(tmp_path)
    try:
        yield relay
    finally:
        relay.stop()


@pytest.fixture(name="py_relay")
def py_relay_fixture(tmp_path: Path) -> Iterator[RelayProcess]:
    relay = start_py_relay(tmp_path)
    try:
        yield relay
    finally:
        relay.stop()


def sdk_publish(reactor: Any, url: str, events: list[dict[str, Any]], tmp_path: Path) -> Deferred[list[Any]]:
    """Publish raw signed events (each verified by nostr_sdk first) from a subprocess; fires with OKs."""
    path = tmp_path / f"events-{time.monotonic_ns()}.jsonl"
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events))
    return _run_client(reactor, ["publish", url, str(path)])


def sdk_fetch(reactor: Any, url: str, nostr_filter: dict[str, Any]) -> Deferred[list[dict[str, Any]]]:
    """Fetch events matching ``nostr_filter``; each one is verified by ``nostr_sdk`` in the subprocess."""
    return _run_client(reactor, ["fetch", url, json.dumps(nostr_filter)])


def _run_client(reactor: Any, args: list[str]) -> Deferred[Any]:
    d = getProcessOutputAndValue(PYTHON, ["-c", SDK_CLIENT_SCRIPT, *args], env=dict(os.environ), reactor=reactor)

    def parse(result: tuple[bytes, bytes, int]) -> Any:
        out, err, code = result
        if code != 0:
            raise RuntimeError(f"sdk client failed ({code}): {err.decode(errors='replace')[-2000:]}")
        return json.loads(out)

    return d.addCallback(parse)


# ---------------------------------------------------------------------------------------------------------
# A scripted in-process relay (autobahn server on 127.0.0.1)


class _ScriptedProtocol(WebSocketServerProtocol):  # type: ignore[misc]
    def onOpen(self) -> None:
        self.factory.relay.connections.append(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        msg = json.loads(payload)
        self.factory.relay.received.append(msg)
        self.factory.relay.on_message(self, msg)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self in self.factory.relay.connections:
            self.factory.relay.connections.remove(self)


class ScriptedRelay:
    """``on_message(proto, msg)`` decides the answers; by default REQ gets the stored events, no EOSE."""

    def __init__(self, reactor: Any, events: list[dict[str, Any]] | None = None, send_eose: bool = False):
        self.reactor = reactor
        self.events = list(events or [])
        self.send_eose = send_eose
        self.received: list[Any] = []
        self.connections: list[_ScriptedProtocol] = []
        self.extra_on_req: list[Callable[[_ScriptedProtocol], None]] = []
        self.port: Any = None

    def on_message(self, proto: _ScriptedProtocol, msg: list[Any]) -> None:
        if msg and msg[0] == "REQ":
            sub = msg[1]
            for ev in self.events:
                proto.sendMessage(json.dumps(["EVENT", sub, ev]).encode())
            for action in self.extra_on_req:
                action(proto)
            if self.send_eose:
                proto.sendMessage(json.dumps(["EOSE", sub]).encode())

    def start(self) -> ScriptedRelay:
        factory = WebSocketServerFactory(reactor=self.reactor)
        factory.protocol = _ScriptedProtocol
        factory.relay = self
        factory.setProtocolOptions(maxMessagePayloadSize=4 * 1024 * 1024, maxFramePayloadSize=4 * 1024 * 1024)
        self.port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port.getHost().port}"

    def stop(self) -> Deferred[None]:
        for proto in list(self.connections):
            proto.transport.abortConnection()
        d: Deferred[None] = self.port.stopListening()
        return d
