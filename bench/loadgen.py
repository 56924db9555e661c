"""The load generator: one small HTTP/1.1 keep-alive client used the same way for every target.

    python bench/loadgen.py latency --url A --url B ... [--n 2000] [--warmup 200] [--rounds 4]
    python bench/loadgen.py stream --url A --url B ... [--chunks 2000] [--repeat 5]
    python bench/loadgen.py concurrent --url A [--url B ...] [--streams 1000] [--chunks 50] [--model bench-paced]
                                       [--ramp 2] [--pid host=PID --pid client=PID ...]

Prints one JSON object. ``--url`` is an OpenAI base (``http://127.0.0.1:P``, ``/v1/chat/completions`` is
appended). Targets are interleaved in rounds so that drift of the machine hits all of them alike.
Every loop is bounded; every request has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import sys
import time
from typing import Any
from urllib.parse import urlsplit

PATH = "/v1/chat/completions"
TICK = os.sysconf("SC_CLK_TCK")
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

    async def ready(self) -> None:
        """Open the connection, again if the server closed it while idle (uvicorn's keep-alive timeout is 5 s)."""
        if self.writer is not None and self.reader is not None and self.reader.at_eof():
            await self.close()
        if self.writer is None:
            await self.open()

    async def _send(self, body: bytes) -> None:
        await self.ready()
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
                await c.ready()  # not timed: a target that closed an idle connection is not charged for it
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
            await c.ready()
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


class Tally:
    """Chunks received by every stream of a concurrent run (read by the sampler)."""

    def __init__(self) -> None:
        self.chunks = 0


class PacedStream(asyncio.Protocol):
    """One streaming request on its own connection, counted as bytes arrive (no per-chunk awaits).

    Parses the response head, de-chunks a chunked body (or takes the body up to EOF), splits SSE events and
    counts ``data:`` events; the stream's end is the time ``data: [DONE]`` arrives. Every buffer is bounded.
    """

    MAX_BUF = 1 << 20

    def __init__(self, request: bytes, t0: float, tally: Tally, done: asyncio.Future[dict[str, Any]]) -> None:
        self.request = request
        self.t0 = t0
        self.tally = tally
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.head = False
        self.chunked = False
        self.chunk_left = 0  # > 0: data bytes of the current chunk still to come; -1: its CRLF is next
        self.carry = b""
        self.events = 0
        self.first = 0.0
        self.end = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.chunked and self.head:
            self._finish()  # a body without framing ends at EOF
        self._fail(f"connection lost: {exc!r}" if exc else "connection closed before the end of the body")

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        self.buf += data
        if not self.head:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 65536:
                    self._fail("response head over 64 KiB")
                return
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            del self.buf[: end + 4]
            status = int(lines[0].split(" ", 2)[1])
            if status != 200:
                self._fail(f"status {status}")
                return
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
                    self.chunked = True
            self.head = True
        if self.chunked:
            self._dechunk()
        else:
            self._sse(bytes(self.buf))
            self.buf.clear()

    def _dechunk(self) -> None:
        buf = self.buf
        while buf and not self.done.done():
            if self.chunk_left > 0:
                take = min(self.chunk_left, len(buf))
                self._sse(bytes(buf[:take]))
                del buf[:take]
                self.chunk_left -= take
                if self.chunk_left == 0:
                    self.chunk_left = -1
            elif self.chunk_left == -1:
                if len(buf) < 2:
                    return
                del buf[:2]
                self.chunk_left = 0
            else:
                i = buf.find(b"\r\n")
                if i < 0:
                    if len(buf) > 1024:
                        self._fail("chunk size line over 1 KiB")
                    return
                size = int(bytes(buf[:i]).split(b";")[0], 16)
                del buf[: i + 2]
                if size == 0:
                    self._finish()
                    return
                self.chunk_left = size

    def _sse(self, data: bytes) -> None:
        self.carry += data
        if b"\n\n" not in self.carry:
            if len(self.carry) > self.MAX_BUF:
                self._fail("SSE event over 1 MiB")
            return
        *evs, self.carry = self.carry.split(b"\n\n")
        for ev in evs:
            if ev.startswith(b"data: [DONE]"):
                self.end = time.perf_counter() - self.t0
            elif ev.startswith(b"data: "):
                if not self.events:
                    self.first = time.perf_counter() - self.t0
                self.events += 1
                self.tally.chunks += 1

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result({"ttfb": self.first, "events": self.events, "done": self.end > 0, "total": self.end})
        if self.transport is not None:
            self.transport.close()

    def _fail(self, why: str) -> None:
        if not self.done.done():
            self.done.set_result({"error": why, "ttfb": 0.0, "events": self.events, "done": False, "total": 0.0})
        if self.transport is not None:
            self.transport.close()


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "min": min(values),
        "p50": _pct(values, 0.5),
        "p90": _pct(values, 0.9),
        "p99": _pct(values, 0.99),
        "max": max(values),
    }


#: Duration bins (seconds over the backend's pace) for the histogram of a concurrent run.
BINS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.5)


async def concurrent(
    urls: list[str],
    streams: int,
    chunks: int,
    model: str,
    limit_s: float,
    ramp: float,
    interval: float,
    pids: dict[str, list[int]],
    per_source: int = 200,
    sample_s: float = 0.25,
) -> dict[str, Any]:
    """*streams* streams, each on its own connection, started evenly over *ramp* seconds, spread over *urls*.

    Every stream's duration (start of connect -> ``[DONE]``) is compared with the backend's pace
    (``chunks * interval``). A sampler records chunks received and the CPU seconds of *pids* every
    *sample_s*; the steady window is from the moment the last stream got its first chunk to the moment the
    first stream ended, when all streams are open at once. Connections to a 127.x target come from
    ``ceil(streams / per_source)`` loopback source addresses (127.0.1.1, 127.0.1.2, ...; 0 = the default one).
    """
    loop = asyncio.get_running_loop()
    body = _body(model, max_tokens=chunks, stream=True)
    tally = Tally()
    starts: list[float] = [0.0] * streams

    sources = max(1, math.ceil(streams / per_source)) if per_source else 0

    async def one(k: int) -> dict[str, Any]:
        await asyncio.sleep(ramp * k / streams)
        parts = urlsplit(urls[k % len(urls)])
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        # many callers, not one: meshd's API port takes at most 256 connections from one address by default
        local = (f"127.0.1.{k % sources + 1}", 0) if sources and host.startswith("127.") else None
        request = (
            b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s"
            % (PATH.encode(), host.encode(), port, Conn.key, len(body), body)
        )
        done: asyncio.Future[dict[str, Any]] = loop.create_future()
        t0 = time.perf_counter()
        starts[k] = t0
        transport: asyncio.BaseTransport | None = None
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: PacedStream(request, t0, tally, done), host, port, local_addr=local),
                limit_s,
            )
            return await asyncio.wait_for(asyncio.shield(done), max(0.1, limit_s - (time.perf_counter() - t0)))
        except (OSError, TimeoutError) as e:
            return {"error": repr(e)[:200], "events": 0, "done": False, "ttfb": 0.0, "total": 0.0}
        finally:
            if transport is not None:
                transport.close()

    samples: list[tuple[float, int, dict[str, float]]] = []
    running = True

    def cpu_now() -> dict[str, float]:
        out = {"loadgen": time.process_time()}
        for name, ids in pids.items():
            total = 0.0
            for pid in ids:
                try:
                    total += _cpu_s(pid)
                except OSError:
                    pass
            out[name] = total
        return out

    async def sampler() -> None:
        deadline = time.perf_counter() + ramp + limit_s + 5
        while running and time.perf_counter() < deadline:
            samples.append((time.perf_counter(), tally.chunks, cpu_now()))
            await asyncio.sleep(sample_s)

    t_start = time.perf_counter()
    sampling = asyncio.ensure_future(sampler())
    results = await asyncio.gather(*(one(k) for k in range(streams)))
    wall = time.perf_counter() - t_start
    running = False
    samples.append((time.perf_counter(), tally.chunks, cpu_now()))
    await sampling

    pace = chunks * interval
    ok = [r for r in results if r["events"] == chunks and r["done"]]
    durations = [r["total"] for r in ok]
    ttfbs = [r["ttfb"] * 1e3 for r in ok]
    errors: dict[str, int] = {}
    for r in results:
        if "error" in r:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
        elif not (r["events"] == chunks and r["done"]):
            why = f"{r['events']} of {chunks} chunks, [DONE] {'seen' if r['done'] else 'missing'}"
            errors[why] = errors.get(why, 0) + 1
    hist: list[list[Any]] = []
    edges = [pace + b for b in BINS]
    hist.append([f"< {edges[0]:.2f} s", sum(1 for d in durations if d < edges[0])])
    for lo, hi in itertools.pairwise(edges):
        hist.append([f"{lo:.2f}-{hi:.2f} s", sum(1 for d in durations if lo <= d < hi)])
    hist.append([f">= {edges[-1]:.2f} s", sum(1 for d in durations if d >= edges[-1])])

    # steady window: every stream open (the last one has its first chunk, the first one has not ended)
    steady: dict[str, Any] | None = None
    if ok and len(ok) == streams:
        w0 = max(s + r["ttfb"] for s, r in zip(starts, results, strict=True))
        w1 = min(s + r["total"] for s, r in zip(starts, results, strict=True))
        inside = [s for s in samples if w0 <= s[0] <= w1]
        if len(inside) >= 2 and inside[-1][0] - inside[0][0] >= 0.75:
            (ta, ca, cpua), (tb, cb, cpub) = inside[0], inside[-1]
            dt = tb - ta
            steady = {
                "from_s": ta - t_start,
                "to_s": tb - t_start,
                "chunks_per_s": (cb - ca) / dt,
                "cpu_share": {n: (cpub[n] - cpua[n]) / dt for n in cpua},
            }
    first, last = samples[0], samples[-1]
    whole = {
        "chunks": tally.chunks,
        "chunks_per_s": tally.chunks / wall if wall else None,
        "cpu_s": {n: last[2][n] - first[2][n] for n in first[2]},
    }
    return {
        "concurrent": {
            "streams": streams,
            "urls": len(urls),
            "chunks_each": chunks,
            "pace_s": pace,
            "ramp_s": ramp,
            "source_addresses": sources or 1,
            "completed": len(ok),
            "within_pace": sum(1 for d in durations if pace <= d <= pace * 1.1),
            "wall_s": wall,
            "duration_s": _summary(durations),
            "duration_hist": hist,
            "ttfb_ms": _summary(ttfbs),
            # kept for older readers of the JSON
            "ttfb_p50_ms": _pct(ttfbs, 0.5) if ok else None,
            "ttfb_p99_ms": _pct(ttfbs, 0.99) if ok else None,
            "duration_p50_s": _pct(durations, 0.5) if ok else None,
            "steady": steady,
            "whole": whole,
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
    parser.add_argument("--interval", type=float, default=0.1, help="the backend's pace (s per chunk, bench-paced)")
    parser.add_argument(
        "--pid", action="append", default=[], help="NAME=PID: CPU seconds sampled in a concurrent run (repeatable)"
    )
    parser.add_argument(
        "--per-source", type=int, default=200, help="concurrent: streams per loopback source address (0 = one address)"
    )
    parser.add_argument("--api-key", default="bench", help="sent as a Bearer token to every target")
    args = parser.parse_args()
    Conn.key = args.api_key.encode()
    if args.mode == "latency":
        coro = latency(args.url, args.n, args.warmup, args.rounds, args.model or "bench", args.timeout)
    elif args.mode == "stream":
        coro = stream(args.url, args.chunks, args.repeat, args.model or "bench", args.timeout)
    else:
        pids: dict[str, list[int]] = {}
        for spec in args.pid:
            name, _, pid = spec.partition("=")
            pids.setdefault(name, []).append(int(pid))
        coro = concurrent(
            args.url,
            args.streams,
            args.chunks,
            args.model or "bench-paced",
            args.timeout,
            args.ramp,
            args.interval,
            pids,
            args.per_source,
        )
    result = asyncio.run(coro)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
