"""Attacks on the QUIC layer, on the real QUIC stack in memory (MemoryNetwork + Clock): handshake
floods from spoofed sources and Retry (#5), and what a peer may park before the node admits it (#4)."""

from __future__ import annotations

import os
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from meshd.control import FrameReader, PreAdmissionBudget
from meshd.quic import MeshConnection, MeshQuicConnection, QuicEndpoint, QuicStream, TransportLimits
from meshd.quic.endpoint import AdmissionLimits, InboundLimits
from meshd.quic.retry import RetryTokens
from meshd.quic.testing import MemoryNetwork, RecordingReceiver
from meshd.quic.tls import public_key_bytes

A = ("10.0.0.1", 1111)
B = ("10.0.0.2", 2222)
t = SynchronousTestCase()


class World:
    """Endpoint ``b`` accepts; every accepted stream gets a FrameReader (a GOSSIP stream's reader)."""

    def __init__(self, *, inbound: InboundLimits | None = None, admission: AdmissionLimits | None = None) -> None:
        self.clock = Clock()
        self.net = MemoryNetwork(self.clock)
        self.key_b = ed25519.Ed25519PrivateKey.generate()
        self.b_id = public_key_bytes(self.key_b)
        self.accepted: list[MeshConnection] = []
        self.readers: list[FrameReader] = []
        self.frames: list[bytes] = []
        self.outcomes: dict[FrameReader, object] = {}
        self.peer_ids: dict[tuple[str, int], bytes] = {}
        self.b = QuicEndpoint(
            self.clock, self.key_b, on_connection=self._accept, inbound=inbound or InboundLimits(), admission=admission
        )
        self.net.attach(self.b, B)

    def _accept(self, conn: MeshConnection) -> None:
        self.accepted.append(conn)
        conn.on_stream = self._stream

    def _stream(self, stream: QuicStream) -> None:
        reader = FrameReader(stream)
        stream.set_receiver(reader)
        self.readers.append(reader)

        def settled(result: object) -> None:
            self.outcomes[reader] = result
            if isinstance(result, bytes):
                self.frames.append(result)

        reader.result.addBoth(settled)

    def refused(self, reader: FrameReader) -> bool:
        """Did this reader end with the pre-admission refusal?"""
        outcome = self.outcomes.get(reader)
        return isinstance(outcome, Failure) and outcome.check(PreAdmissionBudget) is not None

    def peer(self, address: tuple[str, int]) -> QuicEndpoint:
        endpoint = QuicEndpoint(self.clock, ed25519.Ed25519PrivateKey.generate())
        self.net.attach(endpoint, address)
        self.peer_ids[address] = endpoint.endpoint_id
        return endpoint

    def dial(self, endpoint: QuicEndpoint, settle: float = 1.0) -> MeshConnection | None:
        results: list[object] = []
        endpoint.dial(self.b_id, [B], timeout=5).addBoth(results.append)
        self.net.advance(settle)
        return results[0] if results and isinstance(results[0], MeshConnection) else None

    def initial_from(self, source: tuple[str, int]) -> None:
        """One genuine client Initial (a ClientHello) that will never be followed up."""
        quic = MeshQuicConnection(
            private_key=ed25519.Ed25519PrivateKey.generate(),
            is_client=True,
            alpn_protocols=[b"mesh-llm/1"],
            expected_peer_id=self.b_id,
        )
        quic.connect(B, now=self.clock.seconds())
        for data, _ in quic.datagrams_to_send(now=self.clock.seconds()):
            self.net.inject(source, B, data)


def gossip_opener(declared: int, body: bytes = b"") -> bytes:
    """What follows a GOSSIP stream's type byte: ``[len:4 LE][body]`` (the body may be partial)."""
    return struct.pack("<I", declared) + body


def spoofed(i: int) -> tuple[str, int]:
    return (f"172.{16 + i // 65025}.{i // 255 % 255}.{i % 255 + 1}", 40000 + i % 1000)


# -- #5: handshake floods ----------------------------------------------------------------------------


def test_a_burst_of_spoofed_initials_does_not_stop_a_legitimate_peer() -> None:
    """300 Initials from 300 forged addresses (351 KiB) used to take all 256 handshake slots for ~30 s."""
    w = World()
    for i in range(300):
        w.initial_from(spoofed(i))
    w.net.pump()
    assert w.b.pending_handshakes == w.b.inbound.retry_threshold  # the rest were asked to Retry
    assert w.b.retries_sent == 300 - w.b.inbound.retry_threshold
    conn = w.dial(w.peer(A))
    assert conn is not None and conn.is_connected
    assert len(w.accepted) == 1 and w.accepted[0].remote_id == w.peer_ids[A]
    # the forged handshakes are abandoned at the handshake deadline
    w.net.advance(w.b.inbound.handshake_timeout + 1, step=1.0)
    assert w.b.pending_handshakes == 0


def test_bursts_every_few_seconds_never_close_the_door() -> None:
    w = World()
    legit = w.peer(A)
    for burst in range(4):
        for i in range(300):
            w.initial_from(spoofed(burst * 300 + i))
        w.net.pump()
        assert w.dial(legit, settle=0.5) is not None, f"burst {burst}"
        w.net.advance(3.0, step=1.0)


def test_meshd_peers_connect_through_retry_when_it_is_always_asked() -> None:
    w = World(inbound=InboundLimits(retry_threshold=0))
    conn = w.dial(w.peer(A))
    assert conn is not None
    assert w.b.retries_sent == 1
    stream = conn.open_stream()
    stream.set_receiver(RecordingReceiver(stream))
    stream.write(gossip_opener(5, b"hello"))
    w.net.pump()
    assert w.frames == [b"hello"]


def test_one_source_gets_a_bounded_share_of_handshake_slots() -> None:
    limits = InboundLimits(max_pending_per_source=4, retry_threshold=1000)
    w = World(inbound=limits)
    for port in range(20):
        w.initial_from(("10.9.9.9", 50000 + port))
    w.net.pump()
    assert w.b.pending_handshakes == 4
    assert w.dial(w.peer(A)) is not None  # another address is not affected
    assert w.dial(w.peer(("10.9.9.9", 1))) is None  # that source is full until its handshakes expire
    w.net.advance(limits.handshake_timeout + 1, step=1.0)
    assert w.b.pending_handshakes == 0
    assert w.dial(w.peer(("10.9.9.9", 2))) is not None


def test_a_token_from_another_address_or_a_forged_one_starts_nothing() -> None:
    w = World(inbound=InboundLimits(retry_threshold=0))
    tokens = RetryTokens()
    scid = os.urandom(8)
    quic = MeshQuicConnection(
        private_key=ed25519.Ed25519PrivateKey.generate(),
        is_client=True,
        alpn_protocols=[b"mesh-llm/1"],
        expected_peer_id=w.b_id,
    )
    quic._peer_token = tokens.issue(A, b"odcid123", scid, now=0.0)  # signed with another endpoint's key
    quic.connect(B, now=0.0)
    for data, _ in quic.datagrams_to_send(now=0.0):
        w.net.inject(A, B, data)
    w.net.pump()
    assert w.b.pending_handshakes == 0 and w.b.retries_sent == 0
    assert w.b.dropped_datagrams >= 1


def test_retry_tokens() -> None:
    tokens = RetryTokens(secret=b"k" * 32, lifetime=10.0)
    token = tokens.issue(A, b"orig-dcid", b"retry-sc", now=100.0)
    assert tokens.check(A, token, b"retry-sc", now=105.0) == b"orig-dcid"
    assert tokens.check(("10.0.0.1", 1112), token, b"retry-sc", now=105.0) is None  # another port
    assert tokens.check(B, token, b"retry-sc", now=105.0) is None  # another address
    assert tokens.check(A, token, b"other-sc", now=105.0) is None  # not sent to our Retry's CID
    assert tokens.check(A, token, b"retry-sc", now=110.5) is None  # stale
    assert RetryTokens(secret=b"j" * 32).check(A, token, b"retry-sc", now=105.0) is None
    for i in range(len(token)):
        tampered = token[:i] + bytes([token[i] ^ 1]) + token[i + 1 :]
        assert tokens.check(A, tampered, b"retry-sc", now=105.0) is None
    with pytest.raises(ValueError):
        tokens.issue(A, b"x" * 21, b"y", now=0.0)


@given(st.binary(max_size=200), st.binary(max_size=20))
def test_retry_token_check_never_raises(token: bytes, dcid: bytes) -> None:
    assert RetryTokens().check(A, token, dcid, now=0.0) is None


# -- #4: what a peer may park before admission ---------------------------------------------------------


def test_a_frame_declared_beyond_the_pre_admission_limit_is_refused_at_its_prefix() -> None:
    """48 streams x 7 MiB declared and never finished used to park 378 MB in a host."""
    w = World()
    conn = w.dial(w.peer(A))
    assert conn is not None
    streams = []
    for _ in range(48):
        stream = conn.open_stream()
        stream.set_receiver(RecordingReceiver(stream))
        stream.write(gossip_opener(7 * 1024 * 1024, b"x" * 60_000))
        streams.append(stream)
    w.net.advance(1.0)
    assert len(w.readers) == 48
    for reader in w.readers:
        assert w.refused(reader)
        assert "not admitted yet" in str(w.outcomes[reader].value)  # type: ignore[attr-defined]
    assert w.b.preadmission_bytes == 0
    assert all(s.is_closed for s in streams)  # every stream was reset


def test_frames_within_the_limit_share_one_budget_per_connection_and_one_per_endpoint() -> None:
    inbound = InboundLimits(preadmission_bytes_per_connection=100_000, preadmission_bytes_total=250_000)
    w = World(inbound=inbound)
    conns = [w.dial(w.peer((f"10.1.0.{i}", 1000))) for i in range(1, 5)]
    assert all(c is not None for c in conns)
    # Each connection parks 4 unfinished frames of 30,000 bytes (declared 90,000): the fourth passes
    # the connection's budget; over four connections the endpoint's budget runs out first.
    for conn in conns:
        assert conn is not None
        for _ in range(4):
            stream = conn.open_stream()
            stream.set_receiver(RecordingReceiver(stream))
            stream.write(gossip_opener(90_000, b"y" * 30_000))
    w.net.advance(1.0)
    parked = [r for r in w.readers if r not in w.outcomes]
    refused = [r for r in w.readers if r in w.outcomes]
    assert w.b.preadmission_bytes <= inbound.preadmission_bytes_total
    assert sum(r._charged for r in parked) == w.b.preadmission_bytes
    assert len(parked) == 8  # 3 + 3 (per-connection budget), then 2 more before the total runs out
    assert all(w.refused(r) for r in refused)
    # a finished frame gives its bytes back
    for conn in conns:
        assert conn is not None
        conn.close(0, "bye")
    w.net.advance(2.0)
    assert w.b.preadmission_bytes == 0


def test_an_admitted_peer_may_send_full_size_frames() -> None:
    w = World()
    conn = w.dial(w.peer(A))
    assert conn is not None
    w.accepted[0].mark_admitted()
    body = os.urandom(3 * 1024 * 1024)
    stream = conn.open_stream()
    stream.set_receiver(RecordingReceiver(stream))
    stream.write(gossip_opener(len(body), body))
    w.net.advance(3.0, step=0.01)
    assert w.frames == [body]
    assert w.b.preadmission_bytes == 0


def test_unadmitted_connections_are_capped_and_closed_at_their_deadline() -> None:
    admission = AdmissionLimits(max_unadmitted=3, admission_timeout=10.0)
    w = World(admission=admission)
    conns = []
    for i in range(5):
        conns.append(w.dial(w.peer((f"10.2.0.{i + 1}", 1000))))
    assert all(c is not None for c in conns)
    w.net.advance(1.0)
    assert w.b.unadmitted == 3
    open_now = [c for c in w.accepted if c.close_reason is None]
    assert open_now == w.accepted[2:]  # the two oldest were closed for the newcomers
    w.accepted[4].mark_admitted()
    assert w.b.unadmitted == 2
    w.net.advance(admission.admission_timeout, step=1.0)
    assert w.b.unadmitted == 0
    assert [c.close_reason is None for c in w.accepted] == [False, False, False, False, True]
    assert w.accepted[2].close_reason is not None and "not admitted" in w.accepted[2].close_reason.reason


def test_before_admission_a_peer_gets_few_streams_and_a_small_window() -> None:
    limits = TransportLimits(preadmission_streams=4, preadmission_window=64 * 1024)
    w = World(admission=AdmissionLimits())
    w.b.limits = limits
    client = w.peer(A)
    client.limits = limits
    conn = w.dial(client)
    assert conn is not None
    server_conn = w.accepted[0]
    sent = []
    for _ in range(6):
        stream = conn.open_stream()
        stream.set_receiver(RecordingReceiver(stream))
        stream.write(gossip_opener(5, b"hello"))
        sent.append(stream)
    w.net.advance(1.0)
    assert len(w.frames) == 4  # two streams wait for credit
    # a reader that does not read: at most the pre-admission window arrives
    w.readers[0].stream.pauseProducing()
    big = conn.open_stream()
    big.write(b"z" * (512 * 1024))
    w.net.advance(1.0)
    assert sum(s.read_buffered for s in server_conn._streams.values()) <= 64 * 1024
    server_conn.mark_admitted()
    w.net.advance(2.0, step=0.01)
    assert len(w.frames) >= 6  # the waiting streams got credit
    assert w.b.unadmitted == 0


def test_a_connection_never_marked_admitted_keeps_the_budget_without_admission_tracking() -> None:
    """Without ``admission`` (a node that does not track it) nothing is closed, but the byte budget
    still holds for every connection not marked admitted."""
    w = World()
    conn = w.dial(w.peer(A))
    assert conn is not None
    w.net.advance(60.0, step=5.0)
    assert conn.is_connected
    stream = conn.open_stream()
    stream.set_receiver(RecordingReceiver(stream))
    stream.write(gossip_opener(2 * 1024 * 1024))
    w.net.advance(1.0)
    assert w.refused(w.readers[-1])


def test_a_tunnel_request_from_a_peer_not_admitted_shares_the_budget() -> None:
    """Where tunnels are served before admission (0.76's passive SDK path), a request body from a peer
    not admitted yet is held to the pre-admission budget: 413 instead of 8 MiB parked per stream."""
    from meshd.httpwire import render_request
    from meshd.tunnel import Backend, HostTunnel

    w = World(admission=AdmissionLimits())
    tunnels: list[HostTunnel] = []

    def tunnel_stream(stream: QuicStream) -> None:
        tunnel = HostTunnel(stream, Backend(w.clock, "http://127.0.0.1:9"), clock=w.clock)
        tunnels.append(tunnel)
        stream.set_receiver(tunnel)

    w._stream = tunnel_stream  # type: ignore[method-assign]
    conn = w.dial(w.peer(A))
    assert conn is not None
    stream = conn.open_stream()
    answer = RecordingReceiver(stream)
    stream.set_receiver(answer)
    body = b'{"model":"m","x":"' + b"a" * (2 * 1024 * 1024) + b'"}'
    stream.write(render_request(b"POST", b"/v1/chat/completions", [(b"host", b"h")], body))
    w.net.advance(2.0, step=0.01)
    assert answer.data.startswith(b"HTTP/1.1 413 ")
    assert b"not admitted" in answer.data
    assert w.b.preadmission_bytes == 0
