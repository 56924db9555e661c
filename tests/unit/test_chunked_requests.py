"""Chunked request bodies on a host (#9): linear time, a bounded number of chunks, strict framing.

Before: h11 decoded them at ~5 µs a chunk, so 8 MiB of 1-byte chunks (which any admitted peer can send
on a tunnel stream) cost a host ~9 s of CPU here (57 s for an 8 MiB body); now the body is decoded by
ChunkedBodyReader and refused after MAX_REQUEST_CHUNKS chunks.
"""

from __future__ import annotations

import time

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.httpwire import (
    MAX_REQUEST_CHUNKS,
    BadRequest,
    BodyTooLarge,
    ChunkedBodyError,
    ChunkedBodyReader,
    RequestParser,
)
from tests.unit.test_tunnel_segmentation import chunk_sizes, chunked_wire, cut_lists, payloads, split, trailers

HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n"


def parse(raw: bytes, cuts: list[int] | None = None, **kw: int) -> bytes:
    parser = RequestParser(**kw)
    request = None
    for piece in split(raw, cuts or []):
        request = parser.feed(piece)
    assert request is not None
    return request.body


def h11_body(raw: bytes) -> bytes | None:
    """What h11 (the reference the host used before) makes of the same bytes; None if it refuses."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    body = b""
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return body
            elif event is h11.NEED_DATA:
                return None
    except h11.RemoteProtocolError:
        return None


@given(payloads, chunk_sizes, trailers, st.booleans(), cut_lists)
def test_bodies_decode_as_h11_decodes_them_in_any_segmentation(
    body: bytes, sizes: list[int], trailer: list[tuple[bytes, bytes]], ext: bool, cuts: list[int]
) -> None:
    raw = HEAD + chunked_wire(body, sizes, trailer, ext=ext)
    assert parse(raw, cuts) == body == h11_body(raw)


@given(st.binary(max_size=300), cut_lists)
def test_arbitrary_bytes_after_the_head_are_a_body_or_a_clear_error(tail: bytes, cuts: list[int]) -> None:
    raw = HEAD + tail
    parser = RequestParser()
    try:
        for piece in split(raw, cuts):
            request = parser.feed(piece)
            if request is not None:
                assert request.body == h11_body(raw)
                return
        parser.feed_eof()
    except (BadRequest, BodyTooLarge):
        return
    raise AssertionError("feed_eof returned without a complete request")


@pytest.mark.parametrize(
    "size", [b"0x5", b"+5", b"0_5", b"-0", b" 5", b"5 5", b"", b"1" * 17, b"5\n", b"g", b"\xef\xbc\x95"]
)
def test_chunk_sizes_must_be_plain_hex(size: bytes) -> None:
    with pytest.raises(BadRequest):
        parse(HEAD + size + b"\r\nhello\r\n0\r\n\r\n")


def test_extensions_trailing_whitespace_and_trailers_are_accepted() -> None:
    raw = HEAD + b"5 ;a=b;c\r\nhello\r\n1\t\r\n!\r\n0\r\nx-trailer: 1\r\nother: 2\r\n\r\nignored"
    assert parse(raw) == b"hello!"


@pytest.mark.parametrize(
    "wire",
    [
        b"5\r\nhelloX\r\n0\r\n\r\n",  # no CRLF after the data
        b"5\r\nhello\n0\r\n\r\n",
        b"0\r\nno-colon\r\n\r\n",  # a trailer that is not a field
        b"0\r\n continued: x\r\n\r\n",
    ],
)
def test_bad_framing_is_400(wire: bytes) -> None:
    with pytest.raises(BadRequest):
        parse(HEAD + wire)


def test_caps_on_chunks_body_and_trailers_are_413() -> None:
    with pytest.raises(BodyTooLarge, match="more than 8 chunks"):
        parse(HEAD + b"1\r\nx\r\n" * 9 + b"0\r\n\r\n", max_chunks=8)
    assert parse(HEAD + b"1\r\nx\r\n" * 8 + b"0\r\n\r\n", max_chunks=8) == b"x" * 8
    with pytest.raises(BodyTooLarge, match="exceeds 10 bytes"):
        parse(HEAD + b"b\r\n" + b"x" * 11 + b"\r\n0\r\n\r\n", max_body_bytes=10)
    with pytest.raises(BodyTooLarge, match="trailers"):
        parse(HEAD + b"0\r\n" + b"x: " + b"y" * 70_000 + b"\r\n\r\n")
    with pytest.raises(BadRequest, match="chunk size line"):
        parse(HEAD + b"1;" + b"e" * 5000)


def test_an_incomplete_body_at_eof_is_400() -> None:
    parser = RequestParser()
    assert parser.feed(HEAD + b"5\r\nhel") is None
    with pytest.raises(BadRequest, match="ended before"):
        parser.feed_eof()


def test_eight_mebibytes_of_one_byte_chunks_cost_little_cpu() -> None:
    """The attack of #9, as a peer sends it on a tunnel stream (64 KiB deliveries)."""
    for wire in (b"1\r\nx\r\n" * ((8 << 20) // 6), b"1\r\nx\r\n" * (8 << 20)):
        raw = HEAD + wire + b"0\r\n\r\n"
        parser = RequestParser()
        started = time.process_time()
        with pytest.raises(BodyTooLarge, match=f"more than {MAX_REQUEST_CHUNKS} chunks"):
            for i in range(0, len(raw), 65536):
                parser.feed(raw[i : i + 65536])
        assert time.process_time() - started < 0.5
    # the largest body in the smallest chunks still allowed: 8 MiB in 128-byte chunks
    piece = b"80\r\n" + b"z" * 128 + b"\r\n"
    raw = HEAD + piece * MAX_REQUEST_CHUNKS + b"0\r\n\r\n"
    started = time.process_time()
    assert len(parse(raw, list(range(0, len(raw), 65536)))) == 128 * MAX_REQUEST_CHUNKS
    assert time.process_time() - started < 1.0


def test_reader_alone() -> None:
    reader = ChunkedBodyReader(max_body=100, max_chunks=10)
    into = bytearray()
    for byte in b"3\r\nabc\r\n2;x\r\nde\r\n0\r\n\r\n":
        reader.feed(bytes([byte]), into)
    assert reader.done and bytes(into) == b"abcde" and reader.chunks == 2
    with pytest.raises(ChunkedBodyError):
        ChunkedBodyReader().feed(b"zz\r\n", bytearray())
