"""A host's own answers on inbound tunnels (mesh-llm 0.76 host ingress), and the translated relay."""

from __future__ import annotations

import json
from typing import Any

from meshd.httpwire import ParsedRequest, render_request
from meshd.ingress import Answer, HostIngress, Relay
from meshd.mesh.models import LocalModel
from meshd.mesh.state import MeshState
from meshd.protocol.peers import Role
from meshd.tunnel import HostTunnel

from .test_tunnel_host import MemoryBackend, RecordingStream

ME = bytes(32)


def ingress(*names: str) -> HostIngress:
    return HostIngress(lambda: [LocalModel(n, context_length=512) for n in names], MeshState(ME, Role.HOST))


def request(method: bytes, path: bytes, body: Any = None) -> ParsedRequest:
    raw = json.dumps(body).encode() if body is not None else b""
    headers = ((b"host", b"h"), (b"content-type", b"application/json"))
    return ParsedRequest(method=method, target=path, headers=headers, body=raw)


def test_models_are_answered_by_the_host_in_076_shape() -> None:
    answer = ingress("tiny").decide(request(b"GET", b"/v1/models?x=1"))
    assert isinstance(answer, Answer) and answer.status == 200
    ids = [m["id"] for m in json.loads(answer.body)["data"]]
    assert ids == ["tiny", "mesh"]


def test_named_models_the_host_serves_go_to_the_backend_and_others_get_404() -> None:
    decision = ingress("tiny").decide(request(b"POST", b"/v1/chat/completions", {"model": "tiny", "messages": []}))
    assert isinstance(decision, Relay) and decision.translator is None
    chosen = ingress("tiny").decide(request(b"POST", b"/v1/chat/completions", {"model": "mesh", "messages": []}))
    assert isinstance(chosen, Relay) and json.loads(chosen.request.body)["model"] == "tiny"  # mesh: the served one
    missing = ingress("tiny").decide(request(b"POST", b"/v1/chat/completions", {"model": "big", "messages": []}))
    assert isinstance(missing, Answer) and missing.status == 404
    assert json.loads(missing.body)["error"]["code"] == "model_not_found" and "'tiny'" in missing.body.decode()
    anything = ingress("tiny").decide(request(b"POST", b"/v1/chat/completions", {"messages": []}))
    assert isinstance(anything, Relay)  # no model named: the backend chooses


def test_agent_apis_are_translated_on_the_host_but_stored_state_is_refused() -> None:
    relay = ingress("tiny").decide(request(b"POST", b"/v1/responses", {"model": "tiny", "input": "hi"}))
    assert isinstance(relay, Relay) and relay.translator is not None
    assert relay.request.target == b"/v1/chat/completions"
    assert json.loads(relay.request.body)["messages"] == [{"role": "user", "content": "hi"}]
    refused = ingress("tiny").decide(
        request(b"POST", b"/v1/responses", {"model": "tiny", "input": "hi", "previous_response_id": "resp_1"})
    )
    assert isinstance(refused, Answer) and refused.status == 400 and b"previous_response_id" in refused.body
    claude = ingress("tiny").decide(
        request(
            b"POST", b"/v1/messages", {"model": "big", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
        )
    )
    assert isinstance(claude, Answer) and claude.status == 404
    assert json.loads(claude.body)["type"] == "error"  # Anthropic's shape for Anthropic's API


def test_a_translated_answer_leaves_the_host_as_the_callers_api() -> None:
    backend = MemoryBackend()
    stream = RecordingStream()
    tunnel = HostTunnel(stream, backend, ingress=ingress("tiny"))
    tunnel.dataReceived(
        render_request(
            b"POST", b"/v1/messages", [(b"host", b"h")],
            json.dumps({"model": "tiny", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}).encode(),
        )
    )  # fmt: skip
    proto, transport = backend.connections[0]
    assert b"POST /base/v1/chat/completions " in transport.value()
    chat = {"id": "c", "object": "chat.completion", "created": 1, "model": "tiny",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}  # fmt: skip
    body = json.dumps(chat).encode()
    for byte in b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body),
        body,
    ):
        proto.dataReceived(bytes([byte]))  # one byte at a time
    head, answer = bytes(stream.written).split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 ") and b"connection: close" in head
    message = json.loads(answer)
    assert message["type"] == "message" and message["content"][0]["text"] == "hello"
    assert stream.fin and backend.inflight == 0
