"""A meshd client gets a real completion from a meshd host through meshd's relay (nodes in one process).

The client dials the host's token: with ``MESHD_RELAY_ONLY_NETNS=1`` (set by test_relay_netns.py, which reruns this
file inside a network namespace where UDP is dropped) the full token is used and only the relay can work;
otherwise the token is cut down to its relay URL so the relay is the only path offered.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from meshd.config import Config, Role
from meshd.host import BackendWatch
from meshd.identity import Identity
from meshd.iroh_relay.client import canonical_relay_url
from meshd.node import Node, NodeState
from meshd.protocol.streams import StreamType
from meshd.protocol.token import EndpointAddr, decode_token, encode_token
from meshd.status import StatusView
from meshd.tunnel import Backend
from meshd.web.api import APIApp
from tests.integration.relay_peers import relay_url, start_relay
from tests.integration.test_client_api import FakeLLM, aio, cleanup, wait_for  # noqa: F401 - fixture

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RELAY_ONLY_NETNS = os.environ.get("MESHD_RELAY_ONLY_NETNS") == "1"


def relay_node(tmp: Path, role: Role, url: str, tokens: tuple[str, ...] = (), serve: str | None = None) -> Node:
    cfg = Config(
        role=role,
        join_tokens=tokens,
        serve_url=serve,
        bind_address="127.0.0.1",
        state_dir=tmp,
        api_port=0,
        relay_urls=(url,),
    )
    return Node(cfg, Identity.generate(), reactor)


async def host_and_client_over(
    url: str, tmp_path: Path, things: list[Any], *, full_token: bool
) -> tuple[Node, Node, FakeLLM, str]:
    """A meshd host (fake LLM backend) whose home relay is ``url``, and a client joined to it through
    that relay: with ``full_token`` the host's whole token is offered, else only its relay URL.
    Returns (host, client, backend, the client's API base URL)."""
    from twisted.web.server import Site

    llm = FakeLLM("R")
    port = reactor.listenTCP(0, Site(llm), interface="127.0.0.1")
    things.append(port)
    backend = f"http://127.0.0.1:{port.getHost().port}"
    host = relay_node(tmp_path / "h", Role.HOST, url, serve=backend)
    host.ports_bound(9337, None)
    watch = BackendWatch(reactor, host, Backend(reactor, backend))
    host.streams.register(StreamType.TUNNEL_HTTP, watch.tunnel_for)
    host.startService()
    watch.startService()
    things.extend([host, watch])
    await wait_for(lambda: host.hosted_models == ("tiny",))
    assert host.iroh_relay is not None
    await host.iroh_relay.client.link(url).when_up()

    addr = decode_token(host.token or "")
    assert addr.relay_urls == (canonical_relay_url(url),)  # our token carries the home relay
    token = host.token or "" if full_token else encode_token(EndpointAddr(addr.id, relay_urls=addr.relay_urls))
    client = relay_node(tmp_path / "c", Role.CLIENT, url, (token,))
    client.startService()
    things.append(client)
    api = reactor.listenTCP(0, APIApp(client, reactor).site(), interface="127.0.0.1")
    things.append(api)
    await wait_for(lambda: client.state is NodeState.JOINED, within=20)
    return host, client, llm, f"http://127.0.0.1:{api.getHost().port}/v1"


@pytest_twisted.ensureDeferred
async def test_client_completion_from_host_through_relay(tmp_path: Path, cleanup: list[Any]) -> None:  # noqa: F811
    relay = start_relay(reactor)
    cleanup.append(relay)
    url = relay_url(relay)
    host, client, _llm, base = await host_and_client_over(url, tmp_path, cleanup, full_token=RELAY_ONLY_NETNS)
    sdk = openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0)
    reply = await aio(
        sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], temperature=0)
    )
    assert reply.choices[0].message.content == "w0 w1 w2 w3 w4 R"
    await aio(sdk.close())

    rows = {r["meshd"]["endpoint_id"]: r["meshd"] for r in StatusView(client).peer_rows()}
    row = rows[host.identity.endpoint_id]
    assert row["path"] == "relay" and row["relay_url"] == canonical_relay_url(url)
    host_rows = {r["meshd"]["endpoint_id"]: r["meshd"] for r in StatusView(host).peer_rows()}
    assert host_rows[client.identity.endpoint_id]["path"] == "relay"
    status = StatusView(client).status()["meshd"]["iroh_relay"]
    assert status["home"] == canonical_relay_url(url)
    assert status["links"][0]["state"] == "up" and status["links"][0]["datagrams_in"] > 0
    assert relay.server.status()["metrics"]["datagrams_forwarded"] > 0


async def restart_relay_and_check_service(
    url: str, relay_port: int, host: Node, client: Node, sdk: openai.AsyncOpenAI, things: list[Any]
) -> None:
    """A new relay on the same address: the host re-registers, the client re-joins, requests work again."""
    relay2 = start_relay(reactor, port=relay_port)
    things.append(relay2)
    await wait_for(lambda: host.iroh_relay is not None and host.iroh_relay.client.link(url).state == "up", within=30)
    await wait_for(lambda: host.identity.public_bytes in client.mesh.peers and client.state is NodeState.JOINED, 40)
    reply = await aio(sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}]))
    assert reply.choices[0].message.content == "w0 w1 w2 w3 w4 R"


@pytest_twisted.ensureDeferred
async def test_relay_lost_mid_stream_ends_it_with_an_error_then_service_resumes(
    tmp_path: Path,
    cleanup: list[Any],  # noqa: F811
) -> None:
    relay = start_relay(reactor)
    url = relay_url(relay)
    relay_port = relay.bound_port
    host, client, llm, base = await host_and_client_over(url, tmp_path, cleanup, full_token=False)
    sdk = openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0)
    msgs: Any = [{"role": "user", "content": "hi"}]

    # A stream that cannot finish while the test runs: it can only end with an error.
    llm.chunks, llm.delay = 1_000_000, 0.05
    received = {"n": 0}

    async def stream_all() -> Exception | None:
        try:
            s = await sdk.chat.completions.create(model="tiny", messages=msgs, stream=True)
            async for _ in s:
                received["n"] += 1
        except Exception as e:  # the error event surfaces as openai.APIError
            return e
        return None

    in_flight = aio(stream_all())
    await wait_for(lambda: received["n"] >= 1)  # the stream is flowing through the relay
    await relay.stopService()  # the relay goes away mid-stream
    err = await in_flight
    assert err is not None  # ended with an error, not a hang and not a truncated success
    assert received["n"] >= 1
    llm.chunks, llm.delay = 5, 0.01
    await restart_relay_and_check_service(url, relay_port, host, client, sdk, cleanup)
    await aio(sdk.close())


@pytest_twisted.ensureDeferred
async def test_relay_lost_before_the_first_byte_gives_a_clean_503_then_service_resumes(
    tmp_path: Path,
    cleanup: list[Any],  # noqa: F811
) -> None:
    relay = start_relay(reactor)
    url = relay_url(relay)
    relay_port = relay.bound_port
    host, client, llm, base = await host_and_client_over(url, tmp_path, cleanup, full_token=False)
    sdk = openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0)
    msgs: Any = [{"role": "user", "content": "hi"}]

    llm.hold = Deferred()  # the backend has the request but sends nothing, not even headers
    in_flight = aio(sdk.chat.completions.create(model="tiny", messages=msgs, stream=True))
    await wait_for(lambda: len(llm.requests) == 1)
    await relay.stopService()
    with pytest.raises(openai.APIStatusError) as e:
        await in_flight
    # Nothing reached the caller yet, so it gets a whole error response, not a broken stream.
    assert e.value.status_code == 503
    assert e.value.body["code"] == "all_hosts_failed"  # type: ignore[index]
    hold, llm.hold = llm.hold, None
    hold.callback(None)
    await restart_relay_and_check_service(url, relay_port, host, client, sdk, cleanup)
    await aio(sdk.close())


@pytest_twisted.ensureDeferred
async def test_a_token_names_the_home_relay_only_once_registered_there(
    tmp_path: Path,
    cleanup: list[Any],  # noqa: F811
) -> None:
    """A peer given a token waits on its relay before dialling directly: a node never advertises a relay
    it could not reach (mesh-llm's SDK waited 30 s on an unreachable one)."""
    unreachable = relay_node(tmp_path / "u", Role.CLIENT, "http://127.0.0.1:9/")
    unreachable.startService()
    cleanup.append(unreachable)
    assert decode_token(unreachable.token or "").relay_urls == ()
    assert decode_token(unreachable.token or "").ip_addrs  # still dialable directly

    relay = start_relay(reactor)
    cleanup.append(relay)
    url = relay_url(relay)
    reachable = relay_node(tmp_path / "r", Role.CLIENT, url)
    reachable.startService()
    cleanup.append(reachable)
    await wait_for(lambda: decode_token(reachable.token or "").relay_urls == (canonical_relay_url(url),))
    assert unreachable.iroh_relay is not None and unreachable.iroh_relay.advertised_url is None
