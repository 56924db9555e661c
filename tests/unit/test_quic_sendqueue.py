"""The send scheduling of meshd.quic.sendqueue: per-packet work that does not grow with the number of
open streams, and nothing lost or leaked on the way (loss, resets, STOP_SENDING, stream credit).

Two MeshQuicConnections are pumped in memory; a seeded drop pattern plays the lossy network.
"""

from __future__ import annotations

import random

from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.packet import pull_quic_header
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.quic import tls
from meshd.quic.core import MeshQuicConnection, TransportLimits
from meshd.quic.sendqueue import RUN_WINDOW
from tests.unit.test_quic_core import ALPN, CLIENT_ADDR, SERVER_ADDR, key


class LossyPair:
    """Client and server connections; ``drop(n)`` decides whether the n-th datagram is lost."""

    def __init__(self, drop: random.Random | None = None, loss: float = 0.0, limits: TransportLimits | None = None):
        self.now = 0.0
        self.rng = drop
        self.loss = loss
        self.limits = limits or TransportLimits()
        self.server_key = key()
        self.client = MeshQuicConnection(
            private_key=key(),
            is_client=True,
            alpn_protocols=ALPN,
            expected_peer_id=tls.public_key_bytes(self.server_key),
            limits=self.limits,
        )
        self.server: MeshQuicConnection | None = None
        self.received: dict[str, dict[int, bytearray]] = {"client": {}, "server": {}}
        self.ended: dict[str, set[int]] = {"client": set(), "server": set()}
        self.resets: dict[str, set[int]] = {"client": set(), "server": set()}
        self.stops: dict[str, set[int]] = {"client": set(), "server": set()}
        self.lossy = False
        self.client.connect(SERVER_ADDR, now=self.now)
        self.pump()
        assert self.server is not None and self.server.is_handshake_complete
        self.lossy = True

    def _lost(self) -> bool:
        return self.lossy and self.rng is not None and self.rng.random() < self.loss

    def _move(self) -> bool:
        moved = False
        for data, _ in self.client.datagrams_to_send(now=self.now):
            moved = True
            if self.server is None:
                header = pull_quic_header(Buffer(data=data), host_cid_length=8)
                self.server = MeshQuicConnection(
                    private_key=self.server_key,
                    is_client=False,
                    alpn_protocols=ALPN,
                    original_destination_connection_id=header.destination_cid,
                    limits=self.limits,
                )
            if not self._lost():
                self.server.receive_datagram(data, CLIENT_ADDR, now=self.now)
        if self.server is not None:
            for data, _ in self.server.datagrams_to_send(now=self.now):
                moved = True
                if not self._lost():
                    self.client.receive_datagram(data, SERVER_ADDR, now=self.now)
        self._drain("client", self.client)
        if self.server is not None:
            self._drain("server", self.server)
        return moved

    def _drain(self, side: str, conn: MeshQuicConnection) -> None:
        while (e := conn.next_event()) is not None:
            if isinstance(e, events.StreamDataReceived):
                self.received[side].setdefault(e.stream_id, bytearray()).extend(e.data)
                conn.consume(e.stream_id, len(e.data))
                if e.end_stream:
                    self.ended[side].add(e.stream_id)
            elif isinstance(e, events.StreamReset):
                self.resets[side].add(e.stream_id)
            elif isinstance(e, events.StopSendingReceived):
                self.stops[side].add(e.stream_id)
            elif isinstance(e, events.ConnectionTerminated):
                raise AssertionError(f"{side} connection ended: {e.reason_phrase}")

    def pump(self, max_rounds: int = 20_000) -> None:
        """Move datagrams and fire timers until both sides have nothing left to do (the idle timer
        aside): every wait is bounded by ``max_rounds``."""
        for _ in range(max_rounds):
            if self._move():
                continue
            conns = [c for c in (self.client, self.server) if c is not None]
            timers = [t for c in conns if (t := c.get_timer()) is not None]
            # Everything but the idle timer (loss recovery backs off, but stays well inside it).
            soon = [t for t in timers if t < self.now + self.limits.idle_timeout - 1.0]
            if not soon:
                return
            self.now = max(self.now, min(soon))
            for c in conns:
                if (t := c.get_timer()) is not None and t <= self.now:
                    c.handle_timer(now=self.now)
        raise AssertionError("the connections did not settle")

    @property
    def pair(self) -> tuple[MeshQuicConnection, MeshQuicConnection]:
        assert self.server is not None
        return self.client, self.server


def _count_limit_calls(conn: MeshQuicConnection) -> list[int]:
    calls: list[int] = []
    original = conn._write_stream_limits

    def counting(builder, space, stream):  # type: ignore[no-untyped-def]
        calls.append(stream.stream_id)
        original(builder, space, stream)

    conn._write_stream_limits = counting  # type: ignore[method-assign]
    return calls


def test_a_packet_walks_only_the_streams_with_something_to_send() -> None:
    p = LossyPair()
    client, server = p.pair
    sids: list[int] = []
    for _ in range(600):
        sid = client.get_next_available_stream_id()
        client.send_stream_data(sid, b"request")
        sids.append(sid)
    p.pump()
    assert set(p.received["server"]) == set(sids)
    for sid in sids:  # the host answers every stream once; all 600 stay open
        server.send_stream_data(sid, b"first chunk")
    p.pump()
    calls = _count_limit_calls(server)
    server.send_stream_data(sids[123], b"one more chunk")
    packets = server.datagrams_to_send(now=p.now)
    assert packets
    # One stream woke: the packet run saw it (once per packet it tried) and none of the 599 idle ones.
    assert set(calls) == {sids[123]} and len(calls) <= 2
    assert len(server._streams) == 600


def test_finished_streams_are_discarded_and_their_credit_returns() -> None:
    # 3,000 request/response exchanges, far more than the 1,024 streams the peer may have open:
    # only possible if finished streams are discarded and MAX_STREAMS keeps coming.
    p = LossyPair()
    client, server = p.pair
    for batch in range(6):
        sids = []
        for _ in range(500):
            sid = client.get_next_available_stream_id()
            client.send_stream_data(sid, b"q", end_stream=True)
            sids.append(sid)
        p.pump()
        for sid in sids:
            assert sid in p.ended["server"], (batch, sid)
            server.send_stream_data(sid, b"answer", end_stream=True)
        p.pump()
        assert all(sid in p.ended["client"] for sid in sids)
    assert client._streams == {} and server._streams == {}
    assert client._streams_queue == [] and server._streams_queue == []


@settings(max_examples=40)
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.sampled_from([0.05, 0.1, 0.2]),
    plan=st.lists(
        st.tuples(
            st.integers(0, 7),  # stream index
            st.sampled_from(["chunk", "chunk", "chunk", "end", "reset", "stop"]),
            st.integers(1, 3000),  # chunk size
        ),
        min_size=1,
        max_size=60,
    ),
)
def test_under_loss_every_stream_ends_as_its_sender_said(
    seed: int, loss: float, plan: list[tuple[int, str, int]]
) -> None:
    """Chunks written now and then on a few of many open streams, datagrams lost at random: every
    byte written before the end arrives in order, every reset and stop arrives, and once all is
    over no stream is left in either table (nothing leaked, nothing discarded twice)."""
    p = LossyPair(random.Random(seed), loss)
    client, server = p.pair
    sids = []
    for _ in range(40):  # idle streams around the active ones
        sid = client.get_next_available_stream_id()
        client.send_stream_data(sid, b"open")
        sids.append(sid)
    p.pump()
    sent: dict[int, bytearray] = {sid: bytearray() for sid in sids}
    closed: dict[int, str] = {}
    for index, action, size in plan:
        sid = sids[index * 5]
        if sid in closed:
            continue
        if action == "chunk":
            data = bytes([index + 65]) * size
            server.send_stream_data(sid, data)
            sent[sid].extend(data)
        elif action == "end":
            server.send_stream_data(sid, b"", end_stream=True)
            closed[sid] = "end"
        elif action == "reset":
            server.reset_stream(sid, 7)
            closed[sid] = "reset"
        else:
            client.stop_stream(sid, 9)
            closed[sid] = "stop"
        p.pump()
    for sid, how in closed.items():
        if how == "end":
            assert sid in p.ended["client"]
            assert bytes(p.received["client"].get(sid, b"")) == bytes(sent[sid])
        elif how == "reset":
            assert sid in p.resets["client"]
        else:
            assert sid in p.stops["server"]
            assert sid in p.resets["client"]  # aioquic answers STOP_SENDING with a reset
    for sid in sids:
        if sid not in closed:
            assert bytes(p.received["client"].get(sid, b"")) == bytes(sent[sid])
    # End everything: both directions finish, then no state is left on either side.
    for sid in sids:
        if sid not in closed:
            server.send_stream_data(sid, b"", end_stream=True)
        if sid not in p.stops["server"]:
            client.send_stream_data(sid, b"", end_stream=True)
    p.pump()
    for sid in sids:
        if closed.get(sid) == "stop":
            client.reset_stream(sid, 0)
    p.pump()
    assert client._streams == {}, sorted(client._streams)
    assert server._streams == {}, sorted(server._streams)


def test_credit_keeps_coming_when_max_stream_data_frames_are_lost() -> None:
    limits = TransportLimits(stream_window=16 * 1024, connection_window=1024 * 1024)
    p = LossyPair(random.Random(5), 0.3, limits=limits)
    client = p.client
    sid = client.get_next_available_stream_id()
    client.send_stream_data(sid, b"x" * (200 * 1024), end_stream=True)
    p.pump()
    assert sid in p.ended["server"]
    assert len(p.received["server"][sid]) == 200 * 1024


def test_a_backlog_is_sent_window_by_window() -> None:
    # A host that fell behind: 600 streams have a chunk pending at once. Every packet run walks at
    # most RUN_WINDOW streams (stock aioquic walks all 600 for each of the ~70 packets).
    p = LossyPair()
    client, server = p.pair
    sids = []
    for _ in range(600):
        sid = client.get_next_available_stream_id()
        client.send_stream_data(sid, b"request")
        sids.append(sid)
    p.pump()
    for sid in sids:
        server.send_stream_data(sid, b"c" * 100)
    calls = _count_limit_calls(server)
    sends = 0
    for _ in range(10_000):  # transmit by transmit, as the pacer and the ACKs let it, until all is sent
        calls.clear()
        packets = server.datagrams_to_send(now=p.now)
        # Each packet run walked one window; a run per packet, and one that ends each window.
        assert len(calls) <= (2 * len(packets) + 2) * RUN_WINDOW
        sends += len(packets)
        for data, _ in packets:
            client.receive_datagram(data, SERVER_ADDR, now=p.now)
        acks = client.datagrams_to_send(now=p.now)  # the ACKs that open the congestion window
        for data, _ in acks:
            server.receive_datagram(data, CLIENT_ADDR, now=p.now)
        p._drain("client", client)
        if sum(len(p.received["client"].get(sid, b"")) for sid in sids) == 600 * 100:
            break
        if not packets and not acks:
            p.now = min(t for c in (client, server) if (t := c.get_timer()) is not None)
            for c in (client, server):
                if (t := c.get_timer()) is not None and t <= p.now:
                    c.handle_timer(now=p.now)
    assert sends >= 40  # 600 x ~110 bytes of frames
    p.pump()
    assert all(bytes(p.received["client"][sid]) == b"c" * 100 for sid in sids)
