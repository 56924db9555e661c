"""HTTP/1.1 inside tunnel streams: rendering, one-request parsing with limits, response reading."""

from __future__ import annotations

import json

import pytest

from meshd.httpwire import (
    MAX_BODY_BYTES,
    BadRequest,
    BodyTooLarge,
    EarlyEOF,
    HeadersTooLarge,
    RequestParser,
    ResponseHead,
    ResponseParser,
    is_context_overflow,
    render_request,
    reshape_upstream_error,
)


def test_render_request_sets_length_and_connection_close() -> None:
    raw = render_request(
        b"POST",
        b"/v1/chat/completions",
        [(b"Host", b"127.0.0.1:9337"), (b"Connection", b"keep-alive"), (b"Expect", b"100-continue"),
         (b"Content-Type", b"application/json"), (b"Transfer-Encoding", b"chunked")],
        b'{"model":"m"}',
    )  # fmt: skip
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
    assert b"host: 127.0.0.1:9337" in lines
    assert b"content-type: application/json" in lines
    assert b"content-length: 13" in lines
    assert b"connection: close" in lines
    assert not any(line.startswith((b"expect", b"transfer-encoding", b"connection: keep")) for line in lines)
    assert body == b'{"model":"m"}'


def test_parser_reads_one_request_fed_byte_by_byte() -> None:
    raw = render_request(b"POST", b"/v1/x", [(b"host", b"h")], b"hello")
    p = RequestParser()
    results = [p.feed(raw[i : i + 1]) for i in range(len(raw))]
    assert all(r is None for r in results[:-1])
    req = results[-1]
    assert req is not None
    assert (req.method, req.target, req.body) == (b"POST", b"/v1/x", b"hello")
    assert req.header(b"connection") == b"close"
    # pipelined bytes after the request are ignored
    assert p.feed(b"GET / HTTP/1.1\r\n\r\n") is req


def test_parser_decodes_chunked_bodies() -> None:
    raw = b"POST /v1/x HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    req = RequestParser().feed(raw)
    assert req is not None and req.body == b"hello"


def test_body_cap_is_checked_on_the_declared_length_before_buffering() -> None:
    head = f"POST / HTTP/1.1\r\nhost: h\r\ncontent-length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
    with pytest.raises(BodyTooLarge) as e:
        RequestParser().feed(head)
    assert e.value.status == 413


def test_chunked_body_cap() -> None:
    p = RequestParser(max_body_bytes=10)
    p.feed(b"POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n")
    with pytest.raises(BodyTooLarge):
        p.feed(b"b\r\nhello world\r\n")


def test_header_caps() -> None:
    big = b"POST / HTTP/1.1\r\nhost: h\r\nx-big: " + b"a" * (70 * 1024)
    with pytest.raises(HeadersTooLarge) as e:
        RequestParser().feed(big)
    assert e.value.status == 431
    many = b"GET / HTTP/1.1\r\nhost: h\r\n" + b"".join(b"x-%d: 1\r\n" % i for i in range(70)) + b"\r\n"
    with pytest.raises(HeadersTooLarge):
        RequestParser().feed(many)


@pytest.mark.parametrize("raw", [b"NOT HTTP\r\n\r\n", b"POST / HTTP/1.1\r\ncontent-length: x\r\n\r\n"])
def test_malformed_requests_are_400(raw: bytes) -> None:
    with pytest.raises(BadRequest) as e:
        RequestParser().feed(raw)
    assert e.value.status == 400


def test_truncated_request_at_eof() -> None:
    p = RequestParser()
    p.feed(b"POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 10\r\n\r\nabc")
    with pytest.raises(BadRequest, match="before a complete"):
        p.feed_eof()


def test_response_parser_streams_chunked_body() -> None:
    p = ResponseParser()
    out = p.feed(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    assert out == [
        ResponseHead(200, b"OK", ((b"content-type", b"text/event-stream"), (b"transfer-encoding", b"chunked")))
    ]
    assert p.feed(b"6\r\ndata: ") == [b"data: "]
    assert p.feed(b"\r\n2\r\nx\n\r\n") == [b"x\n"]
    assert p.feed(b"0\r\n\r\n") == [None]
    assert p.done


def test_response_eof_before_headers_allows_failover() -> None:
    p = ResponseParser()
    p.feed(b"HTTP/1.1 20")
    with pytest.raises(EarlyEOF) as e:
        p.feed_eof()
    assert e.value.before_headers
    p2 = ResponseParser()
    with pytest.raises(EarlyEOF) as e2:
        p2.feed_eof()
    assert e2.value.before_headers


def test_response_eof_mid_body_is_not_failover() -> None:
    p = ResponseParser()
    p.feed(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
    with pytest.raises(EarlyEOF) as e:
        p.feed_eof()
    assert not e.value.before_headers


def test_response_delimited_by_close() -> None:
    p = ResponseParser()
    assert p.feed(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nabc")[1:] == [b"abc"]
    assert p.feed_eof() == [None]


def test_garbage_response_fails_before_headers() -> None:
    with pytest.raises(EarlyEOF) as e:
        ResponseParser().feed(b"SSH-2.0-OpenSSH\r\n\r\n")
    assert e.value.before_headers


@pytest.mark.parametrize(
    ("status", "body", "type_", "code"),
    [
        (400, b'{"error":"bad thing"}', "invalid_request_error", "invalid_value"),
        (401, b"nope", "authentication_error", "invalid_api_key"),
        (403, b"", "permission_error", "insufficient_quota"),
        (404, b'{"error":{"message":"no model","code":404}}', "invalid_request_error", "model_not_found"),
        (429, b"slow down", "rate_limit_error", "rate_limit_exceeded"),
        (503, b'{"error":"llama backend unavailable"}', "server_error", "service_unavailable"),
        (500, b"kaboom", "server_error", "internal_server_error"),
        (
            400,
            b'{"error":{"code":400,"message":"too long","type":"exceed_context_size_error"}}',
            "invalid_request_error",
            "context_length_exceeded",
        ),
        (
            501,
            b'{"error":{"code":501,"message":"no images","type":"not_supported_error"}}',
            "invalid_request_error",
            "unsupported_model_feature",
        ),
    ],
)
def test_upstream_errors_reshaped(status: int, body: bytes, type_: str, code: str) -> None:
    err = json.loads(reshape_upstream_error(status, body))["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["type"], err["code"]) == (type_, code)
    assert err["message"]


def test_openai_shaped_error_kept() -> None:
    body = b'{"error":{"message":"m","type":"invalid_request_error","param":"x","code":"c"}}'
    assert json.loads(reshape_upstream_error(400, body)) == json.loads(body)


def test_oversize_error_body() -> None:
    err = json.loads(reshape_upstream_error(500, b"x", truncated=True))["error"]
    assert err["code"] == "upstream_error_too_large"


def test_context_overflow_detection() -> None:
    assert is_context_overflow(400, b"the prompt exceeds the context window")
    assert not is_context_overflow(400, b"invalid json")
    assert not is_context_overflow(500, b"context exceeded")


def test_chunked_scanner_finds_the_end_in_any_split() -> None:
    from meshd.httpwire import ChunkedScanner

    body = b"5\r\nhello\r\n10;ext=1\r\n" + b"x" * 16 + b"\r\n0\r\ntrailer: 1\r\n\r\n"
    for step in (1, 2, 3, 7, len(body)):
        scanner = ChunkedScanner()
        consumed = 0
        for i in range(0, len(body), step):
            piece = body[i : i + step]
            used = scanner.feed(piece)
            consumed += used
            if scanner.done:
                assert used <= len(piece)
                break
            assert used == len(piece)
        assert scanner.done and consumed == len(body)


def test_chunked_scanner_stops_at_the_end_and_tracks_boundaries() -> None:
    from meshd.httpwire import ChunkedScanner

    scanner = ChunkedScanner()
    assert scanner.at_boundary
    assert scanner.feed(b"3\r\nab") == 5
    assert not scanner.at_boundary
    assert scanner.feed(b"c\r\n") == 3
    assert scanner.at_boundary
    assert scanner.feed(b"0\r\n\r\nGARBAGE") == 5
    assert scanner.done


@pytest.mark.parametrize("bad", [b"zz\r\n", b"3\r\nabcX\r\n", b"-1\r\n", b"f" * 5000])
def test_chunked_scanner_rejects_bad_framing(bad: bytes) -> None:
    from meshd.httpwire import ChunkedScanner, UpstreamProtocolError

    with pytest.raises(UpstreamProtocolError):
        ChunkedScanner().feed(bad)
