"""Golden tests: recorded chat-completions answers → Responses / Messages answers, parsed by the official SDKs.

Each case sends a request with the real ``openai`` or ``anthropic`` client; :class:`Gateway` answers it from a
recorded (or derived) upstream answer fed in small pieces. The translated bytes must equal the golden file
in ``tests/unit/data/agentapi/`` (``MESHD_UPDATE_GOLDEN=1`` rewrites them), every event must validate against
the SDK's types, the SDK's stream helper must accumulate the stream to the final object we sent, and the
content must be what the upstream said (read from the fixture here, without meshd's code).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.unit.agentapi_support import DATA, Gateway, Translated, Upstream, sse_json

GOLDEN = DATA / "agentapi"
UPDATE = os.environ.get("MESHD_UPDATE_GOLDEN") == "1"
RESPONSE_EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
MESSAGE_EVENTS: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)

WEATHER = {"type": "object", "properties": {"unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["unit"]}
R_TOOLS = [
    {"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": False},
    {"type": "function", "name": "get_time", "parameters": {"type": "object"}, "strict": False},
]
M_TOOLS = [{"name": "get_weather", "input_schema": WEATHER}, {"name": "get_time", "input_schema": {"type": "object"}}]


def r_body(stream: bool, **extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "input": "weather and time?", "stream": stream, **extra}


def m_body(stream: bool, **extra: Any) -> dict[str, Any]:
    return {
        "model": "tiny",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": "weather and time?"}],
        "stream": stream,
        **extra,
    }


# -- derived (broken) upstream answers ---------------------------------------------------------------


def without_finish(name: str) -> Upstream:
    """The stream cut just before the chunk that carries finish_reason."""
    up = Upstream.load(name)
    at = up.body.index(b'"finish_reason":"')
    at = up.body.rindex(b"data: ", 0, at)
    return up.replace_body(up.body[:at])


def with_bad_event(name: str, after: int = 4) -> Upstream:
    up = Upstream.load(name)
    events = up.body.split(b"\n\n")
    events.insert(after, b'data: {"choices": [ oops')
    return up.replace_body(b"\n\n".join(events))


def done_without_finish(name: str) -> Upstream:
    return without_finish(name).replace_body(without_finish(name).body + b"data: [DONE]\n\n")


def json_cut_short(name: str) -> Upstream:
    up = Upstream.load(name)
    return up.replace_body(up.body[: len(up.body) // 2])


def custom_tool_call() -> Upstream:
    """Ollama's shape, calling the caller's custom tool ``apply_patch`` (its one ``input`` string)."""
    up = Upstream.load("ollama_tool_stream")
    patch = json.dumps(json.dumps({"input": "*** Begin Patch\n*** End Patch"}))[1:-1]
    body = up.body.replace(b"get_weather", b"apply_patch").replace(b'{\\"unit\\":\\"c\\"}', patch.encode())
    assert b"apply_patch" in body and b"Begin Patch" in body
    return up.replace_body(body)


CUSTOM_TOOLS = [{"type": "custom", "name": "apply_patch", "description": "patch files"}]

# id → (api, upstream, request body)
CASES: dict[str, tuple[str, Upstream, dict[str, Any]]] = {
    "r_text_json": ("responses", Upstream.load("llama_text_json"), r_body(False)),
    "r_text_stream": ("responses", Upstream.load("llama_text_stream"), r_body(True)),
    "r_length_stream": ("responses", Upstream.load("llama_text_length_stream"), r_body(True, max_output_tokens=8)),
    "r_tool_stream": (
        "responses",
        Upstream.load("llama_tool_stream"),
        r_body(True, tools=R_TOOLS, tool_choice="required"),
    ),
    "r_tool_json": (
        "responses",
        Upstream.load("llama_tool_json"),
        r_body(False, tools=R_TOOLS, tool_choice="required"),
    ),
    "r_tools_length_stream": ("responses", Upstream.load("llama_tools_length_stream"), r_body(True, tools=R_TOOLS)),
    "r_json_schema_stream": (
        "responses",
        Upstream.load("llama_json_schema_stream"),
        r_body(True, text={"format": {"type": "json_schema", "name": "answer", "schema": WEATHER}}),
    ),
    "r_parallel_stream": ("responses", Upstream.load("openai_parallel_tools_stream"), r_body(True, tools=R_TOOLS)),
    "r_reasoning_stream": (
        "responses",
        Upstream.load("vllm_reasoning_stream"),
        r_body(True, reasoning={"effort": "low"}),
    ),
    "r_ollama_stream": ("responses", Upstream.load("ollama_tool_stream"), r_body(True, tools=R_TOOLS)),
    "r_custom_tool_stream": ("responses", custom_tool_call(), r_body(True, tools=CUSTOM_TOOLS)),
    "r_error_midstream": ("responses", Upstream.load("llama_error_midstream"), r_body(True)),
    "r_no_finish_stream": ("responses", without_finish("llama_tool_stream"), r_body(True, tools=R_TOOLS)),
    "r_bad_event_stream": ("responses", with_bad_event("llama_text_stream"), r_body(True)),
    "r_done_early_stream": ("responses", done_without_finish("llama_text_stream"), r_body(True)),
    "r_cut_json": ("responses", json_cut_short("llama_text_json"), r_body(False)),
    "r_context_overflow": ("responses", Upstream.load("llama_context_overflow"), r_body(True)),
    "r_mesh_503": ("responses", Upstream.load("mesh_503_no_model"), r_body(True)),
    "m_text_json": ("messages", Upstream.load("llama_text_json"), m_body(False)),
    "m_text_stream": ("messages", Upstream.load("llama_text_stream"), m_body(True)),
    "m_length_stream": ("messages", Upstream.load("llama_text_length_stream"), m_body(True)),
    "m_tool_stream": ("messages", Upstream.load("llama_tool_stream"), m_body(True, tools=M_TOOLS)),
    "m_tool_json": ("messages", Upstream.load("llama_tool_json"), m_body(False, tools=M_TOOLS)),
    "m_tools_length_stream": ("messages", Upstream.load("llama_tools_length_stream"), m_body(True, tools=M_TOOLS)),
    "m_parallel_stream": ("messages", Upstream.load("openai_parallel_tools_stream"), m_body(True, tools=M_TOOLS)),
    "m_reasoning_stream": (
        "messages",
        Upstream.load("vllm_reasoning_stream"),
        m_body(True, thinking={"type": "enabled", "budget_tokens": 1024}),
    ),
    "m_reasoning_json_no_thinking": ("messages", Upstream.load("vllm_reasoning_stream"), m_body(False)),
    "m_stop_sequence_json": (
        "messages",
        Upstream.load("vllm_stop_sequence_json"),
        m_body(False, stop_sequences=["END"]),
    ),
    "m_ollama_stream": ("messages", Upstream.load("ollama_tool_stream"), m_body(True, tools=M_TOOLS)),
    "m_error_midstream": ("messages", Upstream.load("llama_error_midstream"), m_body(True)),
    "m_no_finish_stream": ("messages", without_finish("llama_tool_stream"), m_body(True, tools=M_TOOLS)),
    "m_bad_event_stream": ("messages", with_bad_event("llama_text_stream"), m_body(True)),
    "m_cut_json": ("messages", json_cut_short("llama_text_json"), m_body(False)),
    "m_context_overflow": ("messages", Upstream.load("llama_context_overflow"), m_body(True)),
    "m_mesh_503": ("messages", Upstream.load("mesh_503_no_model"), m_body(False)),
}


# -- the upstream, read without meshd's code -------------------------------------------------------


def reference(up: Upstream) -> dict[str, Any]:
    """What the upstream said: text, reasoning, tool calls, finish_reason, usage."""
    chunks: list[dict[str, Any]] = []
    if up.content_type.startswith("text/event-stream"):
        for line in up.body.decode().split("\n"):
            if line.startswith("data: ") and line != "data: [DONE]":
                try:
                    chunks.append(json.loads(line[6:]))
                except ValueError:
                    continue
        key = "delta"
    else:
        try:
            chunks = [json.loads(up.body)]
        except ValueError:
            chunks = []
        key = "message"
    out: dict[str, Any] = {"text": "", "reasoning": "", "tools": {}, "finish": None, "usage": None}
    for chunk in chunks:
        for choice in chunk.get("choices") or []:
            part = choice.get(key) or {}
            out["text"] += part.get("content") or ""
            out["reasoning"] += part.get("reasoning_content") or ""
            for tc in part.get("tool_calls") or []:
                entry = out["tools"].setdefault(tc.get("index", 0), {"id": None, "name": None, "arguments": ""})
                entry["id"] = entry["id"] or tc.get("id")
                entry["name"] = entry["name"] or tc.get("function", {}).get("name")
                entry["arguments"] += tc.get("function", {}).get("arguments") or ""
            out["finish"] = choice.get("finish_reason") or out["finish"]
        out["usage"] = chunk.get("usage") or out["usage"]
    return out


# -- the golden comparison -------------------------------------------------------------------------


def rendered(answer: Translated) -> str:
    head = [f"HTTP {answer.head.status}", *(f"{k}: {v}" for k, v in answer.head.headers)]
    body = answer.body.decode()
    if not answer.head.headers or dict(answer.head.headers).get("content-type") == "application/json":
        body = json.dumps(json.loads(body), indent=1, ensure_ascii=False)
    return "\n".join(head) + "\n\n" + body + ("\n" if not body.endswith("\n") else "")


def check_golden(case: str, answer: Translated) -> None:
    path: Path = GOLDEN / f"{case}.txt"
    text = rendered(answer)
    if UPDATE:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}; run with MESHD_UPDATE_GOLDEN=1"
    assert text == path.read_text()


# -- per-API checks --------------------------------------------------------------------------------


def check_responses_stream(events: list[tuple[str | None, dict[str, Any]]]) -> dict[str, Any]:
    """Validate every event with the SDK's types and the stream's bookkeeping; return the terminal response."""
    assert [e for e, _ in events[:2]] == ["response.created", "response.in_progress"]
    for n, (name, data) in enumerate(events):
        assert name == data["type"] and data["sequence_number"] == n
        if name != "response.failed" or data["response"]["error"]["code"] != "context_length_exceeded":
            RESPONSE_EVENTS.validate_python(data)
    terminal = [d for e, d in events if e in ("response.completed", "response.incomplete", "response.failed")]
    assert len(terminal) == 1 and events[-1][1] is terminal[0]
    final = terminal[0]["response"]
    added = {d["item"]["id"]: d["output_index"] for e, d in events if e == "response.output_item.added"}
    done = {d["item"]["id"]: d["item"] for e, d in events if e == "response.output_item.done"}
    if final["status"] != "failed":
        assert set(added) == set(done), "an item was added and never finished"
    assert [item["id"] for item in final["output"]] == sorted(added, key=added.__getitem__)
    for item_id, item in done.items():
        assert final["output"][added[item_id]] == item
        if item["type"] == "message":
            deltas = "".join(
                d["delta"] for e, d in events if e == "response.output_text.delta" and d["item_id"] == item_id
            )
            assert item["content"][0]["text"] == deltas
        if item["type"] == "function_call":
            deltas = "".join(
                d["delta"]
                for e, d in events
                if e == "response.function_call_arguments.delta" and d["item_id"] == item_id
            )
            assert item["arguments"] == deltas
    return final


def check_messages_stream(events: list[tuple[str | None, dict[str, Any]]]) -> dict[str, Any] | None:
    """Validate every event with the SDK's types and the block bookkeeping; the final message or None on error."""
    assert events[0][0] == "message_start" and events[1][0] == "ping"
    open_block: int | None = None
    next_index = 0
    for name, data in events:
        assert name == data["type"]
        if name == "error":
            assert events[-1][0] == "error"
            assert set(data["error"]) == {"type", "message"}
            return None
        if name == "ping":
            continue
        MESSAGE_EVENTS.validate_python(data)
        if name == "content_block_start":
            assert open_block is None and data["index"] == next_index
            open_block, next_index = data["index"], next_index + 1
        elif name == "content_block_delta":
            assert data["index"] == open_block
        elif name == "content_block_stop":
            assert data["index"] == open_block
            open_block = None
    assert [e for e, _ in events[-2:]] == ["message_delta", "message_stop"] and open_block is None
    return events[-2][1]


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    api, upstream, body = CASES[case]
    gateway = Gateway(upstream, piece=7)
    ref = reference(upstream)
    if api == "responses":
        run_responses(case, gateway, upstream, body, ref)
    else:
        run_messages(case, gateway, upstream, body, ref)
    check_golden(case, gateway.answers[-1])


def run_responses(case: str, gateway: Gateway, upstream: Upstream, body: dict[str, Any], ref: dict[str, Any]) -> None:
    client = gateway.openai()
    if upstream.status >= 400:
        with pytest.raises(openai.APIStatusError) as info:
            client.responses.create(**body)
        assert info.value.status_code == upstream.status
        error: Any = info.value.body  # the SDK unwraps {"error": ...}
        assert info.value.code == error["code"] and error["message"]
        if case == "r_context_overflow":
            assert (
                error["code"] == "context_length_exceeded" and "exceeds the available context size" in error["message"]
            )
        return
    if not body["stream"]:
        if case == "r_cut_json":
            with pytest.raises(openai.APIStatusError) as info:
                client.responses.create(**body)
            assert info.value.status_code == 502 and "not valid JSON" in str(info.value)
            return
        response = client.responses.create(**body)
        Response.model_validate(json.loads(gateway.answers[-1].body))
        assert response.status == "completed" and response.output_text == ref["text"]
        check_tools_responses(response.model_dump(), ref, body)
        assert response.usage is not None and response.usage.input_tokens == ref["usage"]["prompt_tokens"]
        assert response.usage.output_tokens == ref["usage"]["completion_tokens"]
        return
    seen_raw = [event.type for event in client.responses.create(**body)]
    final = check_responses_stream(sse_json(gateway.answers[-1].body))
    assert seen_raw == [e for e, _ in sse_json(gateway.answers[-1].body)]
    stream_args = {k: v for k, v in body.items() if k != "stream"}
    helper_gateway = Gateway(upstream, piece=3)
    with helper_gateway.openai().responses.stream(**stream_args) as stream:
        seen = [event.type for event in stream]
        if final["status"] == "completed":
            accumulated = stream.get_final_response()
            assert (
                accumulated.model_dump(exclude_none=True)["output"]
                == Response.model_validate(final).model_dump(exclude_none=True)["output"]
            )
        else:
            with pytest.raises(RuntimeError):
                stream.get_final_response()
    assert seen[-1] == f"response.{final['status']}"
    if final["status"] == "failed":
        assert final["error"]["message"]
        if case == "r_error_midstream":
            assert "KV cache is full" in final["error"]["message"]
        return
    texts = [c["text"] for item in final["output"] if item["type"] == "message" for c in item["content"]]
    assert "".join(texts) == ref["text"]
    reasoning = [c["text"] for item in final["output"] if item["type"] == "reasoning" for c in item["content"]]
    assert "".join(reasoning) == ref["reasoning"]
    check_tools_responses(final, ref, body)
    expected_status = "incomplete" if ref["finish"] == "length" else "completed"
    assert final["status"] == expected_status
    if ref["usage"]:
        assert final["usage"]["input_tokens"] == ref["usage"]["prompt_tokens"]
        assert final["usage"]["total_tokens"] == ref["usage"]["total_tokens"]


def check_tools_responses(final: dict[str, Any], ref: dict[str, Any], body: dict[str, Any]) -> None:
    calls = [item for item in final["output"] if item["type"] in ("function_call", "custom_tool_call")]
    expected = [t for _, t in sorted(ref["tools"].items())]
    assert [c["name"] for c in calls] == [t["name"] for t in expected]
    custom = {t["name"] for t in body.get("tools", []) if t["type"] == "custom"}
    for call, tool in zip(calls, expected, strict=True):
        assert call["call_id"] == tool["id"]
        if call["name"] in custom:
            assert call["type"] == "custom_tool_call" and call["input"] == json.loads(tool["arguments"])["input"]
        else:
            assert call["type"] == "function_call" and call["arguments"] == tool["arguments"]


def run_messages(case: str, gateway: Gateway, upstream: Upstream, body: dict[str, Any], ref: dict[str, Any]) -> None:
    client = gateway.anthropic()
    if upstream.status >= 400:
        with pytest.raises(anthropic.APIStatusError) as info:
            client.messages.create(**body)
        assert info.value.status_code == upstream.status
        error = info.value.body["error"]  # type: ignore[index]
        if case == "m_context_overflow":
            assert error["type"] == "invalid_request_error" and error["message"].startswith("prompt is too long")
        if case == "m_mesh_503":
            assert error["type"] == "overloaded_error"
        return
    if not body["stream"]:
        if case == "m_cut_json":
            with pytest.raises(anthropic.APIStatusError) as info:
                client.messages.create(**body)
            assert info.value.status_code == 502 and info.value.body["error"]["type"] == "api_error"  # type: ignore[index]
            return
        message = client.messages.create(**body)
        Message.model_validate(json.loads(gateway.answers[-1].body))
        check_message(message.model_dump(), ref, body)
        return
    raw_events: list[str] = []
    try:
        for event in client.messages.create(**body):
            raw_events.append(event.type)
    except anthropic.APIStatusError as e:
        raw_events.append(f"raised {e.status_code}")
    delta = check_messages_stream(sse_json(gateway.answers[-1].body))
    expected = [e or "" for e, _ in sse_json(gateway.answers[-1].body) if e != "ping"]
    if delta is None:
        expected[-1] = "raised 200"  # the SDK raises on the error event (the response's status was 200)
    assert raw_events == expected
    helper_gateway = Gateway(upstream, piece=3)
    with helper_gateway.anthropic().messages.stream(**{k: v for k, v in body.items() if k != "stream"}) as stream:
        if delta is None:
            with pytest.raises(anthropic.APIStatusError) as info:
                stream.get_final_message()
            if case == "m_error_midstream":
                assert "KV cache is full" in str(info.value)
            return
        message = stream.get_final_message()
    assert message.stop_reason == delta["delta"]["stop_reason"]
    check_message(message.model_dump(), ref, body)


def check_message(message: dict[str, Any], ref: dict[str, Any], body: dict[str, Any]) -> None:
    Message.model_validate(message)
    text = "".join(b["text"] for b in message["content"] if b["type"] == "text")
    assert text == ref["text"]
    thinking = "".join(b["thinking"] for b in message["content"] if b["type"] == "thinking")
    assert thinking == (ref["reasoning"] if body.get("thinking", {}).get("type") == "enabled" else "")
    uses = [b for b in message["content"] if b["type"] == "tool_use"]
    expected = [t for _, t in sorted(ref["tools"].items())]
    assert [u["name"] for u in uses] == [t["name"] for t in expected]
    for use, tool in zip(uses, expected, strict=True):
        assert use["id"] == tool["id"] and use["input"] == json.loads(tool["arguments"])
    stop = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}[ref["finish"]]
    if uses and ref["finish"] == "stop":
        stop = "tool_use"  # Ollama says "stop" after a tool call
    if body.get("stop_sequences"):
        stop = "stop_sequence"
        assert message["stop_sequence"] == "END"
    assert message["stop_reason"] == stop
    if ref["usage"]:
        cached = (ref["usage"].get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        assert (
            message["usage"]["input_tokens"] + (message["usage"]["cache_read_input_tokens"] or 0)
            == ref["usage"]["prompt_tokens"]
        )
        assert (message["usage"]["cache_read_input_tokens"] or 0) == cached
        assert message["usage"]["output_tokens"] == ref["usage"]["completion_tokens"]


def test_every_golden_file_belongs_to_a_case() -> None:
    assert sorted(p.stem for p in GOLDEN.glob("*.txt")) == sorted(CASES)
