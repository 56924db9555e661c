"""Every (state, input) pair of a QuicStream's lifecycle (meshd/quic/lifecycle.py), on two real QUIC
endpoints over the in-memory network (MemoryNetwork + Clock).

Each test puts our stream ``s`` in a state through the public API of both ends, applies one input
and checks the state it lands in (written out here, then compared with the table) and what it did:
``connectionLost`` calls, frames the peer saw, and the calls ``s`` made on its connection's
StreamOwner face (recorded by a spy on the real connection). Inputs from the peer go over the wire
where the peer's own QuicStream can produce them; those aioquic never reports (data past the FIN, a
reset after the whole stream arrived, STOP_SENDING while the peer still writes) go to the stream's
``handle_*`` inputs directly, as the connection would pass them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from meshd.quic import (
    CloseReason,
    ConnectionClosed,
    MeshConnection,
    QuicEndpoint,
    QuicStream,
    StreamReset,
    StreamStopped,
)
from meshd.quic.lifecycle import (
    RECEIVE,
    RECEIVE_ENDED,
    SEND,
    SEND_ENDED,
    STREAM,
    Receive,
    ReceiveInput,
    Send,
    SendInput,
    Stream,
    StreamInput,
    markdown_table,
    mermaid,
)
from meshd.quic.testing import MemoryNetwork

A = ("10.0.0.1", 1111)
B = ("10.0.0.2", 2222)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "lifecycles.md"


class Log:
    """A stream receiver that records every call, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def dataReceived(self, data: bytes) -> None:
        self.events.append(("data", data))

    def eofReceived(self) -> None:
        self.events.append(("eof", None))

    def connectionLost(self, reason: Failure) -> None:
        self.events.append(("lost", reason))

    @property
    def data(self) -> bytes:
        return b"".join(arg for name, arg in self.events if name == "data")

    @property
    def eofs(self) -> int:
        return sum(1 for name, _ in self.events if name == "eof")

    @property
    def lost(self) -> list[Failure]:
        return [arg for name, arg in self.events if name == "lost"]

    def reason(self) -> BaseException:
        """Why the stream ended; connectionLost must have been called exactly once."""
        assert len(self.lost) == 1, self.events
        return self.lost[0].value


@implementer(IPushProducer)
class Producer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class Duo:
    """Our stream ``s`` (receiver ``r``) on a dialled connection, and the peer's end ``peer``
    (receiver ``pr``), after ``s`` wrote b"hi". ``calls`` records what ``s`` asked of its connection."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.net = MemoryNetwork(self.clock)
        self.peer_streams: list[tuple[QuicStream, Log]] = []
        a = QuicEndpoint(self.clock, ed25519.Ed25519PrivateKey.generate())
        b = QuicEndpoint(self.clock, ed25519.Ed25519PrivateKey.generate(), on_connection=self._accepted)
        self.net.attach(a, A)
        self.net.attach(b, B)
        dialled: list[object] = []
        a.dial(b.endpoint_id, [B]).addBoth(dialled.append)
        self.net.pump()
        assert isinstance(dialled[0], MeshConnection)
        self.conn: MeshConnection = dialled[0]
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        for name in ("stream_send", "stream_abort", "stream_consumed", "stream_released"):
            self._spy(name)
        self.s = self.conn.open_stream()
        self.r = Log()
        self.s.set_receiver(self.r)
        self.s.write(b"hi")
        self.net.pump()
        self.peer, self.pr = self.peer_streams[0]
        assert self.pr.data == b"hi"
        self.calls.clear()

    def _accepted(self, conn: MeshConnection) -> None:
        conn.on_stream = self._stream

    def _stream(self, stream: QuicStream) -> None:
        log = Log()
        stream.set_receiver(log)
        self.peer_streams.append((stream, log))

    def _spy(self, name: str) -> None:
        real = getattr(self.conn, name)

        def spy(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            return real(*args, **kwargs)

        setattr(self.conn, name, spy)

    def called(self, name: str) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        return [(args, kwargs) for n, args, kwargs in self.calls if n == name]

    def pump(self) -> None:
        self.net.pump()

    def lose_connection(self) -> None:
        self.conn.close(0, "bye")
        self.net.advance(2.0)

    # States

    def receive_state(self, state: Receive) -> Duo:
        if state is Receive.FIN_RECEIVED:  # the FIN waits behind b"tail" while we are paused
            self.s.pauseProducing()
            self.peer.write(b"tail")
            self.peer.loseWriteConnection()
        elif state is Receive.FIN_DELIVERED:
            self.peer.write(b"tail")
            self.peer.loseWriteConnection()
        elif state is Receive.ABORTED:
            self.peer.reset(9)
        self.pump()
        assert self.s.receive_state is state
        assert self.s.send_state is (Send.OPEN if state is not Receive.ABORTED else Send.STOPPED)
        self.calls.clear()
        return self

    def send_state(self, state: Send) -> Duo:
        if state is Send.FIN_SENT:
            self.s.loseWriteConnection()
        elif state is Send.STOPPED:
            # The peer sends FIN then resets: its send side is over, so only STOP_SENDING goes out.
            # We stay paused, so its FIN waits here and the stream stays open.
            self.s.pauseProducing()
            self.peer.loseWriteConnection()
            self.peer.reset(5)
        elif state is Send.ABORTED:
            self.s.reset(7)
        self.pump()
        assert self.s.send_state is state
        assert self.s.is_closed is (state is Send.ABORTED)
        self.calls.clear()
        return self


def check(table: Any, state: Any, event: Any, landed: Any, expected: Any) -> None:
    assert landed is expected
    assert table[state, event].to is expected


# The tables


def test_the_tables_name_a_next_state_for_every_input_in_every_state() -> None:
    for table, states, inputs in (
        (RECEIVE, Receive, ReceiveInput),
        (SEND, Send, SendInput),
        (STREAM, Stream, StreamInput),
    ):
        assert set(table) == set(itertools.product(states, inputs))
        assert all(step.does for step in table.values())


def test_a_direction_ends_once_and_keeps_its_first_end() -> None:
    for (state, _), step in itertools.chain(RECEIVE.items(), SEND.items()):
        if state in RECEIVE_ENDED or state in SEND_ENDED:
            assert step.to is state
    assert all(step.to is Stream.CLOSED for step in STREAM.values())


def test_the_docs_show_the_tables() -> None:
    text = DOCS.read_text()
    for table in (RECEIVE, SEND, STREAM):
        assert mermaid(table) in text
        assert markdown_table(table) in text


# Receive side (our send side stays open)


@pytest.mark.parametrize("state", list(Receive), ids=lambda s: s.name)
def test_receive_data(state: Receive) -> None:
    d = Duo().receive_state(state)
    before, buffered = list(d.r.events), d.s.read_buffered
    if state is Receive.OPEN:
        d.peer.write(b"more")
        d.pump()
        assert d.r.events == [*before, ("data", b"more")]
        assert [args[1] for args, _ in d.called("stream_consumed")] == [4]
    else:
        d.s.handle_data(b"late", False)  # aioquic stops at the final size; dropped, credit given back
        assert d.r.events == before and d.s.read_buffered == buffered
        assert d.calls == [("stream_consumed", (d.s.stream_id, 4), {})]
    expected = {
        Receive.OPEN: Receive.OPEN,
        Receive.FIN_RECEIVED: Receive.FIN_RECEIVED,
        Receive.FIN_DELIVERED: Receive.FIN_DELIVERED,
        Receive.ABORTED: Receive.ABORTED,
    }[state]
    check(RECEIVE, state, ReceiveInput.DATA, d.s.receive_state, expected)


@pytest.mark.parametrize("state", list(Receive), ids=lambda s: s.name)
def test_receive_fin(state: Receive) -> None:
    d = Duo().receive_state(state)
    before = list(d.r.events)
    if state is Receive.OPEN:
        d.s.pauseProducing()
        d.peer.loseWriteConnection()
        d.pump()
        assert d.r.eofs == 0 and not d.s.read_closed
    else:
        d.s.handle_data(b"", True)  # a second FIN: aioquic never reports one
        assert d.r.events == before
    expected = {
        Receive.OPEN: Receive.FIN_RECEIVED,
        Receive.FIN_RECEIVED: Receive.FIN_RECEIVED,
        Receive.FIN_DELIVERED: Receive.FIN_DELIVERED,
        Receive.ABORTED: Receive.ABORTED,
    }[state]
    check(RECEIVE, state, ReceiveInput.FIN, d.s.receive_state, expected)


@pytest.mark.parametrize("state", list(Receive), ids=lambda s: s.name)
def test_receive_drained(state: Receive) -> None:
    d = Duo().receive_state(state)
    before = list(d.r.events)
    if state is Receive.OPEN:
        d.s.pauseProducing()
        d.peer.write(b"x")
        d.pump()
        assert d.r.events == before and d.s.read_buffered == 1
        d.s.resumeProducing()
        assert d.r.events == [*before, ("data", b"x")]
    elif state is Receive.FIN_RECEIVED:
        d.s.resumeProducing()
        assert d.r.events == [*before, ("data", b"tail"), ("eof", None)]
        assert d.s.read_closed and not d.s.is_closed  # we have not sent our FIN
    else:
        d.s.pauseProducing()
        d.s.resumeProducing()
        assert d.r.events == before
    expected = {
        Receive.OPEN: Receive.OPEN,
        Receive.FIN_RECEIVED: Receive.FIN_DELIVERED,
        Receive.FIN_DELIVERED: Receive.FIN_DELIVERED,
        Receive.ABORTED: Receive.ABORTED,
    }[state]
    check(RECEIVE, state, ReceiveInput.DRAINED, d.s.receive_state, expected)


@pytest.mark.parametrize("state", list(Receive), ids=lambda s: s.name)
def test_receive_peer_reset(state: Receive) -> None:
    d = Duo().receive_state(state)
    if state is Receive.OPEN:
        d.peer.reset(9)  # STOP_SENDING + RESET_STREAM over the wire
        d.pump()
    else:
        d.s.handle_reset(9)  # aioquic reports no reset once the whole stream arrived
        d.pump()
    if state is Receive.ABORTED:
        assert d.calls == [] and len(d.r.lost) == 1  # the stream had closed: nothing happens
    else:
        err = d.r.reason()
        assert isinstance(err, StreamReset) and err.by_peer and err.error_code == 9
        assert d.s.is_closed and d.s.read_buffered == 0 and d.r.eofs == (state is Receive.FIN_DELIVERED)
        assert len(d.called("stream_released")) == 1
    if state is Receive.FIN_RECEIVED:
        assert b"tail" not in d.r.data
        assert [args[1] for args, _ in d.called("stream_consumed")] == [4]  # the dropped b"tail"
    if state in (Receive.FIN_RECEIVED, Receive.FIN_DELIVERED):
        # Our send side was open: we reset it with the peer's code.
        assert [kw for _, kw in d.called("stream_abort")] == [{"send": True, "receive": False}]
        peer_err = d.pr.reason()
        assert isinstance(peer_err, StreamReset) and peer_err.by_peer and peer_err.error_code == 9
    expected = {
        Receive.OPEN: Receive.ABORTED,
        Receive.FIN_RECEIVED: Receive.ABORTED,
        Receive.FIN_DELIVERED: Receive.FIN_DELIVERED,
        Receive.ABORTED: Receive.ABORTED,
    }[state]
    check(RECEIVE, state, ReceiveInput.PEER_RESET, d.s.receive_state, expected)


@pytest.mark.parametrize("state", list(Receive), ids=lambda s: s.name)
def test_receive_local_reset(state: Receive) -> None:
    d = Duo().receive_state(state)
    d.s.reset(3)
    d.pump()
    if state is Receive.ABORTED:
        assert d.calls == [] and len(d.r.lost) == 1
        first = d.r.reason()  # the peer's reset that aborted it
        assert isinstance(first, StreamReset) and first.by_peer
    else:
        err = d.r.reason()
        assert isinstance(err, StreamReset) and not err.by_peer and err.error_code == 3
        # STOP_SENDING only while the peer may still send; RESET_STREAM since our side was open.
        receive = state is not Receive.FIN_DELIVERED
        assert [kw for _, kw in d.called("stream_abort")] == [{"send": True, "receive": receive}]
        assert d.s.read_buffered == 0
    if state in (Receive.OPEN, Receive.FIN_DELIVERED):
        peer_err = d.pr.reason()  # the peer still read: it sees our RESET_STREAM
        assert isinstance(peer_err, StreamReset) and peer_err.by_peer and peer_err.error_code == 3
    expected = {
        Receive.OPEN: Receive.ABORTED,
        Receive.FIN_RECEIVED: Receive.ABORTED,
        Receive.FIN_DELIVERED: Receive.FIN_DELIVERED,
        Receive.ABORTED: Receive.ABORTED,
    }[state]
    check(RECEIVE, state, ReceiveInput.LOCAL_RESET, d.s.receive_state, expected)


@pytest.mark.parametrize("state", list(Receive), ids=lambda s: s.name)
def test_receive_connection_lost(state: Receive) -> None:
    d = Duo().receive_state(state)
    d.lose_connection()
    err = d.r.reason()
    if state is Receive.ABORTED:
        assert isinstance(err, StreamReset)  # closed before: the first reason stays
    else:
        assert isinstance(err, ConnectionClosed) and err.reason.reason == "bye"
    assert d.s.read_buffered == 0 and d.r.eofs == (state is Receive.FIN_DELIVERED)
    expected = {
        Receive.OPEN: Receive.ABORTED,
        Receive.FIN_RECEIVED: Receive.ABORTED,
        Receive.FIN_DELIVERED: Receive.FIN_DELIVERED,
        Receive.ABORTED: Receive.ABORTED,
    }[state]
    check(RECEIVE, state, ReceiveInput.CONNECTION_LOST, d.s.receive_state, expected)


# Send side (our receive side stays open, or FIN_RECEIVED while paused)


@pytest.mark.parametrize("state", list(Send), ids=lambda s: s.name)
def test_send_write(state: Send) -> None:
    d = Duo().send_state(state)
    if state is Send.FIN_SENT:
        with pytest.raises(RuntimeError, match="write after loseWriteConnection"):
            d.s.write(b"more")
    else:
        d.s.write(b"more")
    d.pump()
    if state is Send.OPEN:
        assert d.pr.data == b"himore"
        assert [args[1] for args, _ in d.called("stream_send")] == [b"more"]
    else:
        assert d.calls == [] and d.pr.data == b"hi"
    expected = {
        Send.OPEN: Send.OPEN,
        Send.FIN_SENT: Send.FIN_SENT,
        Send.STOPPED: Send.STOPPED,
        Send.ABORTED: Send.ABORTED,
    }[state]
    check(SEND, state, SendInput.WRITE, d.s.send_state, expected)


@pytest.mark.parametrize("state", list(Send), ids=lambda s: s.name)
def test_send_fin(state: Send) -> None:
    d = Duo().send_state(state)
    eofs = d.pr.eofs
    d.s.loseWriteConnection()
    d.pump()
    if state is Send.OPEN:
        assert [kw for _, kw in d.called("stream_send")] == [{"end_stream": True}]
        assert d.pr.eofs == 1 and d.s.write_closed and not d.s.is_closed
    else:
        assert d.calls == [] and d.pr.eofs == eofs
    expected = {
        Send.OPEN: Send.FIN_SENT,
        Send.FIN_SENT: Send.FIN_SENT,
        Send.STOPPED: Send.STOPPED,
        Send.ABORTED: Send.ABORTED,
    }[state]
    check(SEND, state, SendInput.FIN, d.s.send_state, expected)


@pytest.mark.parametrize("state", list(Send), ids=lambda s: s.name)
def test_send_peer_stop(state: Send) -> None:
    d = Duo().send_state(state)
    if state is Send.OPEN:
        producer = Producer()
        d.s.registerProducer(producer, True)
        d.s.pauseProducing()
        d.peer.loseWriteConnection()
        d.peer.reset(5)  # its send side is over: STOP_SENDING alone goes out
        d.pump()
        assert producer.calls == ["stop"] and not d.s.is_closed
        landed = d.s.send_state
        d.s.resumeProducing()  # the peer's FIN is delivered: both directions ended
        err = d.r.reason()
        assert isinstance(err, StreamStopped) and err.error_code == 5
    elif state is Send.FIN_SENT:
        d.s.handle_stop_sending(5)  # after our FIN: ignored, the stream still ends cleanly
        landed = d.s.send_state
        assert d.calls == []
        d.peer.loseWriteConnection()
        d.pump()
        assert d.r.lost[0].check(ConnectionDone) and len(d.r.lost) == 1
    elif state is Send.STOPPED:
        d.s.handle_stop_sending(6)  # a repeated STOP_SENDING: the first code is kept
        landed = d.s.send_state
        assert d.calls == []
        d.s.resumeProducing()
        err = d.r.reason()
        assert isinstance(err, StreamStopped) and err.error_code == 5
    else:
        d.s.handle_stop_sending(5)
        landed = d.s.send_state
        assert d.calls == [] and isinstance(d.r.reason(), StreamReset)
    expected = {
        Send.OPEN: Send.STOPPED,
        Send.FIN_SENT: Send.FIN_SENT,
        Send.STOPPED: Send.STOPPED,
        Send.ABORTED: Send.ABORTED,
    }[state]
    check(SEND, state, SendInput.PEER_STOP, landed, expected)


@pytest.mark.parametrize("state", list(Send), ids=lambda s: s.name)
def test_send_peer_reset(state: Send) -> None:
    d = Duo().send_state(state)
    if state is Send.FIN_SENT:
        # The peer read our FIN; its reset is RESET_STREAM alone, over the wire.
        assert d.pr.eofs == 1
        d.peer.reset(9)
        d.pump()
    else:
        d.s.handle_reset(9)
        d.pump()
    if state is Send.ABORTED:
        assert d.calls == [] and len(d.r.lost) == 1
        first = d.r.reason()  # our reset that aborted it
        assert isinstance(first, StreamReset) and not first.by_peer
    else:
        err = d.r.reason()
        assert isinstance(err, StreamReset) and err.by_peer and err.error_code == 9
        # We answer with RESET_STREAM only while our side was still open.
        sends = [kw["send"] for _, kw in d.called("stream_abort")]
        assert sends == ([True] if state is Send.OPEN else [])
    if state is Send.OPEN:
        peer_err = d.pr.reason()
        assert isinstance(peer_err, StreamReset) and peer_err.by_peer and peer_err.error_code == 9
    expected = {
        Send.OPEN: Send.ABORTED,
        Send.FIN_SENT: Send.FIN_SENT,
        Send.STOPPED: Send.STOPPED,
        Send.ABORTED: Send.ABORTED,
    }[state]
    check(SEND, state, SendInput.PEER_RESET, d.s.send_state, expected)


@pytest.mark.parametrize("state", list(Send), ids=lambda s: s.name)
def test_send_local_reset(state: Send) -> None:
    d = Duo().send_state(state)
    d.s.reset(3)
    d.pump()
    if state is Send.ABORTED:
        assert d.calls == [] and len(d.r.lost) == 1
    else:
        err = d.r.reason()
        assert isinstance(err, StreamReset) and not err.by_peer and err.error_code == 3
        assert [kw for _, kw in d.called("stream_abort")] == [{"send": state is Send.OPEN, "receive": True}]
    if state is Send.FIN_SENT:
        with pytest.raises(RuntimeError):  # FIN_SENT is kept: a write after FIN is still a bug
            d.s.write(b"x")
    expected = {
        Send.OPEN: Send.ABORTED,
        Send.FIN_SENT: Send.FIN_SENT,
        Send.STOPPED: Send.STOPPED,
        Send.ABORTED: Send.ABORTED,
    }[state]
    check(SEND, state, SendInput.LOCAL_RESET, d.s.send_state, expected)


@pytest.mark.parametrize("state", list(Send), ids=lambda s: s.name)
def test_send_connection_lost(state: Send) -> None:
    d = Duo().send_state(state)
    producer = Producer()
    d.s.registerProducer(producer, True)
    open_before = state is Send.OPEN
    assert producer.calls == ([] if open_before else ["stop"])  # an ended send side stops it at once
    d.lose_connection()
    err = d.r.reason()
    assert isinstance(err, StreamReset if state is Send.ABORTED else ConnectionClosed)
    assert producer.calls == ["stop"]
    if state is Send.FIN_SENT:
        with pytest.raises(RuntimeError):
            d.s.write(b"x")
    expected = {
        Send.OPEN: Send.ABORTED,
        Send.FIN_SENT: Send.FIN_SENT,
        Send.STOPPED: Send.STOPPED,
        Send.ABORTED: Send.ABORTED,
    }[state]
    check(SEND, state, SendInput.CONNECTION_LOST, d.s.send_state, expected)


# The stream: closed once, whatever comes after


def close_cleanly(d: Duo) -> None:
    d.s.loseWriteConnection()
    d.peer.loseWriteConnection()
    d.pump()


def peer_resets(d: Duo) -> None:
    d.peer.reset(9)
    d.pump()


def we_reset(d: Duo) -> None:
    d.s.reset(3)


CLOSINGS: dict[StreamInput, tuple[Callable[[Duo], None], type[BaseException]]] = {
    StreamInput.ENDED: (close_cleanly, ConnectionDone),
    StreamInput.PEER_RESET: (peer_resets, StreamReset),
    StreamInput.LOCAL_RESET: (we_reset, StreamReset),
    StreamInput.CONNECTION_LOST: (Duo.lose_connection, ConnectionClosed),
}

LATER: dict[str, Callable[[QuicStream], None]] = {
    "data": lambda s: s.handle_data(b"late", False),
    "fin": lambda s: s.handle_data(b"", True),
    "peer reset": lambda s: s.handle_reset(4),
    "peer stop": lambda s: s.handle_stop_sending(4),
    "local reset": lambda s: s.reset(4),
    "connection lost": lambda s: s.handle_connection_lost(CloseReason(error_code=0, reason="late")),
    "fin sent": lambda s: s.loseWriteConnection(),
    "stop producing": lambda s: s.stopProducing(),
}


@pytest.mark.parametrize("closing", list(CLOSINGS), ids=lambda c: c.name)
def test_the_stream_closes_once_with_its_reason(closing: StreamInput) -> None:
    d = Duo()
    close, error = CLOSINGS[closing]
    assert d.s.state is Stream.OPEN
    close(d)
    check(STREAM, Stream.OPEN, closing, d.s.state, Stream.CLOSED)
    first = d.r.lost
    assert len(first) == 1 and first[0].check(error)
    assert d.s.is_closed and d.s.read_closed and d.s.write_closed
    assert d.s.stream_id not in d.conn._streams  # the connection forgot it
    for name, later in LATER.items():
        d.calls.clear()
        later(d.s)
        d.pump()
        assert d.r.lost == first, name
        assert [c for c in d.calls if c[0] != "stream_consumed"] == [], name
    for event in StreamInput:
        check(STREAM, Stream.CLOSED, event, d.s.state, Stream.CLOSED)
    late = Log()
    d.s.set_receiver(late)  # a receiver attached after the end hears why at once
    assert late.events == [("lost", first[0])]


# Odd inputs


def test_a_retransmitted_stop_sending_reaches_a_stopped_stream_and_changes_nothing() -> None:
    d = Duo()
    producer = Producer()
    d.s.registerProducer(producer, True)
    stops: list[int] = []
    real = d.s.handle_stop_sending

    def counted(code: int) -> None:
        stops.append(code)
        real(code)

    d.s.handle_stop_sending = counted  # type: ignore[method-assign]
    d.s.pauseProducing()
    d.net.filter = lambda src, dst, data: None if src == A else data  # our ACKs are lost
    d.peer.loseWriteConnection()
    d.peer.reset(5)
    d.net.advance(3.0)  # the peer's PTOs resend its STOP_SENDING
    d.net.filter = None
    d.pump()
    assert len(stops) >= 2 and set(stops) == {5}
    assert d.s.send_state is Send.STOPPED and producer.calls == ["stop"]
    assert d.r.lost == []
    d.s.resumeProducing()
    err = d.r.reason()
    assert isinstance(err, StreamStopped) and err.error_code == 5


def test_a_receiver_that_raises_in_data_received_gets_its_stream_reset(logged_errors: Any) -> None:
    d = Duo()

    class Bad(Log):
        def dataReceived(self, data: bytes) -> None:
            raise ValueError("boom")

    bad = Bad()
    d.s.set_receiver(bad)
    d.peer.write(b"x")
    d.pump()
    err = bad.reason()
    assert isinstance(err, StreamReset) and not err.by_peer and err.error_code == 1
    assert [kw for _, kw in d.called("stream_abort")] == [{"send": True, "receive": True}]
    peer_err = d.pr.reason()
    assert isinstance(peer_err, StreamReset) and peer_err.by_peer and peer_err.error_code == 1
    assert len(logged_errors.flush()) == 1


def test_a_receiver_that_raises_in_eof_received_gets_its_send_side_reset(logged_errors: Any) -> None:
    d = Duo()

    class Bad(Log):
        def eofReceived(self) -> None:
            raise ValueError("boom")

    bad = Bad()
    d.s.set_receiver(bad)
    d.peer.loseWriteConnection()
    d.pump()
    err = bad.reason()
    assert isinstance(err, StreamReset) and err.error_code == 1
    assert d.s.receive_state is Receive.FIN_DELIVERED and d.s.send_state is Send.ABORTED
    assert [kw for _, kw in d.called("stream_abort")] == [{"send": True, "receive": False}]
    assert len(logged_errors.flush()) == 1


def test_a_receiver_that_raises_in_connection_lost_is_logged_and_the_stream_still_ends(logged_errors: Any) -> None:
    d = Duo()

    class Bad(Log):
        def connectionLost(self, reason: Failure) -> None:
            super().connectionLost(reason)
            raise ValueError("boom")

    bad = Bad()
    d.s.set_receiver(bad)
    d.s.reset(2)
    assert len(bad.lost) == 1 and d.s.is_closed
    assert d.s.stream_id not in d.conn._streams
    assert len(logged_errors.flush()) == 1


def test_eof_received_that_sends_our_fin_closes_once_inside_it() -> None:
    d = Duo()
    order: list[str] = []

    class Echo(Log):
        def eofReceived(self) -> None:
            super().eofReceived()
            d.s.loseWriteConnection()
            order.append("fin sent")

        def connectionLost(self, reason: Failure) -> None:
            super().connectionLost(reason)
            order.append("lost")

    echo = Echo()
    d.s.set_receiver(echo)
    d.peer.loseWriteConnection()
    d.pump()
    assert order == ["lost", "fin sent"]  # closed by the FIN, re-entrantly, not after eofReceived returned
    assert echo.lost[0].check(ConnectionDone) and len(echo.lost) == 1
    assert d.pr.lost[0].check(ConnectionDone)


# Any sequence of inputs, from both ends


ACTIONS: dict[str, Callable[[Duo], None]] = {
    "write": lambda d: d.s.write(b"w" * 100) if d.s.send_state is not Send.FIN_SENT else None,
    "fin": lambda d: d.s.loseWriteConnection(),
    "reset": lambda d: d.s.reset(11),
    "pause": lambda d: d.s.pauseProducing(),
    "resume": lambda d: d.s.resumeProducing(),
    "peer write": lambda d: d.peer.write(b"p" * 100) if d.peer.send_state is not Send.FIN_SENT else None,
    "peer fin": lambda d: d.peer.loseWriteConnection(),
    "peer reset": lambda d: d.peer.reset(12),
    "peer pause": lambda d: d.peer.pauseProducing(),
    "peer resume": lambda d: d.peer.resumeProducing(),
    "pump": Duo.pump,
    "lose connection": Duo.lose_connection,
    "late data": lambda d: d.s.handle_data(b"late", False),
    "late fin": lambda d: d.s.handle_data(b"", True),
    "stop sending": lambda d: d.s.handle_stop_sending(13),
    "reset received": lambda d: d.s.handle_reset(14),
    "connection lost received": lambda d: d.s.handle_connection_lost(CloseReason(error_code=0, reason="late")),
}


def reachable(table: Any, before: Any, after: Any) -> bool:
    """Can *table* lead from *before* to *after* (one action may be several inputs: FIN then drained)?"""
    seen, todo = {before}, [before]
    while todo:
        state = todo.pop()
        for (origin, _), step in table.items():
            if origin is state and step.to not in seen:
                seen.add(step.to)
                todo.append(step.to)
    return after in seen


def check_invariants(stream: QuicStream, log: Log) -> None:
    names = [name for name, _ in log.events]
    assert names.count("lost") == (1 if stream.is_closed else 0)
    assert names.count("eof") <= 1
    if "lost" in names:
        assert names[-1] == "lost"  # nothing after connectionLost
    if "eof" in names:
        assert "data" not in names[names.index("eof") :]  # nothing after eofReceived but the end
    if stream.is_closed:
        assert stream.read_closed and stream.write_closed and stream.read_buffered == 0


@given(st.lists(st.sampled_from(sorted(ACTIONS)), max_size=12))
@settings(max_examples=60)
def test_any_sequence_of_inputs_keeps_the_lifecycle(actions: list[str]) -> None:
    d = Duo()
    for action in actions:
        ends = [(d.s, d.r), (d.peer, d.pr)]
        before = [(s.receive_state, s.send_state, s.state) for s, _ in ends]
        ACTIONS[action](d)
        for (stream, log), (receive, send, state) in zip(ends, before, strict=True):
            assert reachable(RECEIVE, receive, stream.receive_state), (action, receive, stream.receive_state)
            assert reachable(SEND, send, stream.send_state), (action, send, stream.send_state)
            assert reachable(STREAM, state, stream.state)
            check_invariants(stream, log)
    d.lose_connection()  # whatever happened, each end hears connectionLost exactly once
    for stream, log in ((d.s, d.r), (d.peer, d.pr)):
        check_invariants(stream, log)
        assert len(log.lost) == 1
