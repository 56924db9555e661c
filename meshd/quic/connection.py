"""Twisted glue for one QUIC connection: aioquic events in, datagrams and timers out.

A :class:`MeshConnection` owns one :class:`~meshd.quic.core.MeshQuicConnection`
(the sans-IO state machine) and moves bytes only:

* ``datagram_received`` feeds ``receive_datagram(data, addr, now=reactor.seconds())``,
  drains ``next_event()`` and transmits;
* ``transmit`` writes ``datagrams_to_send`` through the owning endpoint and re-arms
  one ``callLater`` for ``get_timer()`` (or the keep-alive PING, whichever is first);
* writes from streams are coalesced into one transmit per reactor turn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs
from aioquic.quic import events
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from meshd.quic.core import MeshQuicConnection, TransportLimits
from meshd.quic.errors import CloseReason, QuicError
from meshd.quic.stream import QuicStream

__all__ = ["ConnectionOwner", "ConnectionStats", "MeshConnection"]

Address = tuple[str, int]

#: Application error code used when a receiver callback raised.
STREAM_ERROR_INTERNAL = 1


class ConnectionOwner(Protocol):
    """What a :class:`MeshConnection` needs from its endpoint (:class:`~meshd.quic.endpoint.QuicEndpoint`)."""

    @property
    def admission_tracked(self) -> bool:
        """Whether connections are bounded until :meth:`MeshConnection.mark_admitted`."""

    @property
    def preadmission_bytes_per_connection(self) -> int:
        """Bytes readers may hold for one connection not admitted."""

    def reserve_preadmission(self, count: int) -> bool:
        """Take *count* bytes from the budget shared by all connections not admitted (False: over it)."""

    def release_preadmission(self, count: int) -> None:
        """Give *count* reserved bytes back."""

    def send_datagram(self, data: bytes, addr: Address) -> None: ...

    def add_route(self, cid: bytes, conn: MeshConnection) -> None:
        """Datagrams for connection ID *cid* go to *conn*."""

    def remove_route(self, cid: bytes, conn: MeshConnection) -> None: ...

    def connection_admitted(self, conn: MeshConnection) -> None: ...

    def connection_ended(self, conn: MeshConnection) -> None: ...


@attrs.frozen
class ConnectionStats:
    """A snapshot of a connection's transport state (from aioquic's loss recovery)."""

    rtt_smoothed: float
    rtt_min: float
    rtt_latest: float
    congestion_window: int
    bytes_in_flight: int
    open_streams: int
    peer_address: Address | None


class MeshConnection:
    """One QUIC connection to a peer whose identity is its TLS key.

    Public surface: :attr:`remote_id`, :attr:`alpn`, :attr:`is_client`,
    :attr:`on_stream`, :meth:`open_stream`, :meth:`close`, :meth:`when_closed`,
    :meth:`stats`.  Its streams use it through :class:`~meshd.quic.stream.StreamOwner`
    (the ``stream_*`` methods and :attr:`limits`).
    """

    _log = Logger()

    def __init__(
        self,
        endpoint: ConnectionOwner,
        quic: MeshQuicConnection,
        reactor: IReactorTime,
        *,
        peer_address: Address,
    ) -> None:
        self._endpoint = endpoint
        self._quic = quic
        self._reactor = reactor
        self.limits: TransportLimits = quic.limits
        #: StreamOwner.stream_send_state: the core's own (on every write; no extra call).
        self.stream_send_state: Callable[[int], tuple[int, int] | None] = quic.stream_send_state
        self.is_client: bool = quic.configuration.is_client
        self.remote_id: bytes | None = None
        self.alpn: bytes | None = None
        self.peer_address = peer_address
        self.close_reason: CloseReason | None = None
        self._streams: dict[int, QuicStream[MeshConnection]] = {}
        self._pending_inbound: list[QuicStream[MeshConnection]] = []
        self._on_stream: Callable[[QuicStream[MeshConnection]], None] | None = None
        self._send_blocked: set[QuicStream[MeshConnection]] = set()
        self._timer: IDelayedCall | None = None
        self._timer_at: float | None = None
        self._transmit_call: IDelayedCall | None = None
        self._next_ping: float | None = None
        self._ping_uid = 0
        self._closed_waiters: list[Deferred[CloseReason]] = []
        self._handshake_waiters: list[Deferred[MeshConnection]] = []
        self._close_locally = False
        self._ended_peer_streams: set[int] = set()
        self.cids: set[bytes] = set()
        #: When the last datagram from the peer arrived (liveness: keep-alive PINGs every 5 s).
        self.last_received: float = reactor.seconds()
        #: Set by :meth:`mark_admitted`; until then readers are held to the pre-admission budget.
        self.admitted = False
        self._preadmission_charged = 0

    def __repr__(self) -> str:
        rid = self.remote_id.hex()[:10] if self.remote_id else "?"
        side = "client" if self.is_client else "server"
        return f"<MeshConnection {side} peer={rid} addr={self.peer_address}>"

    # Public API

    @property
    def on_stream(self) -> Callable[[QuicStream[MeshConnection]], None] | None:
        """Called with each stream the peer opens (before its first data is delivered)."""
        return self._on_stream

    @on_stream.setter
    def on_stream(self, handler: Callable[[QuicStream[MeshConnection]], None] | None) -> None:
        self._on_stream = handler
        if handler is not None:
            pending, self._pending_inbound = self._pending_inbound, []
            for stream in pending:
                self._announce(stream)

    @property
    def is_connected(self) -> bool:
        return self.remote_id is not None and self.close_reason is None

    def open_stream(self) -> QuicStream[MeshConnection]:
        """Open a bidirectional stream (the peer sees it with the first byte or FIN)."""
        if self.close_reason is not None:
            raise QuicError("connection is closed")
        if self.remote_id is None:
            raise QuicError("handshake not complete")
        stream_id = self._quic.get_next_available_stream_id()
        self._quic.send_stream_data(stream_id, b"")  # creates it in aioquic
        stream = QuicStream(self, stream_id, locally_initiated=True)
        self._streams[stream_id] = stream
        return stream

    def close(self, code: int = 0, reason: str = "") -> None:
        """Send CONNECTION_CLOSE (application error *code*) and end the connection."""
        if self.close_reason is not None:
            return
        self._close_locally = True
        self._quic.close(error_code=code, reason_phrase=reason)
        self.transmit()

    def when_closed(self) -> Deferred[CloseReason]:
        """A Deferred firing with the :class:`CloseReason` once the connection ended."""
        if self.close_reason is not None:
            return succeed(self.close_reason)
        d: Deferred[CloseReason] = Deferred()
        self._closed_waiters.append(d)
        return d

    def mark_admitted(self) -> None:
        """The node admitted the peer (it completed a gossip exchange and passed the mesh's checks).

        From now on the connection is no longer closed for want of admission, its readers are no
        longer held to the pre-admission byte budget, and (inbound) the peer gets the full receive
        window and stream credit. Idempotent.
        """
        if self.admitted:
            return
        self.admitted = True
        self._release_all_preadmission()
        self._endpoint.connection_admitted(self)
        if self.close_reason is None:
            self._quic.admit()
            self.transmit_soon()

    @property
    def admission_tracked(self) -> bool:
        """Whether the endpoint bounds this connection until :meth:`mark_admitted` (``admission``)."""
        return self._endpoint.admission_tracked

    @property
    def preadmission_frame_limit(self) -> int | None:
        """Largest frame a reader may accept from this peer now (None once admitted)."""
        if self.admitted:
            return None
        return self._endpoint.preadmission_bytes_per_connection

    def charge_preadmission(self, count: int) -> bool:
        """A reader is about to hold ``count`` more bytes for this peer. False (nothing charged) when
        the peer is not admitted and that would pass this connection's or the endpoint's budget."""
        if self.admitted or count <= 0:
            return True
        if self._preadmission_charged + count > self._endpoint.preadmission_bytes_per_connection:
            return False
        if not self._endpoint.reserve_preadmission(count):
            return False
        self._preadmission_charged += count
        return True

    def release_preadmission(self, count: int) -> None:
        """A reader let go of ``count`` bytes it charged (extra releases are ignored)."""
        count = min(count, self._preadmission_charged)
        if count > 0:
            self._preadmission_charged -= count
            self._endpoint.release_preadmission(count)

    def _release_all_preadmission(self) -> None:
        self.release_preadmission(self._preadmission_charged)

    def stats(self) -> ConnectionStats:
        smoothed, rtt_min, latest = self._quic.rtt()
        cwnd, in_flight = self._quic.congestion()
        return ConnectionStats(
            rtt_smoothed=smoothed,
            rtt_min=rtt_min,
            rtt_latest=latest,
            congestion_window=cwnd,
            bytes_in_flight=in_flight,
            open_streams=len(self._streams),
            peer_address=self.peer_address,
        )

    # Used by QuicEndpoint

    def when_handshake_done(self) -> Deferred[MeshConnection]:
        d: Deferred[MeshConnection] = Deferred()
        if self.remote_id is not None:
            d.callback(self)
        elif self.close_reason is not None:
            d.errback(QuicError(f"connection closed before handshake: {self.close_reason}"))
        else:
            self._handshake_waiters.append(d)
        return d

    def connect(self) -> None:
        self._quic.connect(self.peer_address, now=self._reactor.seconds())
        self.transmit()

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.last_received = self._reactor.seconds()
        try:
            self._quic.receive_datagram(data, addr, now=self._reactor.seconds())
        except Exception:
            self._log.failure("{conn}: receive_datagram failed; datagram dropped", conn=self)
        self._process_events()
        # One transmit for every datagram read in this reactor turn (ACKs and replies coalesce).
        self.transmit_soon()

    def abort(self, reason: CloseReason) -> None:
        """Tear down at once (endpoint stopping); CONNECTION_CLOSE should already be out."""
        self._terminated(reason)

    # Transmission and timers

    def transmit_soon(self) -> None:
        """Transmit once, at the end of this reactor turn (writes and reads coalesce)."""
        if self._transmit_call is None and self.close_reason is None:
            self._transmit_call = self._reactor.callLater(0, self.transmit)

    def transmit(self) -> None:
        if self._transmit_call is not None:
            if self._transmit_call.active():
                self._transmit_call.cancel()
            self._transmit_call = None
        if self.close_reason is not None:
            return
        now = self._reactor.seconds()
        try:
            datagrams = self._quic.datagrams_to_send(now=now)
        except Exception:
            self._log.failure("{conn}: datagrams_to_send failed", conn=self)
            datagrams = []
        for data, addr in datagrams:
            self._endpoint.send_datagram(data, addr)
        self._process_events()
        for stream in list(self._send_blocked):
            stream.handle_transmitted()
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self.close_reason is not None:
            self._cancel_timer()
            return
        at = self._quic.get_timer()
        if self._next_ping is not None and (at is None or self._next_ping < at):
            at = self._next_ping
        if at == self._timer_at and self._timer is not None and self._timer.active():
            return
        self._cancel_timer()
        if at is None:
            return
        self._timer_at = at
        self._timer = self._reactor.callLater(max(0.0, at - self._reactor.seconds()), self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._timer_at = None

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self._reactor.seconds()
        if self._next_ping is not None and now >= self._next_ping:
            self._ping_uid += 1
            self._quic.send_ping(self._ping_uid)
            self._next_ping = now + self.limits.keep_alive
        quic_at = self._quic.get_timer()
        if quic_at is not None and now >= quic_at:
            self._quic.handle_timer(now=now)
        self._process_events()
        self.transmit()

    # Events

    def _process_events(self) -> None:
        while True:
            event = self._quic.next_event()
            if event is None:
                return
            try:
                self._handle_event(event)
            except Exception:
                self._log.failure("{conn}: error while handling {event!r}", conn=self, event=event)

    def _handle_event(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            stream = self._stream_for_event(event.stream_id)
            if stream is None:
                self._quic.consume(event.stream_id, len(event.data))
                return
            stream.handle_data(event.data, event.end_stream)
        elif isinstance(event, events.StreamReset):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.handle_reset(event.error_code)
            else:
                self._quic.release_stream(event.stream_id)
        elif isinstance(event, events.StopSendingReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.handle_stop_sending(event.error_code)
        elif isinstance(event, events.HandshakeCompleted):
            self._handshake_completed(event)
        elif isinstance(event, events.ConnectionIdIssued):
            self._endpoint.add_route(event.connection_id, self)
        elif isinstance(event, events.ConnectionIdRetired):
            self._endpoint.remove_route(event.connection_id, self)
        elif isinstance(event, events.ConnectionTerminated):
            self._terminated(
                CloseReason(
                    error_code=event.error_code,
                    reason=event.reason_phrase,
                    frame_type=event.frame_type,
                    locally=self._close_locally,
                )
            )

    def _handshake_completed(self, event: events.HandshakeCompleted) -> None:
        peer = self._quic.peer_endpoint_id
        if peer is None or len(peer) != 32:  # cannot happen: TLS requires the certificate
            self.close(0x1, "no peer identity")
            return
        self.remote_id = peer
        self.alpn = event.alpn_protocol.encode("ascii") if event.alpn_protocol else None
        self._next_ping = self._reactor.seconds() + self.limits.keep_alive
        self._log.debug("{conn}: handshake complete alpn={alpn}", conn=self, alpn=self.alpn)
        waiters, self._handshake_waiters = self._handshake_waiters, []
        for d in waiters:
            d.callback(self)

    def _stream_for_event(self, stream_id: int) -> QuicStream[MeshConnection] | None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            return stream
        if self._quic.is_locally_initiated(stream_id) or stream_id in self._ended_peer_streams:
            return None  # a stream we already ended: late data is dropped
        if self._quic.is_unidirectional(stream_id):
            # mesh-llm uses bidirectional streams only.
            self._quic.stop_stream(stream_id, 0)
            self._quic.release_stream(stream_id)
            return None
        stream = QuicStream(self, stream_id, locally_initiated=False)
        self._streams[stream_id] = stream
        if self._on_stream is None:
            self._pending_inbound.append(stream)
        else:
            self._announce(stream)
        return stream

    def _announce(self, stream: QuicStream[MeshConnection]) -> None:
        assert self._on_stream is not None
        try:
            self._on_stream(stream)
        except Exception:
            self._log.failure("{conn}: on_stream handler raised; resetting stream", conn=self)
            stream.reset(STREAM_ERROR_INTERNAL)

    def _terminated(self, reason: CloseReason) -> None:
        if self.close_reason is not None:
            return
        self.close_reason = reason
        self._cancel_timer()
        if self._transmit_call is not None and self._transmit_call.active():
            self._transmit_call.cancel()
        self._transmit_call = None
        self._log.debug(
            "{conn}: closed code={code} reason={reason}",
            conn=self,
            code=reason.error_code,
            reason=reason.reason,
        )
        for stream in list(self._streams.values()):
            stream.handle_connection_lost(reason)
        self._streams.clear()
        self._pending_inbound.clear()
        self._release_all_preadmission()
        self._endpoint.connection_ended(self)
        waiters, self._handshake_waiters = self._handshake_waiters, []
        for d in waiters:
            d.errback(QuicError(f"connection closed before handshake: {reason}"))
        closed, self._closed_waiters = self._closed_waiters, []
        for c in closed:
            c.callback(reason)

    # StreamOwner: used by this connection's QuicStreams

    def stream_send(self, stream_id: int, data: bytes, *, end_stream: bool) -> None:
        self._quic.send_stream_data(stream_id, data, end_stream=end_stream)
        self.transmit_soon()

    def stream_abort(self, stream_id: int, code: int, *, send: bool, receive: bool) -> None:
        try:
            if send:
                self._quic.reset_stream(stream_id, code)
            if receive:
                self._quic.stop_stream(stream_id, code)
                self._quic.release_stream(stream_id)
        except ValueError:
            self._log.debug("{conn}: stream {sid} already gone", conn=self, sid=stream_id)
        self.transmit_soon()

    def stream_consumed(self, stream_id: int, count: int) -> None:
        self._quic.consume(stream_id, count)
        self.transmit_soon()

    def stream_released(self, stream_id: int) -> None:
        self._quic.release_stream(stream_id)

    def stream_blocked(self, stream: QuicStream[MeshConnection], blocked: bool) -> None:
        if blocked:
            self._send_blocked.add(stream)
        else:
            self._send_blocked.discard(stream)

    def stream_closed(self, stream: QuicStream[MeshConnection]) -> None:
        self._streams.pop(stream.stream_id, None)
        self._send_blocked.discard(stream)
        self._quic.forget_stream(stream.stream_id)
        if not stream.locally_initiated:
            self._ended_peer_streams.add(stream.stream_id)
            if len(self._ended_peer_streams) > 256:
                # aioquic emits nothing more for streams it has discarded.
                self._ended_peer_streams = {sid for sid in self._ended_peer_streams if not self._quic.is_discarded(sid)}
        self.transmit_soon()
