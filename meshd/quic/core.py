"""The sans-IO QUIC connection meshd uses: aioquic's, with these changes.

1. TLS: the context aioquic builds in ``_initialize`` is swapped for a
   :class:`~meshd.quic.tls.RawPublicKeyContext` (iroh's raw-public-key TLS).
2. Limits: the peer may open ``max_streams_bidi`` (1024, as mesh-llm) bidi
   streams at once; idle timeout 30 s; QUIC v1 only.
3. Before admission an inbound (server-side) connection gets a small receive
   window (``preadmission_window``, 256 KiB: all a peer can park in aioquic's
   buffers, out-of-order data included) and, where the endpoint tracks
   admission, ``preadmission_streams`` (16) bidi streams;
   :meth:`MeshQuicConnection.admit` raises both to the full limits
   (MAX_DATA / MAX_STREAMS frames follow).
4. Receive flow control follows what the *application consumed*, not what
   arrived.  Stock aioquic doubles MAX_STREAM_DATA / MAX_DATA as soon as half
   the window has *arrived*, so a slow reader cannot hold back a fast sender.
   Here the adapter reports consumed bytes with :meth:`MeshQuicConnection.consume`
   (or :meth:`release_stream` when it drops a stream) and the windows are
   re-opened to ``consumed + window`` once less than half of the window is
   left.  So the bytes a paused reader buffers stay below the window.
5. Packets are built from the streams that have something to send
   (:class:`~meshd.quic.sendqueue.ScheduledQuicConnection`), not from a walk
   over every open stream per packet.

Everything else is aioquic 1.7.2 unchanged: it is driven with
``receive_datagram``/``datagrams_to_send``/``get_timer``/``handle_timer``/
``next_event`` by :mod:`meshd.quic.connection`.
"""

from __future__ import annotations

import attrs
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import (
    CONNECTION_LIMIT_FRAME_CAPACITY,
    MAX_STREAM_DATA_FRAME_CAPACITY,
    stream_is_client_initiated,
    stream_is_unidirectional,
)
from aioquic.quic.packet import QuicFrameType, QuicProtocolVersion
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import QuicStream as _AioStream
from cryptography.hazmat.primitives.asymmetric import ed25519

from meshd.quic.sendqueue import ScheduledQuicConnection
from meshd.quic.tls import RawPublicKeyCertificate, RawPublicKeyContext, public_key_bytes

__all__ = ["DEFAULT_LIMITS", "MeshQuicConnection", "TransportLimits"]


@attrs.frozen
class TransportLimits:
    """Transport settings (MESH_PROTOCOL.md §4.3)."""

    #: Bidirectional streams the peer may have open at once.
    max_streams_bidi: int = 1024
    #: Unidirectional streams the peer may open (mesh-llm uses none; we stop them).
    max_streams_uni: int = 16
    #: Per-stream receive window (bytes the peer may send beyond what we consumed).
    stream_window: int = 1024 * 1024
    #: Connection-wide receive window.
    connection_window: int = 8 * 1024 * 1024
    #: Idle timeout advertised (the smaller of both sides' applies).
    idle_timeout: float = 30.0
    #: PING interval while the connection is up (iroh uses 5 s).
    keep_alive: float = 5.0
    #: Unsent bytes per stream above which a registered producer is paused.
    send_high_water: int = 1024 * 1024
    #: Unsent bytes per stream above which ``write`` raises (no producer used).
    send_hard_limit: int = 16 * 1024 * 1024
    #: Connection-wide receive window of an inbound connection not yet admitted by the node.
    preadmission_window: int = 256 * 1024
    #: Bidirectional streams an inbound peer may have open at once before it is admitted.
    preadmission_streams: int = 16


DEFAULT_LIMITS = TransportLimits()


class MeshQuicConnection(ScheduledQuicConnection):
    """aioquic's QuicConnection with raw-public-key TLS and consumption-based windows.

    :param private_key: our Ed25519 identity.
    :param is_client: dialler or listener side.
    :param alpn_protocols: ALPN protocols offered (client) / accepted (server).
    :param expected_peer_id: client side: the EndpointId being dialled.
    :param original_destination_connection_id: server side: the DCID of the
        client's first Initial packet.
    :param retry_source_connection_id: server side, after a Retry: the source CID
        of our Retry packet (the DCID of the client's Initial that carried the token).
    :param preadmission: server side: start with the pre-admission window until :meth:`admit`.
    :param preadmission_streams: server side: and with the pre-admission stream credit.
    """

    def __init__(
        self,
        *,
        private_key: ed25519.Ed25519PrivateKey,
        is_client: bool,
        alpn_protocols: list[bytes],
        expected_peer_id: bytes | None = None,
        original_destination_connection_id: bytes | None = None,
        retry_source_connection_id: bytes | None = None,
        limits: TransportLimits = DEFAULT_LIMITS,
        preadmission: bool = False,
        preadmission_streams: bool = False,
    ) -> None:
        if is_client and (expected_peer_id is None or len(expected_peer_id) != 32):
            raise ValueError("a client must know the 32-byte EndpointId it dials")
        if (preadmission or preadmission_streams) and is_client:
            raise ValueError("pre-admission limits apply to inbound (server) connections")
        window = limits.preadmission_window if preadmission else limits.connection_window
        configuration = QuicConfiguration(
            is_client=is_client,
            alpn_protocols=[p.decode("ascii") for p in alpn_protocols],
            idle_timeout=limits.idle_timeout,
            max_data=window,
            max_stream_data=limits.stream_window,
            certificate=RawPublicKeyCertificate(public_key_bytes(private_key)),
            private_key=private_key,
            supported_versions=[QuicProtocolVersion.VERSION_1],
        )
        super().__init__(
            configuration=configuration,
            original_destination_connection_id=original_destination_connection_id,
            retry_source_connection_id=retry_source_connection_id,
        )
        self.limits = limits
        self._private_key = private_key
        self._expected_peer_id = expected_peer_id
        self._rx_window = window
        self._preadmission = preadmission
        self._few_streams = preadmission_streams
        # Advertised in the transport parameters, which _initialize serialises.
        bidi = limits.preadmission_streams if preadmission_streams else limits.max_streams_bidi
        self._local_max_streams_bidi.value = bidi
        self._local_max_streams_uni.value = limits.max_streams_uni
        self._rx_consumed: dict[int, int] = {}
        self._rx_consumed_total = 0

    # Admission

    def admit(self) -> None:
        """The node admitted the peer: full receive window and stream credit from the next packet on."""
        if self._preadmission:
            self._preadmission = False
            self._rx_window = self.limits.connection_window
        if self._few_streams:
            self._few_streams = False
            # aioquic adds one to the value for every stream that ends, so raise by the difference.
            extra = max(0, self.limits.max_streams_bidi - self.limits.preadmission_streams)
            self._local_max_streams_bidi.value += extra

    @property
    def preadmission(self) -> bool:
        """True while the pre-admission window and stream credit are in force."""
        return self._preadmission

    # TLS

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        stock = self.tls
        context = RawPublicKeyContext(
            is_client=self._is_client,
            private_key=self._private_key,
            alpn_protocols=self._configuration.alpn_protocols,
            expected_peer_id=self._expected_peer_id,
            logger=self._logger,
        )
        context.handshake_extensions = list(stock.handshake_extensions)  # transport parameters
        context.add_certificate_type_extensions()
        context.alpn_cb = stock.alpn_cb
        context.update_traffic_key_cb = stock.update_traffic_key_cb
        self.tls = context

    @property
    def peer_endpoint_id(self) -> bytes | None:
        """The peer's authenticated 32-byte key (valid once the handshake completed)."""
        context = getattr(self, "tls", None)
        if isinstance(context, RawPublicKeyContext):
            return context.peer_endpoint_id
        return None

    # Receive-side flow control

    def consume(self, stream_id: int, count: int) -> None:
        """The application took *count* bytes of *stream_id*: window credit may return."""
        self._rx_consumed[stream_id] = self._rx_consumed.get(stream_id, 0) + count
        self._rx_consumed_total += count
        self._credit_moved(stream_id)

    def release_stream(self, stream_id: int) -> None:
        """The application dropped *stream_id*: count everything received as consumed.

        Later arrivals on it must be reported with :meth:`consume` as they come.
        """
        stream = self._streams.get(stream_id)
        done = self._rx_consumed.get(stream_id, 0)
        if stream is not None and stream.receiver.highest_offset > done:
            self.consume(stream_id, stream.receiver.highest_offset - done)

    def forget_stream(self, stream_id: int) -> None:
        """Drop the consumption record of a stream that is over."""
        self._rx_consumed.pop(stream_id, None)

    def _write_stream_limits(self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: _AioStream) -> None:
        window = self.limits.stream_window
        stream_id = stream.stream_id
        assert stream_id is not None
        if stream.max_stream_data_local and not stream.receiver.is_finished:
            consumed = self._rx_consumed.get(stream_id, 0)
            if stream.max_stream_data_local - consumed < window // 2:
                stream.max_stream_data_local = consumed + window
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local
        self._credit_written(stream_id)

    def _write_connection_limits(self, builder: QuicPacketBuilder, space: QuicPacketSpace) -> None:
        max_data = self._local_max_data
        window = self._rx_window
        if max_data.value - self._rx_consumed_total < window // 2:
            max_data.value = self._rx_consumed_total + window
        for limit in (max_data, self._local_max_streams_bidi, self._local_max_streams_uni):
            if limit is not max_data and limit.sent - limit.used >= limit.value - limit.sent:
                # Batch MAX_STREAMS: only once the peer has used up half of its credit.
                continue
            if limit.value != limit.sent:
                buf = builder.start_frame(
                    limit.frame_type,
                    capacity=CONNECTION_LIMIT_FRAME_CAPACITY,
                    handler=self._on_connection_limit_delivery,
                    handler_args=(limit,),
                )
                buf.push_uint_var(limit.value)
                limit.sent = limit.value

    # Read-only views for the adapter

    def stream_send_state(self, stream_id: int) -> tuple[int, int] | None:
        """``(highest offset sent, peer's MAX_STREAM_DATA)`` or None if the stream is gone."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return None
        return stream.sender.highest_offset, stream.max_stream_data_remote

    def rtt(self) -> tuple[float, float, float]:
        """``(smoothed, minimum, latest)`` RTT in seconds from aioquic's loss recovery."""
        loss = self._loss
        rtt_min = loss._rtt_min if loss._rtt_min != float("inf") else 0.0
        return loss._rtt_smoothed, rtt_min, loss._rtt_latest

    def congestion(self) -> tuple[int, int]:
        """``(congestion window, bytes in flight)``."""
        return self._loss.congestion_window, self._loss.bytes_in_flight

    def is_locally_initiated(self, stream_id: int) -> bool:
        return stream_is_client_initiated(stream_id) == self._is_client

    @staticmethod
    def is_unidirectional(stream_id: int) -> bool:
        return stream_is_unidirectional(stream_id)

    def is_discarded(self, stream_id: int) -> bool:
        """True once aioquic dropped the stream's state (no more events for it)."""
        return self._stream_is_discarded(stream_id)

    @property
    def is_handshake_complete(self) -> bool:
        return self._handshake_complete
