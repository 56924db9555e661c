"""Inbound streams: a table from stream type to handler, behind 0.76's pre-admission rule (§2.2, §3.1).

A peer opens a stream and sends its type byte (``meshd.control.InboundStream`` reads it); the table says
who serves it. Before a peer is admitted only the types 0.76's trust policy allows get through; the
others are dropped as mesh-llm drops them (our side finished, theirs not read). A type nobody registered
is dropped the same way. The node registers its control streams (``meshd.node.service``); what serves
TUNNEL_HTTP is registered where the daemon is wired (``meshd.tap.build_service``: the host's backend).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from meshd.control import Discard, FrameReader, InboundStream
from meshd.mesh.state import MeshState
from meshd.pipe import PipeEnd, pipe
from meshd.protocol.streams import StreamType, TrustPolicy, allowed_before_admission
from meshd.quic import MeshConnection, QuicStream

#: mesh-llm's default trust policy: unadmitted peers may gossip, tunnel (0x04) and ask routes (0x05).
TRUST_POLICY = TrustPolicy.OFF

#: Serves one inbound stream: ``(connection, stream)`` (no connection: our own API through a pipe) to the
#: stream's receiver, or None when the handler dealt with the stream itself (e.g. dropped it).
StreamHandler = Callable[[MeshConnection | None, QuicStream], Any]
#: What a single-frame stream's handler gets: the frame's body, the connection, the stream (to answer on).
FrameHandler = Callable[[bytes, MeshConnection, QuicStream], None]

_log = Logger()


def drop(stream: QuicStream) -> None:
    """Drop a stream as mesh-llm does: FIN our side, stop reading theirs."""
    stream.set_receiver(Discard())
    stream.loseWriteConnection()


def frame_handler(on_frame: FrameHandler, what: str) -> StreamHandler:
    """A handler for a stream that carries one ``[len][body]`` frame: ``on_frame(body, conn, stream)`` once
    the frame is in; a bad frame (framing, budget, a stream that ends early) is logged and goes no further."""

    def handle(conn: MeshConnection | None, stream: QuicStream) -> FrameReader:
        assert conn is not None  # control streams come from peers, never from our own pipe
        reader = FrameReader(stream)
        reader.result.addCallbacks(on_frame, _bad_frame, callbackArgs=(conn, stream), errbackArgs=(conn, what))
        return reader

    return handle


def _bad_frame(failure: Failure, conn: MeshConnection, what: str) -> None:
    _log.info(
        "bad {what} stream from {peer}: {err}",
        what=what,
        peer=(conn.remote_id or b"").hex()[:10],
        err=describe(failure.value),
        event="bad_frame",
    )


def describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class StreamDispatch:
    """The table of inbound stream handlers. ``accept(conn, stream)`` takes a stream a peer opened;
    :meth:`register` adds a handler; :meth:`open_local` opens a stream of a type to our own handler."""

    _log = Logger()

    def __init__(self, mesh: MeshState, clock: Any, *, trust: TrustPolicy = TRUST_POLICY) -> None:
        self._mesh = mesh
        self._clock = clock
        self._trust = trust
        self._handlers: dict[StreamType, StreamHandler] = {}

    def register(self, stream_type: StreamType, handler: StreamHandler) -> None:
        """Serve streams of ``stream_type`` with ``handler`` from now on (instead of any handler before)."""
        self._handlers[stream_type] = handler

    def handles(self, stream_type: StreamType) -> bool:
        return stream_type in self._handlers

    def accept(self, conn: MeshConnection, stream: QuicStream) -> None:
        """A stream the peer opened: read its type byte (within 5 s), then dispatch it."""
        stream.set_receiver(InboundStream(conn, stream, self.dispatch, clock=self._clock))

    def dispatch(self, conn: MeshConnection, stream: QuicStream, stream_type: StreamType) -> Any:
        rid = conn.remote_id
        assert rid is not None
        if not allowed_before_admission(stream_type, self._trust) and not self._mesh.is_admitted(rid):
            self._log.info(
                "dropping {type} stream from unadmitted {peer}",
                type=stream_type.name,
                peer=rid.hex()[:10],
                event="stream_unadmitted",
            )
            drop(stream)
            return None
        self._mesh.touch(rid, float(self._clock.seconds()))
        handler = self._handlers.get(stream_type)
        if handler is None:
            self._log.info(
                "dropping {type} stream from {peer}", type=stream_type.name, peer=rid.hex()[:10], event="stream_ignored"
            )
            drop(stream)
            return None
        return handler(conn, stream)

    def open_local(self, stream_type: StreamType) -> PipeEnd:
        """Our end of an in-memory stream served by our own handler for ``stream_type`` (the host's own API
        reaches its backend this way: the same code path as a TUNNEL_HTTP stream from a peer)."""
        handler = self._handlers[stream_type]
        near, far = pipe(self._clock)
        far.set_receiver(handler(None, far))  # type: ignore[arg-type]
        return near
