"""Attack tools for the attack suite (tests/integration/test_attacks.py), each run as its own process.

``python -m tests.integration.attacks COMMAND ARGS...`` prints one JSON object (the outcome) as its
last line. The tools speak the real protocols with meshd's own codecs (QUIC through
:mod:`meshd.quic`, frames through :mod:`meshd.protocol`), so what reaches the target is what an
attacker with a laptop would send. Commands:

``slow-backend PORT MODEL HEAD_DELAY EVENTS EVENT_DELAY``
    an OpenAI-shaped backend (Python's http.server) that waits HEAD_DELAY s before answering a POST,
    then streams EVENTS server-sent events EVENT_DELAY s apart (forever: never exits by itself).
``gossip-park TOKEN CONNS STREAMS DECLARED SEND HOLD``
    CONNS QUIC connections to the node behind TOKEN that never gossip; on each, STREAMS GOSSIP
    streams that declare a DECLARED-byte frame and send SEND bytes of it, never finishing; held until
    every stream ended, at most HOLD s.
``idle-conns TOKEN CONNS HOLD``
    CONNS QUIC connections that complete the handshake and then say nothing; reports how many the
    node closed within HOLD s.
``chunk-flood TOKEN MODEL CHUNKS``
    joins the mesh properly (gossip), then sends one chat request on a TUNNEL_HTTP stream with a
    chunked body of CHUNKS one-byte chunks; reports the status the host answered.
``initial-burst HOST PORT ENDPOINT_ID COUNT FIRST_IP``
    COUNT genuine client Initials (ClientHellos), each from its own loopback address starting at
    FIRST_IP (127.x.y.z), never followed up.
``slowloris HOST PORT CONNS SOURCES INTERVAL DURATION FIRST_IP``
    CONNS HTTP connections spread over SOURCES loopback addresses, each sending a request line and
    then a header line every INTERVAL s; reports when and how each connection ended.
"""

from __future__ import annotations

import ipaddress
import json
import os
import selectors
import socket
import struct
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# -- a slow backend ---------------------------------------------------------------------------------------


def slow_backend(port: int, model: str, head_delay: float, events: int, event_delay: float) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = json.dumps({"object": "list", "data": [{"id": model, "object": "model"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            n = int(self.headers.get("content-length") or 0)
            self.rfile.read(n)
            time.sleep(head_delay)
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(events):
                    chunk = {
                        "object": "chat.completion.chunk",
                        "model": model,
                        "choices": [{"index": 0, "delta": {"content": f"w{i} "}}],
                    }
                    event = b"data: " + json.dumps(chunk).encode() + b"\n\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                    self.wfile.flush()
                    time.sleep(event_delay)
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


# -- QUIC attackers ---------------------------------------------------------------------------------------


def _dial_many(token: str, conns: int, timeout: float = 20.0) -> tuple[Any, list[Any], Any]:
    """A client endpoint per 64 connections (so one UDP socket does not carry them all)."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from twisted.internet import reactor
    from twisted.internet.defer import DeferredList

    from meshd.protocol.token import decode_token
    from meshd.quic import QuicEndpoint

    addr = decode_token(token)
    targets = list(addr.dialable_ip_addrs())
    endpoints = []
    dials = []
    for i in range(conns):
        if i % 64 == 0:
            endpoint = QuicEndpoint(reactor, ed25519.Ed25519PrivateKey.generate())
            endpoint.listen(0, "127.0.0.1")
            endpoints.append(endpoint)
        dial = endpoints[-1].dial(addr.id, targets, timeout=timeout)
        dial.addCallback(_stamp)
        dials.append(dial)
    return reactor, endpoints, DeferredList(dials, consumeErrors=True)


def _stamp(conn: Any) -> Any:
    conn.attack_connected_at = time.monotonic()
    return conn


class _Watch:
    """A stream receiver that remembers how the stream ended."""

    def __init__(self) -> None:
        self.lost: str | None = None

    def dataReceived(self, data: bytes) -> None:
        pass

    def eofReceived(self) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        self.lost = type(reason.value).__name__


def gossip_park(token: str, conns: int, streams: int, declared: int, send: int, hold: float) -> dict[str, Any]:
    from twisted.internet.task import deferLater

    from meshd.protocol.framing import encode_stream_type
    from meshd.protocol.streams import StreamType

    reactor, endpoints, dialled = _dial_many(token, conns)
    out: dict[str, Any] = {}
    watches: list[_Watch] = []
    connections: list[Any] = []

    def attack(results: list[tuple[bool, Any]]) -> Any:
        for ok, conn in results:
            if not ok:
                continue
            connections.append(conn)
            for _ in range(streams):
                try:
                    stream = conn.open_stream()
                except Exception:
                    break
                watch = _Watch()
                stream.set_receiver(watch)
                watches.append(watch)
                stream.write(encode_stream_type(StreamType.GOSSIP) + struct.pack("<I", declared))
                left = send
                while left > 0:
                    piece = min(left, 64 * 1024)
                    try:
                        stream.write(b"\x00" * piece)
                    except Exception:
                        break
                    left -= piece
        out["connected"] = len(connections)
        out["streams"] = len(watches)
        return settled(reactor.seconds() + hold)

    def settled(deadline: float) -> Any:
        """Every stream ended (the usual case), or ``hold`` seconds passed (streams the node never opens)."""
        if all(w.lost is not None for w in watches) or reactor.seconds() >= deadline:
            return None
        return deferLater(reactor, 0.1, settled, deadline)

    def report(_: Any) -> None:
        out["streams_reset"] = sum(1 for w in watches if w.lost == "StreamReset")
        out["streams_open"] = sum(1 for w in watches if w.lost is None)
        out["connections_closed"] = sum(1 for c in connections if c.close_reason is not None)
        for endpoint in endpoints:
            endpoint.stop()
        reactor.callLater(0.2, reactor.stop)

    dialled.addCallback(attack).addBoth(report)
    reactor.run()
    return out


def idle_conns(token: str, conns: int, hold: float) -> dict[str, Any]:
    reactor, endpoints, dialled = _dial_many(token, conns)
    out: dict[str, Any] = {}
    connections: list[Any] = []
    lifetimes: list[float] = []  # from a connection's handshake to the node closing it

    def opened(results: list[tuple[bool, Any]]) -> None:
        for ok, conn in results:
            if ok:
                connections.append(conn)
                conn.when_closed().addCallback(
                    lambda _, c=conn: lifetimes.append(time.monotonic() - c.attack_connected_at)
                )
        out["connected"] = len(connections)
        reactor.callLater(hold, finish)

    def finish() -> None:
        out["closed_by_node"] = len(lifetimes)
        out["closed_within_s"] = round(max(lifetimes), 2) if lifetimes else None
        ordered = sorted(lifetimes)
        out["lifetime_p50_s"] = round(ordered[len(ordered) // 2], 2) if ordered else None
        out["lifetimes_over_12s"] = sum(1 for x in ordered if x > 12)
        for endpoint in endpoints:
            endpoint.stop()
        reactor.callLater(0.2, reactor.stop)

    dialled.addCallback(opened)
    reactor.run()
    return out


def chunk_flood(token: str, model: str, chunks: int) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from twisted.internet import reactor

    from meshd import __version__
    from meshd.control import gossip_round_trip
    from meshd.httpwire import ResponseParser
    from meshd.protocol.framing import encode_stream_type
    from meshd.protocol.peers import build_gossip_frame, build_self_announcement
    from meshd.protocol.streams import StreamType
    from meshd.protocol.token import EndpointAddr, decode_token
    from meshd.quic import QuicEndpoint

    addr = decode_token(token)
    key = ed25519.Ed25519PrivateKey.generate()
    endpoint = QuicEndpoint(reactor, key)
    endpoint.listen(0, "127.0.0.1")
    out: dict[str, Any] = {}

    async def run() -> None:
        conn = await endpoint.dial(addr.id, list(addr.dialable_ip_addrs()), timeout=10)
        me = EndpointAddr(endpoint.endpoint_id)
        frame = build_gossip_frame(endpoint.endpoint_id, build_self_announcement(addr=me, version=__version__))
        await gossip_round_trip(conn, frame, reactor, 10)
        stream = conn.open_stream()
        parser = ResponseParser()
        got: list[Any] = []

        class Rx:
            def dataReceived(self, data: bytes) -> None:
                got.extend(parser.feed(data))

            def eofReceived(self) -> None:
                pass

            def connectionLost(self, reason: Any) -> None:
                got.append(("lost", type(reason.value).__name__))

        stream.set_receiver(Rx())
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: h\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        stream.write(encode_stream_type(StreamType.TUNNEL_HTTP) + head)
        body = b'{"model":"' + model.encode() + b'","messages":[],"pad":"' + b"x" * chunks + b'"}'
        started = time.monotonic()
        wire = b"".join(b"1\r\n%s\r\n" % body[i : i + 1] for i in range(len(body))) + b"0\r\n\r\n"
        for i in range(0, len(wire), 256 * 1024):
            stream.write(wire[i : i + 256 * 1024])
        stream.loseWriteConnection()
        while not any(isinstance(x, tuple) for x in got) and time.monotonic() - started < 60:
            from twisted.internet.task import deferLater

            await deferLater(reactor, 0.05, lambda: None)
        heads = [x for x in got if hasattr(x, "status")]
        out["status"] = heads[0].status if heads else None
        out["seconds"] = round(time.monotonic() - started, 2)
        out["wire_bytes"] = len(wire)

    from twisted.internet.defer import Deferred

    def done(result: Any) -> None:
        if hasattr(result, "getErrorMessage"):
            out["error"] = result.getErrorMessage()
        endpoint.stop()
        reactor.callLater(0.2, reactor.stop)

    Deferred.fromCoroutine(run()).addBoth(done)
    reactor.run()
    return out


def _loopback(first_ip: str, i: int) -> str:
    return str(ipaddress.ip_address(first_ip) + i)


def initial_burst(host: str, port: int, endpoint_id: str, count: int, first_ip: str) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from meshd.quic import MeshQuicConnection

    target = (host, port)
    sent = 0
    sockets = []
    started = time.monotonic()
    for i in range(count):
        quic = MeshQuicConnection(
            private_key=ed25519.Ed25519PrivateKey.generate(),
            is_client=True,
            alpn_protocols=[b"mesh-llm/1"],
            expected_peer_id=bytes.fromhex(endpoint_id),
        )
        quic.connect(target, now=time.monotonic())
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((_loopback(first_ip, i), 0))
        for data, _ in quic.datagrams_to_send(now=time.monotonic()):
            sock.sendto(data, target)
            sent += len(data)
        sockets.append(sock)
    elapsed = time.monotonic() - started
    for sock in sockets:
        sock.close()
    return {"initials": count, "bytes": sent, "seconds": round(elapsed, 3)}


# -- HTTP slowloris -----------------------------------------------------------------------------------------


def slowloris(
    host: str, port: int, conns: int, sources: int, interval: float, duration: float, first_ip: str
) -> dict[str, Any]:
    sel = selectors.DefaultSelector()
    started = time.monotonic()
    opened = 0
    failed_connect = 0
    ends: list[tuple[float, str]] = []  # (seconds after start, first bytes of the answer or "" for a close)
    state: dict[socket.socket, dict[str, Any]] = {}
    for i in range(conns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(3)
        try:
            sock.bind((_loopback(first_ip, i % sources), 0))
            sock.connect((host, port))
        except OSError:
            failed_connect += 1
            sock.close()
            continue
        sock.setblocking(False)
        opened += 1
        sock.send(b"GET /health HTTP/1.1\r\n")
        state[sock] = {"answer": b"", "sent": 0}
        sel.register(sock, selectors.EVENT_READ)
    next_line = time.monotonic() + interval
    while state and time.monotonic() - started < duration:
        timeout = max(0.0, min(next_line - time.monotonic(), 0.5))
        for key, _ in sel.select(timeout):
            sock = key.fileobj  # type: ignore[assignment]
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if data:
                state[sock]["answer"] += data
                continue
            sel.unregister(sock)
            ends.append((time.monotonic() - started, state.pop(sock)["answer"][:12].decode("latin-1")))
            sock.close()
        if time.monotonic() >= next_line:
            next_line += interval
            for sock, st in list(state.items()):
                try:
                    sock.send(b"x-slow-%d: y\r\n" % st["sent"])
                    st["sent"] += 1
                except OSError:
                    pass
    still_open = len(state)
    for sock in state:
        sock.close()
    statuses: dict[str, int] = {}
    for _, answer in ends:
        code = answer[9:12] if answer.startswith("HTTP/1.1 ") else "closed"
        statuses[code] = statuses.get(code, 0) + 1
    cut = [t for t, answer in ends if answer.startswith("HTTP/1.1 408")]
    refused = [t for t, answer in ends if answer[9:12] in ("429", "503")]
    return {
        "opened": opened,
        "failed_connect": failed_connect,
        "still_open": still_open,
        "statuses": statuses,
        "cut_first_s": round(min(cut), 2) if cut else None,
        "cut_last_s": round(max(cut), 2) if cut else None,
        "refused_last_s": round(max(refused), 2) if refused else None,
    }


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command == "slow-backend":
        slow_backend(int(args[0]), args[1], float(args[2]), int(args[3]), float(args[4]))
        return
    if command == "gossip-park":
        result = gossip_park(args[0], int(args[1]), int(args[2]), int(args[3]), int(args[4]), float(args[5]))
    elif command == "idle-conns":
        result = idle_conns(args[0], int(args[1]), float(args[2]))
    elif command == "chunk-flood":
        result = chunk_flood(args[0], args[1], int(args[2]))
    elif command == "initial-burst":
        result = initial_burst(args[0], int(args[1]), args[2], int(args[3]), args[4])
    elif command == "slowloris":
        result = slowloris(args[0], int(args[1]), int(args[2]), int(args[3]), float(args[4]), float(args[5]), args[6])
    else:
        raise SystemExit(f"unknown command {command!r}")
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)  # no interpreter teardown races with reactor threads


if __name__ == "__main__":
    main(sys.argv[1:])
