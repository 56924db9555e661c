"""The lifecycle of a :class:`~meshd.quic.stream.QuicStream`, as data.

A QUIC stream has two directions that end on their own, and the stream as a whole, which ends once.
Each is a small state machine here, with a table that names the next state for *every* input in
*every* state (``RECEIVE``, ``SEND``, ``STREAM``); the stream looks its moves up in these tables and
does the work that goes with them (``Step.does`` says what, for the docs):

* receive: ``OPEN`` -FIN-> ``FIN_RECEIVED`` -drained-> ``FIN_DELIVERED``; or ``ABORTED`` (a reset by
  either side, or the connection's end) from ``OPEN`` or ``FIN_RECEIVED``;
* send: ``OPEN`` -FIN-> ``FIN_SENT``; ``OPEN`` -STOP_SENDING-> ``STOPPED``; ``OPEN`` -reset/lost->
  ``ABORTED``;
* stream: ``OPEN`` -> ``CLOSED`` (with the reason ``connectionLost`` gets).

The rule that keeps them simple: **a direction ends once, and the first end is kept** (no input
leaves ``FIN_DELIVERED``, ``ABORTED``, ``FIN_SENT`` or ``STOPPED``), and a closed stream ignores
every input. So a write after ``loseWriteConnection`` raises even once the stream was reset, and a
reset after a clean close changes nothing.

Why tables and enums, not automat: both directions and the stream move together on one input, and a
receiver's callbacks re-enter the stream (``dataReceived`` writes, ``eofReceived`` sends FIN), where
automat would queue the inner input until the outer one returns and so change the order of effects
(and swallow ``SendBufferFull``). The hot inputs (data while ``OPEN``, ``write`` while ``OPEN``)
stay a single identity check.

:func:`mermaid` draws the diagrams of ``docs/lifecycles.md`` from these tables.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Generic, TypeVar

import attrs

__all__ = [
    "RECEIVE",
    "RECEIVE_ENDED",
    "SEND",
    "SEND_ENDED",
    "STREAM",
    "Receive",
    "ReceiveInput",
    "Send",
    "SendInput",
    "Step",
    "Stream",
    "StreamInput",
    "markdown_table",
    "mermaid",
]

S = TypeVar("S", bound=enum.Enum)


@attrs.frozen
class Step(Generic[S]):
    """One cell of a table: the state after the input, and what the stream does (for the docs)."""

    to: S
    does: str


class Receive(enum.Enum):
    """The receiving direction."""

    #: Data arrives, is buffered, and is delivered to the receiver while not paused.
    OPEN = "open"
    #: The peer's FIN arrived; what is buffered (and then the FIN) still waits for the receiver.
    FIN_RECEIVED = "fin_received"
    #: ``eofReceived`` was called: everything the peer sent was delivered.
    FIN_DELIVERED = "fin_delivered"
    #: Ended abruptly (the peer's RESET_STREAM, our reset, the connection's end): buffer dropped.
    ABORTED = "aborted"


class ReceiveInput(enum.Enum):
    #: STREAM frame bytes from the peer.
    DATA = "data"
    #: The peer's FIN (a STREAM frame with the FIN bit).
    FIN = "fin"
    #: Everything buffered went to the receiver, which is attached and not paused.
    DRAINED = "drained"
    #: RESET_STREAM from the peer.
    PEER_RESET = "peer_reset"
    #: :meth:`~meshd.quic.stream.QuicStream.reset` (also ``stopProducing``, a receiver that raised).
    LOCAL_RESET = "local_reset"
    #: The connection ended.
    CONNECTION_LOST = "connection_lost"


class Send(enum.Enum):
    """The sending direction."""

    #: ``write`` queues bytes in aioquic.
    OPEN = "open"
    #: ``loseWriteConnection``: FIN queued after what was written.
    FIN_SENT = "fin_sent"
    #: The peer sent STOP_SENDING while we were still writing (aioquic answered RESET_STREAM).
    STOPPED = "stopped"
    #: Ended abruptly by our reset, our answer to the peer's reset, or the connection's end.
    ABORTED = "aborted"


class SendInput(enum.Enum):
    #: :meth:`~meshd.quic.stream.QuicStream.write` / ``writeSequence``.
    WRITE = "write"
    #: :meth:`~meshd.quic.stream.QuicStream.loseWriteConnection`.
    FIN = "fin"
    #: STOP_SENDING from the peer.
    PEER_STOP = "peer_stop"
    #: RESET_STREAM from the peer (we reset our side too).
    PEER_RESET = "peer_reset"
    #: :meth:`~meshd.quic.stream.QuicStream.reset`.
    LOCAL_RESET = "local_reset"
    #: The connection ended.
    CONNECTION_LOST = "connection_lost"


class Stream(enum.Enum):
    """The stream as a whole: ``connectionLost`` is called on the way to ``CLOSED``, once."""

    OPEN = "open"
    CLOSED = "closed"


class StreamInput(enum.Enum):
    #: Both directions ended without a reset: receive FIN_DELIVERED and send FIN_SENT or STOPPED.
    ENDED = "ended"
    PEER_RESET = "peer_reset"
    LOCAL_RESET = "local_reset"
    CONNECTION_LOST = "connection_lost"


#: The receive states once the direction is over (``read_closed``).
RECEIVE_ENDED = frozenset({Receive.FIN_DELIVERED, Receive.ABORTED})
#: The send states once the direction is over (``write_closed``).
SEND_ENDED = frozenset({Send.FIN_SENT, Send.STOPPED, Send.ABORTED})

_R = Receive
_RI = ReceiveInput
_CREDIT = "drop, give the receive credit back"
_KEPT = "ignored (the first end is kept)"

RECEIVE: Mapping[tuple[Receive, ReceiveInput], Step[Receive]] = {
    (_R.OPEN, _RI.DATA): Step(_R.OPEN, "buffer; deliver unless paused or no receiver"),
    (_R.OPEN, _RI.FIN): Step(_R.FIN_RECEIVED, "deliver what waits"),
    (_R.OPEN, _RI.DRAINED): Step(_R.OPEN, "nothing"),
    (_R.OPEN, _RI.PEER_RESET): Step(_R.ABORTED, "drop the buffer; count all received as consumed"),
    (_R.OPEN, _RI.LOCAL_RESET): Step(_R.ABORTED, "STOP_SENDING; drop the buffer"),
    (_R.OPEN, _RI.CONNECTION_LOST): Step(_R.ABORTED, "drop the buffer"),
    # aioquic never delivers data past the final size nor a second FIN; if it did, it is dropped.
    (_R.FIN_RECEIVED, _RI.DATA): Step(_R.FIN_RECEIVED, _CREDIT),
    (_R.FIN_RECEIVED, _RI.FIN): Step(_R.FIN_RECEIVED, "ignored"),
    (_R.FIN_RECEIVED, _RI.DRAINED): Step(_R.FIN_DELIVERED, "eofReceived"),
    (_R.FIN_RECEIVED, _RI.PEER_RESET): Step(_R.ABORTED, "drop the buffer; count all received as consumed"),
    (_R.FIN_RECEIVED, _RI.LOCAL_RESET): Step(_R.ABORTED, "STOP_SENDING; drop the buffer"),
    (_R.FIN_RECEIVED, _RI.CONNECTION_LOST): Step(_R.ABORTED, "drop the buffer"),
    (_R.FIN_DELIVERED, _RI.DATA): Step(_R.FIN_DELIVERED, _CREDIT),
    (_R.FIN_DELIVERED, _RI.FIN): Step(_R.FIN_DELIVERED, "ignored"),
    (_R.FIN_DELIVERED, _RI.DRAINED): Step(_R.FIN_DELIVERED, "nothing"),
    (_R.FIN_DELIVERED, _RI.PEER_RESET): Step(_R.FIN_DELIVERED, _KEPT),
    (_R.FIN_DELIVERED, _RI.LOCAL_RESET): Step(_R.FIN_DELIVERED, _KEPT + "; no STOP_SENDING"),
    (_R.FIN_DELIVERED, _RI.CONNECTION_LOST): Step(_R.FIN_DELIVERED, _KEPT),
    (_R.ABORTED, _RI.DATA): Step(_R.ABORTED, _CREDIT),
    (_R.ABORTED, _RI.FIN): Step(_R.ABORTED, "ignored"),
    (_R.ABORTED, _RI.DRAINED): Step(_R.ABORTED, "nothing"),
    (_R.ABORTED, _RI.PEER_RESET): Step(_R.ABORTED, _KEPT),
    (_R.ABORTED, _RI.LOCAL_RESET): Step(_R.ABORTED, _KEPT),
    (_R.ABORTED, _RI.CONNECTION_LOST): Step(_R.ABORTED, _KEPT),
}

_S = Send
_SI = SendInput
_DROPPED = "dropped (logged at debug)"

SEND: Mapping[tuple[Send, SendInput], Step[Send]] = {
    (_S.OPEN, _SI.WRITE): Step(_S.OPEN, "queue in aioquic; pause the producer above the high-water mark"),
    (_S.OPEN, _SI.FIN): Step(_S.FIN_SENT, "FIN after what was written"),
    (_S.OPEN, _SI.PEER_STOP): Step(_S.STOPPED, "stop the producer (aioquic sent RESET_STREAM)"),
    (_S.OPEN, _SI.PEER_RESET): Step(_S.ABORTED, "RESET_STREAM with the peer's code"),
    (_S.OPEN, _SI.LOCAL_RESET): Step(_S.ABORTED, "RESET_STREAM"),
    (_S.OPEN, _SI.CONNECTION_LOST): Step(_S.ABORTED, "stop the producer"),
    (_S.FIN_SENT, _SI.WRITE): Step(_S.FIN_SENT, "raise RuntimeError"),
    (_S.FIN_SENT, _SI.FIN): Step(_S.FIN_SENT, "ignored"),
    (_S.FIN_SENT, _SI.PEER_STOP): Step(_S.FIN_SENT, _KEPT),
    (_S.FIN_SENT, _SI.PEER_RESET): Step(_S.FIN_SENT, _KEPT + "; no RESET_STREAM"),
    (_S.FIN_SENT, _SI.LOCAL_RESET): Step(_S.FIN_SENT, _KEPT + "; no RESET_STREAM"),
    (_S.FIN_SENT, _SI.CONNECTION_LOST): Step(_S.FIN_SENT, _KEPT),
    (_S.STOPPED, _SI.WRITE): Step(_S.STOPPED, _DROPPED),
    (_S.STOPPED, _SI.FIN): Step(_S.STOPPED, "ignored"),
    (_S.STOPPED, _SI.PEER_STOP): Step(_S.STOPPED, "ignored (a repeated STOP_SENDING)"),
    (_S.STOPPED, _SI.PEER_RESET): Step(_S.STOPPED, _KEPT),
    (_S.STOPPED, _SI.LOCAL_RESET): Step(_S.STOPPED, _KEPT),
    (_S.STOPPED, _SI.CONNECTION_LOST): Step(_S.STOPPED, _KEPT),
    (_S.ABORTED, _SI.WRITE): Step(_S.ABORTED, _DROPPED),
    (_S.ABORTED, _SI.FIN): Step(_S.ABORTED, "ignored"),
    (_S.ABORTED, _SI.PEER_STOP): Step(_S.ABORTED, "ignored"),
    (_S.ABORTED, _SI.PEER_RESET): Step(_S.ABORTED, _KEPT),
    (_S.ABORTED, _SI.LOCAL_RESET): Step(_S.ABORTED, _KEPT),
    (_S.ABORTED, _SI.CONNECTION_LOST): Step(_S.ABORTED, _KEPT),
}

_T = Stream
_TI = StreamInput
_IGNORED = "ignored (connectionLost was called)"

STREAM: Mapping[tuple[Stream, StreamInput], Step[Stream]] = {
    (_T.OPEN, _TI.ENDED): Step(_T.CLOSED, "ConnectionDone, or StreamStopped(code) if the send side was STOPPED"),
    (_T.OPEN, _TI.PEER_RESET): Step(_T.CLOSED, "StreamReset(code, by_peer=True)"),
    (_T.OPEN, _TI.LOCAL_RESET): Step(_T.CLOSED, "StreamReset(code, by_peer=False)"),
    (_T.OPEN, _TI.CONNECTION_LOST): Step(_T.CLOSED, "ConnectionClosed(CloseReason)"),
    (_T.CLOSED, _TI.ENDED): Step(_T.CLOSED, _IGNORED),
    (_T.CLOSED, _TI.PEER_RESET): Step(_T.CLOSED, _IGNORED),
    (_T.CLOSED, _TI.LOCAL_RESET): Step(_T.CLOSED, _IGNORED),
    (_T.CLOSED, _TI.CONNECTION_LOST): Step(_T.CLOSED, _IGNORED),
}


def mermaid(table: Mapping[tuple[S, enum.Enum], Step[S]]) -> str:
    """A mermaid ``stateDiagram-v2`` of *table*: the initial state, one edge per state change (inputs
    that lead to the same change share it), and the final states (those no input leaves); inputs
    that change nothing are left out (the table has them)."""
    states = list(dict.fromkeys(state for state, _ in table))
    edges: dict[tuple[S, S], list[str]] = {}
    for (state, event), step in table.items():
        if step.to is not state:
            edges.setdefault((state, step.to), []).append(event.value)
    leaving = {a for a, _ in edges}
    lines = ["stateDiagram-v2", f"    [*] --> {states[0].name}"]
    lines += [f"    {a.name} --> {b.name}: {' / '.join(events)}" for (a, b), events in edges.items()]
    lines += [f"    {state.name} --> [*]" for state in states if state not in leaving]
    return "\n".join(lines)


def markdown_table(table: Mapping[tuple[S, enum.Enum], Step[S]]) -> str:
    """Every (state, input) pair of *table* as a markdown table: next state and what the stream does."""
    rows = ["| state | input | next | what the stream does |", "|---|---|---|---|"]
    for (state, event), step in table.items():
        nxt = "=" if step.to is state else step.to.name
        rows.append(f"| {state.name} | {event.value} | {nxt} | {step.does} |")
    return "\n".join(rows)
