"""Both halves of the tunnel deliver exactly the bytes sent, however the writes are split.

The host relays its backend's bytes as they arrive and the client reads them as they arrive, so a response
can reach either side in any segmentation: head and body apart (Python's ``http.server``), one byte per
write, or everything in one piece. These tests split real HTTP/1.1 responses and requests at random points.
"""

from __future__ import annotations

import itertools
from typing import Any

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.python.failure import Failure

from meshd.httpwire import (
    ChunkedScanner,
    RequestParser,
    ResponseFramer,
    ResponseHead,
    UpstreamProtocolError,
    render_request,
)
from meshd.tunnel.client import Upstream


class FakeStream:
    def __init__(self) -> None:
        self.resets: list[int] = []

    def reset(self, code: int = 0) -> None:
        self.resets.append(code)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def deliver(upstream: Upstream, pieces: list[bytes], eof: bool) -> None:
    for piece in pieces:
        upstream.dataReceived(piece)
    if eof:
        upstream.eofReceived()


def run_upstream(raw: bytes, cuts: list[int], *, raw_chunked: bool, eof: bool) -> tuple[ResponseHead, bytes]:
    upstream = Upstream(FakeStream(), b"POST", raw_chunked=raw_chunked)  # type: ignore[arg-type]
    got: list[bytes] = []
    heads: list[ResponseHead] = []
    errors: list[Failure] = []
    upstream.head.addCallbacks(heads.append, errors.append)
    upstream.head.addCallback(lambda _: upstream.start_sink(got.append))
    done: list[Any] = []
    upstream.done.addCallbacks(done.append, errors.append)
    deliver(upstream, split(raw, cuts), eof)
    assert not errors, errors[0].getTraceback()
    assert heads and done == [None]
    return heads[0], b"".join(got)


def test_head_and_body_in_separate_deliveries() -> None:
    """The reproduction of the lost responses: a backend writes its head, then its body."""
    body = b'{"id":"x","object":"chat.completion"}'
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
    for raw_chunked in (True, False):
        upstream = Upstream(FakeStream(), b"POST", raw_chunked=raw_chunked)  # type: ignore[arg-type]
        got: list[bytes] = []
        upstream.head.addCallback(lambda _, u=upstream, g=got: u.start_sink(g.append))
        upstream.dataReceived(head)
        assert upstream.head.called and not upstream.finished
        upstream.dataReceived(body)
        assert upstream.finished and b"".join(got) == body


# -- random messages, random cuts ----------------------------------------------------------------------------

payloads = st.binary(min_size=0, max_size=3000)
cut_lists = st.lists(st.integers(min_value=0, max_value=10_000), max_size=40)
chunk_sizes = st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=12)
trailers = st.lists(
    st.tuples(st.sampled_from([b"x-trailer", b"x-usage", b"grpc-status"]), st.binary(min_size=0, max_size=20)).map(
        lambda kv: (kv[0], bytes(b for b in kv[1] if 0x21 <= b <= 0x7E))
    ),
    max_size=3,
)


def chunked_wire(payload: bytes, sizes: list[int], trailer: list[tuple[bytes, bytes]], ext: bool) -> bytes:
    out = []
    pos = 0
    i = 0
    while pos < len(payload):
        size = sizes[i % len(sizes)]
        piece = payload[pos : pos + size]
        pos += len(piece)
        i += 1
        out.append(b"%x%s\r\n%s\r\n" % (len(piece), b";ext=1" if ext and i % 2 else b"", piece))
    out.append(b"0\r\n")
    out.extend(b"%s: %s\r\n" % kv for kv in trailer)
    out.append(b"\r\n")
    return b"".join(out)


@st.composite
def responses(draw: Any) -> tuple[bytes, bytes, bytes, str]:
    """(raw response, body as decoded, body as on the wire, framing)."""
    payload = draw(payloads)
    framing = draw(st.sampled_from(["length", "chunked", "close10", "close11"]))
    status = draw(st.sampled_from([200, 201, 200, 200]))
    informational = draw(st.booleans())
    pre = b"HTTP/1.1 100 Continue\r\n\r\n" if informational and framing != "close10" else b""
    if framing == "length":
        head = b"HTTP/1.1 %d OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % (
            status,
            len(payload),
        )
        wire = payload
    elif framing == "chunked":
        wire = chunked_wire(payload, draw(chunk_sizes), draw(trailers), draw(st.booleans()))
        head = b"HTTP/1.1 %d OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" % status
    elif framing == "close10":
        head = b"HTTP/1.0 %d OK\r\ncontent-type: application/json\r\n\r\n" % status
        wire = payload
    else:
        head = b"HTTP/1.1 %d OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n" % status
        wire = payload
    return pre + head + wire, payload, wire, framing


@settings(max_examples=300, deadline=None)
@given(responses(), cut_lists, st.booleans())
def test_client_half_delivers_exact_bytes_for_any_segmentation(
    response: tuple[bytes, bytes, bytes, str], cuts: list[int], raw_chunked: bool
) -> None:
    raw, payload, wire, framing = response
    head, got = run_upstream(raw, cuts, raw_chunked=raw_chunked, eof=True)
    assert head.status in (200, 201)
    if raw_chunked and framing == "chunked":
        assert got == wire  # relayed as the host sent it, chunk framing and trailers included
    else:
        assert got == payload


@settings(max_examples=200, deadline=None)
@given(responses(), cut_lists)
def test_client_half_finishes_without_eof_when_the_length_is_known(
    response: tuple[bytes, bytes, bytes, str], cuts: list[int]
) -> None:
    """A framed response is complete at its last byte: no need to wait for the host's FIN."""
    raw, payload, wire, framing = response
    if framing.startswith("close"):
        return
    for raw_chunked in (True, False):
        _, got = run_upstream(raw, cuts, raw_chunked=raw_chunked, eof=False)
        assert got == (wire if raw_chunked and framing == "chunked" else payload)


@settings(max_examples=200, deadline=None)
@given(payloads, st.booleans(), chunk_sizes, trailers, cut_lists)
def test_host_half_parses_one_request_for_any_segmentation(
    body: bytes, chunked: bool, sizes: list[int], trailer: list[tuple[bytes, bytes]], cuts: list[int]
) -> None:
    if chunked:
        raw = b"POST /v1/chat/completions HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n" + chunked_wire(
            body, sizes, trailer, ext=False
        )
    else:
        raw = render_request(b"POST", b"/v1/chat/completions", [(b"host", b"h")], body)
    parser = RequestParser()
    results = [parser.feed(piece) for piece in split(raw, cuts)]
    request = results[-1]
    assert request is not None and all(r is None for r in results[:-1])
    assert request.body == body and request.target == b"/v1/chat/completions"


@settings(max_examples=300, deadline=None)
@given(payloads, chunk_sizes, trailers, st.booleans(), st.binary(max_size=50), cut_lists)
def test_chunk_scanner_finds_the_exact_end_for_any_segmentation(
    payload: bytes, sizes: list[int], trailer: list[tuple[bytes, bytes]], ext: bool, after: bytes, cuts: list[int]
) -> None:
    wire = chunked_wire(payload, sizes, trailer, ext)
    scanner = ChunkedScanner()
    used = 0
    for piece in split(wire + after, cuts):
        if scanner.done:
            break
        used += scanner.feed(piece)
    assert scanner.done and used == len(wire)
    # and h11, an independent parser, agrees on the payload
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "h")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + wire)
    data = b""
    while True:
        ev = conn.next_event()
        if isinstance(ev, h11.Data):
            data += ev.data
        elif isinstance(ev, h11.EndOfMessage):
            break
    assert data == payload


@settings(max_examples=300, deadline=None)
@given(responses(), cut_lists, st.binary(max_size=40))
def test_host_framer_relays_the_final_response_exactly_and_knows_its_end(
    response: tuple[bytes, bytes, bytes, str], cuts: list[int], after: bytes
) -> None:
    raw, _payload, wire, framing = response
    final = raw[raw.index(b"HTTP/1.", 1) :] if raw.startswith(b"HTTP/1.1 100") else raw  # 1xx cut out
    framed = not framing.startswith("close")
    framer = ResponseFramer(b"POST")
    out = b""
    for piece in split(raw + (after if framed else b""), cuts):
        out += framer.feed(piece)
    if framed:
        assert framer.done  # known complete without waiting for the backend to close
    else:
        assert not framer.done
        framer.feed_eof()
        assert framer.done
    assert out == final and out.endswith(wire)


def test_host_framer_rejects_truncation_and_bad_heads() -> None:
    framer = ResponseFramer()
    framer.feed(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
    with pytest.raises(UpstreamProtocolError):
        framer.feed_eof()
    with pytest.raises(UpstreamProtocolError):
        ResponseFramer().feed(b"NOT HTTP\r\n\r\n")
    with pytest.raises(UpstreamProtocolError):
        ResponseFramer().feed(b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n")
    with pytest.raises(UpstreamProtocolError):
        ResponseFramer().feed(b"HTTP/1.1 200 OK\r\n" + b"x: " + b"a" * 70_000)
    head_only = ResponseFramer(b"HEAD")
    assert head_only.feed(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n") and head_only.done


@pytest.mark.parametrize("size", [b"0x5", b"+5", b"0_5", b"-0", b" 5", b"5 5", b"", b"1" * 17])
def test_chunk_sizes_must_be_plain_hex(size: bytes) -> None:
    with pytest.raises(UpstreamProtocolError):
        ChunkedScanner().feed(size + b"\r\nhello\r\n0\r\n\r\n")
