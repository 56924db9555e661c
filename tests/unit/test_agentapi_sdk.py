"""The official SDK clients against the layer: stored responses, conversations, token counts, notes, errors."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest

from meshd.agentapi.adapter import Forward
from tests.unit.agentapi_support import Gateway, Upstream

TOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": False}]


def test_a_conversation_continued_with_previous_response_id() -> None:
    gateway = Gateway(
        [Upstream.load("llama_tool_json"), Upstream.load("llama_text_json"), Upstream.load("llama_text_json")]
    )
    client = gateway.openai()
    first = client.responses.create(model="tiny", instructions="A", input="weather?", tools=TOOLS)  # type: ignore[arg-type]
    call = first.output[0]
    assert call.type == "function_call"
    second = client.responses.create(
        model="tiny",
        instructions="B",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=TOOLS,  # type: ignore[arg-type]
    )
    assert second.previous_response_id == first.id and second.output_text == "&B$Oc world th"
    _, chat = gateway.forwarded[1]
    assert chat["messages"] == [
        {"role": "system", "content": "B"},  # instructions are not carried over (as OpenAI does)
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": call.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"},
    ]
    third = client.responses.create(model="tiny", previous_response_id=second.id, input="and tomorrow?")
    _, chat = gateway.forwarded[2]
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant", "tool", "assistant", "user"]
    assert chat["messages"][3]["content"] == "&B$Oc world th"
    assert client.responses.retrieve(third.id).output_text == third.output_text


def test_retrieve_delete_and_expiry() -> None:
    gateway = Gateway(Upstream.load("llama_text_json"))
    client = gateway.openai()
    kept = client.responses.create(model="tiny", input="hi")
    unkept = client.responses.create(model="tiny", input="hi", store=False)
    assert client.responses.retrieve(kept.id).id == kept.id
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.retrieve(unkept.id)
    assert unkept.id in str(info.value) and "expired" in str(info.value)
    client.responses.delete(kept.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(kept.id)
    again = client.responses.create(model="tiny", input="hi")
    gateway.clock += 599
    assert client.responses.retrieve(again.id).id == again.id
    gateway.clock += 1
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(again.id)


def test_unknown_previous_response_id_says_so() -> None:
    gateway = Gateway(Upstream.load("llama_text_json"))
    with pytest.raises(openai.NotFoundError) as info:
        gateway.openai().responses.create(model="tiny", input="hi", previous_response_id="resp_nope")
    body: Any = info.value.body
    assert body["param"] == "previous_response_id" and body["code"] == "previous_response_not_found"
    assert "resp_nope" in body["message"] and gateway.forwarded == []


def test_a_streamed_response_is_stored_too() -> None:
    gateway = Gateway(Upstream.load("llama_tool_stream"))
    client = gateway.openai()
    with client.responses.stream(model="tiny", input="weather?", tools=TOOLS) as stream:  # type: ignore[arg-type]
        final = stream.get_final_response()
    stored = client.responses.retrieve(final.id)
    assert [o.model_dump() for o in stored.output] == [o.model_dump(exclude={"parsed_arguments"}) for o in final.output]
    assert stored.output[0].type == "function_call"


def test_notes_reach_the_caller() -> None:
    gateway = Gateway(Upstream.load("llama_text_json"))
    raw = gateway.openai().responses.with_raw_response.create(
        model="tiny",
        input="hi",
        tools=[{"type": "web_search"}],
        reasoning={"effort": "medium", "summary": "auto"},
    )
    notes = raw.headers["x-meshd-notes"]
    assert "tools[0] (type 'web_search')" in notes and "reasoning.summary" in notes
    response = raw.parse()
    assert response.model_extra is not None and any("web_search" in n for n in response.model_extra["meshd_notes"])


def test_raw_responses_event_stream_through_the_sdk() -> None:
    gateway = Gateway(Upstream.load("openai_parallel_tools_stream"))
    stream = gateway.openai().responses.create(model="gpt-4.1", input="hi", stream=True, tools=TOOLS)  # type: ignore[arg-type]
    types = [event.type for event in stream]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert types.count("response.output_item.added") == types.count("response.output_item.done") == 2
    assert types.count("response.function_call_arguments.delta") == 7  # the 9 argument pieces, less 2 empty ones


def test_claude_code_style_requests() -> None:
    gateway = Gateway(Upstream.load("llama_tool_stream"))
    client = gateway.anthropic()
    with client.messages.stream(
        model="tiny",
        max_tokens=512,
        system=[{"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "weather?"}]}],
        tools=[{"name": "get_weather", "description": "w", "input_schema": {"type": "object"}}],
        extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"},
    ) as stream:
        text_events = [e.type for e in stream]
        message = stream.get_final_message()
    assert "content_block_start" in text_events and message.stop_reason == "tool_use"
    block = message.content[0]
    assert block.type == "tool_use" and block.input == {"unit": "c"}
    _, chat = gateway.forwarded[0]
    assert chat["messages"][0] == {"role": "system", "content": "You are a coding agent."}


def test_count_tokens_from_the_hosts_tokenizer() -> None:
    seen: list[Forward] = []

    def upstream(forward: Forward) -> Upstream:
        seen.append(forward)
        return Upstream.load("llama_tokenize")

    gateway = Gateway(upstream)
    count = gateway.anthropic().messages.count_tokens(
        model="tiny", messages=[{"role": "user", "content": "weather and time?"}]
    )
    tokens = json.loads(Upstream.load("llama_tokenize").body)["tokens"]
    assert count.input_tokens == len(tokens) + 4  # the host's count, plus 4 for one message's template markup
    assert count.model_extra == {"meshd_token_count": "tokenizer"}
    assert seen[0].path == "/tokenize"


def test_count_tokens_estimated_when_the_host_has_no_tokenizer() -> None:
    gateway = Gateway(Upstream(404, "text/plain", b"404 page not found"))
    count = gateway.anthropic().messages.count_tokens(
        model="qwen2.5:7b", system="Be brief.", messages=[{"role": "user", "content": "x" * 350}]
    )
    assert count.model_extra == {"meshd_token_count": "estimate"}
    assert 100 <= count.input_tokens <= 130  # 350 characters and the system prompt, at 3.5 bytes per token


def test_responses_input_tokens_count() -> None:
    gateway = Gateway(
        [Upstream.load("llama_text_json"), Upstream.load("llama_tokenize"), Upstream(404, "text/plain", b"")]
    )
    client = gateway.openai()
    first = client.responses.create(model="tiny", input="weather and time?")
    counted = client.responses.input_tokens.count(model="tiny", previous_response_id=first.id, input="and now?")
    assert counted.object == "response.input_tokens" and counted.model_extra == {"meshd_token_count": "tokenizer"}
    path, body = gateway.forwarded[-1]
    assert path == "/tokenize" and "weather and time?" in body["content"] and body["content"].endswith("and now?")
    tokens = json.loads(Upstream.load("llama_tokenize").body)["tokens"]
    assert counted.input_tokens == len(tokens) + 4 * 3  # three messages: question, answer, question
    estimated = client.responses.input_tokens.count(model="tiny", input="x" * 35)
    # "user\n" and 35 characters: 40 bytes at 3.5 per token, and 4 for the message
    assert estimated.model_extra == {"meshd_token_count": "estimate"} and estimated.input_tokens == 12 + 4


def test_anthropic_errors_are_anthropic_shaped() -> None:
    gateway = Gateway(Upstream.load("llama_text_json"))
    client = gateway.anthropic()
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="tiny", max_tokens=5, messages=[{"role": "system", "content": "x"}])  # type: ignore[typeddict-item]
    assert info.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "messages[0].role must be one of 'user', 'assistant', not 'system'",
        },
    }
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="tiny", max_tokens=0, messages=[{"role": "user", "content": "x"}])


def test_openai_request_errors_name_the_parameter() -> None:
    gateway = Gateway(Upstream.load("llama_text_json"))
    with pytest.raises(openai.BadRequestError) as info:
        gateway.openai().responses.create(model="tiny", input="x", temperature=9)
    assert info.value.param == "temperature" and info.value.type == "invalid_request_error"
