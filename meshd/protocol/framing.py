"""Byte framing of mesh-llm/1 streams (MESH_PROTOCOL.md §5.2), sans-IO.

A stream opener writes one stream-type byte, then (for control streams) one length-prefixed
protobuf body: ``[type:1][len:4 little-endian][body]``. Replies on the same stream are
``[len:4 LE][body]``. TUNNEL_HTTP and TUNNEL_RPC carry raw bytes after the type byte.

Nothing here performs I/O: the decoders take the bytes a transport received and return what is
complete. Length prefixes are checked against the cap as soon as their four bytes are in, before
any byte of the body is kept.
"""

from __future__ import annotations

import struct

from meshd.protocol.errors import FrameTooLarge, InvalidFrame, TruncatedFrame, UnknownStreamType
from meshd.protocol.streams import MAX_CONTROL_FRAME_BYTES, NEVER_SENT, StreamType

__all__ = [
    "LENGTH_PREFIX_BYTES",
    "FrameDecoder",
    "StreamTypeReader",
    "decode_single_frame",
    "encode_frame",
    "encode_opener",
    "encode_stream_type",
    "parse_stream_type",
]

LENGTH_PREFIX_BYTES = 4
_LEN = struct.Struct("<I")


def parse_stream_type(byte: int) -> StreamType:
    """Map a received first byte to a :class:`StreamType` or raise :class:`UnknownStreamType`."""
    try:
        return StreamType(byte)
    except ValueError:
        raise UnknownStreamType(byte) from None


def encode_stream_type(stream_type: StreamType) -> bytes:
    """The single byte that opens a stream (all that precedes raw TUNNEL_HTTP bytes).

    Raises ``ValueError`` for the types meshd must never open (:data:`~meshd.protocol.streams.NEVER_SENT`,
    0x02 above all).
    """
    stream_type = StreamType(stream_type)
    if stream_type in NEVER_SENT:
        raise ValueError(f"meshd never opens a {stream_type.name} (0x{stream_type.value:02x}) stream")
    return bytes((stream_type,))


def encode_frame(body: bytes, *, limit: int = MAX_CONTROL_FRAME_BYTES) -> bytes:
    """``[len:4 LE][body]``: a reply frame, or the part of an opener after the type byte."""
    if len(body) > limit:
        raise FrameTooLarge(len(body), limit)
    return _LEN.pack(len(body)) + body


def encode_opener(stream_type: StreamType, body: bytes, *, limit: int = MAX_CONTROL_FRAME_BYTES) -> bytes:
    """``[type:1][len:4 LE][body]``: the first (and only) message of a control stream's opener."""
    return encode_stream_type(stream_type) + encode_frame(body, limit=limit)


class StreamTypeReader:
    """Takes the first byte of an inbound stream.

    :meth:`feed` returns ``None`` until a byte arrives, then ``(stream_type, rest)`` where
    ``rest`` is whatever followed the type byte in the same chunk. Feeding again afterwards is a
    programming error.
    """

    def __init__(self) -> None:
        self._stream_type: StreamType | None = None

    @property
    def stream_type(self) -> StreamType | None:
        return self._stream_type

    def feed(self, data: bytes) -> tuple[StreamType, bytes] | None:
        if self._stream_type is not None:
            raise RuntimeError("stream type already read")
        if not data:
            return None
        self._stream_type = parse_stream_type(data[0])
        return self._stream_type, bytes(data[1:])

    def finish(self) -> None:
        """Call at end of stream: raises :class:`TruncatedFrame` if no type byte arrived."""
        if self._stream_type is None:
            raise TruncatedFrame(needed=1, received=0, what="stream type")


class FrameDecoder:
    """Incremental decoder of ``[len:4 LE][body]`` frames.

    :meth:`feed` returns the bodies completed by the new bytes (possibly none, possibly several,
    zero-length bodies included). A length above ``limit`` raises :class:`FrameTooLarge` as soon
    as its prefix is complete; at most ``limit`` body bytes are ever held. After an error the
    decoder is dead and raises the same error again.
    """

    def __init__(self, limit: int = MAX_CONTROL_FRAME_BYTES) -> None:
        self._limit = limit
        self._header = bytearray()
        self._length: int | None = None
        self._body = bytearray()
        self._error: Exception | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for the frame in progress (prefix or body)."""
        return len(self._header) + len(self._body)

    @property
    def expected_length(self) -> int | None:
        """Declared body length of the frame in progress, once its prefix is complete."""
        return self._length

    def feed(self, data: bytes) -> list[bytes]:
        if self._error is not None:
            raise self._error
        frames: list[bytes] = []
        view = memoryview(data)
        while True:
            if self._length is None:
                if not view:
                    break
                take = LENGTH_PREFIX_BYTES - len(self._header)
                self._header += view[:take]
                view = view[take:]
                if len(self._header) < LENGTH_PREFIX_BYTES:
                    break
                (length,) = _LEN.unpack(self._header)
                self._header.clear()
                if length > self._limit:
                    self._error = FrameTooLarge(length, self._limit)
                    raise self._error
                self._length = length
            take = self._length - len(self._body)
            if take:
                if not view:
                    break
                self._body += view[:take]
                view = view[take:]
            if len(self._body) == self._length:
                frames.append(bytes(self._body))
                self._body.clear()
                self._length = None
        return frames

    def discard(self) -> None:
        """Drop whatever is held for the frame in progress (the reader gave up on it)."""
        self._header = bytearray()
        self._body = bytearray()

    def finish(self) -> None:
        """Call at end of stream: raises :class:`TruncatedFrame` if a frame is incomplete."""
        if self._error is not None:
            raise self._error
        if self._header:
            raise TruncatedFrame(LENGTH_PREFIX_BYTES, len(self._header), what="length prefix")
        if self._length is not None:
            raise TruncatedFrame(self._length, len(self._body), what="frame body")


def decode_single_frame(data: bytes, *, limit: int = MAX_CONTROL_FRAME_BYTES) -> bytes:
    """Decode a complete stream payload that must hold exactly one ``[len][body]`` frame."""
    if not data:
        raise TruncatedFrame(LENGTH_PREFIX_BYTES, 0, what="length prefix")
    decoder = FrameDecoder(limit)
    frames = decoder.feed(data)
    decoder.finish()
    if len(frames) != 1:
        raise InvalidFrame(f"expected exactly one frame, got {len(frames)}")
    return frames[0]
