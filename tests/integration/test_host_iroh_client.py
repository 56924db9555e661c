"""A meshd host on a real llama-server, used by a real mesh-llm-style client: the ``iroh`` wheel
speaking mesh-llm/1 (gossip as CLIENT, then TUNNEL_HTTP), plus bad input from that peer."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import iroh
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from meshd.config import Config, Role
from meshd.host import BackendWatch
from meshd.httpwire import ResponseParser, render_request
from meshd.identity import Identity
from meshd.node import Node
from meshd.protocol import node_pb2
from meshd.protocol.peers import Role as PeerRole
from meshd.protocol.peers import build_gossip_frame, build_self_announcement, peer_info_from_announcement
from meshd.protocol.streams import StreamType
from meshd.protocol.token import EndpointAddr, decode_token
from meshd.protocol.version import passes_version_floor
from meshd.tunnel import Backend
from tests.integration.backend import LlamaBackend

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ALPN = b"mesh-llm/1"
LIMIT = 16 * 1024 * 1024


def aio(coro: Coroutine[Any, Any, Any]) -> Deferred[Any]:
    return Deferred.fromFuture(asyncio.ensure_future(coro))


async def sleep(secs: float) -> None:
    d: Deferred[None] = Deferred()
    reactor.callLater(secs, d.callback, None)
    await d


async def wait_for(pred: Any, within: float = 15.0) -> None:
    for _ in range(int(within / 0.05)):
        if pred():
            return
        await sleep(0.05)
    raise AssertionError("condition not reached")


class IrohClient:
    """What a mesh-llm client does on the wire, driven through the iroh wheel."""

    def __init__(self, ep: Any) -> None:
        self.ep = ep
        self.id = bytes(ep.id().to_bytes())
        self.conn: Any = None

    async def connect(self, token: str) -> None:
        addr = decode_token(token)
        hosts = [f"{h}:{p}" for h, p in addr.dialable_ip_addrs()]
        self.conn = await self.ep.connect(iroh.EndpointAddr(iroh.EndpointId.from_bytes(addr.id), None, hosts), ALPN)

    async def gossip(self, frame: node_pb2.GossipFrame | None = None, raw: bytes | None = None) -> bytes:
        if frame is None and raw is None:
            me = build_self_announcement(addr=EndpointAddr(self.id), version="0.65.0-rc2")
            frame = build_gossip_frame(self.id, me)
        body = raw if raw is not None else frame.SerializeToString()  # type: ignore[union-attr]
        bi = await self.conn.open_bi()
        send = bi.send()
        await send.write_all(b"\x01" + struct.pack("<I", len(body)) + body)
        await send.finish()
        reply = await bi.recv().read_to_end(LIMIT)
        await asyncio.sleep(0.05)
        return bytes(reply)

    async def tunnel(self, request: bytes, fin: bool = True) -> bytes:
        bi = await self.conn.open_bi()
        send = bi.send()
        await send.write_all(b"\x04" + request)
        if fin:
            await send.finish()
        return bytes(await bi.recv().read_to_end(LIMIT))


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    parser = ResponseParser()
    events = parser.feed(raw) + parser.feed_eof()
    head = events[0]
    body = b"".join(e for e in events if isinstance(e, bytes))
    return head.status, {k.decode(): v.decode() for k, v in head.headers}, body  # type: ignore[union-attr]


def chat(stream: bool, content: str = "hello mesh", max_tokens: int = 8) -> bytes:
    body = json.dumps(
        {
            "model": "tiny",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": stream,
        }
    ).encode()
    return render_request(
        b"POST", b"/v1/chat/completions", [(b"host", b"mesh"), (b"content-type", b"application/json")], body
    )


@pytest_twisted.async_yield_fixture
async def mesh_host(tmp_path: Path, llama_backend: LlamaBackend) -> AsyncIterator[Node]:
    cfg = Config(role=Role.HOST, serve_url=llama_backend.url, bind_address="127.0.0.1", state_dir=tmp_path)
    host = Node(cfg, Identity.generate(), reactor)
    host.ports_bound(9337, None)
    watch = BackendWatch(reactor, host, Backend(reactor, llama_backend.url))
    host.streams.register(StreamType.TUNNEL_HTTP, watch.tunnel_for)
    host.startService()
    watch.startService()
    await wait_for(lambda: host.hosted_models == ("tiny",))
    yield host
    watch.stopService()
    await host.stopService()


@pytest_twisted.async_yield_fixture
async def iroh_ep() -> AsyncIterator[Any]:
    options = iroh.EndpointOptions(
        preset=iroh.preset_minimal(), bind_addr="127.0.0.1:0", alpns=[ALPN], relay_mode=iroh.RelayMode.disabled()
    )
    ep = await aio(iroh.Endpoint.bind(options))
    yield ep
    await aio(ep.close())


@pytest_twisted.ensureDeferred
async def test_iroh_client_gossips_then_gets_real_completions(mesh_host: Node, iroh_ep: Any) -> None:
    client = IrohClient(iroh_ep)
    await aio(client.connect(mesh_host.token or ""))
    reply = await aio(client.gossip())
    (length,) = struct.unpack("<I", reply[:4])
    assert len(reply) == 4 + length  # a reply frame carries no type byte
    frame = node_pb2.GossipFrame.FromString(reply[4:])
    assert frame.gen == 1 and frame.sender_id == mesh_host.identity.public_bytes
    host_entry = peer_info_from_announcement(frame.peers[-1])
    assert host_entry.role is PeerRole.HOST and host_entry.http_port == 9337
    assert host_entry.served_models == ("tiny",)
    assert host_entry.mesh_id == mesh_host.mesh_id
    assert client.id in mesh_host.mesh.peers  # admitted as a CLIENT

    status, headers, body = parse_response(await aio(client.tunnel(chat(stream=False))))
    assert status == 200, body
    text = json.loads(body)["choices"][0]["message"]["content"]
    assert text and text.isprintable()

    status, headers, body = parse_response(await aio(client.tunnel(chat(stream=True), fin=False)))
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in body.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    streamed = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert streamed == text


@pytest_twisted.ensureDeferred
async def test_a_076_peer_tunnels_without_gossiping_first(mesh_host: Node, iroh_ep: Any) -> None:
    """mesh-llm 0.76's SDK client opens 0x04 straight away (its default trust policy allows it before
    admission): plain and streamed completions come back; other streams still need admission."""
    client = IrohClient(iroh_ep)
    await aio(client.connect(mesh_host.token or ""))
    status, _, body = parse_response(await aio(client.tunnel(chat(stream=False))))
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"]
    status, headers, body = parse_response(await aio(client.tunnel(chat(stream=True))))
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert body.rstrip().endswith(b"data: [DONE]")
    assert not mesh_host.mesh.is_admitted(client.id)  # served, yet not admitted: no gossip happened
    # a ROUTE_REQUEST from a peer that has not gossiped is refused (0.76 discloses no topology)
    bi = await aio(client.conn.open_bi())
    request = node_pb2.RouteTableRequest(requester_id=client.id, gen=1).SerializeToString()
    await aio(bi.send().write_all(b"\x05" + struct.pack("<I", len(request)) + request))
    await aio(bi.send().finish())
    assert await aio(bi.recv().read_to_end(LIMIT)) == b""


@pytest_twisted.ensureDeferred
async def test_a_076_peer_gossips_and_the_host_passes_its_version_floor(mesh_host: Node, iroh_ep: Any) -> None:
    """A peer shaped like a 0.76 node (version 0.76.0-rc6, the skippy-stage subprotocol every 0.76 node
    sends, its own entry last) is admitted, and the host's own entry carries a version 0.76 accepts."""
    client = IrohClient(iroh_ep)
    await aio(client.connect(mesh_host.token or ""))
    me = build_self_announcement(addr=EndpointAddr(client.id), version="0.76.0-rc6", hostname="rust-node")
    me.subprotocols.add(name="skippy-stage", major=2, features=["stage-control", "status-list"])
    reply = await aio(client.gossip(build_gossip_frame(client.id, me)))
    frame = node_pb2.GossipFrame.FromString(reply[4:])
    host_entry = frame.peers[-1]
    assert host_entry.endpoint_id == mesh_host.identity.public_bytes
    assert host_entry.version.startswith("0.76.0+meshd.") and passes_version_floor(host_entry.version)
    assert not host_entry.subprotocols  # meshd speaks no skippy-stage: it advertises none
    assert mesh_host.mesh.is_admitted(client.id)


@pytest_twisted.ensureDeferred
async def test_gossip_without_the_senders_own_entry_or_below_the_floor(mesh_host: Node, iroh_ep: Any) -> None:
    client = IrohClient(iroh_ep)
    await aio(client.connect(mesh_host.token or ""))
    someone_else = Identity.generate().public_bytes
    hearsay = build_self_announcement(addr=EndpointAddr(someone_else), version="0.76.0")
    try:
        reply = await aio(client.gossip(build_gossip_frame(client.id, hearsay)))
    except Exception:
        reply = b""  # reset: no reply either way
    assert reply == b"" and someone_else not in mesh_host.mesh.peers and client.id not in mesh_host.mesh.peers
    old = build_self_announcement(addr=EndpointAddr(client.id), version="0.59.9")
    reply = await aio(client.gossip(build_gossip_frame(client.id, old)))
    assert reply  # 0.76 answers a peer below its floor, then never admits it
    assert not mesh_host.mesh.is_admitted(client.id)


@pytest_twisted.ensureDeferred
async def test_bad_input_from_a_peer_is_refused_without_harm(mesh_host: Node, iroh_ep: Any) -> None:
    client = IrohClient(iroh_ep)
    await aio(client.connect(mesh_host.token or ""))

    async def refused(coro: Coroutine[Any, Any, bytes]) -> bool:
        try:
            return await coro == b""
        except Exception:
            return True

    # a HOST announcement without http_port
    bad_host = build_self_announcement(addr=EndpointAddr(client.id), version="x")
    bad_host.role = node_pb2.HOST
    assert await aio(refused(client.gossip(build_gossip_frame(client.id, bad_host))))
    # a spoofed sender_id (another key)
    other = Identity.generate().public_bytes
    spoof = build_gossip_frame(other, build_self_announcement(addr=EndpointAddr(other), version="x"))
    assert await aio(refused(client.gossip(spoof)))
    # generation 2
    me = build_self_announcement(addr=EndpointAddr(client.id), version="x")
    gen2 = build_gossip_frame(client.id, me)
    gen2.gen = 2
    assert await aio(refused(client.gossip(gen2)))
    # an oversize frame length
    bi = await aio(client.conn.open_bi())
    await aio(bi.send().write_all(b"\x01" + struct.pack("<I", 9 * 1024 * 1024)))
    assert await aio(refused(bi.recv().read_to_end(LIMIT)))
    # a truncated frame: the length promises 100 bytes, 10 arrive, then FIN
    bi3 = await aio(client.conn.open_bi())
    send3 = bi3.send()
    await aio(send3.write_all(b"\x01" + struct.pack("<I", 100) + b"x" * 10))
    await aio(send3.finish())
    assert await aio(refused(bi3.recv().read_to_end(LIMIT)))
    # an unknown stream type
    bi2 = await aio(client.conn.open_bi())
    await aio(bi2.send().write_all(b"\x7fhello"))
    assert await aio(refused(bi2.recv().read_to_end(LIMIT)))
    assert client.id not in mesh_host.mesh.peers  # none of that admitted us

    # idle streams held open by this peer (a peer not admitted yet gets 16 streams at once, docs/security.md)
    idle = []
    for _ in range(8):
        b = await aio(client.conn.open_bi())
        await aio(b.send().write_all(b"\x04"))
        idle.append(b)
    # proper gossip still works on the same connection, and so do tunnels, past 100 more idle streams
    await aio(client.gossip())
    assert client.id in mesh_host.mesh.peers
    for _ in range(100):
        b = await aio(client.conn.open_bi())
        await aio(b.send().write_all(b"\x04"))
        idle.append(b)
    # malformed HTTP in a tunnel -> 400 in OpenAI's shape
    status, _, body = parse_response(await aio(client.tunnel(b"NOT HTTP AT ALL\r\n\r\n")))
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"
    # an oversized body -> 413 before the body is read
    big = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 9000000\r\n\r\n"
    status, _, _ = parse_response(await aio(client.tunnel(big, fin=False)))
    assert status == 413
    status, _, body = parse_response(await aio(client.tunnel(chat(stream=False))))
    assert status == 200
    assert json.loads(body)["choices"][0]["message"]["content"]
