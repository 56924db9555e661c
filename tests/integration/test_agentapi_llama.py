"""The agent-API layer between the official SDK clients and a real llama-server (no mocks in between).

The openai/anthropic clients send their requests through :class:`tests.unit.agentapi_support.Gateway` (the
sans-IO layer driven as the web layer will drive it); every chat-completions request it routes goes to a
real llama-server over HTTP, and its real answer (streamed or not) is translated back. The tiny model is
the tool-calling variant of :mod:`tests.integration.tool_backend`; for tool calls the test adds the
``logit_bias`` that makes that random model start a call (the grammar does the rest). llama-server also
serves ``/v1/responses`` and ``/v1/messages`` itself, which gives an independent translation to compare with.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest

from meshd.agentapi import match
from meshd.agentapi.adapter import Forward
from tests.integration import tool_backend
from tests.integration.backend import LlamaBackend
from tests.integration.tool_backend import post, tool_bias
from tests.unit.agentapi_support import Gateway, Upstream

pytestmark = pytest.mark.integration
llama_tool_backend = tool_backend.llama_tool_backend

WEATHER = {"type": "object", "properties": {"unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["unit"]}


def to_backend(backend: LlamaBackend, *, bias: bool = False) -> Any:
    """An upstream for the Gateway: the forwarded request, sent to llama-server."""

    def upstream(forward: Forward) -> Upstream:
        body = json.loads(forward.body)
        if bias and body.get("tools"):
            body["logit_bias"] = tool_bias(eos=40.0)  # far above the threshold: one call, then stop
        body.setdefault("temperature", 0)
        status, content_type, raw = post(backend, forward.path, body)
        return Upstream(status, content_type, raw)

    return upstream


def test_responses_text_agrees_with_llama_servers_own_translation(llama_tool_backend: LlamaBackend) -> None:
    gateway = Gateway(to_backend(llama_tool_backend), piece=5)
    ours = gateway.openai().responses.create(
        model="tiny", input="weather and time?", max_output_tokens=12, temperature=0
    )
    status, _, raw = post(
        llama_tool_backend,
        "/v1/responses",
        {"model": "tiny", "input": "weather and time?", "max_output_tokens": 12, "temperature": 0},
    )
    native = json.loads(raw)
    assert status == 200 and ours.output_text == native["output"][0]["content"][0]["text"] != ""
    assert ours.status == "incomplete" and ours.incomplete_details is not None  # 12 tokens: cut by max_output_tokens
    assert ours.usage is not None and ours.usage.output_tokens == 12


def test_responses_stream_with_a_real_tool_call(llama_tool_backend: LlamaBackend) -> None:
    gateway = Gateway(to_backend(llama_tool_backend, bias=True), piece=3)
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": False}]
    with gateway.openai().responses.stream(
        model="tiny", input="weather and time?", tools=tools, tool_choice="required"
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    call = final.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert len(deltas) > 3 and "".join(deltas) == call.arguments  # the arguments came split over many events
    assert json.loads(call.arguments)["unit"] in ("c", "f")
    # the next turn sends the tool's output; the stored first turn supplies the call
    second = gateway.openai().responses.create(
        model="tiny",
        previous_response_id=final.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        max_output_tokens=4,
    )
    assert second.output_text
    _, chat = gateway.forwarded[-1]
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant", "tool"]


def test_messages_stream_with_a_real_tool_call(llama_tool_backend: LlamaBackend) -> None:
    gateway = Gateway(to_backend(llama_tool_backend, bias=True), piece=4)
    with gateway.anthropic().messages.stream(
        model="tiny",
        max_tokens=200,
        messages=[{"role": "user", "content": "weather and time?"}],
        tools=[{"name": "get_weather", "input_schema": WEATHER}],
        tool_choice={"type": "any"},
    ) as stream:
        partials = [e.partial_json for e in stream if e.type == "input_json"]
        message = stream.get_final_message()
    block = message.content[0]
    assert message.stop_reason == "tool_use" and block.type == "tool_use" and block.name == "get_weather"
    assert len(partials) > 3 and block.input["unit"] in ("c", "f")
    assert message.usage.output_tokens > 0 and message.usage.input_tokens > 0


def test_messages_text_agrees_with_llama_servers_own_translation(llama_tool_backend: LlamaBackend) -> None:
    gateway = Gateway(to_backend(llama_tool_backend), piece=6)
    request = {"model": "tiny", "max_tokens": 10, "messages": [{"role": "user", "content": "hello"}]}
    ours = gateway.anthropic().messages.create(**request)  # type: ignore[arg-type]
    _, _, raw = post(llama_tool_backend, "/v1/messages", {**request, "temperature": 0})
    native = json.loads(raw)
    assert ours.content[0].type == "text" and ours.content[0].text == native["content"][0]["text"] != ""
    assert ours.stop_reason == native["stop_reason"] == "max_tokens"


def test_count_tokens_uses_the_real_tokenizer(llama_tool_backend: LlamaBackend) -> None:
    gateway = Gateway(to_backend(llama_tool_backend))
    request: Any = {
        "model": "tiny",
        "system": "Be brief and precise.",
        "messages": [
            {"role": "user", "content": "weather and time? and the mesh, the node, the peer"},
            {"role": "assistant", "content": "hello world"},
            {"role": "user", "content": "and the llama model"},
        ],
    }
    ours = gateway.anthropic().messages.count_tokens(**request)
    assert ours.model_extra == {"meshd_token_count": "tokenizer"}
    _, _, raw = post(llama_tool_backend, "/v1/messages/count_tokens", request)
    native = json.loads(raw)["input_tokens"]  # llama-server renders the chat template first
    assert abs(ours.input_tokens - native) <= 0.25 * native


def test_context_overflow_reaches_both_sdks_as_their_error(llama_tool_backend: LlamaBackend) -> None:
    gateway = Gateway(to_backend(llama_tool_backend))
    long_input = "mesh " * 700
    with pytest.raises(openai.BadRequestError) as oa:
        gateway.openai().responses.create(model="tiny", input=long_input, stream=True)
    assert oa.value.code == "context_length_exceeded"
    with pytest.raises(anthropic.BadRequestError) as an:
        gateway.anthropic().messages.create(
            model="tiny", max_tokens=5, messages=[{"role": "user", "content": long_input}]
        )
    assert str(an.value.body["error"]["message"]).startswith("prompt is too long")  # type: ignore[index]


def test_pass_through_to_a_host_that_speaks_the_api(llama_tool_backend: LlamaBackend) -> None:
    """With ``store: false`` a Responses request may go unchanged to a native host; its answer is relayed."""
    gateway = Gateway(Upstream(500, "text/plain", b"unused"))
    endpoint_body = {"model": "tiny", "input": "hello", "store": False, "max_output_tokens": 6, "temperature": 0}
    prepared = gateway.agent.prepare(match("POST", "/v1/responses"), json.dumps(endpoint_body).encode())  # type: ignore[arg-type]
    forward = prepared.passthrough()
    assert forward is not None and forward.path == "/v1/responses"
    status, content_type, raw = post(llama_tool_backend, forward.path, json.loads(forward.body))
    translator = forward.translator()
    head = translator.start(status, [("content-type", content_type)]).head
    body = translator.feed(raw).body
    assert translator.finish().done and head is not None and head.status == 200
    assert json.loads(body)["object"] == "response"
