"""aioquic's QuicConnection, building packets from the streams that have something to do.

Stock aioquic walks *every* open stream for every packet it builds: once to write MAX_STREAM_DATA
(``_write_stream_limits``) and once over its send queue (discard finished streams, STOP_SENDING,
RESET_STREAM, STREAM). With 1,000 paced streams open, nearly every packet carries one chunk, so
each chunk cost O(open streams) Python calls (``bench/quic_streams.py``; docs/performance.md).

:class:`ScheduledQuicConnection` keeps aioquic's packet building as it is and hands it smaller
collections while it runs:

* ``_streams_queue`` holds only the *awake* streams: those with data, a FIN, a RESET_STREAM or a
  STOP_SENDING to send, or finished and waiting to be discarded. aioquic sees them ``RUN_WINDOW``
  at a time (one of its packet runs per window, while the packets and the congestion window have
  room); afterwards the streams with nothing left to do leave the queue, and the ones visited go
  after the ones not visited.
* ``_streams`` is, during the run, the awake streams plus the ones whose receive credit may need a
  MAX_STREAM_DATA (``_credit_moved``), so the limits walk is as short; the streams aioquic discards
  from it are then dropped from the real table.

A stream wakes when:

* the application writes, ends, resets or stops it (``send_stream_data``, ``reset_stream``,
  ``stop_stream``), or aioquic creates it (aioquic appends new streams to the queue itself);
* a STREAM frame finishes its receiving side, or a RESET_STREAM or STOP_SENDING frame arrives
  (aioquic answers STOP_SENDING with a reset);
* a frame it sent is declared lost (the data, reset or stop is pending again), or an acknowledgement
  finishes it: the frames it sends carry a delivery handler that wraps aioquic's own.

Receive credit: a subclass calls :meth:`_credit_moved` when a stream's window may have to move (a
lost MAX_STREAM_DATA marks its stream too), and its ``_write_stream_limits`` calls
:meth:`_credit_written` when it has dealt with the stream; a packet run that stops early (the packet
or the congestion window full) keeps the rest marked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from aioquic.buffer import Buffer, BufferReadError
from aioquic.quic.connection import QuicConnection, QuicNetworkPath, QuicReceiveContext
from aioquic.quic.packet_builder import QuicDeliveryState, QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import QuicStream

__all__ = ["RUN_WINDOW", "ScheduledQuicConnection"]

#: Awake streams one of aioquic's packet runs walks. A transmit runs window after window while there
#: is room, so a packet costs O(window) however many streams have data pending (a host that fell
#: behind has many); each window may leave one packet part-filled.
RUN_WINDOW = 32
#: Below this much congestion-window room a transmit stops visiting windows (a window's run builds
#: nothing without room, and aioquic's runs end normally then, not with QuicPacketBuilderStop).
MIN_FLIGHT_ROOM = 256


class _TappedBuilder:
    """The packet builder as one stream's frame writer sees it: its frames' delivery goes through
    the connection's ``_on_stream_frame_delivery`` (which calls aioquic's handler, then may wake it)."""

    __slots__ = ("_builder", "_deliver", "_stream")

    def __init__(self, builder: QuicPacketBuilder, deliver: Callable[..., None], stream: QuicStream) -> None:
        self._builder = builder
        self._deliver = deliver
        self._stream = stream

    def start_frame(
        self,
        frame_type: int,
        capacity: int = 1,
        handler: Callable[..., None] | None = None,
        handler_args: Sequence[Any] = (),
    ) -> Buffer:
        if handler is None:
            return self._builder.start_frame(frame_type, capacity)
        args = (self._stream, handler, tuple(handler_args))
        return self._builder.start_frame(frame_type, capacity, self._deliver, args)

    # What aioquic's frame writers read besides start_frame (anything else still reaches the builder).

    @property
    def remaining_flight_space(self) -> int:
        return self._builder.remaining_flight_space

    @property
    def quic_logger_frames(self) -> Any:
        return self._builder.quic_logger_frames

    def __getattr__(self, name: str) -> Any:
        return getattr(self._builder, name)


def _flight_room(builder: QuicPacketBuilder) -> int:
    """Bytes the congestion window still lets this transmit put in flight (aioquic 1.7.2's builder)."""
    if builder.max_flight_bytes is None:
        return MIN_FLIGHT_ROOM
    return builder.max_flight_bytes - builder._flight_bytes - builder._datagram_flight_bytes


def _peek_stream_id(buf: Buffer) -> int | None:
    """The stream id a STREAM / RESET_STREAM / STOP_SENDING frame starts with, the buffer left as it was."""
    start = buf.tell()
    try:
        return buf.pull_uint_var()
    except BufferReadError:
        return None  # aioquic's own parse reports the malformed frame
    finally:
        buf.seek(start)


class ScheduledQuicConnection(QuicConnection):
    """A QuicConnection whose per-packet work does not grow with the number of open streams."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: The streams in ``_streams_queue`` that :meth:`_wake` put there (aioquic's own appends may
        #: duplicate them; each packet run starts from a de-duplicated queue).
        self._awake: set[QuicStream] = set()
        #: Stream ids whose receive credit may need a MAX_STREAM_DATA.
        self._credit_ids: set[int] = set()

    # What wakes a stream ----------------------------------------------------------------------

    def _wake(self, stream: QuicStream) -> None:
        if stream in self._awake or self._streams.get(stream.stream_id) is not stream:  # type: ignore[arg-type]
            return  # already queued, or discarded (waking it would discard it twice)
        self._awake.add(stream)
        self._streams_queue.append(stream)

    def _wake_id(self, stream_id: int | None) -> None:
        if stream_id is not None and (stream := self._streams.get(stream_id)) is not None:
            self._wake(stream)

    def _credit_moved(self, stream_id: int) -> None:
        """The application consumed data of ``stream_id``: its window may have to move."""
        self._credit_ids.add(stream_id)

    def _credit_written(self, stream_id: int) -> None:
        """``_write_stream_limits`` ran to its end for ``stream_id`` (the frame, if any, is in the packet)."""
        self._credit_ids.discard(stream_id)

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        super().send_stream_data(stream_id, data, end_stream)
        self._wake_id(stream_id)

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        super().reset_stream(stream_id, error_code)
        self._wake_id(stream_id)

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        super().stop_stream(stream_id, error_code)
        self._wake_id(stream_id)

    def _handle_stream_frame(self, context: QuicReceiveContext, frame_type: int, buf: Buffer) -> None:
        stream_id = _peek_stream_id(buf)
        super()._handle_stream_frame(context, frame_type, buf)
        if stream_id is not None and (stream := self._streams.get(stream_id)) is not None:
            if stream.receiver.is_finished:
                self._wake(stream)

    def _handle_reset_stream_frame(self, context: QuicReceiveContext, frame_type: int, buf: Buffer) -> None:
        stream_id = _peek_stream_id(buf)
        super()._handle_reset_stream_frame(context, frame_type, buf)
        self._wake_id(stream_id)

    def _handle_stop_sending_frame(self, context: QuicReceiveContext, frame_type: int, buf: Buffer) -> None:
        stream_id = _peek_stream_id(buf)
        super()._handle_stop_sending_frame(context, frame_type, buf)
        self._wake_id(stream_id)

    def _on_stream_frame_delivery(
        self, delivery: QuicDeliveryState, stream: QuicStream, handler: Callable[..., None], args: tuple[Any, ...]
    ) -> None:
        handler(delivery, *args)
        if delivery != QuicDeliveryState.ACKED or stream.is_finished:
            self._wake(stream)

    def _on_max_stream_data_delivery(self, delivery: QuicDeliveryState, stream: QuicStream) -> None:
        super()._on_max_stream_data_delivery(delivery, stream)
        if delivery != QuicDeliveryState.ACKED and stream.stream_id is not None:
            self._credit_ids.add(stream.stream_id)

    # The frames a stream sends carry the wrapped delivery handler ----------------------------

    def _write_stream_frame(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: QuicStream, max_offset: int
    ) -> int:
        tapped: Any = _TappedBuilder(builder, self._on_stream_frame_delivery, stream)
        return super()._write_stream_frame(tapped, space, stream, max_offset)

    def _write_reset_stream_frame(self, builder: QuicPacketBuilder, stream: QuicStream) -> None:
        tapped: Any = _TappedBuilder(builder, self._on_stream_frame_delivery, stream)
        super()._write_reset_stream_frame(tapped, stream)

    def _write_stop_sending_frame(self, builder: QuicPacketBuilder, stream: QuicStream) -> None:
        tapped: Any = _TappedBuilder(builder, self._on_stream_frame_delivery, stream)
        super()._write_stop_sending_frame(tapped, stream)

    # A packet run over the awake streams -----------------------------------------------------

    def _write_application(self, builder: QuicPacketBuilder, network_path: QuicNetworkPath, now: float) -> None:
        everything = self._streams
        pending: list[QuicStream] = []
        seen: set[QuicStream] = set()
        for stream in self._streams_queue:
            if stream not in seen and everything.get(stream.stream_id) is stream:  # type: ignore[arg-type]
                seen.add(stream)
                pending.append(stream)
        served: list[QuicStream] = []
        window: list[QuicStream] = []
        try:
            while True:  # at least one run: ACKs and connection-level frames go out without any stream
                window, pending = pending[:RUN_WINDOW], pending[RUN_WINDOW:]
                self._run_window(window, builder, network_path, now)
                served.extend(self._streams_queue)
                window = []
                if not pending or self._pacing_at is not None or _flight_room(builder) < MIN_FLIGHT_ROOM:
                    break  # all visited, or the pacer or the congestion window says wait
        finally:
            # A run cut short (packet or congestion window full) leaves its streams after the ones not
            # visited yet, so every awake stream gets its turn.
            queue = pending + self._streams_queue + served if window else pending + served
            self._credit_ids.intersection_update(everything)
            self._streams_queue = [
                s
                for s in queue
                if s.is_finished or s.sender.reset_pending or s.receiver.stop_pending or not s.sender.buffer_is_empty
            ]
            self._awake = set(self._streams_queue)

    def _run_window(
        self, window: list[QuicStream], builder: QuicPacketBuilder, network_path: QuicNetworkPath, now: float
    ) -> None:
        """aioquic's packet building over ``window`` (and the streams whose credit moved)."""
        everything = self._streams
        run: dict[int, QuicStream] = {s.stream_id: s for s in window}  # type: ignore[misc]
        for stream_id in self._credit_ids:
            if (credited := everything.get(stream_id)) is not None:
                run[stream_id] = credited
        self._streams_queue = window
        self._streams = run
        try:
            super()._write_application(builder, network_path, now)
        finally:
            self._streams = everything
            for stream in window:
                if stream.stream_id not in run and everything.get(stream.stream_id) is stream:  # type: ignore[arg-type]
                    del everything[stream.stream_id]  # type: ignore[arg-type]
