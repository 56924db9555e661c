"""Real ``Node``s over an in-memory network (``meshd.quic.testing.MemoryNetwork``) on one ``Clock``: no sockets,
no threads, time only moves when a test moves it."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from meshd.config import Config, Role
from meshd.control import gossip_round_trip, send_oneway
from meshd.identity import Identity
from meshd.node import Node
from meshd.protocol import node_pb2
from meshd.protocol.peers import build_gossip_frame, build_self_announcement
from meshd.protocol.token import EndpointAddr, decode_token
from meshd.quic import MeshConnection, QuicEndpoint
from meshd.quic.testing import MemoryNetwork

PORT = 4433
Address = tuple[str, int]


class World:
    """``node(...)`` makes a Node bound at ``10.0.0.N:4433``; ``run(secs)`` moves time, delivering datagrams
    as it goes; ``cut(a, b)`` drops everything between two addresses (a crash seen from outside, or a
    partition) until ``heal``."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.clock = Clock()
        self.clock.advance(1_000_000)  # a clock far from 0, like a real one
        self.net = MemoryNetwork(self.clock)
        self.net.filter = self._filter
        self.nodes: list[Node] = []
        self._cuts: set[frozenset[Address]] = set()
        self._down: set[Address] = set()
        self._next = 1
        self._keys = 0

    def identity(self) -> Identity:
        """A key of its own for each node or peer, the same ones every run (so is the order of hosts)."""
        self._keys += 1
        return Identity.from_seed(hashlib.sha256(b"meshd test node %d" % self._keys).digest())

    def address(self) -> Address:
        addr = (f"10.0.0.{self._next}", PORT)
        self._next += 1
        return addr

    def node(
        self,
        role: Role = Role.CLIENT,
        tokens: Iterable[str] = (),
        *,
        identity: Identity | None = None,
        address: Address | None = None,
        models: tuple[str, ...] = (),
        start: bool = True,
        **config: Any,
    ) -> Node:
        addr = address or self.address()
        identity = identity or self.identity()
        serve = {"serve_url": "http://127.0.0.1:1"} if role is Role.HOST else {}
        cfg = Config(
            role=role,
            join_tokens=tuple(tokens),
            bind_address=addr[0],
            bind_port=addr[1],
            state_dir=self.state_dir(identity),
            **serve,
            **config,
        )
        node = Node(
            cfg,
            identity,
            self.clock,
            rng=random.Random(len(self.nodes)),
            bind=lambda endpoint: self.net.attach(endpoint, addr),
        )
        if models:
            node.set_hosted_models(models)
        self.nodes.append(node)
        if start:
            node.startService()
        return node

    def state_dir(self, identity: Identity) -> Path:
        """A node's ``--state-dir`` (the same for a node restarted with the same key)."""
        return self.tmp / identity.endpoint_id[:16]

    def address_of(self, node: Node) -> Address:
        assert node.token is not None
        (addr,) = decode_token(node.token).ip_addrs
        return addr

    def run(self, secs: float, step: float = 0.1) -> None:
        self.net.advance(secs, step=step)

    def run_until(self, pred: Callable[[], bool], within: float, step: float = 0.1) -> float:
        """Move time until ``pred()`` holds; returns the seconds it took (fails after ``within``)."""
        waited = 0.0
        self.net.pump()
        while not pred():
            if waited >= within:
                raise AssertionError(f"not reached within {within} s of clock time")
            self.run(step, step)
            waited += step
        return waited

    def result(self, d: Deferred[Any], within: float = 30.0) -> Any:
        out: list[Any] = []
        d.addBoth(out.append)
        self.run_until(lambda: bool(out), within)
        return out[0]

    def stop(self, node: Node) -> None:
        self.result(node.stopService())
        self.net.detach(self.address_of(node))

    def stop_all(self) -> None:
        for node in self.nodes:
            if node.running:
                self.result(node.stopService())

    # -- faults ---------------------------------------------------------------------------------

    def cut(self, a: Node | Address, b: Node | Address) -> None:
        self._cuts.add(frozenset((self._addr(a), self._addr(b))))

    def crash(self, node: Node) -> None:
        """Nothing reaches ``node`` or comes from it any more (its process is gone, as seen from the mesh)."""
        self._down.add(self.address_of(node))

    def heal(self) -> None:
        self._cuts.clear()
        self._down.clear()

    def _addr(self, x: Node | Address) -> Address:
        return self.address_of(x) if isinstance(x, Node) else x

    def _filter(self, src: Address, dst: Address, data: bytes) -> bytes | None:
        if src in self._down or dst in self._down or frozenset((src, dst)) in self._cuts:
            return None
        return data


class RawPeer:
    """A bare mesh-llm/1 endpoint on the network: it says exactly what a test makes it say."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.identity = world.identity()
        self.id = self.identity.public_bytes
        self.address = world.address()
        self.endpoint = QuicEndpoint(world.clock, self.identity.private_key)
        world.net.attach(self.endpoint, self.address)
        self.conn: MeshConnection | None = None

    def own_entry(self, **fields: Any) -> node_pb2.PeerAnnouncement:
        return build_self_announcement(addr=EndpointAddr(self.id, ip_addrs=[self.address]), version="0.76.0", **fields)

    def connect(self, node: Node) -> MeshConnection:
        assert node.token is not None
        addr = decode_token(node.token)
        conn = self.world.result(self.endpoint.dial(addr.id, list(addr.ip_addrs)))
        assert isinstance(conn, MeshConnection), conn
        self.conn = conn
        return conn

    def gossip(self, frame: node_pb2.GossipFrame | None = None) -> Any:
        """One exchange: our frame (by default our own entry only); the reply, or the Failure."""
        assert self.conn is not None
        frame = frame if frame is not None else build_gossip_frame(self.id, self.own_entry())
        return self.world.result(gossip_round_trip(self.conn, frame, self.world.clock, 5.0))

    def send(self, stream_type: Any, message: Any) -> None:
        assert self.conn is not None
        send_oneway(self.conn, stream_type, message)
        self.world.net.pump()
