"""Sans-IO tests of MeshQuicConnection + RawPublicKeyContext: two connections pumped in memory."""

from __future__ import annotations

import pytest
from aioquic import tls as aiotls
from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.packet import QuicErrorCode, pull_quic_header
from cryptography.hazmat.primitives.asymmetric import ed25519

from meshd.quic import tls
from meshd.quic.core import MeshQuicConnection, TransportLimits

ALPN = [b"mesh-llm/1"]
CLIENT_ADDR = ("10.0.0.1", 1000)
SERVER_ADDR = ("10.0.0.2", 2000)


def key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


class Pair:
    """A client and a server connection with a datagram pump between them."""

    def __init__(
        self,
        client_key: ed25519.Ed25519PrivateKey,
        server_key: ed25519.Ed25519PrivateKey,
        *,
        dial_id: bytes | None = None,
        limits: TransportLimits | None = None,
        server_alpns: list[bytes] = ALPN,
    ) -> None:
        self.now = 0.0
        self.server_key = server_key
        self.limits = limits or TransportLimits()
        self.server_alpns = server_alpns
        self.client = MeshQuicConnection(
            private_key=client_key,
            is_client=True,
            alpn_protocols=ALPN,
            expected_peer_id=dial_id if dial_id is not None else tls.public_key_bytes(server_key),
            limits=self.limits,
        )
        self.server: MeshQuicConnection | None = None
        self.client_events: list[events.QuicEvent] = []
        self.server_events: list[events.QuicEvent] = []

    def connect(self) -> None:
        self.client.connect(SERVER_ADDR, now=self.now)

    def pump(self, rounds: int = 2000) -> None:
        for _ in range(rounds):
            moved = False
            for data, _addr in self.client.datagrams_to_send(now=self.now):
                if self.server is None:
                    header = pull_quic_header(Buffer(data=data), host_cid_length=8)
                    self.server = MeshQuicConnection(
                        private_key=self.server_key,
                        is_client=False,
                        alpn_protocols=self.server_alpns,
                        original_destination_connection_id=header.destination_cid,
                        limits=self.limits,
                    )
                self.server.receive_datagram(data, CLIENT_ADDR, now=self.now)
                moved = True
            if self.server is not None:
                for data, _addr in self.server.datagrams_to_send(now=self.now):
                    self.client.receive_datagram(data, SERVER_ADDR, now=self.now)
                    moved = True
            self._drain()
            if not moved and not self._fire_short_timers():
                return
        raise AssertionError("pump did not settle")

    def _fire_short_timers(self, horizon: float = 0.1) -> bool:
        """Pacing and ACK-delay timers: advance time to the nearest one if it is close."""
        conns = [c for c in (self.client, self.server) if c is not None]
        timers = [(t, c) for c in conns if (t := c.get_timer()) is not None and t <= self.now + horizon]
        if not timers:
            return False
        at, conn = min(timers, key=lambda tc: tc[0])
        self.now = max(self.now, at)
        conn.handle_timer(now=self.now)
        return True

    def _drain(self) -> None:
        while (e := self.client.next_event()) is not None:
            self.client_events.append(e)
        if self.server is not None:
            while (e := self.server.next_event()) is not None:
                self.server_events.append(e)

    def run_out(self, conn: MeshQuicConnection, limit: int = 100) -> None:
        """Fire *conn*'s timers (no datagrams delivered) until it has none left."""
        for _ in range(limit):
            at = conn.get_timer()
            if at is None:
                break
            self.now = max(self.now, at)
            conn.handle_timer(now=self.now)
            conn.datagrams_to_send(now=self.now)
        self._drain()

    def of(self, side: str, kind: type) -> list:
        evs = self.client_events if side == "client" else self.server_events
        return [e for e in evs if isinstance(e, kind)]


def test_handshake_identities_on_both_sides() -> None:
    ck, sk = key(), key()
    p = Pair(ck, sk)
    p.connect()
    p.pump()
    assert p.of("client", events.HandshakeCompleted)
    assert p.of("server", events.HandshakeCompleted)
    assert p.client.peer_endpoint_id == tls.public_key_bytes(sk)
    assert p.server is not None and p.server.peer_endpoint_id == tls.public_key_bytes(ck)
    assert p.of("client", events.HandshakeCompleted)[0].alpn_protocol == "mesh-llm/1"


def test_wrong_endpoint_id_is_refused_with_bad_certificate() -> None:
    ck, sk, other = key(), key(), key()
    p = Pair(ck, sk, dial_id=tls.public_key_bytes(other))
    p.connect()
    p.pump()
    assert not p.of("client", events.HandshakeCompleted)
    assert not p.of("server", events.HandshakeCompleted)
    p.run_out(p.client)
    terminated = p.of("client", events.ConnectionTerminated)
    assert terminated
    assert terminated[0].error_code == QuicErrorCode.CRYPTO_ERROR + aiotls.AlertDescription.bad_certificate


def test_missing_client_certificate_is_refused() -> None:
    ck, sk = key(), key()
    p = Pair(ck, sk)
    p.connect()
    # Make the client present an empty Certificate, as stock aioquic does without a cert.
    p.client.tls.certificate = None
    p.pump()
    assert not p.of("server", events.HandshakeCompleted)
    assert p.server is not None
    p.run_out(p.server)
    terminated = p.of("server", events.ConnectionTerminated)
    assert terminated
    assert terminated[0].error_code == QuicErrorCode.CRYPTO_ERROR + aiotls.AlertDescription.certificate_required


def test_alpn_mismatch_is_refused() -> None:
    ck, sk = key(), key()
    p = Pair(ck, sk, server_alpns=[b"other/1"])
    p.connect()
    p.pump()
    assert not p.of("client", events.HandshakeCompleted)


def test_hello_advertises_raw_public_key_types() -> None:
    ck, sk = key(), key()
    p = Pair(ck, sk)
    p.connect()
    exts = dict(p.client.tls.handshake_extensions)
    assert exts[tls.EXT_CLIENT_CERTIFICATE_TYPE] == b"\x01\x02"
    assert exts[tls.EXT_SERVER_CERTIFICATE_TYPE] == b"\x01\x02"
    assert p.client.tls.certificate.public_bytes() == tls.spki_for(tls.public_key_bytes(ck))


def test_server_refuses_client_without_raw_public_key_extensions() -> None:
    ck, sk = key(), key()
    p = Pair(ck, sk)
    # Strip the certificate-type extensions before the ClientHello is built.
    original = p.client._initialize

    def initialize(peer_cid: bytes) -> None:
        original(peer_cid)
        p.client.tls.handshake_extensions = [e for e in p.client.tls.handshake_extensions if e[0] not in (19, 20)]

    p.client._initialize = initialize  # type: ignore[method-assign]
    p.connect()
    p.pump()
    assert p.server is not None
    assert not p.of("server", events.HandshakeCompleted)
    p.run_out(p.server)
    terminated = p.of("server", events.ConnectionTerminated)
    assert terminated[0].error_code == (QuicErrorCode.CRYPTO_ERROR + aiotls.AlertDescription.unsupported_certificate)


def test_stream_echo_and_fin_each_way() -> None:
    ck, sk = key(), key()
    p = Pair(ck, sk)
    p.connect()
    p.pump()
    sid = p.client.get_next_available_stream_id()
    p.client.send_stream_data(sid, b"\x01hello", end_stream=True)
    p.pump()
    got = p.of("server", events.StreamDataReceived)
    assert b"".join(e.data for e in got) == b"\x01hello"
    assert got[-1].end_stream
    assert p.server is not None
    p.server.send_stream_data(sid, b"world", end_stream=True)
    p.pump()
    back = p.of("client", events.StreamDataReceived)
    assert b"".join(e.data for e in back) == b"world" and back[-1].end_stream


def test_reset_reaches_the_peer() -> None:
    ck, sk = key(), key()
    p = Pair(ck, sk)
    p.connect()
    p.pump()
    sid = p.client.get_next_available_stream_id()
    p.client.send_stream_data(sid, b"x")
    p.pump()
    p.client.reset_stream(sid, 7)
    p.pump()
    resets = p.of("server", events.StreamReset)
    assert resets and resets[0].error_code == 7


def test_peer_may_open_1024_streams() -> None:
    ck, sk = key(), key()
    p = Pair(ck, sk)
    p.connect()
    p.pump()
    assert p.client._remote_max_streams_bidi == 1024
    assert p.server is not None and p.server._remote_max_streams_bidi == 1024


def test_receive_window_follows_consumption() -> None:
    limits = TransportLimits(stream_window=64 * 1024, connection_window=256 * 1024)
    ck, sk = key(), key()
    p = Pair(ck, sk, limits=limits)
    p.connect()
    p.pump()
    sid = p.client.get_next_available_stream_id()
    p.client.send_stream_data(sid, b"a" * (300 * 1024))
    p.pump()
    received = sum(len(e.data) for e in p.of("server", events.StreamDataReceived))
    # Nothing consumed: the server may only receive one window.
    assert received == 64 * 1024
    assert p.server is not None
    p.server.consume(sid, received)
    p.pump()
    received = sum(len(e.data) for e in p.of("server", events.StreamDataReceived))
    assert received == 128 * 1024


def test_idle_timeout_ends_the_connection() -> None:
    ck, sk = key(), key()
    p = Pair(ck, sk, limits=TransportLimits(idle_timeout=30.0))
    p.connect()
    p.pump()
    start = p.now
    # Nothing is exchanged any more: the client times out after the idle timeout.
    p.run_out(p.client)
    assert 29.9 <= p.now - start <= 31.0
    terminated = p.of("client", events.ConnectionTerminated)
    assert terminated and terminated[0].reason_phrase == "Idle timeout"


def test_server_name_matches_iroh_snapshot() -> None:
    # iroh/src/tls/name.rs test_snapshot: SecretKey::from_bytes(&[0; 32]).
    pub = tls.public_key_bytes(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32)))
    assert tls.server_name_for(pub) == "7dl2ff6emqi2qol3l382krodedij45bn3nh479hqo14a32qpr8kg.iroh.invalid"


@pytest.mark.parametrize(
    "spki",
    [
        b"",
        bytes(44),
        tls.ED25519_SPKI_PREFIX + bytes(31),
        b"\x30" + tls.ED25519_SPKI_PREFIX[1:] + b"\x01" * 33,
    ],
)
def test_bad_spki_is_rejected(spki: bytes) -> None:
    with pytest.raises(aiotls.AlertBadCertificate):
        tls.endpoint_id_from_spki(spki)


def test_aioquic_hooks_still_exist() -> None:
    # The layer overrides these private hooks of aioquic 1.7.2.
    for name in (
        "_server_handle_hello",
        "_server_handle_certificate",
        "_client_handle_encrypted_extensions",
        "_set_peer_certificate",
    ):
        assert callable(getattr(aiotls.Context, name))
    from aioquic.quic.connection import QuicConnection

    for name in (
        "_initialize",
        "_write_stream_limits",
        "_write_connection_limits",
        # meshd.quic.sendqueue
        "_write_application",
        "_write_stream_frame",
        "_write_reset_stream_frame",
        "_write_stop_sending_frame",
        "_handle_stream_frame",
        "_handle_reset_stream_frame",
        "_handle_stop_sending_frame",
        "_on_max_stream_data_delivery",
    ):
        assert callable(getattr(QuicConnection, name))
    from aioquic.quic.packet_builder import QuicPacketBuilder

    builder = QuicPacketBuilder(host_cid=b"h" * 8, peer_cid=b"p" * 8, version=1, is_client=True, max_datagram_size=1200)
    assert builder._flight_bytes == 0 and builder._datagram_flight_bytes == 0 and builder.max_flight_bytes is None
    p = Pair(key(), key())
    p.connect()
    p.pump()
    assert isinstance(p.client._streams, dict) and isinstance(p.client._streams_queue, list)
    assert hasattr(p.client, "_pacing_at")
