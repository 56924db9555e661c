"""HTTP/1.1 as it travels inside TUNNEL_HTTP streams (pure, on h11; MESH_PROTOCOL.md §5.8, §6.5).

One request per stream. The client side renders a request with ``Connection: close`` and reads
the host's raw HTTP/1.1 response incrementally; the host side parses exactly one request within
the limits (64 KiB of headers, at most 64 header lines, 8 MiB of body) and renders it again for its
backend.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

import attrs
import h11

from meshd import jsonbound

MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_LINES = 64
MAX_BODY_BYTES = 8 * 1024 * 1024
#: Chunks in one chunked request body. h11 spends ~5 µs a chunk, so 8 MiB of 1-byte chunks cost a host
#: seconds of CPU; request bodies are read by :class:`ChunkedBodyReader` instead, and at most this many
#: chunks (an 8 MiB body then averages 128 bytes a chunk).
MAX_REQUEST_CHUNKS = 65_536
#: Error bodies from upstream are read up to this much before being re-shaped (§6.7).
MAX_ERROR_BODY_BYTES = 256 * 1024

#: Hop-by-hop headers never forwarded (RFC 9110 §7.6.1), plus the ones rewritten here.
_DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"content-length",
    }
)

Headers = Sequence[tuple[bytes, bytes]]


class HTTPWireError(Exception):
    """A request or response that cannot be relayed; ``status`` is the HTTP status to answer."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class HeadersTooLarge(HTTPWireError):
    status = 431
    code = "request_header_fields_too_large"


class BodyTooLarge(HTTPWireError):
    status = 413
    code = "request_too_large"


class BadRequest(HTTPWireError):
    status = 400
    code = "invalid_request"


class UpstreamProtocolError(HTTPWireError):
    """The host's response is not HTTP/1.1 we can relay."""

    status = 502
    code = "bad_upstream_response"


class EarlyEOF(UpstreamProtocolError):
    """The stream ended before a complete response (``before_headers`` decides failover)."""

    def __init__(self, message: str, before_headers: bool) -> None:
        super().__init__(message)
        self.before_headers = before_headers


@attrs.frozen
class ParsedRequest:
    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


def forwardable_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """End-to-end headers only (names lower-cased); hop-by-hop and framing headers dropped."""
    return [(k.lower(), v) for k, v in headers if k.lower() not in _DROP]


def render_request(
    method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]], body: bytes, host: bytes | None = None
) -> bytes:
    """One complete HTTP/1.1 request with ``Content-Length`` and ``Connection: close``."""
    out = [(k, v) for k, v in forwardable_headers(headers) if not (host is not None and k == b"host")]
    if host is not None:
        out.insert(0, (b"host", host))
    elif not any(k == b"host" for k, _ in out):
        out.insert(0, (b"host", b"localhost"))
    if body or method.upper() in (b"POST", b"PUT", b"PATCH"):
        out.append((b"content-length", str(len(body)).encode()))
    out.append((b"connection", b"close"))
    try:
        conn = h11.Connection(h11.CLIENT)
        parts = [conn.send(h11.Request(method=method, target=target, headers=out))]
        if body:
            parts.append(conn.send(h11.Data(data=body)))
        parts.append(conn.send(h11.EndOfMessage()))
    except h11.LocalProtocolError as e:
        raise BadRequest(f"cannot forward request: {e}") from None
    return b"".join(p for p in parts if p)


class RequestParser:
    """Reads exactly one HTTP/1.1 request from a byte stream (host side of TUNNEL_HTTP).

    h11 parses the request line and headers and a ``Content-Length`` body; a chunked body is decoded
    by :class:`ChunkedBodyReader` (linear time, at most ``max_chunks`` chunks).
    """

    def __init__(
        self,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_chunks: int = MAX_REQUEST_CHUNKS,
    ) -> None:
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self._max_body = max_body_bytes
        self._max_chunks = max_chunks
        self._head: h11.Request | None = None
        self._body = bytearray()
        self._chunked: ChunkedBodyReader | None = None
        self.request: ParsedRequest | None = None
        self._eof = False

    def feed(self, data: bytes) -> ParsedRequest | None:
        """Feed bytes; returns the request once complete (extra bytes after it are ignored)."""
        if self.request is not None:
            return self.request
        if not data:
            return None  # h11 takes b"" for the end of the stream: that is ``feed_eof``
        if self._chunked is not None:
            return self._feed_chunked(data)
        self._conn.receive_data(data)
        return self._drain()

    def feed_eof(self) -> ParsedRequest:
        if self.request is not None:
            return self.request
        self._eof = True
        if self._chunked is not None:
            raise BadRequest("stream ended before a complete HTTP request")
        self._conn.receive_data(b"")
        req = self._drain()
        if req is None:
            raise BadRequest("stream ended before a complete HTTP request")
        return req

    def _feed_chunked(self, data: bytes) -> ParsedRequest | None:
        assert self._chunked is not None
        try:
            self._chunked.feed(data, self._body)
        except ChunkedBodyError as e:
            if e.too_large:
                raise BodyTooLarge(e.message) from None
            raise BadRequest(f"malformed HTTP request: {e.message}") from None
        if self._chunked.done:
            return self._complete()
        return None

    def _complete(self) -> ParsedRequest:
        assert self._head is not None
        self.request = ParsedRequest(
            method=bytes(self._head.method),
            target=bytes(self._head.target),
            headers=tuple((bytes(k), bytes(v)) for k, v in self._head.headers),
            body=bytes(self._body),
        )
        return self.request

    def _drain(self) -> ParsedRequest | None:
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as e:
                if self._eof:
                    raise BadRequest("stream ended before a complete HTTP request") from None
                if e.error_status_hint == 431 or "exceeded" in str(e).lower():
                    raise HeadersTooLarge(f"request headers exceed {MAX_HEADER_BYTES} bytes") from None
                raise BadRequest(f"malformed HTTP request: {e}") from None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return None
            if isinstance(event, h11.Request):
                if len(event.headers) > MAX_HEADER_LINES:
                    raise HeadersTooLarge(f"more than {MAX_HEADER_LINES} header lines")
                length = _content_length(event.headers)
                if length is not None and length > self._max_body:
                    raise BodyTooLarge(f"request body of {length} bytes exceeds {self._max_body}")
                self._head = event
                if any(k == b"transfer-encoding" for k, _ in event.headers):
                    # h11 accepts only "chunked" here; the body is ours to decode from now on.
                    self._chunked = ChunkedBodyReader(self._max_body, self._max_chunks)
                    rest, _closed = self._conn.trailing_data
                    return self._feed_chunked(bytes(rest)) if rest else None
            elif isinstance(event, h11.Data):
                if len(self._body) + len(event.data) > self._max_body:
                    raise BodyTooLarge(f"request body exceeds {self._max_body} bytes")
                self._body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return self._complete()
            elif isinstance(event, h11.ConnectionClosed):
                raise BadRequest("stream ended before a complete HTTP request")


class ChunkedBodyError(Exception):
    def __init__(self, message: str, too_large: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.too_large = too_large


#: One chunk-size line (RFC 9112 §7.1): strict size, optional extensions, CRLF.
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r\n")


class ChunkedBodyReader:
    """Decodes a chunked request body in time linear in its bytes, whatever the chunk sizes.

    ``feed(data, into)`` appends the decoded bytes to ``into``; ``done`` turns True after the last
    chunk and the trailer section (whose fields are dropped). At most ``max_body`` decoded bytes and
    ``max_chunks`` chunks; a chunk-size line and the trailers are bounded too. Malformed framing
    (a size that is not 1*HEXDIG, a chunk not followed by CRLF) raises :class:`ChunkedBodyError`.
    """

    _MAX_LINE = 4096
    _MAX_TRAILERS = MAX_HEADER_BYTES

    def __init__(self, max_body: int = MAX_BODY_BYTES, max_chunks: int = MAX_REQUEST_CHUNKS) -> None:
        self.max_body = max_body
        self.max_chunks = max_chunks
        self.chunks = 0
        self.body_bytes = 0
        self.done = False
        self._state = "size"  # size | data | data_crlf | trailer | done
        self._remaining = 0
        self._rest = b""
        self._trailer_bytes = 0

    def feed(self, data: bytes, into: bytearray) -> None:
        if self.done:
            return
        buf = self._rest + data if self._rest else data
        self._rest = b""
        pos, end = 0, len(buf)
        while pos < end and not self.done:
            state = self._state
            if state == "data":
                take = min(self._remaining, end - pos)
                into += buf[pos : pos + take]
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = "data_crlf"
            elif state == "data_crlf":
                if end - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise ChunkedBodyError("chunk data not followed by CRLF")
                pos += 2
                self._state = "size"
            elif state == "size":
                pos = self._sizes(buf, pos, end, into)
                if self._state == "size":
                    break  # an incomplete chunk-size line waits for more bytes
            else:  # trailer section: field lines up to an empty line, bounded, then dropped
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    if self._trailer_bytes + end - pos > self._MAX_TRAILERS:
                        raise ChunkedBodyError("trailers too large", too_large=True)
                    break
                self._trailer_bytes += nl - pos + 2
                if self._trailer_bytes > self._MAX_TRAILERS:
                    raise ChunkedBodyError("trailers too large", too_large=True)
                line = buf[pos:nl]
                pos = nl + 2
                if not line:
                    self._state = "done"
                    self.done = True
                elif b":" not in line or line[:1] in b" \t":
                    raise ChunkedBodyError("malformed trailer field")
        if not self.done:
            self._rest = bytes(buf[pos:])

    def _sizes(self, buf: bytes, pos: int, end: int, into: bytearray) -> int:
        """From a chunk-size line on: whole chunks in a tight loop, then the state for a partial one.
        Returns the position reached (``end`` or the start of an incomplete line)."""
        match_line = _CHUNK_LINE.match
        while True:
            match = match_line(buf, pos)
            if match is None:
                if buf.find(b"\n", pos, pos + self._MAX_LINE) >= 0 or end - pos > self._MAX_LINE:
                    raise ChunkedBodyError(f"bad chunk size line {bytes(buf[pos : pos + 20])!r}")
                return pos  # the line is not complete yet
            size = int(match.group(1), 16)
            pos = match.end()
            if size == 0:
                self._state = "trailer"
                return pos
            self.chunks += 1
            self.body_bytes += size
            if self.chunks > self.max_chunks:
                raise ChunkedBodyError(f"more than {self.max_chunks} chunks in the request body", too_large=True)
            if self.body_bytes > self.max_body:
                raise ChunkedBodyError(f"request body exceeds {self.max_body} bytes", too_large=True)
            stop = pos + size
            if stop + 2 > end:  # the chunk (or its CRLF) continues in a later feed
                self._remaining = size
                self._state = "data"
                return pos
            if not buf.startswith(b"\r\n", stop):
                raise ChunkedBodyError("chunk data not followed by CRLF")
            into += buf[pos:stop]
            pos = stop + 2


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for k, v in headers:
        if k == b"content-length":
            return int(v)
    return None


@attrs.frozen
class ResponseHead:
    status: int
    reason: bytes
    headers: tuple[tuple[bytes, bytes], ...]

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


class ResponseParser:
    """Reads the host's HTTP/1.1 response incrementally (client side of TUNNEL_HTTP).

    ``feed`` returns what became available: at most one ``ResponseHead`` first, then body chunks
    (de-chunked), then ``None`` marks the end of the message.
    """

    def __init__(self, request_method: bytes = b"POST", max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_header_bytes)
        # h11 must know what was asked (a HEAD response has no body).
        self._conn.send(h11.Request(method=request_method, target=b"/", headers=[(b"host", b"mesh")]))
        self._conn.send(h11.EndOfMessage())
        self.head: ResponseHead | None = None
        self.done = False
        self._eof = False

    def feed(self, data: bytes) -> list[ResponseHead | bytes | None]:
        if not data:
            return []  # h11 takes b"" for the end of the stream: that is ``feed_eof``
        self._conn.receive_data(data)
        return self._drain()

    def feed_eof(self) -> list[ResponseHead | bytes | None]:
        if self.done:
            return []
        self._eof = True
        self._conn.receive_data(b"")
        out = self._drain()
        if not self.done:
            raise self._early_eof()
        return out

    def _early_eof(self) -> EarlyEOF:
        if self.head is None:
            return EarlyEOF("host closed the tunnel before sending response headers", before_headers=True)
        return EarlyEOF("host closed the tunnel before a complete response", before_headers=False)

    def _drain(self) -> list[ResponseHead | bytes | None]:
        out: list[ResponseHead | bytes | None] = []
        while not self.done:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as e:
                if self._eof:
                    raise self._early_eof() from None
                if self.head is None:
                    raise EarlyEOF(f"bad response from host: {e}", before_headers=True) from None
                raise UpstreamProtocolError(f"bad response body from host: {e}") from None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                self.head = ResponseHead(
                    status=event.status_code,
                    reason=bytes(event.reason),
                    headers=tuple((bytes(k), bytes(v)) for k, v in event.headers),
                )
                out.append(self.head)
            elif isinstance(event, h11.Data):
                out.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self.done = True
                out.append(None)
            elif isinstance(event, h11.ConnectionClosed):
                break
        return out


# -- error bodies (§6.7) ---------------------------------------------------------------------------

_STATUS_TYPES: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_value"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "insufficient_quota"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    503: ("server_error", "service_unavailable"),
}


def openai_error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


def reshape_upstream_error(status: int, body: bytes, truncated: bool = False) -> bytes:
    """An upstream error body in OpenAI's envelope (kept when it already is one)."""
    if truncated:
        return openai_error_body(
            "upstream error response exceeded proxy limit", "server_error", "upstream_error_too_large"
        )
    upstream_type: str | None = None
    message: str | None = None
    try:
        parsed = jsonbound.loads(body, max_bytes=max(len(body), 1))
    except jsonbound.BadJSON:
        parsed = None
    if isinstance(parsed, dict):
        err = parsed.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str) and "type" in err:
            full = {
                "message": err["message"],
                "type": err.get("type"),
                "param": err.get("param"),
                "code": err.get("code"),
            }
            if status == 400 and err.get("type") == "exceed_context_size_error":
                full["type"], full["code"] = "invalid_request_error", "context_length_exceeded"
            elif status == 501 and err.get("type") == "not_supported_error":
                full["type"], full["code"] = "invalid_request_error", "unsupported_model_feature"
            return json.dumps({"error": full}).encode()
        if isinstance(err, dict):
            upstream_type = err.get("type") if isinstance(err.get("type"), str) else None
            message = err.get("message") if isinstance(err.get("message"), str) else None
        elif isinstance(err, str):
            message = err
        elif isinstance(parsed.get("message"), str):
            message = parsed["message"]
    if message is None:
        text = body.decode("utf-8", "replace").strip()
        message = text or f"upstream returned HTTP {status}"
    if status == 400 and upstream_type == "exceed_context_size_error":
        type_, code = "invalid_request_error", "context_length_exceeded"
    elif status == 501 and upstream_type == "not_supported_error":
        type_, code = "invalid_request_error", "unsupported_model_feature"
    else:
        type_, code = _STATUS_TYPES.get(status, ("server_error", "internal_server_error"))
    return openai_error_body(message, type_, code)


_CONTEXT_WORDS = (b"context", b"token", b"ctx", b"prompt", b"slot", b"window")
_OVERFLOW_WORDS = (b"exceed", b"overflow", b"too long", b"limit", b"maximum")


def is_context_overflow(status: int, body_prefix: bytes) -> bool:
    """A 400 that another host with a larger context might accept (§6.7 retry rule)."""
    if status != 400:
        return False
    text = body_prefix[:4096].lower()
    return any(w in text for w in _CONTEXT_WORDS) and any(w in text for w in _OVERFLOW_WORDS)


#: A chunk size is 1*HEXDIG (RFC 9112 §7.1): no sign, prefix, underscore or space; 16 digits at most.
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")


class ChunkedScanner:
    """Finds the end of a chunked body without decoding it, so the bytes can be relayed as they are.

    ``feed(data)`` returns how many bytes of ``data`` belong to the body (all of them until the end is
    reached); ``done`` turns True after the last chunk and its trailers. ``at_boundary`` is True between
    chunks, where a relay may end the body with chunks of its own. Malformed framing raises
    ``UpstreamProtocolError``.
    """

    _MAX_LINE = 4096  # a chunk-size line, or one trailer line
    _MAX_TRAILERS = MAX_HEADER_BYTES

    def __init__(self) -> None:
        self._state = "size"  # size | data | data_crlf | trailer | done
        self._remaining = 0
        self._line = b""
        self._trailer_bytes = 0
        self.done = False

    @property
    def at_boundary(self) -> bool:
        return self._state == "size" and not self._line

    def feed(self, data: bytes) -> int:
        pos = 0
        n = len(data)
        while pos < n and not self.done:
            if self._state == "data":
                take = min(self._remaining, n - pos)
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = "data_crlf"
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                self._line += data[pos:]
                if len(self._line) > self._MAX_LINE:
                    raise UpstreamProtocolError("chunked framing: line too long")
                return n
            line = self._line + data[pos:end]
            self._line = b""
            pos = end + 1
            if len(line) > self._MAX_LINE:
                raise UpstreamProtocolError("chunked framing: line too long")
            line = line[:-1] if line.endswith(b"\r") else line
            if self._state == "data_crlf":
                if line:
                    raise UpstreamProtocolError("chunked framing: no CRLF after chunk data")
                self._state = "size"
            elif self._state == "size":
                size_text = line.split(b";", 1)[0].rstrip(b" \t")
                if not _CHUNK_SIZE.fullmatch(size_text):
                    raise UpstreamProtocolError(f"chunked framing: bad chunk size {size_text[:20]!r}")
                size = int(size_text, 16)
                if size == 0:
                    self._state = "trailer"
                else:
                    self._remaining = size
                    self._state = "data"
            else:  # trailer
                self._trailer_bytes += len(line)
                if self._trailer_bytes > self._MAX_TRAILERS:
                    raise UpstreamProtocolError("chunked framing: trailers too large")
                if not line:
                    self._state = "done"
                    self.done = True
        return pos


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


LAST_CHUNK = b"0\r\n\r\n"


_HEAD_END = re.compile(rb"\r?\n\r?\n")


class ResponseFramer:
    """Follows a backend's raw HTTP/1.1 response to find where it ends, without re-framing it.

    ``feed(data)`` returns the bytes to relay: the final response exactly as the backend wrote it, with
    informational (1xx) responses before it cut out (they are hop-by-hop, and a peer reading the tunnel
    may take the first head it sees for the answer) and anything after the end dropped. ``done`` turns
    True at the last byte of the body (Content-Length, chunked framing, or no body), so a host frees its
    backend slot and finishes the tunnel then, not when the backend gets round to closing. A body framed
    by the connection's end (``until_close``) completes at ``feed_eof``. Malformed heads and framing
    raise ``UpstreamProtocolError``.
    """

    def __init__(self, request_method: bytes = b"POST", max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self._method = request_method.upper()
        self._max_header = max_header_bytes
        self._buf = b""
        self.head: ResponseHead | None = None
        self.framing: str | None = None  # length | chunked | until_close | none
        self._remaining = 0
        self._scanner: ChunkedScanner | None = None
        self.done = False

    @property
    def until_close(self) -> bool:
        return self.framing == "until_close"

    def feed(self, data: bytes) -> bytes:
        if self.done or not data:
            return b""
        if self.head is None:
            return self._feed_head(data)
        return self._feed_body(data)

    def feed_eof(self) -> None:
        """The backend closed: fine for a body framed by the close, an error anywhere else."""
        if self.done:
            return
        if self.head is not None and self.until_close:
            self.done = True
            return
        where = "before a complete response head" if self.head is None else "before the end of the body"
        raise UpstreamProtocolError(f"backend closed the connection {where}")

    def _feed_head(self, data: bytes) -> bytes:
        self._buf += data
        out = b""
        while self.head is None:
            m = _HEAD_END.search(self._buf)
            if m is None:
                if len(self._buf) > self._max_header:
                    raise UpstreamProtocolError(f"backend response head exceeds {self._max_header} bytes")
                return out
            head_bytes, rest = self._buf[: m.end()], self._buf[m.end() :]
            if len(head_bytes) > self._max_header:
                raise UpstreamProtocolError(f"backend response head exceeds {self._max_header} bytes")
            self._buf = rest
            status, reason, headers = _parse_response_head(head_bytes, self._method)
            if 100 <= status < 200:
                if status == 101:
                    raise UpstreamProtocolError("backend switched protocols; not relayable")
                continue  # informational: dropped, the real head follows
            self.head = ResponseHead(status=status, reason=reason, headers=headers)
            self.framing, self._remaining = _body_framing(status, headers, self._method)
            out = head_bytes
            if self.framing == "none" or (self.framing == "length" and self._remaining == 0):
                self.done = True
                self._buf = b""
                return out
            if self.framing == "chunked":
                self._scanner = ChunkedScanner()
        rest, self._buf = self._buf, b""
        return out + self._feed_body(rest) if rest else out

    def _feed_body(self, data: bytes) -> bytes:
        if self.framing == "until_close":
            return data
        if self.framing == "length":
            take = data[: self._remaining]
            self._remaining -= len(take)
            if self._remaining == 0:
                self.done = True
            return take
        assert self._scanner is not None
        used = self._scanner.feed(data)
        if self._scanner.done:
            self.done = True
        return data if used == len(data) else data[:used]


def _parse_response_head(head: bytes, method: bytes) -> tuple[int, bytes, tuple[tuple[bytes, bytes], ...]]:
    """Status, reason and headers of one response head (h11 checks the syntax)."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=len(head) + 1)
    conn.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"backend")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(head)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as e:
        raise UpstreamProtocolError(f"bad response head from backend: {e}") from None
    if not isinstance(event, h11.InformationalResponse | h11.Response):
        raise UpstreamProtocolError("bad response head from backend")
    headers = tuple((bytes(k), bytes(v)) for k, v in event.headers)
    if len(headers) > MAX_HEADER_LINES * 2:
        raise UpstreamProtocolError("backend response has too many header lines")
    return event.status_code, bytes(event.reason), headers


def _body_framing(status: int, headers: tuple[tuple[bytes, bytes], ...], method: bytes) -> tuple[str, int]:
    """How a response's body ends (RFC 9112 §6.3): (framing, Content-Length when framed by length)."""
    if method == b"HEAD" or status in (204, 304) or 100 <= status < 200:
        return "none", 0
    codings = [v for k, v in headers if k == b"transfer-encoding"]
    if codings:
        last = b",".join(codings).split(b",")[-1].strip().lower()
        return ("chunked", 0) if last == b"chunked" else ("until_close", 0)
    lengths = {v.strip() for k, v in headers if k == b"content-length"}
    if lengths:
        if len(lengths) != 1 or not next(iter(lengths)).isdigit():
            raise UpstreamProtocolError("backend response has an invalid Content-Length")
        return "length", int(next(iter(lengths)))
    return "until_close", 0
