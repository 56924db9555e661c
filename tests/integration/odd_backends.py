"""OpenAI-shaped backends that write HTTP/1.1 in every way real servers do, for the no-loss matrix.

Run one as a process: ``python -m tests.integration.odd_backends STYLE PORT MODEL [DELAY] [THINK]`` (DELAY:
seconds between the events of a streamed answer; THINK, ``stdlib`` only: seconds before a plain answer; both 0 by
default). Every style answers the
same requests with the same bytes (deterministic ids, timestamps and contents), so a response that came
through the mesh can be compared byte for byte with one fetched directly. Styles:

``stdlib``     Python's ``http.server.ThreadingHTTPServer`` (HTTP/1.1): headers and body in separate writes;
               ``GET /debug/headers`` lists the headers of every request it was sent
``asgi``       uvicorn serving a Starlette app (a real ASGI server)
``bytewise``   one byte per write, with a yield to the event loop between writes
``chunked``    every body chunked (odd chunk sizes, chunk extensions), no trailers
``trailers``   every body chunked, with trailer fields after the last chunk
``close``      no length: ``Connection: close`` and the body ends when the connection does
``http10``     an HTTP/1.0 response (no length, ends at close)
``continue``   a ``100 Continue`` before every final response
``early``      answers from the head alone, never reading the body (always a plain answer), then closes
``midclose``   closes the connection in the middle of every body

``early`` and ``midclose`` are odd only for POST: ``GET /v1/models`` is answered normally, so a host
takes them into its mesh. Style ``raw`` serves every style of ``RAW_STYLES`` at once, each as its own model
``odd-<style>`` (MODEL is then ignored).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STYLES = ("stdlib", "asgi", "bytewise", "chunked", "trailers", "close", "http10", "continue", "early", "midclose")
#: Styles one raw server can play at once (``raw``: the style is the model's ``odd-<style>``), plus ``slow``:
#: plain framing with 0.2 s between streamed events.
RAW_STYLES = ("bytewise", "chunked", "trailers", "close", "http10", "continue", "slow")
CREATED = 1_700_000_000


# -- the same answers for every style -------------------------------------------------------------------


def models_body(model: str) -> bytes:
    return json.dumps({"object": "list", "data": [{"id": model, "object": "model", "owned_by": "odd"}]}).encode()


def prompt_of(request: Any) -> str:
    if not isinstance(request, dict):
        return ""
    if isinstance(request.get("input"), str | list):
        return json.dumps(request["input"])[:200]
    messages = request.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return str(messages[-1].get("content", ""))[:200]
    return ""


def words_for(request: Any) -> list[str]:
    prompt = prompt_of(request)
    return ["echo", *prompt.split()[:20], "end"]


def chat_body(model: str, request: Any) -> bytes:
    words = words_for(request)
    return json.dumps(
        {
            "id": "chatcmpl-odd",
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": " ".join(words)}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": len(words), "total_tokens": 3 + len(words)},
        }
    ).encode()


def sse_events(model: str, request: Any) -> list[bytes]:
    events = []
    words = words_for(request)
    for i, word in enumerate(words):
        chunk = {
            "id": "chatcmpl-odd",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": [{"index": 0, "delta": {"content": word + ("" if i == len(words) - 1 else " ")}}],
        }
        events.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    final = {
        "id": "chatcmpl-odd",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    }
    events.append(b"data: " + json.dumps(final).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def embeddings_body(model: str, request: Any) -> bytes:
    seed = len(prompt_of(request))
    vector = [round((seed + i) / 97.0, 6) for i in range(16)]
    return json.dumps(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": vector}],
            "model": model,
            "usage": {"prompt_tokens": 2, "total_tokens": 2},
        }
    ).encode()


def answer(model: str, method: str, path: str, body: bytes) -> tuple[int, str, list[bytes]]:
    """(status, content type, body parts): SSE answers come as one part per event."""
    if method == "GET" and path.rstrip("/") in ("/v1/models", "/models"):
        return 200, "application/json", [models_body(model)]
    try:
        request = json.loads(body) if body else {}
    except ValueError:
        return 400, "application/json", [b'{"error":{"message":"bad json","type":"invalid_request_error"}}']
    if path == "/v1/embeddings":
        return 200, "application/json", [embeddings_body(model, request)]
    if path == "/v1/chat/completions":
        if isinstance(request, dict) and request.get("stream") is True:
            return 200, "text/event-stream", sse_events(model, request)
        return 200, "application/json", [chat_body(model, request)]
    return 404, "application/json", [b'{"error":{"message":"no such route","type":"invalid_request_error"}}']


# -- stdlib: http.server, head and body in separate writes -------------------------------------------


def run_stdlib(port: int, model: str, delay: float = 0.0, think: float = 0.0) -> None:
    seen: list[dict[str, str]] = []  # headers of every request but GET /debug/headers, newest last (bounded)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _serve(self, method: str) -> None:
            n = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(n) if n else b""
            if self.path == "/debug/headers":  # what the test asks: every header this backend was sent
                data = json.dumps(seen).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            seen.append({k.lower(): v for k, v in self.headers.items()})
            del seen[:-1000]
            status, ctype, parts = answer(model, method, self.path, body)
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            if ctype == "text/event-stream":
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.flush()  # the head leaves on its own
                for part in parts:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.flush()
                    if delay:
                        time.sleep(delay)
                self.wfile.write(b"0\r\n\r\n")
            else:
                if think and method == "POST":
                    time.sleep(think)  # a slow backend thinks before it answers
                self.send_header("Content-Length", str(sum(map(len, parts))))
                self.end_headers()
                self.wfile.flush()  # the head leaves on its own, then the body
                self.wfile.write(b"".join(parts))

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


# -- asgi: uvicorn + starlette ---------------------------------------------------------------------------


def run_asgi(port: int, model: str) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    async def endpoint(request: Request) -> Response:
        body = await request.body()
        status, ctype, parts = answer(model, request.method, request.url.path, body)
        if ctype == "text/event-stream":

            async def gen() -> Any:
                for part in parts:
                    yield part

            return StreamingResponse(gen(), status_code=status, media_type=ctype)
        return Response(b"".join(parts), status_code=status, media_type=ctype)

    app = Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")


# -- the raw styles: asyncio streams, every write under control ---------------------------------------------


def frame(style: str, status: int, ctype: str, parts: list[bytes]) -> Iterator[bytes]:
    """The response bytes of ``style`` as the writes that carry them."""
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Status")
    body = b"".join(parts)
    if style == "http10":
        yield b"HTTP/1.0 %d %s\r\nContent-Type: %s\r\n\r\n" % (status, reason.encode(), ctype.encode())
        yield from parts
        return
    head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\n" % (status, reason.encode(), ctype.encode())
    if style == "continue":
        yield b"HTTP/1.1 100 Continue\r\n\r\n"
    if style in ("chunked", "trailers"):
        yield head + b"Transfer-Encoding: chunked\r\n" + (b"Trailer: x-odd-sum\r\n" if style == "trailers" else b"")
        yield b"\r\n"
        for i, part in enumerate(parts):
            # odd chunk sizes, a chunk extension now and then, the boundaries not those of the events
            for j in range(0, len(part), 7 + 13 * (i % 3)):
                piece = part[j : j + 7 + 13 * (i % 3)]
                yield b"%x%s\r\n%s\r\n" % (len(piece), b";odd=1" if (i + j) % 2 else b"", piece)
        yield b"0\r\n" + (b"x-odd-sum: %d\r\n" % len(body) if style == "trailers" else b"") + b"\r\n"
        return
    if style == "close":
        yield head + b"Connection: close\r\n\r\n"
        yield from parts
        return
    if style == "midclose":
        yield head + b"Content-Length: %d\r\n\r\n" % len(body)
        yield body[: len(body) // 2]
        return  # and the connection closes
    yield head + b"Content-Length: %d\r\n\r\n" % len(body)
    yield from parts


async def read_head(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]] | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    lines = raw.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return method, path, headers


def run_raw(style: str, port: int, model: str, delay: float = 0.0) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await read_head(reader)
            if head is None:
                return
            method, path, headers = head
            n = int(headers.get("content-length") or 0)
            if style == "raw":
                await serve_raw_multi(reader, writer, method, path, n)
                return
            odd = style if method == "POST" or style not in ("early", "midclose") else "plain"
            if odd == "early":
                body = b"{}"  # answers from the head alone: the body is never read (a plain answer, no stream)
            else:
                body = await reader.readexactly(n) if n else b""
            status, ctype, parts = answer(model, method, path, body)
            for piece in frame(odd, status, ctype, parts):
                if delay and ctype == "text/event-stream":
                    await asyncio.sleep(delay)
                if style == "bytewise":
                    for i in range(len(piece)):
                        writer.write(piece[i : i + 1])
                        await writer.drain()
                        await asyncio.sleep(0)
                else:
                    writer.write(piece)
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def serve_raw_multi(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str, path: str, n: int
    ) -> None:
        body = await reader.readexactly(n) if n else b""
        if method == "GET":
            listed = {"object": "list", "data": [{"id": f"odd-{s}", "object": "model"} for s in RAW_STYLES]}
            data = json.dumps(listed).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data)
            )
            await writer.drain()
            return
        try:
            chosen = str(json.loads(body).get("model", ""))[len("odd-") :]
        except (ValueError, AttributeError):
            chosen = ""
        odd = chosen if chosen in RAW_STYLES else "plain"
        status, ctype, parts = answer(f"odd-{odd}", method, path, body)
        for piece in frame("plain" if odd == "slow" else odd, status, ctype, parts):
            if ctype == "text/event-stream" and odd == "slow":
                await asyncio.sleep(0.2)
            if odd == "bytewise":
                for i in range(len(piece)):
                    writer.write(piece[i : i + 1])
                    await writer.drain()
                    await asyncio.sleep(0)
            else:
                writer.write(piece)
                await writer.drain()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def main(argv: list[str]) -> None:
    style, port, model = argv[1], int(argv[2]), argv[3]
    delay = float(argv[4]) if len(argv) > 4 else 0.0
    think = float(argv[5]) if len(argv) > 5 else 0.0
    if style == "stdlib":
        run_stdlib(port, model, delay, think)
    elif style == "asgi":
        run_asgi(port, model)
    elif style in STYLES or style == "raw":
        run_raw(style, port, model, delay)
    else:
        raise SystemExit(f"unknown style {style!r}; one of {', '.join(STYLES)}")


if __name__ == "__main__":
    main(sys.argv)
