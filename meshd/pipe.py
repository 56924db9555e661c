"""An in-memory bidirectional stream pair with the face of a ``meshd.quic.QuicStream``.

A host uses it to serve its own API's requests for the models it hosts: the client side of the
proxy and the host side of the tunnel then run exactly as they do across QUIC, without a socket.
Delivery is asynchronous (next reactor turn) and flow-controlled: a paused reader holding more than
``HIGH_WATER`` bytes pauses the producer registered on the other end.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from meshd.quic.errors import StreamReset

HIGH_WATER = 256 * 1024


class PipeEnd:
    connection: Any = None  # no QUIC connection behind it

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.peer: PipeEnd | None = None
        self._receiver: Any = None
        self._rx: deque[bytes] = deque()
        self._rx_len = 0
        self._rx_fin = False
        self._eof_delivered = False
        self._paused = False
        self._tx_fin = False
        self._lost = False
        self._scheduled = False
        self._producer: Any = None
        self._producer_paused = False

    # reading -----------------------------------------------------------------------------------

    def set_receiver(self, receiver: Any) -> None:
        self._receiver = receiver
        self._schedule()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self.reset(0)

    # writing -----------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._tx_fin or self._lost or not data:
            return
        assert self.peer is not None
        self.peer._incoming(data)

    def writeSequence(self, seq: Any) -> None:
        for data in seq:
            self.write(data)

    def loseWriteConnection(self) -> None:
        if self._tx_fin or self._lost:
            return
        self._tx_fin = True
        assert self.peer is not None
        self.peer._incoming_fin()
        self._schedule()  # both directions may now be done

    def reset(self, code: int = 0) -> None:
        if self._lost:
            return
        self._lose(Failure(StreamReset(code, by_peer=False)))
        if self.peer is not None and not self.peer._lost:
            self.peer._lose(Failure(StreamReset(code, by_peer=True)))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer = producer
        self._producer_paused = False

    def unregisterProducer(self) -> None:
        self._producer = None

    # internals ---------------------------------------------------------------------------------

    def _incoming(self, data: bytes) -> None:
        if self._lost:
            return
        self._rx.append(data)
        self._rx_len += len(data)
        if self._rx_len > HIGH_WATER and self.peer is not None:
            self.peer._pause_producer()
        self._schedule()

    def _incoming_fin(self) -> None:
        self._rx_fin = True
        self._schedule()

    def _pause_producer(self) -> None:
        if self._producer is not None and not self._producer_paused:
            self._producer_paused = True
            self._producer.pauseProducing()

    def _resume_producer(self) -> None:
        if self._producer is not None and self._producer_paused:
            self._producer_paused = False
            self._producer.resumeProducing()

    def _schedule(self) -> None:
        if not self._scheduled and not self._lost:
            self._scheduled = True
            self._reactor.callLater(0, self._deliver)

    def _deliver(self) -> None:
        self._scheduled = False
        if self._receiver is None or self._lost:
            return
        while self._rx and not self._paused and not self._lost:
            data = self._rx.popleft()
            self._rx_len -= len(data)
            self._receiver.dataReceived(data)
        if self._rx_len <= HIGH_WATER // 2 and self.peer is not None:
            self.peer._resume_producer()
        if self._rx_fin and not self._rx and not self._eof_delivered and not self._lost and not self._paused:
            self._eof_delivered = True
            self._receiver.eofReceived()
        if self._eof_delivered and self._tx_fin and not self._lost:
            self._lose(Failure(ConnectionDone()))

    def _lose(self, reason: Failure) -> None:
        if self._lost:
            return
        self._lost = True
        self._rx.clear()
        self._rx_len = 0
        if self._receiver is not None:
            self._receiver.connectionLost(reason)
        if self.peer is not None:
            self.peer._resume_producer()


def pipe(reactor: Any) -> tuple[PipeEnd, PipeEnd]:
    a, b = PipeEnd(reactor), PipeEnd(reactor)
    a.peer, b.peer = b, a
    return a, b
