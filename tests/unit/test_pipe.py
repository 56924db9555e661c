"""The in-memory stream pair a host uses for its own API's requests."""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from meshd.pipe import HIGH_WATER, pipe
from meshd.quic.errors import StreamReset


class Rx:
    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def eofReceived(self) -> None:
        self.eof = True

    def connectionLost(self, reason: Failure) -> None:
        self.lost = reason


class Producer:
    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.resumed += 1

    def stopProducing(self) -> None: ...


def test_bytes_fin_and_clean_end_both_ways() -> None:
    clock = Clock()
    a, b = pipe(clock)
    ra, rb = Rx(), Rx()
    a.set_receiver(ra)
    b.set_receiver(rb)
    a.write(b"request")
    a.loseWriteConnection()
    clock.advance(0)
    assert rb.data == b"request" and rb.eof and rb.lost is None
    b.write(b"response")
    b.loseWriteConnection()
    clock.advance(0)
    clock.advance(0)
    assert ra.data == b"response" and ra.eof
    assert ra.lost is not None and ra.lost.check(ConnectionDone)
    assert rb.lost is not None and rb.lost.check(ConnectionDone)


def test_reset_reaches_the_other_end() -> None:
    clock = Clock()
    a, b = pipe(clock)
    ra, rb = Rx(), Rx()
    a.set_receiver(ra)
    b.set_receiver(rb)
    b.reset(3)
    assert rb.lost is not None and rb.lost.check(StreamReset)
    assert ra.lost is not None and ra.lost.check(StreamReset)
    assert ra.lost.value.by_peer is not False  # type: ignore[union-attr]


def test_a_paused_reader_pauses_the_writers_producer() -> None:
    clock = Clock()
    a, b = pipe(clock)
    ra = Rx()
    a.set_receiver(ra)
    producer = Producer()
    b.registerProducer(producer, True)
    a.pauseProducing()
    chunk = b"x" * 65536
    for _ in range(HIGH_WATER // len(chunk) + 2):
        b.write(chunk)
    clock.advance(0)
    assert producer.paused == 1 and not ra.data
    a.resumeProducing()
    clock.advance(0)
    assert len(ra.data) == (HIGH_WATER // len(chunk) + 2) * len(chunk)
    assert producer.resumed == 1


def test_writes_after_fin_or_loss_are_ignored() -> None:
    clock = Clock()
    a, b = pipe(clock)
    rb: Any = Rx()
    b.set_receiver(rb)
    a.loseWriteConnection()
    a.write(b"late")
    clock.advance(0)
    assert rb.data == b"" and rb.eof
