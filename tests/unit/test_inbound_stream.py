"""The type byte of a stream a peer opened must come within 5 s (mesh-llm 0.76 §3.1)."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from meshd.control import STREAM_TYPE_TIMEOUT, InboundStream
from meshd.protocol.streams import StreamType


class Conn:
    remote_id = bytes(32)


class Stream:
    def __init__(self) -> None:
        self.resets: list[int] = []
        self.receiver: Any = None

    def reset(self, code: int = 0) -> None:
        self.resets.append(code)

    def set_receiver(self, receiver: Any) -> None:
        self.receiver = receiver

    def loseWriteConnection(self) -> None:
        pass


def test_a_stream_without_its_type_byte_is_stopped_after_5_s() -> None:
    clock, stream = Clock(), Stream()
    dispatched: list[StreamType] = []
    InboundStream(Conn(), stream, lambda c, s, t: dispatched.append(t), clock=clock)  # type: ignore[arg-type]
    clock.advance(STREAM_TYPE_TIMEOUT - 0.01)
    assert stream.resets == []
    clock.advance(0.02)
    assert stream.resets == [0] and dispatched == []


def test_a_typed_stream_is_dispatched_and_its_timer_ends() -> None:
    clock, stream = Clock(), Stream()
    dispatched: list[StreamType] = []
    inbound = InboundStream(Conn(), stream, lambda c, s, t: dispatched.append(t), clock=clock)  # type: ignore[arg-type]
    clock.advance(4.9)
    inbound.dataReceived(bytes([StreamType.GOSSIP]))
    assert dispatched == [StreamType.GOSSIP]
    assert clock.getDelayedCalls() == []
    clock.advance(10)
    assert stream.resets == []
