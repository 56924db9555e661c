"""Host side of TUNNEL_HTTP with a recording stream and an in-memory backend connection."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from meshd.httpwire import render_request
from meshd.tunnel import Backend, HostTunnel, TunnelState
from meshd.tunnel.host import BACKEND_FIRST_BYTE_TIMEOUT, REQUEST_READ_TIMEOUT, STALLED_READER_TIMEOUT


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
    def __init__(self, refuse: bool = False, max_inflight: int = 4, queue_timeout: float = 30.0) -> None:
        super().__init__(Clock(), "http://127.0.0.1:8080/base", max_inflight=max_inflight, queue_timeout=queue_timeout)
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
    assert stream.producer.transport is transport  # backpressure: the QUIC stream pauses the backend socket
    assert backend.inflight == 1
    proto.dataReceived(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    proto.dataReceived(b"5\r\nhello\r\n")
    assert not stream.fin and backend.inflight == 1
    proto.dataReceived(b"0\r\n\r\n")
    assert bytes(stream.written).endswith(b"5\r\nhello\r\n0\r\n\r\n")
    # Complete at the end of its framing: FIN, slot free, backend connection closed, before any close.
    assert stream.fin and stream.producer is None
    assert backend.inflight == 0 and backend.stats.served == {"(other)": 1}
    assert transport.disconnecting
    proto.connectionLost(Failure(ConnectionDone()))
    assert backend.inflight == 0


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


def answer(stream: RecordingStream) -> tuple[bytes, dict[str, Any]]:
    head, body = bytes(stream.written).split(b"\r\n\r\n", 1)
    return head, json.loads(body)


def test_busy_backend_queues_then_serves_when_a_slot_frees() -> None:
    backend = MemoryBackend(max_inflight=1)
    first, _ = start(backend)
    second, tunnel2 = start(backend)
    assert tunnel2.state is TunnelState.QUEUED and not second.written and len(backend.connections) == 1
    proto, _ = backend.connections[0]
    proto.dataReceived(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    assert first.fin  # complete: its slot went straight to the waiter
    assert len(backend.connections) == 2 and tunnel2.state is TunnelState.RELAYING
    assert backend.stats.queued == 1 and backend.stats.rejected_busy == 0


def test_busy_backend_answers_busy_when_the_wait_ends() -> None:
    backend = MemoryBackend(max_inflight=1, queue_timeout=30.0)
    start(backend)
    stream, tunnel = start(backend)
    assert isinstance(backend.clock, Clock)
    backend.clock.advance(29.9)
    assert tunnel.state is TunnelState.QUEUED
    backend.clock.advance(0.2)
    head, body = answer(stream)
    assert head.startswith(b"HTTP/1.1 503 ") and b"x-meshd-busy: 1" in head and b"retry-after: 1" in head
    assert body["error"]["code"] == "server_busy"
    assert stream.fin and backend.stats.rejected_busy == 1 and backend.slots.queued == 0


def test_a_meshd_client_asking_no_wait_gets_busy_at_once_and_the_header_stays_here() -> None:
    backend = MemoryBackend(max_inflight=1)
    start(backend)
    no_wait = render_request(b"POST", b"/v1/x", [(b"host", b"x"), (b"x-meshd-wait", b"0")], b"{}")
    stream, _ = start(backend, no_wait)
    head, body = answer(stream)
    assert head.startswith(b"HTTP/1.1 503 ") and body["error"]["code"] == "server_busy"
    # a request that gets a slot never shows the header to the backend
    backend2 = MemoryBackend()
    start(backend2, no_wait)
    assert b"x-meshd" not in backend2.connections[0][1].value()


def test_a_queued_tunnel_that_goes_away_gives_its_place_up() -> None:
    backend = MemoryBackend(max_inflight=1)
    start(backend)
    _, tunnel = start(backend)
    tunnel.connectionLost(Failure(ConnectionLost()))
    assert backend.slots.queued == 0
    proto, _ = backend.connections[0]
    proto.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert backend.inflight == 0 and len(backend.connections) == 1


def test_raised_limit_from_the_backend_serves_waiters_but_the_flag_wins() -> None:
    auto = Backend(Clock(), "http://127.0.0.1:8080")
    assert auto.max_inflight == 4 and auto.limit_source == "default"
    auto.learned_limit(8, "llama-server /props")
    assert auto.max_inflight == 8 and auto.limit_source == "llama-server /props"
    flagged = Backend(Clock(), "http://127.0.0.1:8080", max_inflight=2)
    flagged.learned_limit(8, "llama-server /props")
    assert flagged.max_inflight == 2 and flagged.limit_source == "flag"


def test_slow_request_gets_408_and_silent_backend_504() -> None:
    backend = MemoryBackend()
    stream, tunnel = start(backend, REQ[:10])
    assert isinstance(backend.clock, Clock)
    backend.clock.advance(REQUEST_READ_TIMEOUT)
    assert answer(stream)[0].startswith(b"HTTP/1.1 408 ") and tunnel.state is TunnelState.DONE
    stream2, _ = start(backend)
    backend.clock.advance(BACKEND_FIRST_BYTE_TIMEOUT)
    head, body = answer(stream2)
    assert head.startswith(b"HTTP/1.1 504 ") and body["error"]["code"] == "backend_timeout"
    assert backend.inflight == 0 and backend.connections[0][1].disconnecting


def test_a_peer_that_stops_reading_loses_its_tunnel_and_the_slot() -> None:
    backend = MemoryBackend(max_inflight=1)
    stream, tunnel = start(backend)
    proto, transport = backend.connections[0]
    proto.dataReceived(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
    stream.producer.pauseProducing()  # the QUIC stream's send buffer is full: the peer is not reading
    assert transport.producerState == "paused"
    assert isinstance(backend.clock, Clock)
    backend.clock.advance(STALLED_READER_TIMEOUT - 1)
    stream.producer.resumeProducing()  # it read a little: the clock starts again
    stream.producer.pauseProducing()
    backend.clock.advance(STALLED_READER_TIMEOUT - 1)
    assert tunnel.state is TunnelState.RELAYING
    backend.clock.advance(1)
    assert tunnel.state is TunnelState.DONE and stream.reset_code is not None
    assert backend.inflight == 0 and transport.disconnecting


def test_informational_responses_are_not_relayed() -> None:
    backend = MemoryBackend()
    stream, _ = start(backend)
    proto, _ = backend.connections[0]
    proto.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    assert bytes(stream.written) == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok" and stream.fin


def test_unreachable_backend_is_503() -> None:
    backend = MemoryBackend(refuse=True)
    stream, _ = start(backend)
    head, body = bytes(stream.written).split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 503 ")
    assert json.loads(body)["error"]["message"] == "llama backend unavailable"
    assert backend.inflight == 0


def test_client_going_away_aborts_the_backend_request() -> None:
    backend = MemoryBackend()
    _stream, tunnel = start(backend)
    proto, transport = backend.connections[0]
    proto.dataReceived(b"HTTP/1.1 200 OK\r\n")
    tunnel.connectionLost(Failure(ConnectionLost()))
    assert transport.disconnecting  # abortConnection on a StringTransport
    assert backend.inflight == 0


def test_backend_failing_mid_response_resets_the_stream() -> None:
    backend = MemoryBackend()
    stream, _ = start(backend)
    proto, _ = backend.connections[0]
    proto.dataReceived(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
    proto.connectionLost(Failure(ConnectionLost()))
    assert stream.reset_code is not None and not stream.fin
    assert backend.inflight == 0
