"""meshd <-> meshd over real UDP sockets on 127.0.0.1 (two QuicEndpoints in one process)."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator

import pytest
import pytest_twisted
from aioquic import tls as aiotls
from aioquic.quic.packet import QuicErrorCode
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet import defer

from meshd.quic import DialFailed, MeshConnection, QuicEndpoint, QuicStream
from meshd.quic.endpoint import InboundLimits
from meshd.quic.testing import RecordingReceiver as Collect
from meshd.quic.tls import public_key_bytes

pytestmark = pytest.mark.integration


class Pair:
    def __init__(self, reactor: object, inbound: InboundLimits | None = None) -> None:
        self.key_a = ed25519.Ed25519PrivateKey.generate()
        self.key_b = ed25519.Ed25519PrivateKey.generate()
        self.inbound: list[MeshConnection] = []
        self.a = QuicEndpoint(reactor, self.key_a)
        self.b = QuicEndpoint(reactor, self.key_b, on_connection=self._accept, inbound=inbound or InboundLimits())
        self.a.listen(0, "127.0.0.1")
        self.b.listen(0, "127.0.0.1")
        self.b_addr = ("127.0.0.1", self.b.getHost().port)

    def _accept(self, conn: MeshConnection) -> None:
        self.inbound.append(conn)

        def on_stream(stream: QuicStream) -> None:
            stream.set_receiver(Collect(stream, echo=True))

        conn.on_stream = on_stream

    def dial(self) -> defer.Deferred[MeshConnection]:
        return self.a.dial(public_key_bytes(self.key_b), [self.b_addr], timeout=10)

    @defer.inlineCallbacks
    def stop(self):  # type: ignore[no-untyped-def]
        yield self.a.stop()
        yield self.b.stop()


@pytest.fixture(params=["plain", "retry"])
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    """Every test runs twice: once as is, once with the listener asking every Initial for a Retry."""
    from twisted.internet import reactor

    p = Pair(reactor, InboundLimits(retry_threshold=0) if request.param == "retry" else None)
    yield p
    if request.param == "retry":
        assert p.b.retries_sent >= 1 or not p.inbound
    pytest_twisted.blockon(p.stop())


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_handshake_identity_and_echo(pair: Pair):  # type: ignore[no-untyped-def]
    conn = yield pair.dial()
    assert conn.remote_id == public_key_bytes(pair.key_b)
    stream = conn.open_stream()
    receiver = Collect(stream)
    stream.set_receiver(receiver)
    stream.write(b"\x01hello over udp")
    stream.loseWriteConnection()
    data = yield receiver.done
    assert data == b"\x01hello over udp"
    # The server completes its handshake when the client's Finished arrives.
    assert pair.inbound[0].remote_id == public_key_bytes(pair.key_a)
    assert conn.stats().rtt_smoothed > 0


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_one_mebibyte_transfer(pair: Pair):  # type: ignore[no-untyped-def]
    conn = yield pair.dial()
    payload = hashlib.sha256(b"seed").digest() * (1024 * 1024 // 32)
    stream = conn.open_stream()
    receiver = Collect(stream)
    stream.set_receiver(receiver)
    stream.write(payload)
    stream.loseWriteConnection()
    data = yield receiver.done
    assert len(data) == len(payload) and data == payload


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_wrong_endpoint_id_refused(pair: Pair):  # type: ignore[no-untyped-def]
    other = ed25519.Ed25519PrivateKey.generate()
    d = pair.a.dial(public_key_bytes(other), [pair.b_addr], timeout=10)
    with pytest.raises(DialFailed) as info:
        yield d
    codes = [r.error_code for r in info.value.reasons]
    assert codes == [QuicErrorCode.CRYPTO_ERROR + aiotls.AlertDescription.bad_certificate]
    assert pair.inbound == []


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_garbage_datagrams_do_not_hurt(pair: Pair):  # type: ignore[no-untyped-def]
    conn = yield pair.dial()
    junk_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        a_addr = ("127.0.0.1", pair.a.getHost().port)
        for target in (pair.b_addr, a_addr):
            for junk in (
                b"",
                b"\x00",
                b"\xff" * 50,
                b"\x40" + bytes(1300),
                b"\xc0\x00\x00\x00\x01" + bytes(1300),
            ):
                junk_socket.sendto(junk, target)
        for cid in list(conn.cids):
            junk_socket.sendto(b"\x40" + cid + bytes(60), a_addr)
    finally:
        junk_socket.close()
    stream = conn.open_stream()
    receiver = Collect(stream)
    stream.set_receiver(receiver)
    stream.write(b"after the junk")
    stream.loseWriteConnection()
    data = yield receiver.done
    assert data == b"after the junk"
    assert conn.close_reason is None


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_one_thousand_concurrent_streams(pair: Pair):  # type: ignore[no-untyped-def]
    conn = yield pair.dial()
    receivers = []
    for i in range(1000):
        stream = conn.open_stream()
        receiver = Collect(stream)
        stream.set_receiver(receiver)
        stream.write(b"stream %d" % i)
        receivers.append(receiver)
    # All 1,000 are open at once (none finished yet); now finish them.
    for receiver in receivers:
        receiver.stream.loseWriteConnection()
    results = yield defer.gatherResults([r.done for r in receivers])
    assert results == [b"stream %d" % i for i in range(1000)]
