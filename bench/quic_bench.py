"""QUIC benchmark: round-trip latency and bulk throughput, meshd<->meshd and meshd<->iroh.

Each scenario runs in its own process (so peak RSS is per scenario), on
127.0.0.1, with Twisted's asyncio reactor:

    /work/main/.venv/bin/python bench/quic_bench.py            # all scenarios
    /work/main/.venv/bin/python bench/quic_bench.py --scenario meshd-meshd --mib 100 --rounds 1000

Latency: 1,000 sequential echoes of 64 bytes on one stream.
Throughput: N MiB (default 100) written by meshd through one stream with a
streaming producer (so backpressure applies); the receiver counts and answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import struct
import subprocess
import sys
import time
from typing import Any

SCENARIOS = ("meshd-meshd", "meshd-iroh")
ALPN = b"mesh-llm/1"


def run_scenario(name: str, mib: int, rounds: int) -> dict[str, Any]:
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import reactor

    result: dict[str, Any] = {}

    async def main() -> None:
        try:
            if name == "meshd-meshd":
                result.update(await _meshd_meshd(reactor, mib, rounds))
            else:
                result.update(await _meshd_iroh(reactor, mib, rounds))
        except BaseException as exc:  # reported to the parent
            result["error"] = repr(exc)
        finally:
            reactor.stop()

    reactor.callWhenRunning(lambda: asyncio.ensure_future(main()))
    reactor.run()
    result["scenario"] = name
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


# meshd side helpers -------------------------------------------------------------


def _await(d: Any) -> Any:
    from twisted.internet.defer import Deferred

    return Deferred.asFuture(d, asyncio.get_running_loop())


class _Echo:
    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def dataReceived(self, data: bytes) -> None:
        self.stream.write(data)

    def eofReceived(self) -> None:
        self.stream.loseWriteConnection()

    def connectionLost(self, reason: Any) -> None:
        pass


class _Sink:
    """Counts bytes after a 1-byte mode prefix ``b"S"``; answers the count on FIN."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.count = 0

    def dataReceived(self, data: bytes) -> None:
        self.count += len(data)

    def eofReceived(self) -> None:
        self.stream.write(struct.pack("<Q", self.count - 1))
        self.stream.loseWriteConnection()

    def connectionLost(self, reason: Any) -> None:
        pass


class _Dispatch:
    """First byte chooses echo (``E``) or sink (``S``)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.inner: Any = None

    def dataReceived(self, data: bytes) -> None:
        if self.inner is None:
            self.inner = _Echo(self.stream) if data[:1] == b"E" else _Sink(self.stream)
            data = data[1:] if isinstance(self.inner, _Echo) else data
            if not data:
                return
        self.inner.dataReceived(data)

    def eofReceived(self) -> None:
        if self.inner is not None:
            self.inner.eofReceived()

    def connectionLost(self, reason: Any) -> None:
        pass


class _Client:
    """Client-side receiver: fires a future when *want* bytes arrived or at EOF."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.want = 0
        self.waiter: asyncio.Future[bytes] | None = None
        self.eof = False

    def expect(self, n: int) -> asyncio.Future[bytes]:
        self.want = n
        self.waiter = asyncio.get_running_loop().create_future()
        self._check()
        return self.waiter

    def _check(self) -> None:
        if self.waiter is not None and not self.waiter.done() and (len(self.buf) >= self.want or self.eof):
            data = bytes(self.buf[: self.want])
            del self.buf[: self.want]
            self.waiter.set_result(data)

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        self._check()

    def eofReceived(self) -> None:
        self.eof = True
        self._check()

    def connectionLost(self, reason: Any) -> None:
        self.eof = True
        self._check()


class _Producer:
    def __init__(self, stream: Any, total: int, chunk: int = 256 * 1024) -> None:
        self.stream = stream
        self.left = total
        self.block = b"\xa5" * chunk
        self.paused = False
        self.done = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.run()

    def stopProducing(self) -> None:
        self.done = True

    def run(self) -> None:
        while self.left > 0 and not self.paused and not self.done:
            n = min(len(self.block), self.left)
            self.left -= n
            self.stream.write(self.block[:n])
        if self.left == 0 and not self.done:
            self.done = True
            self.stream.unregisterProducer()
            self.stream.loseWriteConnection()


async def _latency(conn: Any, rounds: int) -> float:
    stream = conn.open_stream()
    client = _Client()
    stream.set_receiver(client)
    stream.write(b"E")
    payload = b"p" * 64
    start = time.perf_counter()
    for _ in range(rounds):
        stream.write(payload)
        got = await client.expect(64)
        assert got == payload
    elapsed = time.perf_counter() - start
    stream.loseWriteConnection()
    return elapsed / rounds


async def _throughput(conn: Any, mib: int) -> float:
    total = mib * 1024 * 1024
    stream = conn.open_stream()
    client = _Client()
    stream.set_receiver(client)
    stream.write(b"S")
    producer = _Producer(stream, total)
    start = time.perf_counter()
    stream.registerProducer(producer, True)
    producer.run()
    answer = await client.expect(8)
    elapsed = time.perf_counter() - start
    (count,) = struct.unpack("<Q", answer)
    assert count == total, (count, total)
    return total / elapsed / 1e6


async def _meshd_meshd(reactor: Any, mib: int, rounds: int) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from meshd.quic import QuicEndpoint
    from meshd.quic.tls import public_key_bytes

    def accept(conn: Any) -> None:
        conn.on_stream = lambda s: s.set_receiver(_Dispatch(s))

    key_b = ed25519.Ed25519PrivateKey.generate()
    a = QuicEndpoint(reactor, ed25519.Ed25519PrivateKey.generate())
    b = QuicEndpoint(reactor, key_b, on_connection=accept)
    a.listen(0)
    b.listen(0)
    conn = await _await(a.dial(public_key_bytes(key_b), [("127.0.0.1", b.getHost().port)]))
    latency = await _latency(conn, rounds)
    mbps = await _throughput(conn, mib)
    await _await(a.stop())
    await _await(b.stop())
    return {"rtt_us": latency * 1e6, "mb_per_s": mbps}


async def _meshd_iroh(reactor: Any, mib: int, rounds: int) -> dict[str, Any]:
    import iroh
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from meshd.quic import QuicEndpoint

    ep = await iroh.Endpoint.bind(
        iroh.EndpointOptions(
            preset=iroh.preset_minimal(),
            bind_addr="127.0.0.1:0",
            alpns=[ALPN],
            relay_mode=iroh.RelayMode.disabled(),
        )
    )
    port = int(next(s for s in ep.bound_sockets() if s.startswith("127.0.0.1:")).rsplit(":", 1)[1])

    async def serve_stream(bi: Any) -> None:
        recv, send = bi.recv(), bi.send()
        mode = await recv.read_exact(1)
        if mode == b"E":
            while True:
                data = await recv.read(65536)
                if not data:
                    break
                await send.write_all(data)
        else:
            count = 0
            while True:
                data = await recv.read(1024 * 1024)
                if not data:
                    break
                count += len(data)
            await send.write_all(struct.pack("<Q", count))
        await send.finish()

    async def serve() -> None:
        incoming = await ep.accept_next()
        conn = await (await incoming.accept()).connect()
        tasks = []
        try:
            while True:
                bi = await conn.accept_bi()
                tasks.append(asyncio.ensure_future(serve_stream(bi)))
        except Exception:
            pass
        for t in tasks:
            t.cancel()

    server = asyncio.ensure_future(serve())
    meshd = QuicEndpoint(reactor, ed25519.Ed25519PrivateKey.generate())
    meshd.listen(0)
    conn = await _await(meshd.dial(bytes(ep.id().to_bytes()), [("127.0.0.1", port)]))
    latency = await _latency(conn, rounds)
    mbps = await _throughput(conn, mib)
    conn.close(0, "bench done")
    await _await(meshd.stop())
    server.cancel()
    await ep.close()
    return {"rtt_us": latency * 1e6, "mb_per_s": mbps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=SCENARIOS)
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1000)
    args = parser.parse_args()
    if args.scenario:
        sys.stdout.write(json.dumps(run_scenario(args.scenario, args.mib, args.rounds)) + "\n")
        return
    for name in SCENARIOS:
        cmd = [
            sys.executable,
            __file__,
            "--scenario",
            name,
            "--mib",
            str(args.mib),
            "--rounds",
            str(args.rounds),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if not lines:
            sys.stdout.write(f"{name}: failed\n{out.stderr[-2000:]}\n")
            continue
        r = json.loads(lines[-1])
        if "error" in r:
            sys.stdout.write(f"{name}: error {r['error']}\n")
            continue
        sys.stdout.write(
            f"{name:12s}  rtt {r['rtt_us']:7.0f} us (64 B x {args.rounds})  "
            f"{r['mb_per_s']:6.1f} MB/s ({args.mib} MiB, one stream)  peak RSS {r['peak_rss_mb']:.0f} MB\n"
        )


if __name__ == "__main__":
    main()
