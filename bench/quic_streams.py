"""Per-chunk cost of a QUIC sender with many open streams (sans-IO, in memory, no sockets).

The shape of a host relaying paced SSE streams: ``N`` streams are open, and one small chunk at a
time is written on one of them and sent in its own packet (the chunks of different streams arrive
in different reactor turns). Before meshd's send scheduling, aioquic walked every open stream for
every packet it built, so the cost per chunk grew with ``N``; it should not.

    /work/main/.venv/bin/python bench/quic_streams.py                 # N = 10, 250, 1000
    /work/main/.venv/bin/python bench/quic_streams.py --streams 1000 --rounds 20

Prints, per N, the sender's CPU microseconds per chunk (``datagrams_to_send`` plus the ACKs it
takes in), and the same for the receiver.
"""

from __future__ import annotations

import argparse
import json
import time

from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.packet import pull_quic_header
from cryptography.hazmat.primitives.asymmetric import ed25519

from meshd.quic import tls
from meshd.quic.core import MeshQuicConnection

ALPN = [b"mesh-llm/1"]
CLIENT = ("10.0.0.1", 1000)
SERVER = ("10.0.0.2", 2000)
CHUNK = b'data: {"choices":[{"delta":{"content":"token"}}]}\n\n' * 2


def _drain(conn: MeshQuicConnection) -> list[events.QuicEvent]:
    out = []
    while (e := conn.next_event()) is not None:
        out.append(e)
    return out


def run(n_streams: int, rounds: int) -> dict[str, float]:
    now = 0.0
    server_key = ed25519.Ed25519PrivateKey.generate()
    client = MeshQuicConnection(
        private_key=ed25519.Ed25519PrivateKey.generate(),
        is_client=True,
        alpn_protocols=ALPN,
        expected_peer_id=tls.public_key_bytes(server_key),
    )
    server: MeshQuicConnection | None = None
    client.connect(SERVER, now=now)

    def to_server() -> int:
        nonlocal server
        sent = 0
        for data, _ in client.datagrams_to_send(now=now):
            sent += 1
            if server is None:
                header = pull_quic_header(Buffer(data=data), host_cid_length=8)
                server = MeshQuicConnection(
                    private_key=server_key,
                    is_client=False,
                    alpn_protocols=ALPN,
                    original_destination_connection_id=header.destination_cid,
                )
            server.receive_datagram(data, CLIENT, now=now)
        return sent

    def to_client() -> int:
        assert server is not None
        sent = 0
        for data, _ in server.datagrams_to_send(now=now):
            client.receive_datagram(data, SERVER, now=now)
            sent += 1
        return sent

    def settle() -> None:
        nonlocal now
        for _ in range(10_000):
            moved = bool(to_server())
            if server is not None:
                moved = bool(to_client()) or moved
            if not moved:
                timers = [t for c in (client, server) if c is not None and (t := c.get_timer()) is not None]
                soon = [t for t in timers if t <= now + 0.05]
                if not soon:
                    return
                now = max(now, min(soon))
                for c in (client, server):
                    if c is not None and (t := c.get_timer()) is not None and t <= now:
                        c.handle_timer(now=now)

    settle()
    assert server is not None and server._handshake_complete
    _drain(client), _drain(server)

    sids = []
    for _ in range(n_streams):
        sid = client.get_next_available_stream_id()
        client.send_stream_data(sid, b"POST /v1/chat/completions HTTP/1.1\r\n\r\n")
        sids.append(sid)
    settle()
    for e in _drain(server):
        if isinstance(e, events.StreamDataReceived):
            server.consume(e.stream_id, len(e.data))
    assert len(server._streams) >= n_streams

    server_cpu = client_cpu = 0.0
    chunks = 0
    received = 0
    step = 0.1 / n_streams  # each stream's chunk every 100 ms, the streams' chunks spread evenly
    for r in range(rounds):
        for i, sid in enumerate(sids):
            now += step
            if (t := server.get_timer()) is not None and t <= now:
                server.handle_timer(now=now)
            t0 = time.process_time()
            server.send_stream_data(sid, CHUNK, end_stream=r == rounds - 1)
            packets = server.datagrams_to_send(now=now)
            t1 = time.process_time()
            for data, _ in packets:
                client.receive_datagram(data, SERVER, now=now)
            for e in _drain(client):
                if isinstance(e, events.StreamDataReceived):
                    client.consume(e.stream_id, len(e.data))
                    received += len(e.data)
            t2 = time.process_time()
            server_cpu += t1 - t0
            client_cpu += t2 - t1
            chunks += 1
            if i % 8 == 7:  # the receiver's ACKs, every few packets
                t3 = time.process_time()
                acks = client.datagrams_to_send(now=now)
                t4 = time.process_time()
                for data, _ in acks:
                    server.receive_datagram(data, CLIENT, now=now)
                t5 = time.process_time()
                client_cpu += t4 - t3
                server_cpu += t5 - t4
        _drain(server)
    settle()
    for e in _drain(client):
        if isinstance(e, events.StreamDataReceived):
            received += len(e.data)
    if received != chunks * len(CHUNK):
        raise SystemExit(f"the receiver got {received} bytes of {chunks * len(CHUNK)}")
    return {
        "streams": n_streams,
        "chunks": chunks,
        "sender_us_per_chunk": round(server_cpu / chunks * 1e6, 1),
        "receiver_us_per_chunk": round(client_cpu / chunks * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, action="append", help="open streams (repeatable)")
    parser.add_argument("--rounds", type=int, default=10, help="chunks per stream")
    args = parser.parse_args()
    for n in args.streams or [10, 250, 1000]:
        print(json.dumps(run(n, args.rounds)))


if __name__ == "__main__":
    main()
