"""Relay benchmark: relay handshake time, QUIC dial time and bulk MB/s over meshd's relay vs direct UDP.

Everything runs in one process on 127.0.0.1 with Twisted's asyncio reactor: a meshd relay server, two meshd
QUIC endpoints (each with a relay client whose home is that relay), and optionally an iroh wheel endpoint.

    PYTHONPATH=. /work/main/.venv/bin/python bench/relay_bench.py [--mib 16] [--dials 20] [--no-rate-limit]

Measured (wall clock, reactor.seconds()):
* relay link handshake: TCP connect + websocket upgrade + challenge/ClientAuth/ServerConfirmsAuth;
* QUIC dial (handshake complete at the dialler), median of N dials, relay path vs direct;
* N MiB written on one stream meshd -> meshd (receiver counts, answers at EOF), relay vs direct;
* the same meshd -> iroh over the relay (iroh's relay client on the far side).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=16)
    parser.add_argument("--dials", type=int, default=20)
    parser.add_argument("--no-rate-limit", action="store_true", help="relay server without its 8 MiB/s token bucket")
    args = parser.parse_args()

    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import defer, reactor

    from tests.integration.relay_peers import (
        MeshdRelayed,
        as_deferred,
        iroh_endpoint,
        relay_url,
        start_relay,
    )

    result: dict[str, Any] = {}

    class Sink:
        def __init__(self, stream: Any) -> None:
            self.stream = stream
            self.count = 0

        def dataReceived(self, data: bytes) -> None:
            self.count += len(data)

        def eofReceived(self) -> None:
            self.stream.write(str(self.count).encode())
            self.stream.loseWriteConnection()

        def connectionLost(self, reason: Any) -> None:
            pass

    class Answer:
        def __init__(self) -> None:
            self.data = b""
            self.done: defer.Deferred[bytes] = defer.Deferred()

        def dataReceived(self, data: bytes) -> None:
            self.data += data

        def eofReceived(self) -> None:
            pass

        def connectionLost(self, reason: Any) -> None:
            if not self.done.called:
                self.done.callback(self.data)

    async def bulk(conn: Any, mib: int) -> float:
        stream = conn.open_stream()
        answer = Answer()
        stream.set_receiver(answer)
        chunk = b"\xab" * 65536
        started = reactor.seconds()
        for _ in range(mib * 16):
            stream.write(chunk)  # unpaced: stays under the stream's 16 MiB hard limit for --mib <= 16
            await asyncio.sleep(0)
        stream.loseWriteConnection()
        got = await answer.done
        elapsed = reactor.seconds() - started
        assert int(got) == mib * 1024 * 1024, got
        return mib * 1024 * 1024 / elapsed / 1e6

    async def dial_times(a: Any, b: Any, url: str, direct: bool, n: int) -> float:
        times = []
        port = b.endpoint.getHost().port
        for _ in range(n):
            started = reactor.seconds()
            if direct:
                conn = await a.endpoint.dial(b.endpoint_id, [("127.0.0.1", port)], timeout=10)
            else:
                conn = await a.dial_via_relay(b.endpoint_id, url)
            times.append(reactor.seconds() - started)
            conn.close(0, "bench")
        return statistics.median(times) * 1000

    async def run() -> None:
        from meshd.iroh_relay.server import RelayServerConfig

        relay = start_relay(reactor, RelayServerConfig(rate_bytes_per_s=None) if args.no_rate_limit else None)
        url = relay_url(relay)
        a = MeshdRelayed(reactor, url)
        b = MeshdRelayed(reactor, url, echo=False)

        def sink_conn(conn: Any) -> None:
            conn.on_stream = lambda stream: stream.set_receiver(Sink(stream))

        b.endpoint.on_connection = sink_conn
        try:
            await a.home_up()
            await b.home_up()
            home = a.client.links[a.client.home_url]
            result["relay_link_handshake_ms"] = round(home.handshake_seconds * 1000, 2)
            result["quic_dial_ms_relay_median"] = round(await dial_times(a, b, url, False, args.dials), 2)
            result["quic_dial_ms_direct_median"] = round(await dial_times(a, b, url, True, args.dials), 2)
            conn = await a.dial_via_relay(b.endpoint_id, url)
            result["meshd_meshd_MBps_relay"] = round(await bulk(conn, args.mib), 2)
            conn.close(0, "bench")
            port = b.endpoint.getHost().port
            conn = await a.endpoint.dial(b.endpoint_id, [("127.0.0.1", port)], timeout=10)
            result["meshd_meshd_MBps_direct"] = round(await bulk(conn, args.mib), 2)
            conn.close(0, "bench")
            result["relay_queue_drops_client"] = home.counters.queue_drops
            result["relay_server_metrics"] = {
                k: v
                for k, v in relay.server.status()["metrics"].items()
                if k in ("datagrams_forwarded", "queue_drops", "rate_limited")
            }
            try:
                ep = await as_deferred(iroh_endpoint(url))
            except Exception as e:  # iroh wheel missing: skip that row
                result["meshd_iroh"] = f"skipped: {e}"
            else:
                iroh_id = bytes(ep.id().to_bytes())

                async def iroh_sink() -> None:
                    incoming = await ep.accept_next()
                    conn = await (await incoming.accept()).connect()
                    bi = await conn.accept_bi()
                    data = await bi.recv().read_to_end(args.mib * 1024 * 1024 + 1)
                    send = bi.send()
                    await send.write_all(str(len(data)).encode())
                    await send.finish()
                    await conn.closed()

                served = as_deferred(iroh_sink())
                started = reactor.seconds()
                conn = await a.dial_via_relay(iroh_id, url)
                result["quic_dial_ms_relay_to_iroh"] = round((reactor.seconds() - started) * 1000, 2)
                result["meshd_iroh_MBps_relay"] = round(await bulk(conn, args.mib), 2)
                conn.close(0, "bench")
                await served
                await as_deferred(ep.close())
        finally:
            await a.stop()
            await b.stop()
            await relay.stopService()
            reactor.stop()

    def go() -> None:
        defer.ensureDeferred(run()).addErrback(lambda f: (f.printTraceback(), reactor.stop()))

    reactor.callWhenRunning(go)
    reactor.run()
    shown = {"mib": args.mib, "dials": args.dials, "rate_limit": not args.no_rate_limit, **result}
    print(json.dumps(shown, indent=2))


if __name__ == "__main__":
    main()
