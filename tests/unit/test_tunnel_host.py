"""Host side of TUNNEL_HTTP with a recording stream and an in-memory backend connection."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from meshd.httpwire import render_request
from meshd.tunnel import Backend, HostTunnel


class RecordingStream:
    def __init__(self) -> None:
        self.written = bytearray()
        self.fin = False
        self.reset_code: int | None = None
        self.producer: Any = None
        self.receiver: Any = None

    def set_receiver(self, receiver: Any) -> None:
        self.receiver = receiver

    def write(self, data: bytes) -> None:
        assert not self.fin and self.reset_code is None
        self.written += data

    def loseWriteConnection(self) -> None:
        self.fin = True

    def reset(self, code: int = 0) -> None:
        self.reset_code = code

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...


class MemoryBackend(Backend):
    def __init__(self, refuse: bool = False, max_inflight: int = 4) -> None:
        super().__init__(None, "http://127.0.0.1:8080/base", max_inflight=max_inflight)
        self.refuse = refuse
        self.connections: list[tuple[Protocol, StringTransport]] = []

    def connect(self, protocol: Protocol) -> Deferred[Any]:
        if self.refuse:
            return fail(ConnectionRefusedError())
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)


REQ = render_request(b"POST", b"/v1/chat/completions", [(b"host", b"x"), (b"content-type", b"application/json")], b"{}")


def start(backend: Backend, data: bytes = REQ) -> tuple[RecordingStream, HostTunnel]:
    stream = RecordingStream()
    tunnel = HostTunnel(stream, backend, peer="peer")
    stream.set_receiver(tunnel)
    tunnel.dataReceived(data)
    return stream, tunnel


def test_request_relayed_with_connection_close_and_response_streamed_back() -> None:
    backend = MemoryBackend()
    stream, _tunnel = start(backend)
    (proto, transport) = backend.connections[0]
    sent = transport.value()
    assert sent.startswith(b"POST /base/v1/chat/completions HTTP/1.1\r\n")
    assert b"host: 127.0.0.1:8080\r\n" in sent and b"connection: close\r\n" in sent
    assert sent.endswith(b"\r\n\r\n{}")
    assert stream.producer is transport  # backpressure: the QUIC stream pauses the backend socket
    assert backend.stats.inflight == 1
    proto.dataReceived(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    proto.dataReceived(b"5\r\nhello\r\n0\r\n\r\n")
    assert bytes(stream.written).endswith(b"5\r\nhello\r\n0\r\n\r\n")
    assert not stream.fin
    proto.connectionLost(Failure(ConnectionDone()))
    assert stream.fin
    assert stream.producer is None
    assert backend.stats.inflight == 0


def test_request_split_across_many_writes() -> None:
    backend = MemoryBackend()
    stream = RecordingStream()
    tunnel = HostTunnel(stream, backend)
    for i in range(len(REQ)):
        tunnel.dataReceived(REQ[i : i + 1])
    assert len(backend.connections) == 1


def test_malformed_request_gets_400_json_and_fin() -> None:
    backend = MemoryBackend()
    stream, _ = start(backend, b"GARBAGE\r\n\r\n")
    head, body = bytes(stream.written).split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 400 ")
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert stream.fin
    assert not backend.connections


def test_oversize_body_gets_413() -> None:
    head = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 9000000\r\n\r\n"
    stream, _ = start(MemoryBackend(), head)
    assert bytes(stream.written).startswith(b"HTTP/1.1 413 ")


def test_eof_before_complete_request_is_400() -> None:
    stream, tunnel = start(MemoryBackend(), REQ[:20])
    tunnel.eofReceived()
    assert bytes(stream.written).startswith(b"HTTP/1.1 400 ")


def test_busy_backend_drops_the_stream_without_a_response() -> None:
    backend = MemoryBackend(max_inflight=1)
    start(backend)
    stream2, _ = start(backend)
    assert stream2.fin and not stream2.written
    assert backend.stats.rejected_busy == 1
    assert len(backend.connections) == 1


def test_unreachable_backend_is_503() -> None:
    backend = MemoryBackend(refuse=True)
    stream, _ = start(backend)
    head, body = bytes(stream.written).split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 503 ")
    assert json.loads(body)["error"]["message"] == "llama backend unavailable"
    assert backend.stats.inflight == 0


def test_client_going_away_aborts_the_backend_request() -> None:
    backend = MemoryBackend()
    _stream, tunnel = start(backend)
    proto, transport = backend.connections[0]
    proto.dataReceived(b"HTTP/1.1 200 OK\r\n")
    tunnel.connectionLost(Failure(ConnectionLost()))
    assert transport.disconnecting  # abortConnection on a StringTransport
    assert backend.stats.inflight == 0


def test_backend_failing_mid_response_resets_the_stream() -> None:
    backend = MemoryBackend()
    stream, _ = start(backend)
    proto, _ = backend.connections[0]
    proto.dataReceived(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
    proto.connectionLost(Failure(ConnectionLost()))
    assert stream.reset_code is not None and not stream.fin
    assert backend.stats.inflight == 0
