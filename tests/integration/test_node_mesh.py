"""Two and three meshd nodes in one process on 127.0.0.1: join, gossip, admission, tunnels."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import Site

from meshd.config import Config, Role
from meshd.host import BackendWatch
from meshd.httpwire import ResponseParser, render_request
from meshd.identity import Identity
from meshd.node import Node, NodeState
from meshd.protocol.framing import encode_stream_type
from meshd.protocol.streams import StreamType
from meshd.protocol.token import decode_token
from meshd.quic import QuicEndpoint
from meshd.quic.testing import RecordingReceiver
from meshd.status import StatusView
from meshd.tunnel import Backend

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class Models(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"object": "list", "data": [{"id": "tiny", "object": "model"}]}).encode()


class Chat(Resource):
    isLeaf = True

    def render_POST(self, request: Any) -> bytes:
        body = json.loads(request.content.read())
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"echo": body, "connection": request.getHeader("connection")}).encode()


def fake_backend() -> Any:
    root = Resource()
    v1 = Resource()
    root.putChild(b"v1", v1)
    v1.putChild(b"models", Models())
    chat = Resource()
    v1.putChild(b"chat", chat)
    chat.putChild(b"completions", Chat())
    return reactor.listenTCP(0, Site(root), interface="127.0.0.1")


async def sleep(secs: float) -> None:
    d: Deferred[None] = Deferred()
    reactor.callLater(secs, d.callback, None)
    await d


async def wait_for(pred: Any, within: float = 10.0) -> None:
    for _ in range(int(within / 0.05)):
        if pred():
            return
        await sleep(0.05)
    raise AssertionError("condition not reached")


def make_node(tmp: Path, role: Role, tokens: tuple[str, ...] = (), serve: str | None = None) -> Node:
    cfg = Config(
        role=role,
        join_tokens=tokens,
        serve_url=serve,
        bind_address="127.0.0.1",
        state_dir=tmp,
        api_port=0,
    )
    return Node(cfg, Identity.generate(), reactor)


@pytest_twisted.async_yield_fixture
async def started() -> AsyncIterator[list[Any]]:
    services: list[Any] = []
    yield services
    for svc in reversed(services):
        if isinstance(svc, QuicEndpoint):
            d = svc.stop()
        elif hasattr(svc, "stopService"):
            d = svc.stopService()
        else:
            d = svc.stopListening()
        if d is not None:
            await d


async def start_host(tmp: Path, started: list[Any], tokens: tuple[str, ...] = ()) -> tuple[Node, BackendWatch]:
    port = fake_backend()
    started.append(port)
    url = f"http://127.0.0.1:{port.getHost().port}"
    host = make_node(tmp, Role.HOST, tokens, serve=url)
    host.ports_bound(9337, None)
    watch = BackendWatch(reactor, host, Backend(reactor, url))
    host.streams.register(StreamType.TUNNEL_HTTP, watch.tunnel_for)
    host.startService()
    started.append(host)
    watch.startService()
    started.append(watch)
    await wait_for(lambda: host.hosted_models == ("tiny",))
    return host, watch


@pytest_twisted.ensureDeferred
async def test_client_joins_host_and_tunnels_a_request(tmp_path: Path, started: list[Any]) -> None:
    host, _ = await start_host(tmp_path / "h", started)
    assert host.token is not None
    addr = decode_token(host.token)
    assert addr.id == host.identity.public_bytes
    assert addr.dialable_ip_addrs()[0][0] == "127.0.0.1"
    client = make_node(tmp_path / "c", Role.CLIENT, (host.token,))
    client.startService()
    started.append(client)
    await wait_for(lambda: client.state is NodeState.JOINED)
    assert client.mesh.hosts_for_model("tiny") == [host.identity.public_bytes]
    # the host admitted the client through gossip
    await wait_for(lambda: client.identity.public_bytes in host.mesh.peers)
    assert host.mesh.peers[client.identity.public_bytes].info.role.value == "client"
    rows = StatusView(client).peer_rows()
    assert rows[0]["meshd"]["endpoint_id"] == host.identity.endpoint_id
    assert rows[0]["models"] == ["tiny"] and rows[0]["meshd"]["connected"]
    # a tunnelled request reaches the backend with Connection: close
    stream = await client.open_tunnel(host.identity.public_bytes)
    got: list[Any] = []
    done: Deferred[None] = Deferred()
    parser = ResponseParser()

    class Rx:
        def dataReceived(self, data: bytes) -> None:
            got.extend(parser.feed(data))

        def eofReceived(self) -> None:
            got.extend(parser.feed_eof())

        def connectionLost(self, reason: Any) -> None:
            if not done.called:
                done.callback(None)

    stream.set_receiver(Rx())
    stream.write(render_request(b"POST", b"/v1/chat/completions", [(b"host", b"x")], b'{"model":"tiny"}'))
    stream.loseWriteConnection()
    await done
    head = got[0]
    assert head.status == 200
    body = json.loads(b"".join(x for x in got[1:] if isinstance(x, bytes)))
    assert body == {"echo": {"model": "tiny"}, "connection": "close"}
    assert got[-1] is None


@pytest_twisted.ensureDeferred
async def test_unadmitted_peer_may_tunnel_but_nothing_else(tmp_path: Path, started: list[Any]) -> None:
    """0.76's default trust policy: 0x04 before admission is served; PEER_DOWN/PEER_LEAVING are not."""
    host, _watch = await start_host(tmp_path / "h", started)
    stranger = QuicEndpoint(reactor, Identity.generate().private_key)
    stranger.listen(0, "127.0.0.1")
    started.append(stranger)
    addr = decode_token(host.token or "")
    conn = await stranger.dial(addr.id, list(addr.dialable_ip_addrs()))
    stream = conn.open_stream()
    collected = RecordingReceiver()
    stream.set_receiver(collected)
    stream.write(encode_stream_type(StreamType.TUNNEL_HTTP) + render_request(b"GET", b"/v1/models", [], b""))
    stream.loseWriteConnection()
    answer = await collected.done
    assert answer.startswith(b"HTTP/1.1 200 ")
    # a 0.76 host answers /v1/models itself (its models, and the virtual "mesh"), not its backend
    assert [m["id"] for m in json.loads(answer.split(b"\r\n\r\n", 1)[1])["data"]] == ["tiny", "mesh"]
    known = dict(host.mesh.peers)
    leaving = conn.open_stream()
    dropped = RecordingReceiver()
    leaving.set_receiver(dropped)
    leaving.write(encode_stream_type(StreamType.PEER_LEAVING))
    leaving.loseWriteConnection()
    assert await dropped.done == b""  # dropped: the host finished its side without reading or answering
    assert host.mesh.peers == known  # an unadmitted peer cannot make the host drop anyone
    assert conn.is_connected  # the connection itself stays open


@pytest_twisted.ensureDeferred
async def test_three_nodes_learn_each_other_transitively(tmp_path: Path, started: list[Any]) -> None:
    host1, _ = await start_host(tmp_path / "h1", started)
    host2, _ = await start_host(tmp_path / "h2", started, tokens=(host1.token or "",))
    await wait_for(lambda: host2.state is NodeState.JOINED)
    assert host1.mesh.mesh_id is None or host2.mesh.mesh_id == host1.mesh.mesh_id
    client = make_node(tmp_path / "c", Role.CLIENT, (host1.token or "",))
    client.startService()
    started.append(client)
    await wait_for(lambda: len(client.mesh.hosts_for_model("tiny")) == 2)
    # host2 was learned from host1's gossip and dialled directly
    await wait_for(lambda: host2.identity.public_bytes in client.conns)
    # PEER_LEAVING: host2 stops cleanly and the client forgets it at once
    started.remove(host2)
    await host2.stopService()
    await wait_for(lambda: host2.identity.public_bytes not in client.mesh.peers)
    assert client.mesh.hosts_for_model("tiny") == [host1.identity.public_bytes]
