"""QuicEndpoint / MeshConnection / QuicStream over an in-memory network driven by a Clock."""

from __future__ import annotations

from aioquic import tls as aiotls
from aioquic.quic.packet import QuicErrorCode
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from meshd.quic import (
    ConnectionClosed,
    DialFailed,
    DialTimeout,
    MeshConnection,
    QuicEndpoint,
    QuicStream,
    StreamReset,
    TransportLimits,
)
from meshd.quic.testing import MemoryNetwork, RecordingReceiver
from meshd.quic.tls import public_key_bytes

A = ("10.0.0.1", 1111)
B = ("10.0.0.2", 2222)


class World:
    def __init__(self, limits: TransportLimits | None = None) -> None:
        self.clock = Clock()
        self.net = MemoryNetwork(self.clock)
        self.limits = limits or TransportLimits()
        self.key_a = ed25519.Ed25519PrivateKey.generate()
        self.key_b = ed25519.Ed25519PrivateKey.generate()
        self.inbound: list[MeshConnection] = []
        self.server_streams: list[tuple[QuicStream, RecordingReceiver]] = []
        self.server_echo = True
        self.a = QuicEndpoint(self.clock, self.key_a, limits=self.limits)
        self.b = QuicEndpoint(self.clock, self.key_b, on_connection=self._accepted, limits=self.limits)
        self.net.attach(self.a, A)
        self.net.attach(self.b, B)

    def _accepted(self, conn: MeshConnection) -> None:
        self.inbound.append(conn)
        conn.on_stream = self._stream

    def _stream(self, stream: QuicStream) -> None:
        receiver = RecordingReceiver(stream, echo=self.server_echo)
        stream.set_receiver(receiver)
        self.server_streams.append((stream, receiver))

    def dial(self, dial_id: bytes | None = None, addrs: list[tuple[str, int]] | None = None) -> object:
        d = self.a.dial(dial_id or public_key_bytes(self.key_b), addrs or [B])
        results: list[object] = []
        d.addBoth(results.append)
        self.net.pump()
        return results[0] if results else None

    def connected(self) -> MeshConnection:
        conn = self.dial()
        assert isinstance(conn, MeshConnection), conn
        return conn


t = SynchronousTestCase()


def test_dial_and_accept_see_each_others_identity() -> None:
    w = World()
    conn = w.connected()
    assert conn.remote_id == public_key_bytes(w.key_b)
    assert conn.alpn == b"mesh-llm/1"
    assert conn.is_client
    assert len(w.inbound) == 1
    assert w.inbound[0].remote_id == public_key_bytes(w.key_a)
    assert not w.inbound[0].is_client
    assert w.a.connections == [conn]
    assert conn.stats().rtt_smoothed >= 0


def test_stream_echo_with_fin_each_way_ends_cleanly() -> None:
    w = World()
    conn = w.connected()
    stream = conn.open_stream()
    client = RecordingReceiver(stream)
    stream.set_receiver(client)
    stream.write(b"\x01")
    stream.writeSequence([b"hello ", b"mesh"])
    w.net.pump()
    (server_stream, server) = w.server_streams[0]
    assert server.data == b"\x01hello mesh"
    assert client.data == b"\x01hello mesh"
    assert not server.eof
    stream.loseWriteConnection()
    w.net.pump()
    assert server.eof and client.eof
    assert client.lost is not None and client.lost.check(ConnectionDone)
    assert server.lost is not None and server.lost.check(ConnectionDone)
    assert stream.is_closed and server_stream.is_closed


def test_server_fin_first_then_client() -> None:
    w = World()
    w.server_echo = False
    conn = w.connected()
    stream = conn.open_stream()
    client = RecordingReceiver(stream)
    stream.set_receiver(client)
    stream.write(b"ping")
    w.net.pump()
    server_stream, server = w.server_streams[0]
    server_stream.write(b"pong")
    server_stream.loseWriteConnection()
    w.net.pump()
    assert client.data == b"pong" and client.eof and client.lost is None
    stream.loseWriteConnection()
    w.net.pump()
    assert server.eof
    assert client.lost is not None and client.lost.check(ConnectionDone)
    assert server.lost is not None and server.lost.check(ConnectionDone)


def test_reset_by_client_reaches_server_receiver() -> None:
    w = World()
    conn = w.connected()
    stream = conn.open_stream()
    client = RecordingReceiver(stream)
    stream.set_receiver(client)
    stream.write(b"abc")
    w.net.pump()
    stream.reset(42)
    assert client.lost is not None and client.lost.check(StreamReset)
    w.net.pump()
    _, server = w.server_streams[0]
    assert server.lost is not None
    err = server.lost.value
    assert isinstance(err, StreamReset) and err.error_code == 42 and err.by_peer


def test_wrong_endpoint_id_is_refused() -> None:
    w = World()
    other = ed25519.Ed25519PrivateKey.generate()
    d = w.a.dial(public_key_bytes(other), [B])
    w.net.pump()
    w.net.advance(2.0)
    failure = t.failureResultOf(d, DialFailed)
    codes = [r.error_code for r in failure.value.reasons]
    assert codes == [QuicErrorCode.CRYPTO_ERROR + aiotls.AlertDescription.bad_certificate]
    assert w.inbound == []


def test_dial_times_out_when_nobody_answers() -> None:
    w = World()
    d = w.a.dial(public_key_bytes(w.key_b), [("10.9.9.9", 9)], timeout=15.0)
    w.net.pump()
    w.net.advance(14.0, step=1.0)
    t.assertNoResult(d)
    w.net.advance(1.5, step=0.5)
    t.failureResultOf(d, DialTimeout)
    w.net.advance(5.0, step=1.0)
    assert w.clock.getDelayedCalls() == []


def test_first_address_that_answers_wins() -> None:
    w = World()
    conn = w.dial(addrs=[("10.9.9.9", 9), B])
    assert isinstance(conn, MeshConnection)
    assert conn.peer_address == B
    w.net.advance(3.0)
    assert w.a.connections == [conn]


def test_keep_alive_holds_an_idle_connection_open() -> None:
    w = World()
    conn = w.connected()
    before = w.net.delivered
    w.net.advance(60.0, step=1.0)
    assert conn.close_reason is None
    # PINGs every 5 s (and their ACKs) kept it alive.
    assert w.net.delivered - before >= 12


def test_idle_timeout_when_the_peer_goes_silent() -> None:
    w = World()
    conn = w.connected()
    stream = conn.open_stream()
    receiver = RecordingReceiver(stream)
    stream.set_receiver(receiver)
    stream.write(b"x")
    w.net.pump()
    w.net.filter = lambda src, dst, data: None  # the network goes dark
    closed = conn.when_closed()
    w.net.advance(29.0, step=1.0)
    t.assertNoResult(closed)
    # The idle timer restarts on the first ack-eliciting packet sent after the
    # last receipt (RFC 9000 10.1), here the keep-alive PING: 30 s after it.
    w.net.advance(7.0, step=0.5)
    reason = t.successResultOf(closed)
    assert reason.reason == "Idle timeout"
    assert receiver.lost is not None and receiver.lost.check(ConnectionClosed)
    assert w.a.connections == []


def test_garbage_datagrams_do_not_hurt_a_connection() -> None:
    w = World()
    conn = w.connected()
    for junk in (b"", b"\x00", b"\xff" * 20, b"\x40" + bytes(1300), b"\xc0\x00\x00\x00\x01" + bytes(1300)):
        w.net.inject(("10.6.6.6", 6), B, junk)
        w.net.inject(("10.6.6.6", 6), A, junk)
    # Short-header packets aimed at the live connection IDs, with garbage payloads.
    for cid in list(conn.cids):
        w.net.inject(("10.6.6.6", 6), A, b"\x40" + cid + bytes(40))
    w.net.pump()
    stream = conn.open_stream()
    receiver = RecordingReceiver(stream)
    stream.set_receiver(receiver)
    stream.write(b"still here")
    stream.loseWriteConnection()
    w.net.pump()
    assert receiver.data == b"still here" and receiver.eof
    assert w.b.dropped_datagrams >= 4


def test_connection_close_ends_streams_and_fires_when_closed() -> None:
    w = World()
    conn = w.connected()
    stream = conn.open_stream()
    receiver = RecordingReceiver(stream)
    stream.set_receiver(receiver)
    stream.write(b"x")
    w.net.pump()
    server_conn = w.inbound[0]
    peer_closed = server_conn.when_closed()
    closed = conn.when_closed()
    conn.close(5, "bye")
    w.net.advance(2.0)
    reason = t.successResultOf(closed)
    assert reason.error_code == 5 and reason.locally
    peer_reason = t.successResultOf(peer_closed)
    assert peer_reason.error_code == 5 and peer_reason.reason == "bye" and not peer_reason.locally
    assert receiver.lost is not None and receiver.lost.check(ConnectionClosed)
    _, server = w.server_streams[0]
    assert server.lost is not None and server.lost.check(ConnectionClosed)


def test_stop_closes_everything_and_cancels_timers() -> None:
    w = World()
    conn = w.connected()
    server_conn = w.inbound[0]
    peer_closed = server_conn.when_closed()
    t.successResultOf(w.a.stop())
    assert conn.close_reason is not None
    w.net.advance(2.0)  # the peer drains for three PTOs
    assert t.successResultOf(peer_closed).reason == "endpoint stopping"
    t.successResultOf(w.b.stop())
    assert w.clock.getDelayedCalls() == []


@implementer(IPushProducer)
class BulkProducer:
    """Writes *total* bytes in chunks while not paused."""

    def __init__(self, stream: QuicStream, total: int, chunk: int = 64 * 1024) -> None:
        self.stream = stream
        self.left = total
        self.chunk = chunk
        self.paused = False
        self.pauses = 0
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self.run()

    def stopProducing(self) -> None:
        self.stopped = True

    def run(self) -> None:
        while self.left > 0 and not self.paused and not self.stopped:
            n = min(self.chunk, self.left)
            self.left -= n
            self.stream.write(b"z" * n)
        if self.left == 0 and not self.stopped:
            self.stopped = True
            self.stream.unregisterProducer()
            self.stream.loseWriteConnection()


def test_backpressure_both_ways() -> None:
    limits = TransportLimits(stream_window=128 * 1024, connection_window=512 * 1024, send_high_water=128 * 1024)
    w = World(limits)
    w.server_echo = False
    conn = w.connected()
    stream = conn.open_stream()
    stream.set_receiver(RecordingReceiver(stream))
    stream.write(b"\x04")
    w.net.pump()
    server_stream, server = w.server_streams[0]
    server_stream.pauseProducing()  # the server's reader stalls

    total = 4 * 1024 * 1024
    producer = BulkProducer(stream, total)
    stream.registerProducer(producer, True)
    producer.run()
    w.net.advance(1.0)
    # The reader is stalled: the server holds at most one stream window...
    assert server_stream.read_buffered <= limits.stream_window
    assert len(server.data) == 1
    # ...and the sender was paused rather than buffering 4 MiB.
    assert producer.paused and producer.pauses >= 1
    assert producer.left > total - 1024 * 1024
    assert stream.buffered_bytes <= 2 * limits.send_high_water

    server_stream.resumeProducing()
    w.net.advance(5.0, step=0.01)
    assert len(server.data) == 1 + total
    assert server.eof
