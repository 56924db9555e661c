"""A minimal OpenAI-shaped backend for benchmarks: small, steady, and timing itself.

    python bench/fake_backend.py [--port 0] [--paced-interval 0.1]

Prints one JSON line ``{"port": P}`` once listening. Plain asyncio protocol, HTTP/1.1 with keep-alive.

* ``GET /health``, ``GET /v1/models`` (models ``bench`` and ``bench-paced``);
* ``POST /v1/chat/completions``: non-streaming → a fixed small completion (``Content-Length``);
  ``"stream": true`` → ``max_tokens`` SSE chunks (chunked transfer encoding) then ``data: [DONE]``.
  Model ``bench`` streams as fast as the loop goes (one write per chunk, yielding to the loop between
  chunks); ``bench-paced`` writes chunk *i* at ``i * --paced-interval`` seconds after the request and ``[DONE]`` one
  interval after the last chunk (on a fixed schedule: a late wake-up does not delay the chunks after it), so
  50 chunks take 5.0 s at 0.1 s;
* ``GET /stats``: the backend's own time per request (request fully read → last byte handed to the socket),
  ``{"n", "p50_us", "p99_us", "mean_us"}`` for non-streaming requests since the last ``POST /stats/reset``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import time
from typing import Any

MODELS = ("bench", "bench-paced")
MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024
MAX_CHUNKS = 100_000


def _completion() -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "bench",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hello from the bench"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
        }
    ).encode()


@functools.lru_cache(maxsize=8192)  # the same bytes again: the backend's own cost per chunk stays small
def _chunk(i: int, model: str) -> bytes:
    event = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}],
    }
    data = b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


_DONE = b"data: [DONE]\n\n"
_DONE_CHUNK = b"%x\r\n%s\r\n0\r\n\r\n" % (len(_DONE), _DONE)


class Stats:
    def __init__(self) -> None:
        self.times: list[float] = []

    def summary(self) -> dict[str, Any]:
        t = sorted(self.times)
        if not t:
            return {"n": 0}
        return {
            "n": len(t),
            "p50_us": t[len(t) // 2] * 1e6,
            "p99_us": t[min(len(t) - 1, int(len(t) * 0.99))] * 1e6,
            "mean_us": sum(t) / len(t) * 1e6,
        }


class BackendProtocol(asyncio.Protocol):
    def __init__(self, stats: Stats, paced: float) -> None:
        self.stats = stats
        self.paced = paced
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.closed = False
        self.can_write: asyncio.Event | None = None
        self.task: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.can_write = asyncio.Event()
        self.can_write.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.can_write is not None:
            self.can_write.set()

    def pause_writing(self) -> None:
        assert self.can_write is not None
        self.can_write.clear()

    def resume_writing(self) -> None:
        assert self.can_write is not None
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > MAX_HEAD + MAX_BODY:
            self._close()
            return
        self._next()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _next(self) -> None:
        """Parse one complete request from the buffer, if there is one and none is running."""
        if self.busy or self.closed:
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        try:
            method, path, _ = head[0].split(" ", 2)
        except ValueError:
            self._close()
            return
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or "0")
        if length > MAX_BODY:
            self._close()
            return
        if len(self.buf) < end + 4 + length:
            return
        body = bytes(self.buf[end + 4 : end + 4 + length])
        del self.buf[: end + 4 + length]
        keep = headers.get("connection", "").lower() != "close"
        self.busy = True
        started = time.perf_counter()
        try:
            self._handle(method, path, body, keep, started)
        except (ValueError, KeyError, TypeError):
            self._send(400, b'{"error":{"message":"bad request","type":"invalid_request_error"}}', keep)
            self._finished(keep)

    def _finished(self, keep: bool) -> None:
        self.busy = False
        if not keep:
            self._close()
        elif self.buf:
            self._next()

    def _send(self, status: int, body: bytes, keep: bool, ctype: bytes = b"application/json") -> None:
        assert self.transport is not None
        reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}.get(status, b"OK")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s"
            % (status, reason, ctype, len(body), b"" if keep else b"Connection: close\r\n", body)
        )

    def _handle(self, method: str, path: str, body: bytes, keep: bool, started: float) -> None:
        if method == "GET" and path == "/health":
            self._send(200, b'{"status":"ok"}', keep)
        elif method == "GET" and path == "/v1/models":
            data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "bench"} for m in MODELS]
            self._send(200, json.dumps({"object": "list", "data": data}).encode(), keep)
        elif method == "GET" and path == "/stats":
            self._send(200, json.dumps(self.stats.summary()).encode(), keep)
        elif method == "POST" and path == "/stats/reset":
            self.stats.times.clear()
            self._send(200, b"{}", keep)
        elif method == "POST" and path == "/v1/chat/completions":
            req = json.loads(body)
            if not req.get("stream"):
                self._send(200, _COMPLETION, keep)
                self.stats.times.append(time.perf_counter() - started)
                if len(self.stats.times) > 1_000_000:
                    self.stats.times.clear()
            else:
                n = max(1, min(int(req.get("max_tokens") or 16), MAX_CHUNKS))
                model = str(req.get("model", "bench"))
                self.task = asyncio.ensure_future(self._stream(n, model, keep))
                return
        else:
            self._send(404, b'{"error":{"message":"not found","type":"invalid_request_error"}}', keep)
        self._finished(keep)

    async def _stream(self, n: int, model: str, keep: bool) -> None:
        assert self.transport is not None and self.can_write is not None
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n%s\r\n" % (b"" if keep else b"Connection: close\r\n")
        )
        loop = asyncio.get_running_loop()
        interval = self.paced if model == "bench-paced" else 0.0
        start = loop.time()
        for i in range(n):
            if self.closed:
                return
            if not self.can_write.is_set():
                await self.can_write.wait()
            self.transport.write(_chunk(i, model))
            # paced: chunk i+1 is due at start + (i+1) * interval, so a late wake-up does not push the rest back
            await asyncio.sleep(max(0.0, start + (i + 1) * interval - loop.time()) if interval else 0.0)
        if self.closed:
            return
        self.transport.write(_DONE_CHUNK)
        self._finished(keep)


_COMPLETION = _completion()


async def serve(port: int, paced: float) -> None:
    stats = Stats()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: BackendProtocol(stats, paced), "127.0.0.1", port, backlog=4096)
    sock_port = server.sockets[0].getsockname()[1]
    sys.stdout.write(json.dumps({"port": sock_port}) + "\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--paced-interval", type=float, default=0.1)
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port, args.paced_interval))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
