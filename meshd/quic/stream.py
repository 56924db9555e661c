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

Lifecycle: ``connectionLost`` is called exactly once per stream:

* ``ConnectionDone`` when both directions ended cleanly (peer FIN delivered and
  our FIN written, or our write side stopped by the peer after its FIN);
* ``StreamReset(by_peer=True)`` when the peer reset its sending side (we drop
  what is buffered and reset ours too);
* ``StreamReset(by_peer=False)`` after our own :meth:`QuicStream.reset`;
* ``ConnectionClosed`` for every open stream when the connection ends.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from meshd.quic.errors import CloseReason, ConnectionClosed, SendBufferFull, StreamReset, StreamStopped

if TYPE_CHECKING:
    from meshd.quic.connection import MeshConnection

__all__ = ["QuicStream", "StreamReceiver"]

_MIN_HIGH_WATER = 64 * 1024
#: Application error code used to reset a stream whose receiver raised.
_STREAM_ERROR_INTERNAL = 1


class StreamReceiver(Protocol):
    """What a :class:`QuicStream` delivers to (a ``Protocol``-like object)."""

    def dataReceived(self, data: bytes) -> None: ...

    def eofReceived(self) -> None: ...

    def connectionLost(self, reason: Failure) -> None: ...


@implementer(IConsumer, IPushProducer)
class QuicStream:
    """One bidirectional QUIC stream of a :class:`~meshd.quic.connection.MeshConnection`."""

    _log = Logger()

    def __init__(self, connection: MeshConnection, stream_id: int, *, locally_initiated: bool) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.locally_initiated = locally_initiated
        self._receiver: StreamReceiver | None = None
        # receive side
        self._rx_buffer: deque[bytes] = deque()
        self._rx_buffered = 0
        self._rx_fin = False  # peer FIN arrived
        self._rx_done = False  # FIN delivered, or reset
        self._paused = False
        self._delivering = False
        # send side
        self._written = 0
        self._tx_done = False  # FIN written, reset, or stopped by the peer
        self._tx_fin = False
        self._stopped_code: int | None = None
        self._producer: Any = None
        self._producer_streaming = True
        self._producer_paused = False
        # end
        self._closed = False
        self._lost_reason: Failure | None = None

    def __repr__(self) -> str:
        return f"<QuicStream {self.stream_id} of {self.connection!r}>"

    # Receiving

    @property
    def receiver(self) -> StreamReceiver | None:
        return self._receiver

    def set_receiver(self, receiver: StreamReceiver) -> None:
        """Attach the object that gets this stream's data; buffered data follows at once."""
        self._receiver = receiver
        if self._closed and self._lost_reason is not None:
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
        """Queue *data* on the stream.  Ignored if the peer stopped reading."""
        if self._tx_fin:
            raise RuntimeError("write after loseWriteConnection")
        if self._tx_done or self._closed:
            self._log.debug("stream {sid}: dropping {n} bytes written after stop", sid=self.stream_id, n=len(data))
            return
        if not data:
            return
        if self.buffered_bytes + len(data) > self.connection.limits.send_hard_limit:
            raise SendBufferFull(
                f"stream {self.stream_id}: more than {self.connection.limits.send_hard_limit} bytes unsent"
            )
        self._written += len(data)
        self.connection._stream_send(self.stream_id, bytes(data), end_stream=False)
        self._check_high_water()

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseWriteConnection(self) -> None:
        """Send FIN after what was written."""
        if self._tx_done or self._closed:
            return
        self._tx_fin = True
        self._tx_done = True
        self.connection._stream_send(self.stream_id, b"", end_stream=True)
        self._maybe_finish()

    def reset(self, code: int = 0) -> None:
        """Abort both directions: RESET_STREAM on ours, STOP_SENDING on the peer's."""
        if self._closed:
            return
        self.connection._stream_abort(self.stream_id, code, send=not self._tx_done, receive=not self._rx_done)
        self._tx_done = True
        self._rx_done = True
        self._drop_rx()
        self._finish(Failure(StreamReset(code, by_peer=False)))

    @property
    def buffered_bytes(self) -> int:
        """Bytes written that have not been sent yet."""
        state = self.connection._quic.stream_send_state(self.stream_id)
        if state is None:
            return 0
        return max(0, self._written - state[0])

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self._producer is not None:
            raise RuntimeError("a producer is already registered")
        self._producer = producer
        self._producer_streaming = streaming
        self._producer_paused = False
        if self._tx_done or self._closed:
            producer.stopProducing()
        elif not streaming:
            producer.resumeProducing()

    def unregisterProducer(self) -> None:
        self._producer = None
        self._producer_paused = False
        self.connection._send_blocked.discard(self)

    # State

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def read_closed(self) -> bool:
        return self._rx_done

    @property
    def write_closed(self) -> bool:
        return self._tx_done

    # Called by MeshConnection

    def _on_data(self, data: bytes, fin: bool) -> None:
        if self._rx_done:
            # Arrived after we stopped reading: give the credit back and drop it.
            self.connection._quic.consume(self.stream_id, len(data))
            return
        if data:
            self._rx_buffer.append(data)
            self._rx_buffered += len(data)
        if fin:
            self._rx_fin = True
        self._deliver()

    def _on_reset(self, code: int) -> None:
        if self._closed:
            return
        self._rx_done = True
        self._drop_rx()
        self.connection._quic.release_stream(self.stream_id)
        if not self._tx_done:
            self.connection._stream_abort(self.stream_id, code, send=True, receive=False)
            self._tx_done = True
        self._finish(Failure(StreamReset(code, by_peer=True)))

    def _on_stop_sending(self, code: int) -> None:
        # aioquic has already reset our sending side.
        if self._tx_done:
            return
        self._tx_done = True
        self._stopped_code = code
        self._stop_producer()
        self._maybe_finish()

    def _on_connection_lost(self, reason: CloseReason) -> None:
        if self._closed:
            return
        self._rx_done = True
        self._tx_done = True
        self._drop_rx()
        self._finish(Failure(ConnectionClosed(reason)))

    def _check_resume(self) -> None:
        """After a transmit: resume a paused producer once below the low-water mark."""
        if self._producer is None or not self._producer_paused:
            self.connection._send_blocked.discard(self)
            return
        if self.buffered_bytes <= self._high_water() // 2:
            self._producer_paused = False
            self.connection._send_blocked.discard(self)
            self._producer.resumeProducing()

    # Internals

    def _high_water(self) -> int:
        state = self.connection._quic.stream_send_state(self.stream_id)
        peer_window = state[1] if state is not None else 0
        return max(_MIN_HIGH_WATER, min(self.connection.limits.send_high_water, peer_window))

    def _check_high_water(self) -> None:
        if self._producer is None or self._producer_paused:
            return
        if self.buffered_bytes > self._high_water():
            self._producer_paused = True
            self.connection._send_blocked.add(self)
            if self._producer_streaming:
                self._producer.pauseProducing()

    def _stop_producer(self) -> None:
        producer, self._producer = self._producer, None
        self.connection._send_blocked.discard(self)
        if producer is not None:
            producer.stopProducing()

    def _drop_rx(self) -> None:
        if self._rx_buffered:
            self.connection._quic.consume(self.stream_id, self._rx_buffered)
        self._rx_buffer.clear()
        self._rx_buffered = 0

    def _deliver(self) -> None:
        if self._delivering:
            return  # re-entered from a receiver callback; the outer loop continues
        self._delivering = True
        try:
            while self._rx_buffer and not self._paused and self._receiver is not None and not self._closed:
                chunk = self._rx_buffer.popleft()
                self._rx_buffered -= len(chunk)
                self.connection._quic.consume(self.stream_id, len(chunk))
                self.connection._transmit_soon()
                if not self._call_receiver("dataReceived", chunk):
                    return
            if (
                self._rx_fin
                and not self._rx_done
                and not self._rx_buffer
                and not self._paused
                and self._receiver is not None
                and not self._closed
            ):
                self._rx_done = True
                if self._call_receiver("eofReceived"):
                    self._maybe_finish()
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

    def _maybe_finish(self) -> None:
        if self._rx_done and self._tx_done and not self._closed:
            if self._stopped_code is not None:
                self._finish(Failure(StreamStopped(self._stopped_code)))
            else:
                self._finish(Failure(ConnectionDone("stream finished")))

    def _finish(self, reason: Failure) -> None:
        if self._closed:
            return
        self._closed = True
        self._lost_reason = reason
        self._stop_producer()
        self.connection._stream_closed(self)
        if self._receiver is not None:
            try:
                self._receiver.connectionLost(reason)
            except Exception:
                self._log.failure("stream {sid}: receiver.connectionLost raised", sid=self.stream_id)
