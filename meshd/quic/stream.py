"""A QUIC bidirectional stream with a Twisted face.

The receiving side pushes to a *receiver* (``dataReceived``, ``eofReceived``,
``connectionLost``) and is an ``IPushProducer``: ``pauseProducing`` stops the
deliveries, the data then waits here, and because receive credit is only given
back for delivered bytes (see :mod:`meshd.quic.core`) the peer's flow control
stops its sender once one window is buffered.

The sending side is an ``IConsumer``: ``write`` hands bytes to aioquic; a
registered producer is paused while more than the high-water mark of written
bytes has not yet left (flow control or congestion keep it back) and resumed
once it drops below half of that.

Lifecycle (the state tables are in :mod:`meshd.quic.lifecycle`, the diagrams in
``docs/lifecycles.md``): each direction ends once and keeps its first end; the
stream calls ``connectionLost`` exactly once:

* ``ConnectionDone`` when both directions ended cleanly: the peer's FIN was
  delivered and we sent our FIN (a STOP_SENDING that comes after our FIN is
  ignored);
* ``StreamStopped(code)`` when the peer's FIN was delivered and the peer had
  stopped our sending side (STOP_SENDING) while we were still writing;
* ``StreamReset(by_peer=True)`` when the peer reset its sending side (we drop
  what is buffered and reset ours too);
* ``StreamReset(by_peer=False)`` after our own :meth:`QuicStream.reset`;
* ``ConnectionClosed`` for every open stream when the connection ends.

The stream talks to its connection only through :class:`StreamOwner`; the
connection feeds it the peer's side through the ``handle_*`` methods.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any, Generic, Protocol, TypeVar

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from meshd.quic.core import TransportLimits
from meshd.quic.errors import CloseReason, ConnectionClosed, SendBufferFull, StreamReset, StreamStopped
from meshd.quic.lifecycle import (
    RECEIVE,
    RECEIVE_ENDED,
    SEND,
    STREAM,
    Receive,
    ReceiveInput,
    Send,
    SendInput,
    Stream,
    StreamInput,
)

__all__ = ["QuicStream", "StreamOwner", "StreamReceiver"]

_MIN_HIGH_WATER = 64 * 1024
#: Application error code used to reset a stream whose receiver raised.
_STREAM_ERROR_INTERNAL = 1
#: Receive states in which the peer may still send (our reset then sends STOP_SENDING).
_RECEIVING = frozenset({Receive.OPEN, Receive.FIN_RECEIVED})
# For the hot paths (write, data in, delivery): on CPython 3.11 reading an Enum member off its class
# costs ~100 ns, a module global ~10 ns.
_RX_OPEN = Receive.OPEN
_RX_FIN_RECEIVED = Receive.FIN_RECEIVED
_TX_OPEN = Send.OPEN
_OPEN = Stream.OPEN


class StreamReceiver(Protocol):
    """What a :class:`QuicStream` delivers to (a ``Protocol``-like object)."""

    def dataReceived(self, data: bytes) -> None: ...

    def eofReceived(self) -> None: ...

    def connectionLost(self, reason: Failure) -> None: ...


class StreamOwner(Protocol):
    """What a :class:`QuicStream` needs from its connection (:class:`~meshd.quic.connection.MeshConnection`)."""

    @property
    def limits(self) -> TransportLimits: ...

    def stream_send(self, stream_id: int, data: bytes, *, end_stream: bool) -> None:
        """Queue *data* (then FIN if *end_stream*) on the stream; transmit soon."""

    def stream_abort(self, stream_id: int, code: int, *, send: bool, receive: bool) -> None:
        """RESET_STREAM our side (*send*) and/or STOP_SENDING the peer's (*receive*); transmit soon."""

    def stream_consumed(self, stream_id: int, count: int) -> None:
        """*count* received bytes left the stream (delivered or dropped): their receive credit may
        return (the window update goes out within this reactor turn)."""

    def stream_released(self, stream_id: int) -> None:
        """The peer reset the stream: count everything it sent as consumed."""

    def stream_send_state(self, stream_id: int) -> tuple[int, int] | None:
        """``(bytes sent, peer's MAX_STREAM_DATA)``, or None once aioquic forgot the stream."""

    def stream_blocked(self, stream: QuicStream[Any], blocked: bool) -> None:
        """Whether *stream*'s producer waits for sends to drain: a blocked stream gets
        :meth:`QuicStream.handle_transmitted` after every transmit."""

    def stream_closed(self, stream: QuicStream[Any]) -> None:
        """*stream* called ``connectionLost``: forget it."""


OwnerT = TypeVar("OwnerT", bound=StreamOwner)


@implementer(IConsumer, IPushProducer)
class QuicStream(Generic[OwnerT]):
    """One bidirectional QUIC stream of a connection (:attr:`connection`, a :class:`StreamOwner`)."""

    _log = Logger()

    def __init__(self, connection: OwnerT, stream_id: int, *, locally_initiated: bool) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.locally_initiated = locally_initiated
        self._receiver: StreamReceiver | None = None
        # lifecycle (meshd.quic.lifecycle)
        self._receive = Receive.OPEN
        self._send = Send.OPEN
        self._state = Stream.OPEN
        self._lost_reason: Failure | None = None  # once CLOSED
        self._stopped_code: int | None = None  # once the send side is STOPPED
        # receive side
        self._rx_buffer: deque[bytes] = deque()
        self._rx_buffered = 0
        self._paused = False
        self._delivering = False
        # send side
        self._written = 0
        self._producer: Any = None
        self._producer_streaming = True
        self._producer_paused = False

    def __repr__(self) -> str:
        return f"<QuicStream {self.stream_id} of {self.connection!r}>"

    # Receiving

    @property
    def receiver(self) -> StreamReceiver | None:
        return self._receiver

    def set_receiver(self, receiver: StreamReceiver) -> None:
        """Attach the object that gets this stream's data; buffered data follows at once
        (on a closed stream, ``connectionLost`` with the reason it closed)."""
        self._receiver = receiver
        if self._state is Stream.CLOSED:
            assert self._lost_reason is not None
            receiver.connectionLost(self._lost_reason)
            return
        self._deliver()

    def pauseProducing(self) -> None:
        """Stop delivering received data (it waits here, bounded by the receive window)."""
        self._paused = True

    def resumeProducing(self) -> None:
        """Deliver what waits and keep delivering."""
        if not self._paused:
            return
        self._paused = False
        self._deliver()

    def stopProducing(self) -> None:
        """We will not read any more: reset the stream (STOP_SENDING + RESET_STREAM)."""
        self.reset(0)

    @property
    def read_buffered(self) -> int:
        """Received bytes waiting for delivery."""
        return self._rx_buffered

    # Sending

    def write(self, data: bytes) -> None:
        """Queue *data* on the stream.  Ignored once the send side was stopped or aborted;
        ``RuntimeError`` after :meth:`loseWriteConnection`."""
        if self._send is not _TX_OPEN:
            self._move_send(SendInput.WRITE)
            if self._send is Send.FIN_SENT:
                raise RuntimeError("write after loseWriteConnection")
            self._log.debug("stream {sid}: dropping {n} bytes written after stop", sid=self.stream_id, n=len(data))
            return
        if not data:
            return
        limit = self.connection.limits.send_hard_limit
        if self.buffered_bytes + len(data) > limit:
            raise SendBufferFull(f"stream {self.stream_id}: more than {limit} bytes unsent")
        self._written += len(data)
        self.connection.stream_send(self.stream_id, bytes(data), end_stream=False)
        self._check_high_water()

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseWriteConnection(self) -> None:
        """Send FIN after what was written (ignored once the send side ended)."""
        if self._move_send(SendInput.FIN) is not Send.OPEN:
            return
        self.connection.stream_send(self.stream_id, b"", end_stream=True)
        self._maybe_ended()

    def reset(self, code: int = 0) -> None:
        """Abort both directions: RESET_STREAM on ours, STOP_SENDING on the peer's (each only while
        that direction is still going). Ignored on a closed stream."""
        if self._state is Stream.CLOSED:
            return
        receive = self._move_receive(ReceiveInput.LOCAL_RESET)
        send = self._move_send(SendInput.LOCAL_RESET)
        self.connection.stream_abort(self.stream_id, code, send=send is Send.OPEN, receive=receive in _RECEIVING)
        self._drop_rx()
        self._close(StreamInput.LOCAL_RESET, StreamReset(code, by_peer=False))

    @property
    def buffered_bytes(self) -> int:
        """Bytes written that have not been sent yet."""
        state = self.connection.stream_send_state(self.stream_id)
        if state is None:
            return 0
        return max(0, self._written - state[0])

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """Take bytes from *producer*; once the send side has ended it is stopped at once instead."""
        if self._producer is not None:
            raise RuntimeError("a producer is already registered")
        if self._send is not Send.OPEN:
            producer.stopProducing()
            return
        self._producer = producer
        self._producer_streaming = streaming
        self._producer_paused = False
        if not streaming:
            producer.resumeProducing()

    def unregisterProducer(self) -> None:
        self._producer = None
        self._producer_paused = False
        self.connection.stream_blocked(self, False)

    # State

    @property
    def is_closed(self) -> bool:
        return self._state is Stream.CLOSED

    @property
    def read_closed(self) -> bool:
        return self._receive in RECEIVE_ENDED

    @property
    def write_closed(self) -> bool:
        return self._send is not Send.OPEN

    @property
    def receive_state(self) -> Receive:
        return self._receive

    @property
    def send_state(self) -> Send:
        return self._send

    @property
    def state(self) -> Stream:
        return self._state

    # Inputs from the connection (the peer's side of the stream)

    def handle_data(self, data: bytes, fin: bool) -> None:
        """STREAM frame bytes (and the FIN) aioquic delivered in order."""
        if self._receive is not _RX_OPEN:
            # Past the FIN, or after we stopped reading: give the credit back and drop it.
            self._move_receive(ReceiveInput.DATA)
            if fin:
                self._move_receive(ReceiveInput.FIN)
            if data:
                self.connection.stream_consumed(self.stream_id, len(data))
            return
        if data:
            self._rx_buffer.append(data)
            self._rx_buffered += len(data)
        if fin:
            self._move_receive(ReceiveInput.FIN)
        self._deliver()

    def handle_reset(self, code: int) -> None:
        """RESET_STREAM from the peer: drop what waits, reset our side too."""
        if self._state is Stream.CLOSED:
            return
        self._move_receive(ReceiveInput.PEER_RESET)
        self._drop_rx()
        self.connection.stream_released(self.stream_id)
        if self._move_send(SendInput.PEER_RESET) is Send.OPEN:
            self.connection.stream_abort(self.stream_id, code, send=True, receive=False)
        self._close(StreamInput.PEER_RESET, StreamReset(code, by_peer=True))

    def handle_stop_sending(self, code: int) -> None:
        """STOP_SENDING from the peer (aioquic has already reset our sending side)."""
        if self._move_send(SendInput.PEER_STOP) is not Send.OPEN:
            return
        self._stopped_code = code
        self._stop_producer()
        self._maybe_ended()

    def handle_connection_lost(self, reason: CloseReason) -> None:
        """The connection ended."""
        if self._state is Stream.CLOSED:
            return
        self._move_receive(ReceiveInput.CONNECTION_LOST)
        self._move_send(SendInput.CONNECTION_LOST)
        self._drop_rx()
        self._close(StreamInput.CONNECTION_LOST, ConnectionClosed(reason))

    def handle_transmitted(self) -> None:
        """After a transmit: resume a paused producer once below the low-water mark."""
        if self._producer is None or not self._producer_paused:
            self.connection.stream_blocked(self, False)
            return
        if self.buffered_bytes <= self._high_water() // 2:
            self._producer_paused = False
            self.connection.stream_blocked(self, False)
            self._producer.resumeProducing()

    # Lifecycle moves

    def _move_receive(self, event: ReceiveInput) -> Receive:
        """Apply *event* to the receive side; returns the state it was in."""
        before = self._receive
        self._receive = RECEIVE[before, event].to
        return before

    def _move_send(self, event: SendInput) -> Send:
        """Apply *event* to the send side; returns the state it was in."""
        before = self._send
        self._send = SEND[before, event].to
        return before

    def _maybe_ended(self) -> None:
        """Close cleanly once both directions ended without a reset."""
        if self._receive is Receive.FIN_DELIVERED and self._send in (Send.FIN_SENT, Send.STOPPED):
            if self._stopped_code is not None:
                self._close(StreamInput.ENDED, StreamStopped(self._stopped_code))
            else:
                self._close(StreamInput.ENDED, ConnectionDone("stream finished"))

    def _close(self, event: StreamInput, error: Exception) -> None:
        before = self._state
        self._state = STREAM[before, event].to
        if before is Stream.CLOSED:
            return
        reason = self._lost_reason = Failure(error)
        self._stop_producer()
        self.connection.stream_closed(self)
        if self._receiver is not None:
            try:
                self._receiver.connectionLost(reason)
            except Exception:
                self._log.failure("stream {sid}: receiver.connectionLost raised", sid=self.stream_id)

    # Internals

    def _high_water(self) -> int:
        state = self.connection.stream_send_state(self.stream_id)
        peer_window = state[1] if state is not None else 0
        return max(_MIN_HIGH_WATER, min(self.connection.limits.send_high_water, peer_window))

    def _check_high_water(self) -> None:
        if self._producer is None or self._producer_paused:
            return
        if self.buffered_bytes > self._high_water():
            self._producer_paused = True
            self.connection.stream_blocked(self, True)
            if self._producer_streaming:
                self._producer.pauseProducing()

    def _stop_producer(self) -> None:
        producer, self._producer = self._producer, None
        self.connection.stream_blocked(self, False)
        if producer is not None:
            producer.stopProducing()

    def _drop_rx(self) -> None:
        if self._rx_buffered:
            self.connection.stream_consumed(self.stream_id, self._rx_buffered)
        self._rx_buffer.clear()
        self._rx_buffered = 0

    def _deliver(self) -> None:
        if self._delivering:
            return  # re-entered from a receiver callback; the outer loop continues
        self._delivering = True
        try:
            while self._rx_buffer and not self._paused and self._receiver is not None and self._state is _OPEN:
                chunk = self._rx_buffer.popleft()
                self._rx_buffered -= len(chunk)
                self.connection.stream_consumed(self.stream_id, len(chunk))
                if not self._call_receiver("dataReceived", chunk):
                    return
            if (
                self._receive is _RX_FIN_RECEIVED
                and not self._rx_buffer
                and not self._paused
                and self._receiver is not None
                and self._state is _OPEN
            ):
                self._move_receive(ReceiveInput.DRAINED)
                if self._call_receiver("eofReceived"):
                    self._maybe_ended()
        finally:
            self._delivering = False

    def _call_receiver(self, name: str, *args: bytes) -> bool:
        """Call a receiver method; if it raises, log and reset the stream (returns False)."""
        try:
            getattr(self._receiver, name)(*args)
        except Exception:
            self._log.failure("stream {sid}: receiver.{name} raised; resetting", sid=self.stream_id, name=name)
            self.reset(_STREAM_ERROR_INTERNAL)
            return False
        return True
