"""Control streams of mesh-llm/1 over meshd.quic streams (MESH_PROTOCOL.md §5.2-§5.7).

Thin adapters: they move bytes between QUIC streams and the pure codec in ``meshd.protocol``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, TimeoutError
from twisted.logger import Logger
from twisted.python.failure import Failure

from meshd.protocol import node_pb2
from meshd.protocol.errors import ProtocolError
from meshd.protocol.framing import FrameDecoder, StreamTypeReader, encode_frame, encode_opener
from meshd.protocol.streams import StreamType
from meshd.protocol.validate import decode_gossip_frame
from meshd.quic import MeshConnection, QuicStream

#: Application error code for streams reset because of bad input.
STREAM_PROTOCOL_ERROR = 1


class PreAdmissionBudget(ProtocolError):
    """A peer not admitted yet sent a frame beyond what meshd holds for such peers."""


class FrameReader:
    """Receiver that reads one ``[len][body]`` frame; ``result`` fires with the body.

    With ``wait_eof`` the result fires only once the peer finished its side too (bytes after the
    frame are an error). Bad framing resets the stream and fails ``result``.

    While the connection's peer is not admitted, a frame may not declare more than
    ``connection.preadmission_frame_limit`` bytes, and every byte received is charged to the
    connection's pre-admission budget (:meth:`MeshConnection.charge_preadmission`) until the result
    fires; a frame beyond either bound resets the stream before its bytes are kept.
    """

    def __init__(self, stream: QuicStream, *, wait_eof: bool = False) -> None:
        self.stream = stream
        self.wait_eof = wait_eof
        self.result: Deferred[bytes] = Deferred()
        self.result.addBoth(self._settled)
        self._decoder = FrameDecoder()
        self._body: bytes | None = None
        self._charged = 0

    def _connection(self) -> MeshConnection | None:
        return getattr(self.stream, "connection", None)

    def _charge(self, count: int) -> None:
        conn = self._connection()
        if conn is None or conn.admitted:
            return
        if not conn.charge_preadmission(count):
            raise PreAdmissionBudget("pre-admission byte budget exhausted (peer not admitted yet)")
        self._charged += count

    def _check_declared(self) -> None:
        conn = self._connection()
        limit = conn.preadmission_frame_limit if conn is not None else None
        declared = self._decoder.expected_length
        if limit is not None and declared is not None and declared > limit:
            raise PreAdmissionBudget(f"frame of {declared} bytes from a peer not admitted yet (limit {limit})")

    def _settled(self, result: object) -> object:
        conn = self._connection()
        if conn is not None and self._charged:
            conn.release_preadmission(self._charged)
        self._charged = 0
        self._decoder.discard()  # a refused frame's bytes go now, not when the reader is collected
        return result

    def dataReceived(self, data: bytes) -> None:
        if self.result.called:
            return
        try:
            if self._body is not None:
                if data:
                    raise ProtocolError("unexpected bytes after the frame")
                return
            self._charge(len(data))
            frames = self._decoder.feed(data)
            if not frames:
                self._check_declared()
        except ProtocolError as e:
            self._fail(e, reset=True)
            return
        if frames:
            if len(frames) > 1:
                self._fail(ProtocolError("more than one frame on a single-frame stream"), reset=True)
                return
            self._body = frames[0]
            if not self.wait_eof:
                self.result.callback(self._body)

    def eofReceived(self) -> None:
        if self.result.called:
            return
        if self._body is not None:
            self.result.callback(self._body)
            return
        try:
            self._decoder.finish()
            raise ProtocolError("stream ended without a frame")
        except ProtocolError as e:
            # The peer finished its side with a partial frame: finish ours too, answering nothing.
            self.stream.loseWriteConnection()
            self._fail(e, reset=False)

    def connectionLost(self, reason: Failure) -> None:
        if not self.result.called:
            self.result.errback(reason)

    def _fail(self, exc: Exception, *, reset: bool) -> None:
        # The result first: resetting calls our connectionLost, which would report the reset instead.
        if not self.result.called:
            self.result.errback(exc)
        if reset:
            self.stream.reset(STREAM_PROTOCOL_ERROR)


class Discard:
    """Receiver that reads and drops everything (TUNNEL_MAP and the like)."""

    def dataReceived(self, data: bytes) -> None:
        pass

    def eofReceived(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        pass


def send_oneway(conn: MeshConnection, stream_type: StreamType, message: Any) -> QuicStream:
    """Open a stream, write ``[type][len][body]`` and FIN (PEER_DOWN, PEER_LEAVING)."""
    stream = conn.open_stream()
    stream.set_receiver(Discard())
    stream.write(encode_opener(stream_type, message.SerializeToString()))
    stream.loseWriteConnection()
    return stream


async def _sleep(reactor: Any, secs: float) -> None:
    d: Deferred[None] = Deferred()
    reactor.callLater(secs, d.callback, None)
    await d


def gossip_round_trip(
    conn: MeshConnection, frame: node_pb2.GossipFrame, reactor: Any, timeout: float
) -> Deferred[node_pb2.GossipFrame]:
    """Initiator side of GOSSIP (§5.5): send our frame, FIN, read and validate the reply, read to
    end, then wait 50 ms so the responder has admitted us before we open other streams."""

    async def run() -> node_pb2.GossipFrame:
        stream = conn.open_stream()
        reader = FrameReader(stream, wait_eof=True)
        stream.set_receiver(reader)
        stream.write(encode_opener(StreamType.GOSSIP, frame.SerializeToString()))
        stream.loseWriteConnection()
        reader.result.addTimeout(timeout, reactor, onTimeoutCancel=lambda *_: _timed_out(stream))
        body = await reader.result
        assert conn.remote_id is not None
        reply = decode_gossip_frame(body, conn.remote_id)
        await _sleep(reactor, 0.05)
        return reply

    return Deferred.fromCoroutine(run())


def _timed_out(stream: QuicStream) -> None:
    stream.reset(0)
    raise TimeoutError("gossip timed out")


StreamHandler = Callable[[MeshConnection, QuicStream, StreamType], Any]


#: The stream type byte must arrive within this after the peer opened the stream (mesh-llm 0.76 §3.1).
STREAM_TYPE_TIMEOUT = 5.0


class InboundStream:
    """Receiver for a stream the peer opened: reads the type byte, then hands the stream to the
    handler ``dispatch(conn, stream, type)`` returns (a receiver, or None to drop the stream). A stream
    whose type byte has not come within ``STREAM_TYPE_TIMEOUT`` is stopped (``clock`` given)."""

    _log = Logger()

    def __init__(self, conn: MeshConnection, stream: QuicStream, dispatch: StreamHandler, clock: Any = None) -> None:
        self.conn = conn
        self.stream = stream
        self.dispatch = dispatch
        self._reader = StreamTypeReader()
        self._dispatched = False
        self._timer = clock.callLater(STREAM_TYPE_TIMEOUT, self._no_type) if clock is not None else None

    def _no_type(self) -> None:
        self._timer = None
        if not self._dispatched:
            self._dispatched = True
            self._log.info(
                "dropping stream from {peer}: no type byte within {secs:g}s",
                peer=_short(self.conn),
                secs=STREAM_TYPE_TIMEOUT,
                event="stream_rejected",
            )
            self.stream.reset(0)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def dataReceived(self, data: bytes) -> None:
        if self._dispatched:
            return  # dropped stream: ignore what still arrives
        try:
            got = self._reader.feed(data)
        except ProtocolError as e:
            self._log.info(
                "dropping stream from {peer}: {err}", peer=_short(self.conn), err=str(e), event="stream_rejected"
            )
            self.stream.reset(STREAM_PROTOCOL_ERROR)
            return
        if got is None:
            return
        stream_type, rest = got
        self._dispatched = True
        self._cancel_timer()
        receiver = self.dispatch(self.conn, self.stream, stream_type)
        if receiver is None:
            return
        self.stream.set_receiver(receiver)
        if rest:
            receiver.dataReceived(rest)

    def eofReceived(self) -> None:
        self._cancel_timer()
        self.stream.loseWriteConnection()

    def connectionLost(self, reason: Failure) -> None:
        self._cancel_timer()


def reply_frame(stream: QuicStream, message: Any) -> None:
    stream.write(encode_frame(message.SerializeToString()))
    stream.loseWriteConnection()


def _short(conn: MeshConnection) -> str:
    return conn.remote_id.hex()[:10] if conn.remote_id else "?"
