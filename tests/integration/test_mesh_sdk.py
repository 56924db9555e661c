"""meshd against the real mesh-llm 0.76 client: the official Node SDK ``@mesh-llm/sdk`` 0.76.2 (its
Rust client, iroh 1.0.x, in a prebuilt addon) in a Debian 13 chroot, and a real ``twistd -n meshd
--serve`` host on a real llama-server."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshd.iroh_relay.home import DEFAULT_RELAYS
from meshd.protocol.requirements import MeshGenesisPolicy, SignedBootstrapToken, SignedMeshGenesisPolicy, owner_id
from meshd.protocol.token import decode_invite_token, decode_token
from tests.integration.backend import LlamaBackend
from tests.integration.daemon import Daemon
from tests.integration.local_mesh import Mesh, get_json, start_odd_backend, until
from tests.integration.mesh_sdk import SDK_VERSION, MeshSdk

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# What the SDK's Client does for an app: create with an owner key and an invite token, start, then
# list models and chat. chat() does not throw on a failed request: it returns the events.
CLIENT_SCRIPT = """
;(async () => {
  const out = {}
  const client = sdk.Client.create({ ownerKeypairHex: sdk.generateOwnerKeypairHex(), inviteToken: process.env.TOKEN })
  await client.start()
  out.status = await client.status()
  try { out.models = await client.inference.listModels() } catch (e) { out.modelsError = errorText(e) }
  try {
    out.chat = await client.inference.chat(
      { model: 'tiny', messages: [{ role: 'user', content: 'hello mesh' }] }, { timeoutMs: 30000 })
  } catch (e) { out.chatError = errorText(e) }
  await client.stop()
  emit(out)
})().catch((e) => emit({ error: errorText(e) }))
"""


def test_sdk_loads_in_the_chroot(mesh_sdk: MeshSdk) -> None:
    run = mesh_sdk.run("emit({ version: sdk.currentMeshVersion(), owner: sdk.generateOwnerKeypairHex() })", timeout=30)
    assert run.returncode == 0, run.stderr
    assert run.output["version"] == SDK_VERSION == "0.76.2"
    assert re.fullmatch(r"[0-9a-f]{128}", run.output["owner"])


def test_sdk_script_deadline_reports(mesh_sdk: MeshSdk) -> None:
    # a script that never finishes is cut off by its own deadline and still reports
    run = mesh_sdk.run("setInterval(() => {}, 1000)", timeout=4)
    assert (run.returncode, run.output) == (3, {"deadline": True})


@pytest.fixture(scope="module")
def meshd_host(tmp_path_factory: pytest.TempPathFactory, llama_backend: LlamaBackend) -> Iterator[str]:
    """A ``meshd --serve`` host (direct UDP on 127.0.0.1 only, no relays, a dead Nostr relay) on the
    tiny llama-server; yields its invite token."""
    tmp = tmp_path_factory.mktemp("sdk-host")
    d = Daemon(
        [
            "--serve",
            llama_backend.url,
            "--port",
            "0",
            "--console",
            "0",
            "--bind-address",
            "127.0.0.1",
            "--no-relay",
            "--nostr-relay",
            "ws://127.0.0.1:9",
            "--state-dir",
            str(tmp / "state"),
        ],
        cwd=Path(tmp),
    )
    try:
        ready = d.wait_event("ready", timeout=30)
        d.wait_event("backend_state", timeout=30)
        with urllib.request.urlopen(ready["console_url"] + "/api/status", timeout=5) as resp:
            token = json.loads(resp.read())["token"]
        assert decode_token(token).dialable_ip_addrs()[0][0] == "127.0.0.1"
        yield token
    finally:
        d.kill()


def test_sdk_reaches_a_meshd_host_over_quic(mesh_sdk: MeshSdk, meshd_host: str) -> None:
    # The SDK's iroh 1.0.x endpoint (SNI <base32>.iroh.invalid, X25519MLKEM768 + X25519 key shares,
    # raw public keys) completes the handshake with meshd, opens 0x04, writes its request and reads
    # to the end. Until meshd serves 0x04 before admission the reply is empty, which the SDK calls
    # a "malformed HTTP response"; a transport failure would read "connect mesh endpoint: ...".
    run = mesh_sdk.run(CLIENT_SCRIPT, env={"TOKEN": meshd_host}, timeout=90)
    out = run.output
    assert out["status"] == {"connected": True, "peerCount": 1}
    assert "models" in out or out["modelsError"] == "endpoint error: malformed HTTP response", out


def test_sdk_reads_a_signed_bootstrap_token_made_by_meshd(mesh_sdk: MeshSdk, meshd_host: str) -> None:
    # A gated-mesh invite built by meshd's own encoder (owner-signed, serde-style JSON with byte
    # arrays as integer lists): the SDK's Rust decoder must find serialized_addrs[0] in it and dial
    # the same host. A token it could not parse would fail with "invalid invite token ...".
    owner = Ed25519PrivateKey.generate()
    policy = MeshGenesisPolicy(owner_id(owner.public_key().public_bytes_raw()), 1_700_000_000_000)
    signed = SignedBootstrapToken.sign(
        [decode_token(meshd_host).to_json().encode()],
        SignedMeshGenesisPolicy.sign(policy, owner),
        owner,
        expires_at_unix_ms=None,
    )
    token = signed.encode()
    assert decode_invite_token(token, now_ms=1_700_000_000_000).addr == decode_token(meshd_host)
    run = mesh_sdk.run(CLIENT_SCRIPT, env={"TOKEN": token}, timeout=90)
    out = run.output
    assert "models" in out or out["modelsError"] == "endpoint error: malformed HTTP response", out


FULL_SCRIPT = """
;(async () => {
  const out = {}
  const make = process.env.KIND === 'node'
    ? () => sdk.Node.create({ ownerKeypairHex: sdk.generateOwnerKeypairHex(), inviteToken: process.env.TOKEN,
                               servingEnabled: false, cacheDir: '/tmp/meshsdk-cache' })
    : () => sdk.Client.create({ ownerKeypairHex: sdk.generateOwnerKeypairHex(), inviteToken: process.env.TOKEN })
  const node = make()
  const t0 = Date.now()
  await node.start()
  out.models = await node.inference.listModels()
  out.firstAnswerMs = Date.now() - t0
  out.chat = await node.inference.chat(
    { model: 'tiny', messages: [{ role: 'user', content: 'hello mesh' }] }, { timeoutMs: 30000 })
  out.responses = await node.inference.responses({ model: 'tiny', input: 'hello mesh' }, { timeoutMs: 30000 })
  // A caller that gives up: the SDK's own deadline on a backend that thinks for 8 s.
  const t1 = Date.now()
  out.slow = await node.inference.chat(
    { model: 'slow', messages: [{ role: 'user', content: 'take your time' }] }, { timeoutMs: 1500 })
  out.slowMs = Date.now() - t1
  try { await node.inference.cancel(out.chat.requestId); out.cancelled = true }
  catch (e) { out.cancelError = errorText(e) }
  await node.stop()
  emit(out)
})().catch((e) => emit({ error: errorText(e) }))
"""


@pytest.fixture(scope="module")
def sdk_mesh(tmp_path_factory: pytest.TempPathFactory, llama_backend: LlamaBackend) -> Iterator[Any]:
    """Two meshd hosts in one mesh as a user starts them, with the DEFAULT iroh relays (unreachable here: a
    token must not name them): one on llama-server (``tiny``), one on a backend that thinks 8 s (``slow``)."""
    tmp = tmp_path_factory.mktemp("sdk-mesh")
    mesh = Mesh(tmp)
    try:
        proc, url = start_odd_backend("stdlib", "slow", tmp / "slow.log", think=8.0)
        mesh.backends.append(proc)

        def relayed_host(name: str, backend: str) -> None:
            args = ["--serve", backend, "--port", "0", "--console", "0", "--no-nostr", "--bind-address", "127.0.0.1"]
            if mesh.first_token is not None:
                args += ["--join", mesh.first_token]
            # Daemon adds --no-relay unless a relay flag is given: give mesh-llm's defaults explicitly
            relays = [a for url in DEFAULT_RELAYS for a in ("--relay", url)]
            d = Daemon([*args, *relays, "--state-dir", str(tmp / name)], cwd=tmp)
            mesh.daemons.append(d)
            mesh.hosts[name] = d
            token = d.wait_event("node_start")["token"]
            mesh.consoles[name] = str(d.wait_event("ready")["console_url"])
            mesh.first_token = mesh.first_token or token

        relayed_host("tiny", llama_backend.url)
        relayed_host("slow", url)
        until(lambda: len(get_json(mesh.consoles["tiny"] + "/api/status")["peers"]) == 1, 30, "hosts joined")
        yield mesh
    finally:
        mesh.stop()


@pytest.mark.parametrize("kind", ["client", "node"])
def test_sdk_client_and_node_use_a_meshd_host(mesh_sdk: MeshSdk, sdk_mesh: Any, kind: str) -> None:
    token = get_json(sdk_mesh.consoles["tiny"] + "/api/status")["token"]
    assert decode_token(token).relay_urls == ()  # its home relay was never reached: the token names none
    run = mesh_sdk.run(FULL_SCRIPT, env={"TOKEN": token, "KIND": kind}, timeout=120)
    out = run.output
    assert "error" not in out, out
    assert {m["id"] for m in out["models"]} == {"tiny", "slow", "mesh"}  # the host's own 0.76-shaped list
    print(f"mesh-llm SDK {kind}: start() to the first answer in {out['firstAnswerMs']} ms")
    assert out["firstAnswerMs"] < 20_000  # not the 30 s the SDK waits on a relay nobody can reach
    for answer in (out["chat"], out["responses"]):
        assert [e["type"] for e in answer["events"]] == ["tokenDelta", "completed"], answer
        assert answer["content"] and answer["events"][0]["delta"] == answer["content"]
    # 'slow' is on the other host: the token's host forwards nothing, so the SDK gets the 404 that names what
    # it serves, or (routed there) gives up after its 1.5 s deadline; either way it does not wait 8 s.
    assert out["slowMs"] < 7_000, out
    assert out.get("cancelled") is True or "cancelError" in out


def test_a_caller_that_gives_up_is_cancelled_at_the_host(mesh_sdk: MeshSdk, sdk_mesh: Any) -> None:
    """The SDK's request deadline passes while the host's backend still thinks: the SDK closes its stream
    (STOP_SENDING/reset), and the host aborts the backend request and frees the slot at once."""
    token = get_json(sdk_mesh.consoles["slow"] + "/api/status")["token"]
    script = """
    ;(async () => {
      const c = sdk.Client.create({ ownerKeypairHex: sdk.generateOwnerKeypairHex(), inviteToken: process.env.TOKEN })
      await c.start()
      const r = await c.inference.chat(
        { model: 'slow', messages: [{ role: 'user', content: 'x' }] }, { timeoutMs: 1500 })
      await c.stop()
      emit({ events: r.events })
    })().catch((e) => emit({ error: errorText(e) }))
    """
    before = sum(1 for r in sdk_mesh.hosts["slow"].records if r.get("event") == "tunnel_cancelled")
    run = mesh_sdk.run(script, env={"TOKEN": token}, timeout=60)
    assert run.output["events"][-1]["type"] == "timeout", run.output
    until(
        lambda: sum(1 for r in sdk_mesh.hosts["slow"].records if r.get("event") == "tunnel_cancelled") > before,
        10,
        "the host cancelling the backend request",
    )
    status = get_json(sdk_mesh.consoles["slow"] + "/api/status")["meshd"]["backend"]
    assert status["inflight"] == 0


def test_sdk_client_lists_models_and_chats_through_a_meshd_host(mesh_sdk: MeshSdk, meshd_host: str) -> None:
    run = mesh_sdk.run(CLIENT_SCRIPT, env={"TOKEN": meshd_host}, timeout=90)
    out = run.output
    assert out.get("models") == [{"id": "tiny", "name": "tiny"}, {"id": "mesh", "name": "mesh"}], out
    chat = out.get("chat") or {}
    assert [e["type"] for e in chat.get("events", [])] == ["tokenDelta", "completed"], out
    assert chat["content"] and chat["events"][0]["delta"] == chat["content"]
