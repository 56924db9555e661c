"""The host's per-model served counter (``BackendStats.served``, shown on a host's dashboard)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure

from meshd.httpwire import render_request
from meshd.tunnel import BackendStats, HostTunnel, requested_model
from meshd.tunnel.backend import MAX_MODEL_NAME, MAX_SERVED_MODELS, OTHER_MODEL

from .test_tunnel_host import MemoryBackend, RecordingStream, start

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


def chat(model: object, extra: dict[str, object] | None = None) -> bytes:
    body = json.dumps({"model": model, "messages": [], **(extra or {})}).encode()
    return render_request(b"POST", b"/v1/chat/completions", [(b"host", b"x")], body)


def serve(backend: MemoryBackend, request: bytes, end: Failure | None = None) -> RecordingStream:
    stream, _ = start(backend, request)
    proto, _transport = backend.connections[-1]
    proto.dataReceived(OK)
    proto.connectionLost(end or Failure(ConnectionDone()))
    return stream


def test_each_answered_request_counts_once_for_its_model() -> None:
    backend = MemoryBackend()
    for model in ("tiny", "tiny", "big", "tiny"):
        assert serve(backend, chat(model)).fin
    assert backend.stats.served == {"tiny": 3, "big": 1}
    assert backend.stats.requests == 4
    # No model (or not JSON): still answered, counted apart.
    serve(backend, render_request(b"POST", b"/v1/chat/completions", [(b"host", b"x")], b"not json"))
    serve(backend, chat(5))
    assert backend.stats.served[OTHER_MODEL] == 2


def test_requests_not_answered_in_full_are_not_served() -> None:
    backend = MemoryBackend(max_inflight=1)
    busy_holder, _ = start(backend, chat("tiny"))  # takes the only slot
    no_wait = chat("tiny").replace(b"\r\n\r\n", b"\r\nx-meshd-wait: 0\r\n\r\n", 1)
    busy, _ = start(backend, no_wait)  # answered busy at once
    assert busy.fin and bytes(busy.written).startswith(b"HTTP/1.1 503 ")
    proto, _ = backend.connections[0]
    proto.dataReceived(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel")
    proto.connectionLost(Failure(ConnectionLost()))  # broke mid-response: the stream is reset
    assert busy_holder.reset_code is not None
    refused = MemoryBackend(refuse=True)
    stream, _ = start(refused, chat("tiny"))
    assert bytes(stream.written).startswith(b"HTTP/1.1 503 ")
    gone = MemoryBackend()
    stream, tunnel = start(gone, chat("tiny"))
    tunnel.connectionLost(Failure(ConnectionLost()))  # the client went away first
    gone.connections[0][0].connectionLost(Failure(ConnectionLost()))
    for b in (backend, refused, gone):
        assert b.stats.served == {}, b.stats


def test_the_same_request_in_any_segmentation_counts_the_same() -> None:
    request = chat("tiny", {"nested": [[{"a": [1, 2, {"b": "c"}]}]] * 50})
    for size in (1, 7, 64, len(request)):
        backend = MemoryBackend()
        stream = RecordingStream()
        tunnel = HostTunnel(stream, backend)
        for i in range(0, len(request), size):
            tunnel.dataReceived(request[i : i + size])
        proto, _ = backend.connections[0]
        proto.dataReceived(OK)
        proto.connectionLost(Failure(ConnectionDone()))
        assert backend.stats.served == {"tiny": 1}, size


def test_the_table_of_names_is_bounded() -> None:
    stats = BackendStats()
    for i in range(MAX_SERVED_MODELS * 3):
        stats.count_served(f"junk-{i}")
    stats.count_served("x" * (MAX_MODEL_NAME + 1))
    assert len(stats.served) == MAX_SERVED_MODELS + 1
    assert sum(stats.served.values()) == MAX_SERVED_MODELS * 3 + 1
    assert stats.served[OTHER_MODEL] == MAX_SERVED_MODELS * 2 + 1
    stats.count_served("junk-0")  # a name already counted keeps counting
    assert stats.served["junk-0"] == 2


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)


@given(json_values, st.one_of(st.none(), st.text(max_size=40), st.integers()))
def test_requested_model_is_the_top_level_model_string(value: object, model: object) -> None:
    body = json.dumps({"other": value, "model": model}).encode()
    assert requested_model(body) == (model if isinstance(model, str) else None)
    assert requested_model(json.dumps(value).encode()) == (
        value.get("model") if isinstance(value, dict) and isinstance(value.get("model"), str) else None
    )


@given(st.binary(max_size=2000))
def test_requested_model_never_raises(body: bytes) -> None:
    assert requested_model(body) is None or isinstance(requested_model(body), str)


@given(st.integers(min_value=1, max_value=200_000))
def test_deep_nesting_is_not_a_crash(depth: int) -> None:
    body = b'{"model": "m", "x": ' + b"[" * depth + b"]" * depth + b"}"
    assert requested_model(body) in ("m", None)
