"""The load generator: one small HTTP/1.1 keep-alive client used the same way for every target.

    python bench/loadgen.py latency --url A --url B ... [--n 2000] [--warmup 200] [--rounds 4]
    python bench/loadgen.py stream --url A --url B ... [--chunks 2000] [--repeat 5]
    python bench/loadgen.py concurrent --url A [--streams 1000] [--chunks 50] [--model bench-paced]

Prints one JSON object. ``--url`` is an OpenAI base (``http://127.0.0.1:P``, ``/v1/chat/completions`` is
appended). Targets are interleaved in rounds so that drift of the machine hits all of them alike.
Every loop is bounded; every request has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any
from urllib.parse import urlsplit

PATH = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hello mesh"}]


class HTTPError(Exception):
    pass


class Conn:
    """One keep-alive HTTP/1.1 connection (Content-Length, chunked, or read-to-close bodies)."""

    key = b"bench"

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
            self.writer = None

    async def _send(self, body: bytes) -> None:
        if self.writer is None:
            await self.open()
        assert self.writer is not None
        self.writer.write(
            b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s"
            % (PATH.encode(), self.host.encode(), self.port, self.key, len(body), body)
        )

    async def _head(self) -> tuple[int, dict[str, str]]:
        assert self.reader is not None
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return status, headers

    async def _body_parts(self, headers: dict[str, str]) -> Any:
        """Yield the body in pieces as they arrive; closes the connection if the body ends at EOF."""
        assert self.reader is not None
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = await self.reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")  # no trailers expected
                    return
                data = await self.reader.readexactly(size + 2)
                yield data[:-2]
        elif "content-length" in headers:
            yield await self.reader.readexactly(int(headers["content-length"]))
        else:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    await self.close()
                    return
                yield data
        if headers.get("connection", "").lower() == "close":
            await self.close()

    async def complete(self, body: bytes) -> tuple[int, bytes]:
        await self._send(body)
        status, headers = await self._head()
        parts = [p async for p in self._body_parts(headers)]
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, b"".join(parts)

    async def stream(self, body: bytes, t0: float) -> dict[str, Any]:
        """Send a streaming request; count SSE data events; time to first event and to the end."""
        await self._send(body)
        status, headers = await self._head()
        if status != 200:
            parts = [p async for p in self._body_parts(headers)]
            raise HTTPError(f"status {status}: {b''.join(parts)[:200]!r}")
        first = 0.0
        events = 0
        done = False
        carry = b""
        async for part in self._body_parts(headers):
            carry += part
            *evs, carry = carry.split(b"\n\n")
            for ev in evs:
                if ev.startswith(b"data: [DONE]"):
                    done = True
                elif ev.startswith(b"data: "):
                    if events == 0:
                        first = time.perf_counter() - t0
                    events += 1
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return {"ttfb": first, "events": events, "done": done, "total": time.perf_counter() - t0}


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


def _body(model: str, **extra: Any) -> bytes:
    return json.dumps({"model": model, "messages": MSG, **extra}).encode()


async def latency(urls: list[str], n: int, warmup: int, rounds: int, model: str, limit_s: float) -> dict[str, Any]:
    body = _body(model, max_tokens=8, temperature=0)
    conns = [Conn(u) for u in urls]
    times: list[list[float]] = [[] for _ in urls]
    errors = [0 for _ in urls]
    for c in conns:
        await c.open()
        for _ in range(warmup):
            status, _ = await asyncio.wait_for(c.complete(body), limit_s)
            if status != 200:
                raise HTTPError(f"warm-up {c.host}:{c.port} status {status}")
    per_round = max(1, n // rounds)
    for _ in range(rounds):
        for i, c in enumerate(conns):
            for _ in range(per_round):
                t0 = time.perf_counter()
                status, _ = await asyncio.wait_for(c.complete(body), limit_s)
                dt = time.perf_counter() - t0
                if status == 200:
                    times[i].append(dt)
                else:
                    errors[i] += 1
    for c in conns:
        await c.close()
    out = []
    for i, u in enumerate(urls):
        t = times[i]
        out.append(
            {
                "url": u,
                "n": len(t),
                "errors": errors[i],
                "p50_ms": _pct(t, 0.5) * 1e3 if t else None,
                "p99_ms": _pct(t, 0.99) * 1e3 if t else None,
                "mean_ms": sum(t) / len(t) * 1e3 if t else None,
                "rps": len(t) / sum(t) if t else None,
            }
        )
    return {"latency": out}


async def stream(urls: list[str], chunks: int, repeat: int, model: str, limit_s: float) -> dict[str, Any]:
    body = _body(model, max_tokens=chunks, stream=True)
    conns = [Conn(u) for u in urls]
    runs: list[list[dict[str, Any]]] = [[] for _ in urls]
    for c in conns:
        await c.open()
        await asyncio.wait_for(c.stream(_body(model, max_tokens=50, stream=True), time.perf_counter()), limit_s)
    for _ in range(repeat):
        for i, c in enumerate(conns):
            r = await asyncio.wait_for(c.stream(body, time.perf_counter()), limit_s)
            runs[i].append(r)
    for c in conns:
        await c.close()
    out = []
    for i, u in enumerate(urls):
        rs = runs[i]
        rates = [r["events"] / r["total"] for r in rs]
        out.append(
            {
                "url": u,
                "runs": len(rs),
                "chunks": chunks,
                # LiteLLM adds one closing chunk (empty delta, finish_reason) before [DONE]
                "complete": all(chunks <= r["events"] <= chunks + 1 and r["done"] for r in rs),
                "events": rs[-1]["events"] if rs else 0,
                "ttfb_ms": _pct([r["ttfb"] for r in rs], 0.5) * 1e3,
                "chunks_per_s": _pct(rates, 0.5),
                "chunks_per_s_all": rates,
            }
        )
    return {"stream": out}


async def concurrent(url: str, streams: int, chunks: int, model: str, limit_s: float, ramp: float) -> dict[str, Any]:
    body = _body(model, max_tokens=chunks, stream=True)

    async def one(k: int) -> dict[str, Any]:
        await asyncio.sleep(ramp * k / streams)
        c = Conn(url)
        t0 = time.perf_counter()
        try:
            await c.open()
            return await asyncio.wait_for(c.stream(body, t0), limit_s)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, HTTPError, ValueError) as e:
            return {"error": repr(e)[:200], "events": 0, "done": False, "ttfb": 0.0, "total": 0.0}
        finally:
            await c.close()

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(k) for k in range(streams)))
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["events"] == chunks and r["done"]]
    errors: dict[str, int] = {}
    for r in results:
        if "error" in r:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    return {
        "concurrent": {
            "streams": streams,
            "chunks_each": chunks,
            "completed": len(ok),
            "wall_s": wall,
            "ttfb_p50_ms": _pct([r["ttfb"] for r in ok], 0.5) * 1e3 if ok else None,
            "ttfb_p99_ms": _pct([r["ttfb"] for r in ok], 0.99) * 1e3 if ok else None,
            "duration_p50_s": _pct([r["total"] for r in ok], 0.5) if ok else None,
            "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5]),
        }
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("latency", "stream", "concurrent"))
    parser.add_argument("--url", action="append", required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--ramp", type=float, default=1.0, help="seconds over which concurrent streams start")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--api-key", default="bench", help="sent as a Bearer token to every target")
    args = parser.parse_args()
    Conn.key = args.api_key.encode()
    if args.mode == "latency":
        coro = latency(args.url, args.n, args.warmup, args.rounds, args.model or "bench", args.timeout)
    elif args.mode == "stream":
        coro = stream(args.url, args.chunks, args.repeat, args.model or "bench", args.timeout)
    else:
        coro = concurrent(args.url[0], args.streams, args.chunks, args.model or "bench-paced", args.timeout, args.ramp)
    result = asyncio.run(coro)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
