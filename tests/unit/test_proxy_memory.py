"""The API proxy end to end in memory (#18): a client Node's API app (gate, proxy, tunnel client) sends
requests over ``MemoryNetwork`` to host Nodes that serve them with the real ``HostTunnel`` and a
twisted.web backend in memory; one ``Clock`` drives everything. Failover, busy hosts and callers that go
away, deterministic and in about a second.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred

from meshd.config import Role
from meshd.mesh.state import route_order
from meshd.node import Node, NodeState
from meshd.protocol.streams import StreamType
from meshd.quic import MeshConnection, QuicStream
from meshd.tunnel import Backend, HostTunnel
from meshd.web.api import APIApp

from .memory_backend import Chat, MemoryBackend
from .node_world import World


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.stop_all()


class Host:
    """A host Node whose TUNNEL_HTTP streams reach a twisted.web backend in memory."""

    def __init__(self, world: World, node: Node, slots: int) -> None:
        self.node = node
        self.chat = Chat(node.identity.public_bytes.hex()[:10])
        self.server = MemoryBackend(world.clock, self.chat)
        self.backend = Backend(world.clock, "http://127.0.0.1:8080", max_inflight=slots, endpoint=self.server)
        node.streams.register(StreamType.TUNNEL_HTTP, self.tunnel)

    def tunnel(self, conn: MeshConnection | None, stream: QuicStream) -> HostTunnel:
        return HostTunnel(stream, self.backend, clock=self.backend.clock)

    @property
    def id(self) -> bytes:
        return self.node.identity.public_bytes


class Mesh:
    def __init__(self, world: World, hosts: int = 2, slots: int = 4, **client_config: Any) -> None:
        self.world = world
        first = world.node(Role.HOST, models=("m",))
        nodes = [first] + [world.node(Role.HOST, [first.token or ""], models=("m",)) for _ in range(hosts - 1)]
        self.hosts = [Host(world, n, slots) for n in nodes]
        self.client = world.node(Role.CLIENT, [first.token or ""], **client_config)
        world.run_until(
            lambda: self.client.state is NodeState.JOINED and len(self.client.mesh.hosts_for_model("m")) == hosts, 10
        )
        self.app = APIApp(self.client, world.clock)
        self.stub = StubTreq(self.app.resource())

    def post(self, body: dict[str, Any] | None = None) -> Deferred[Any]:
        data = json.dumps(body or {"model": "m", "messages": []}).encode()
        return self.stub.post(
            "http://api/v1/chat/completions", data=data, headers={"content-type": ["application/json"]}
        )

    def settle(self, d: Deferred[Any], within: float = 60.0) -> Any:
        """Run the world (and deliver the stub's bytes) until ``d`` fires."""
        out: list[Any] = []
        d.addBoth(out.append)

        def done() -> bool:
            self.stub.flush()
            return bool(out)

        self.world.run_until(done, within, step=0.05)
        return out[0]

    def answer(self, d: Deferred[Any]) -> tuple[Any, Any]:
        response = self.settle(d)
        return response, json.loads(self.settle(response.content()))

    def order(self) -> list[bytes]:
        """The client's route for ``m`` (live connections first)."""
        return route_order(self.client.mesh.hosts_for_model("m"), self.client.connected_ids(), set())

    def host(self, host_id: bytes) -> Host:
        return next(h for h in self.hosts if h.id == host_id)


def served_by(response: Any) -> str:
    return response.headers.getRawHeaders(b"x-mesh-served-by")[0].decode()


def test_a_request_through_the_mesh(world: World) -> None:
    mesh = Mesh(world)
    response, body = mesh.answer(mesh.post())
    first = mesh.order()[0]
    assert response.code == 200 and served_by(response) == first.hex()
    assert body == {"served_by": first.hex()[:10], "model": "m"}
    assert mesh.client.inflight_requests == 0 and mesh.app.proxy.failovers == 0


def test_a_host_that_crashed_is_left_for_the_next(world: World) -> None:
    mesh = Mesh(world)
    first, second = mesh.order()
    world.crash(mesh.host(first).node)
    response, body = mesh.answer(mesh.post())
    assert response.code == 200 and served_by(response) == second.hex()
    assert body["served_by"] == second.hex()[:10]
    assert mesh.app.proxy.failovers == 1 and mesh.app.proxy.tunnel_failures == 1
    assert mesh.host(first).chat.served == 0


def test_a_busy_host_serves_the_request_when_its_slot_frees(world: World) -> None:
    mesh = Mesh(world, hosts=1, slots=1)
    host = mesh.hosts[0]
    host.chat.hold = True
    first = mesh.post()
    world.run_until(lambda: len(host.chat.held) == 1, 5)
    second = mesh.post()
    world.run_until(lambda: host.backend.slots.queued == 1, 5)  # told busy, asked again: now it waits there
    host.chat.hold = False
    host.chat.release()
    (r1, b1), (r2, b2) = mesh.answer(first), mesh.answer(second)
    assert (r1.code, r2.code) == (200, 200) and b1 == b2
    assert mesh.app.proxy.busy_replies == 1 and host.backend.stats.rejected_busy == 1


def test_hosts_busy_past_the_queue_timeout_answer_503_server_busy(world: World) -> None:
    mesh = Mesh(world, hosts=1, slots=1, queue_timeout=5.0)
    host = mesh.hosts[0]
    host.chat.hold = True
    held = mesh.post()
    world.run_until(lambda: len(host.chat.held) == 1, 5)
    start = world.clock.seconds()
    response, body = mesh.answer(mesh.post())
    assert response.code == 503 and body["error"]["code"] == "server_busy"
    assert response.headers.getRawHeaders(b"retry-after") == [b"2"]
    assert 5.0 <= world.clock.seconds() - start < 7.0
    assert mesh.app.proxy.refusals["server_busy"] == 1
    host.chat.hold = False
    host.chat.release()
    assert mesh.answer(held)[0].code == 200


def test_a_caller_that_goes_away_stops_the_hosts_backend_request(world: World) -> None:
    mesh = Mesh(world, hosts=1)
    host = mesh.hosts[0]
    host.chat.hold = True
    d = mesh.post()
    world.run_until(lambda: len(host.chat.held) == 1, 5)
    assert host.backend.inflight == 1 and mesh.client.inflight_requests == 1
    d.cancel()  # the caller's connection goes away
    mesh.settle(d)
    world.run_until(lambda: host.backend.inflight == 0 and len(host.chat.gone) == 1, 5)
    assert mesh.client.inflight_requests == 0
    assert host.server.connections[0].closed
