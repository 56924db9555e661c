"""The tunnel's client half (meshd.tunnel.client) against real host tunnels, in memory (#18).

One client QUIC endpoint and two hosts on a ``MemoryNetwork`` driven by a ``Clock``; each host runs the
real ``HostTunnel`` and ``Backend``, and its backend is a real twisted.web ``Site`` reached over an
in-memory connection (``Backend(endpoint=...)``). Failover, busy hosts and cancellation, deterministic
and without sockets.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from meshd.quic import MeshConnection, QuicEndpoint, QuicStream
from meshd.quic.testing import MemoryNetwork
from meshd.quic.tls import public_key_bytes
from meshd.tunnel import Backend, HostTunnel
from meshd.tunnel.client import Exhausted, Outbound, Reply, TunnelClient, UpstreamState

from .memory_backend import Chat, MemoryBackend

CLIENT = ("10.0.0.1", 1000)


class World:
    def __init__(self, *, slots: int = 4, hosts: int = 2) -> None:
        self.clock = Clock()
        self.net = MemoryNetwork(self.clock)
        self.client_key = ed25519.Ed25519PrivateKey.generate()
        self.client = QuicEndpoint(self.clock, self.client_key)
        self.net.attach(self.client, CLIENT)
        self.hosts: list[tuple[bytes, tuple[str, int]]] = []
        self.backends: list[Backend] = []
        self.servers: list[MemoryBackend] = []
        self.chats: list[Chat] = []
        self.endpoints: list[QuicEndpoint] = []
        for i in range(hosts):
            key = ed25519.Ed25519PrivateKey.generate()
            chat = Chat(f"host{i}")
            server = MemoryBackend(self.clock, chat)
            backend = Backend(self.clock, "http://127.0.0.1:8080", max_inflight=slots, endpoint=server)
            endpoint = QuicEndpoint(self.clock, key, on_connection=self._serve(backend))
            addr = (f"10.0.1.{i + 1}", 2000 + i)
            self.net.attach(endpoint, addr)
            self.hosts.append((public_key_bytes(key), addr))
            self.backends.append(backend)
            self.servers.append(server)
            self.chats.append(chat)
            self.endpoints.append(endpoint)
        self.conns: dict[bytes, MeshConnection] = {}
        self.tunnels = TunnelClient(self, public_key_bytes(self.client_key), self.clock, busy_wait=30.0)

    def _serve(self, backend: Backend) -> Callable[[MeshConnection], None]:
        def accepted(conn: MeshConnection) -> None:
            conn.on_stream = lambda stream: stream.set_receiver(HostTunnel(stream, backend, clock=self.clock))

        return accepted

    # the Tunnels face the client half needs of a node

    def open_tunnel(self, host: bytes, timeout: float) -> Deferred[QuicStream]:
        conn = self.conns.get(host)
        if conn is not None and conn.close_reason is None:
            return succeed(conn.open_stream())
        addr = dict(self.hosts)[host]
        d = self.client.dial(host, [addr], timeout=timeout)

        def opened(conn: MeshConnection) -> QuicStream:
            self.conns[host] = conn
            return conn.open_stream()

        return d.addCallback(opened)

    def open_local_tunnel(self) -> Any:
        raise AssertionError("the client hosts nothing")

    # driving

    def send(self, model: str = "m", hosts: list[bytes] | None = None) -> Deferred[Reply | Exhausted]:
        body = json.dumps({"model": model, "messages": []}).encode()
        outbound = Outbound(b"POST", b"/v1/chat/completions", ((b"content-type", b"application/json"),), body)
        order = hosts if hosts is not None else [h for h, _ in self.hosts]
        return Deferred.fromCoroutine(self.tunnels.send(outbound, order, "req"))

    def until(self, done: Callable[[], bool], limit: float = 120.0) -> None:
        """Run the clock until ``done()`` (bounded: ``limit`` simulated seconds)."""
        start = self.clock.seconds()
        while not done():
            assert self.clock.seconds() - start < limit, "nothing happened in time"
            self.net.advance(0.05, step=0.01)

    def result(self, d: Deferred[Any]) -> Any:
        self.until(lambda: d.called)
        out: list[Any] = []
        d.addBoth(out.append)
        return out[0]

    def body(self, reply: Reply) -> Any:
        got: list[bytes] = []
        reply.upstream.start_sink(got.append)
        self.until(lambda: reply.upstream.finished)
        assert reply.upstream.state is UpstreamState.DONE
        reply.close()
        return json.loads(b"".join(got))


def test_a_request_goes_to_the_first_host_and_the_body_arrives_whole() -> None:
    w = World()
    reply = w.result(w.send())
    assert isinstance(reply, Reply) and reply.head.status == 200 and reply.host == w.hosts[0][0]
    assert w.body(reply) == {"served_by": "host0", "model": "m"}
    w.until(lambda: w.backends[0].inflight == 0)  # the host's slot is free at the response's last byte
    assert w.tunnels.counts.failovers == 0


def test_a_host_that_cannot_be_reached_fails_over_to_the_next() -> None:
    w = World()
    w.net.detach(w.hosts[0][1])  # the first host is gone: its dial fails
    reply = w.result(w.send())
    assert isinstance(reply, Reply) and reply.host == w.hosts[1][0]
    assert w.body(reply)["served_by"] == "host1"
    assert (w.tunnels.counts.failovers, w.tunnels.counts.tunnel_failures) == (1, 1)


def test_a_host_gone_silent_after_the_request_is_left_for_the_next() -> None:
    w = World()
    first = w.result(w.send(hosts=[w.hosts[0][0]]))  # a live connection to host 0
    assert isinstance(first, Reply)
    w.body(first)
    silent = w.hosts[0][1]
    w.net.filter = lambda src, dst, data: None if silent in (src, dst) else data
    start = w.clock.seconds()
    reply = w.result(w.send())
    assert isinstance(reply, Reply) and reply.host == w.hosts[1][0]
    assert 3.0 <= w.clock.seconds() - start < 10.0  # SILENT_HOST_SECS, not the 300 s first-byte deadline
    assert w.tunnels.counts.tunnel_failures == 1


def test_a_context_overflow_moves_on_but_the_last_host_s_answer_is_the_callers() -> None:
    w = World()
    overflow = (400, {"error": {"message": "the request exceeds the available context size", "type": "x"}})
    for chat in w.chats:
        chat.answer = lambda body, o=overflow: o
    reply = w.result(w.send())
    assert isinstance(reply, Reply) and reply.host == w.hosts[1][0]
    assert reply.head.status == 400 and reply.error_body is not None and b"context size" in reply.error_body
    assert w.tunnels.counts.failovers == 1


def test_a_host_error_that_is_not_busy_is_answered_not_retried() -> None:
    w = World()
    w.servers[0].refuse = True  # host 0's backend is down: the host answers 503 itself
    reply = w.result(w.send())
    assert isinstance(reply, Reply) and reply.host == w.hosts[0][0] and reply.head.status == 503
    assert reply.error_body is not None and b"backend unavailable" in reply.error_body
    assert w.tunnels.counts.failovers == 0


def test_a_busy_host_queues_the_request_until_a_slot_frees() -> None:
    w = World(slots=1, hosts=1)
    w.chats[0].hold = True
    first = w.send()
    w.until(lambda: len(w.chats[0].held) == 1)
    second = w.send()
    w.until(lambda: w.tunnels.counts.busy_replies == 1)  # asked with x-meshd-wait: 0, told busy at once
    assert not second.called
    w.until(lambda: w.backends[0].slots.queued == 1)  # then asked again, with the wait left: it queues
    w.chats[0].hold = False
    w.chats[0].release()
    a, b = w.result(first), w.result(second)
    assert isinstance(a, Reply) and isinstance(b, Reply)
    assert w.body(a)["served_by"] == w.body(b)["served_by"] == "host0"
    assert w.backends[0].stats.rejected_busy == 1 and w.backends[0].stats.queued == 1


def test_hosts_busy_for_the_whole_wait_give_exhausted_busy() -> None:
    w = World(slots=1)
    for chat in w.chats:
        chat.hold = True
    held = [w.send(hosts=[h]) for h, _ in w.hosts]
    w.until(lambda: all(len(c.held) == 1 for c in w.chats))
    start = w.clock.seconds()
    result = w.result(w.send())
    assert isinstance(result, Exhausted) and result.busy and result.hosts == 2
    assert 29.0 <= w.clock.seconds() - start <= 31.0  # --queue-timeout's 30 s, not more
    assert w.tunnels.counts.busy_replies >= 2
    for d in held:
        d.cancel()
        assert w.result(d).check(CancelledError)


def test_a_caller_that_goes_away_stops_the_backend_request_and_frees_the_slot() -> None:
    w = World(hosts=1)
    w.chats[0].hold = True
    d = w.send()
    w.until(lambda: len(w.chats[0].held) == 1)
    assert w.backends[0].inflight == 1
    d.cancel()
    failure = w.result(d)
    assert isinstance(failure, Failure) and failure.check(CancelledError)
    w.until(lambda: w.backends[0].inflight == 0 and len(w.chats[0].gone) == 1)
    assert w.servers[0].connections[0].closed  # the backend connection was closed, not left to finish
