"""A whole local mesh of real processes: a Nostr relay, two ``twistd -n meshd --serve`` hosts on a
real llama-server, and a ``twistd -n meshd --client --auto`` client, used with the openai SDK."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.integration.backend import LlamaBackend
from tests.integration.daemon import Daemon
from tests.integration.local_mesh import until
from tests.integration.relays import RelayProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MSGS: Any = [{"role": "user", "content": "hello mesh"}]


def status(console: str) -> dict[str, Any]:
    with urllib.request.urlopen(console + "/api/status", timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


class Mesh:
    def __init__(self, tmp: Path, relay: RelayProcess, llama: LlamaBackend) -> None:
        self.tmp = tmp
        self.relay_url = f"ws://127.0.0.1:{relay.port}"
        self.llama = llama
        self.daemons: list[Daemon] = []
        self.a_port = free_udp_port()

    def start(self, name: str, *args: str) -> tuple[Daemon, str, str]:
        common = ["--port", "0", "--console", "0", "--bind-address", "127.0.0.1", "--nostr-relay", self.relay_url]
        d = Daemon([*args, *common, "--state-dir", str(self.tmp / name)], cwd=self.tmp)
        self.daemons.append(d)
        ready = d.wait_event("ready", timeout=30)
        return d, ready["api_url"], ready["console_url"]

    def host_a(self) -> tuple[Daemon, str, str]:
        return self.start("a", "--serve", self.llama.url, "--publish", "--bind-port", str(self.a_port))

    def stop_all(self) -> None:
        for d in self.daemons:
            d.kill()


@pytest.fixture
def mesh(tmp_path: Path, rust_relay: RelayProcess, llama_backend: LlamaBackend) -> Iterator[Mesh]:
    m = Mesh(tmp_path, rust_relay, llama_backend)
    try:
        yield m
    finally:
        m.stop_all()


def hosts_seen(console: str) -> list[str]:
    st = status(console)
    return sorted(p["meshd"]["endpoint_id"] for p in st["peers"] if p["role"] == "Host" and "tiny" in p["models"])


def test_client_auto_joins_and_serves_the_openai_api_with_faults(mesh: Mesh) -> None:
    a, _, a_console = mesh.host_a()
    a_token = until(lambda: status(a_console)["token"], 10, "host A token")
    until(lambda: status(a_console)["hosted_models"] == ["tiny"], 20, "host A serving")
    b, _, b_console = mesh.start("b", "--serve", mesh.llama.url, "--join", a_token)
    until(lambda: status(b_console)["meshd"]["node_state"] == "joined", 20, "host B joined A")
    a_id, b_id = status(a_console)["meshd"]["endpoint_id"], status(b_console)["meshd"]["endpoint_id"]
    # one mesh: B adopted A's mesh id and each sees the other's model
    assert status(b_console)["mesh_id"] == status(a_console)["mesh_id"]
    until(lambda: hosts_seen(a_console) == [b_id], 20, "A sees B")

    client, api, console = mesh.start("c", "--client", "--auto")
    until(lambda: status(console)["meshd"]["node_state"] == "joined", 60, "client joined via Nostr")
    until(lambda: hosts_seen(console) == sorted([a_id, b_id]), 30, "client sees both hosts")
    st = status(console)
    assert st["mesh_id"] == status(a_console)["mesh_id"]
    assert [r["state"] for r in st["meshd"]["nostr_discovery"]] == ["up"]

    sdk = openai.OpenAI(base_url=api + "/v1", api_key="unused", max_retries=0, timeout=60)
    models = sdk.models.list()
    assert [m.id for m in models.data] == ["tiny", "mesh"]
    reply = sdk.chat.completions.create(model="tiny", messages=MSGS, max_tokens=8, temperature=0)
    text = reply.choices[0].message.content
    assert text and text.isprintable()
    chunks = list(sdk.chat.completions.create(model="tiny", messages=MSGS, max_tokens=8, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="tiny", messages="not a list", max_tokens=4)  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError) as unserved:  # a typo fails at once, with no Retry-After
        sdk.chat.completions.create(model="ghost", messages=MSGS, max_tokens=4)
    assert unserved.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert "retry-after" not in unserved.value.response.headers

    # which host answers is decided by rotation; kill that one: the other serves the next requests
    served = sdk.chat.completions.with_raw_response.create(model="tiny", messages=MSGS, max_tokens=4)
    first = served.headers["x-mesh-served-by"]
    victim, survivor_id = (a, b_id) if first == a_id else (b, a_id)
    victim.proc.kill()
    victim.proc.wait(10)
    for _ in range(3):
        again = sdk.chat.completions.with_raw_response.create(model="tiny", messages=MSGS, max_tokens=4)
        assert again.headers["x-mesh-served-by"] == survivor_id
        assert again.parse().choices[0].message.content
    until(lambda: hosts_seen(console) == [survivor_id], 60, "the killed host dropped from the client's view")
    survivor_console = b_console if victim is a else a_console
    until(lambda: hosts_seen(survivor_console) == [], 60, "the surviving host noticed the killed one")

    # the only host gone: 503 with Retry-After; the client keeps running
    survivor = b if victim is a else a
    survivor.terminate()  # SIGTERM: PEER_LEAVING tells the client at once
    until(lambda: hosts_seen(console) == [], 20, "no hosts left")
    with pytest.raises(openai.InternalServerError) as empty:
        sdk.chat.completions.create(model="tiny", messages=MSGS, max_tokens=4)
    assert empty.value.response.headers["retry-after"] == "5"

    # host A comes back (same key and port, so the client's token is still good): service resumes
    if victim is a or survivor is a:
        mesh.host_a()
    until(lambda: hosts_seen(console) == [a_id], 90, "host A back in the client's view")
    again = sdk.chat.completions.create(model="tiny", messages=MSGS, max_tokens=4)
    assert again.choices[0].message.content
    assert client.proc.poll() is None
