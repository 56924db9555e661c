"""Response translators as sans-IO machines: heads, failures at any point, and random upstream streams."""

from __future__ import annotations

import json
from typing import Any

from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import RawMessageStreamEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from meshd.agentapi import AgentApi, Api, match
from meshd.agentapi.adapter import Forward
from meshd.agentapi.translate import PassThrough, Translator
from tests.unit.agentapi_support import STREAMS, CountingIds, Upstream, pieces, sse_json, translate

RESPONSE_EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
MESSAGE_EVENTS: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
TOOLS_R = [
    {"type": "function", "name": n, "parameters": {"type": "object"}} for n in ("get_weather", "get_time", "f", "g")
]
TOOLS_M = [{"name": n, "input_schema": {"type": "object"}} for n in ("get_weather", "get_time", "f", "g")]


def forward(api: str, stream: bool = True, **extra: Any) -> Forward:
    agent = AgentApi(ids=CountingIds())
    if api == "responses":
        body = {"model": "m", "input": "hi", "stream": stream, "tools": TOOLS_R, **extra}
        endpoint = match("POST", "/v1/responses")
    else:
        body = {
            "model": "m",
            "max_tokens": 9,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": stream,
            "tools": TOOLS_M,
            **extra,
        }
        endpoint = match("POST", "/v1/messages")
    assert endpoint is not None
    return agent.prepare(endpoint, json.dumps(body).encode()).plan(now=5.0)


def terminal_responses(body: bytes) -> dict[str, Any]:
    events = sse_json(body)
    for n, (name, data) in enumerate(events):
        assert data["sequence_number"] == n and name == data["type"]
        RESPONSE_EVENTS.validate_python(data)
    names = [e for e, _ in events]
    ends = [n for n in names if n in ("response.completed", "response.incomplete", "response.failed")]
    assert len(ends) == 1 and names[-1] == ends[0]
    return events[-1][1]["response"]


def terminal_messages(body: bytes) -> str:
    """Validate and accumulate with the SDK; the terminal event's name."""
    events = sse_json(body)
    snapshot = None
    bufs: dict[int, bytes] = {}
    for name, data in events:
        if name in ("ping", "error"):
            continue
        snapshot = accumulate_event(
            event=MESSAGE_EVENTS.validate_python(data), current_snapshot=snapshot, json_bufs=bufs
        )
    names = [e for e, _ in events]
    assert names[-1] in ("message_stop", "error") and names.count("message_stop") + names.count("error") == 1
    return names[-1] or ""


# -- heads and failures ----------------------------------------------------------------------------


def test_stream_head_comes_at_start_json_head_at_the_end() -> None:
    t = forward("responses").translator()
    out = t.start(200, [(b"content-type", b"text/event-stream")])
    assert out.head is not None and out.head.status == 200 and b"response.created" in out.body
    t = forward("responses", stream=False).translator()
    assert t.start(200, [(b"content-type", b"application/json")]).head is None
    assert t.feed(Upstream.load("llama_text_json").body).head is None
    end = t.finish()
    assert end.head is not None and end.head.status == 200 and end.done


def test_fail_mid_stream_ends_with_the_apis_failure_event() -> None:
    up = Upstream.load("llama_tool_stream")
    for api in ("responses", "messages"):
        t = forward(api).translator()
        result = translate(t, up.replace_body(up.body[: len(up.body) // 2]), 50, finish=False)
        end = t.fail("the tunnel to the host was reset")
        assert end.done and end.head is None and t.done
        body = result.body + end.body
        if api == "responses":
            final = terminal_responses(body)
            assert final["status"] == "failed" and final["error"]["message"] == "the tunnel to the host was reset"
            assert final["output"][0]["status"] == "incomplete"
        else:
            assert terminal_messages(body) == "error"
            assert sse_json(body)[-1][1]["error"]["message"] == "the tunnel to the host was reset"
        assert t.feed(b"data: more\n\n").body == b"" and t.finish().body == b"" and t.fail("again").body == b""


def test_fail_before_anything_gives_a_502_in_the_apis_shape() -> None:
    t = forward("responses").translator()
    out = t.fail("no response within 300s")
    assert out.head is not None and out.head.status == 502 and out.done
    assert json.loads(out.body)["error"]["message"].endswith("no response within 300s")
    t = forward("messages").translator()
    out = t.fail("no response within 300s")
    assert json.loads(out.body) == {
        "type": "error",
        "error": {"type": "api_error", "message": "the host's answer could not be used: no response within 300s"},
    }


def test_feed_without_start_still_gives_the_head_first() -> None:
    t = forward("responses").translator()
    out = t.feed(b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n')
    assert out.head is not None and out.body.startswith(b"event: response.created")
    assert b"response.output_text.delta" in out.body and t.finish().done


def test_upstream_error_keeps_retry_after() -> None:
    t = forward("messages").translator()
    t.start(429, [(b"content-type", b"application/json"), (b"Retry-After", b"5")])
    t.feed(b'{"error": {"message": "slow down", "type": "rate_limit_error"}}')
    out = t.finish()
    assert out.head is not None and out.head.status == 429 and ("retry-after", "5") in out.head.headers
    assert json.loads(out.body)["error"] == {"type": "rate_limit_error", "message": "slow down"}


def test_huge_error_bodies_are_cut_not_buffered() -> None:
    t = forward("responses").translator()
    t.start(500, [])
    for _ in range(100):
        t.feed(b"x" * 100_000)
    out = t.finish()
    assert out.head is not None and out.head.status == 500
    assert json.loads(out.body)["error"]["code"] == "upstream_error_too_large"


def test_a_json_answer_to_a_stream_request_is_streamed() -> None:
    """A host that ignores ``stream: true`` and answers JSON: the caller still gets its event stream."""
    for api in ("responses", "messages"):
        result = translate(forward(api).translator(), Upstream.load("llama_tool_json"), 64)
        if api == "responses":
            final = terminal_responses(result.body)
            assert final["output"][0]["arguments"] == '{"unit" :\n "c"\n }'
        else:
            assert terminal_messages(result.body) == "message_stop"


def test_a_stream_answer_to_a_json_request_is_collected() -> None:
    result = translate(
        forward("responses", stream=False).translator(), Upstream.load("openai_parallel_tools_stream"), 10
    )
    response = Response.model_validate(json.loads(result.body))
    assert [o.type for o in response.output] == ["function_call", "function_call"]


def test_too_many_tool_calls_fail_cleanly() -> None:
    chunks = [
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [{"index": i, "id": f"c{i}", "function": {"name": "f", "arguments": "{}"}}]
                    },
                }
            ]
        }
        for i in range(300)
    ]
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode()
    for api in ("responses", "messages"):
        result = translate(forward(api).translator(), Upstream(200, "text/event-stream", body), 4096)
        if api == "responses":
            final = terminal_responses(result.body)
            assert final["status"] == "failed" and "256" in final["error"]["message"]
        else:
            assert terminal_messages(result.body) == "error"


def test_interleaved_tool_arguments_fail_for_messages() -> None:
    """Anthropic blocks are sequential: arguments for a call already closed cannot be sent."""
    chunks = [
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}}]},
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{"}}]},
                }
            ]
        },
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}}]},
    ]
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode()
    result = translate(forward("messages").translator(), Upstream(200, "text/event-stream", body))
    assert (
        sse_json(result.body)[-1][1]["error"]["message"] == "the host interleaved the arguments of several tool calls"
    )
    # the Responses API keeps several calls open, so the same stream is fine there (finished below)
    done = body + b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\ndata: [DONE]\n\n'
    final = terminal_responses(
        translate(forward("responses").translator(), Upstream(200, "text/event-stream", done)).body
    )
    assert [o["arguments"] for o in final["output"]] == ["{}", "{"]


def test_pass_through_relays_as_is() -> None:
    t = PassThrough()
    out = t.start(200, [(b"content-type", b"text/event-stream"), (b"x-other", b"1")])
    assert out.head is not None and out.head.headers == (("content-type", "text/event-stream"),)
    assert t.feed(b"event: x\ndata: y\n\n").body == b"event: x\ndata: y\n\n"
    assert t.finish().done


def test_reshape_errors_of_the_web_layer() -> None:
    agent = AgentApi()
    gate = json.dumps(
        {
            "error": {
                "message": "Incorrect or missing API key.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }
    ).encode()
    answer = agent.reshape_error(Api.MESSAGES, 401, gate)
    assert answer.status == 401 and json.loads(answer.body) == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Incorrect or missing API key."},
    }
    answer = agent.reshape_error(
        Api.RESPONSES, 429, b'{"error": {"message": "slow", "type": "requests", "code": "rate_limit_exceeded"}}'
    )
    assert json.loads(answer.body)["error"]["code"] == "rate_limit_exceeded"


# -- properties ------------------------------------------------------------------------------------


@given(
    st.sampled_from(STREAMS),
    st.integers(0, 20_000),
    st.integers(1, 400),
    st.sampled_from(["responses", "messages"]),
    st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_any_prefix_of_any_stream_ends_properly(name: str, cut: int, size: int, api: str, thinking: bool) -> None:
    up = Upstream.load(name)
    up = up.replace_body(up.body[: cut % (len(up.body) + 1)])
    extra = {"thinking": {"type": "enabled", "budget_tokens": 9}} if api == "messages" and thinking else {}
    result = translate(forward(api, **extra).translator(), up, size)
    assert result.done and result.head.status == 200
    if api == "responses":
        terminal_responses(result.body)
    else:
        terminal_messages(result.body)


@given(st.binary(max_size=2000), st.sampled_from(["responses", "messages"]), st.booleans(), st.booleans())
@settings(max_examples=200, deadline=None)
def test_garbage_from_the_host_ends_with_an_error(body: bytes, api: str, stream: bool, sse: bool) -> None:
    t = forward(api, stream=stream).translator()
    result = translate(t, Upstream(200, "text/event-stream" if sse else "application/json", body), 37)
    assert result.done
    if stream:
        if api == "responses":
            assert terminal_responses(result.body)["status"] in ("failed", "completed", "incomplete")
        else:
            terminal_messages(result.body)
    elif result.head.status != 200:
        assert result.head.status == 502 and json.loads(result.body)


@st.composite
def chat_streams(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    """A random well-formed chat stream: text, reasoning and tool calls with split arguments."""
    chunks: list[dict[str, Any]] = []
    expected: dict[str, Any] = {"text": "", "calls": []}
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["text", "reasoning", "tool"]))
        if kind == "text":
            t = draw(st.text(min_size=1, max_size=10))
            expected["text"] += t
            chunks.append({"choices": [{"index": 0, "delta": {"content": t}}]})
        elif kind == "reasoning":
            chunks.append(
                {"choices": [{"index": 0, "delta": {"reasoning_content": draw(st.text(min_size=1, max_size=10))}}]}
            )
        else:
            index = len(expected["calls"])
            args = json.dumps(
                draw(st.dictionaries(st.text(max_size=4), st.integers() | st.text(max_size=6), max_size=3))
            )
            cuts = sorted(draw(st.lists(st.integers(0, len(args)), max_size=4)))
            parts = [args[a:b] for a, b in zip([0, *cuts], [*cuts, len(args)], strict=True)]
            name = draw(st.sampled_from(["f", "g"]))
            expected["calls"].append((name, args))
            chunks.append(
                {
                    "choices": [
                        {
                            "index": 0,
                            "delta": {
                                "tool_calls": [
                                    {
                                        "index": index,
                                        "id": f"call{index}",
                                        "type": "function",
                                        "function": {"name": name, "arguments": parts[0]},
                                    }
                                ]
                            },
                        }
                    ]
                }
            )
            for part in parts[1:]:
                chunks.append(
                    {
                        "choices": [
                            {"index": 0, "delta": {"tool_calls": [{"index": index, "function": {"arguments": part}}]}}
                        ]
                    }
                )
    finish = draw(st.sampled_from(["stop", "length", "tool_calls", "content_filter"]))
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    chunks.append({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})
    expected["finish"] = finish
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode() + b"data: [DONE]\n\n", expected


@given(chat_streams(), st.integers(1, 64))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_streams_translate_faithfully(case: tuple[bytes, dict[str, Any]], size: int) -> None:
    body, expected = case
    up = Upstream(200, "text/event-stream", body)
    final = terminal_responses(translate(forward("responses").translator(), up, size).body)
    text = "".join(c["text"] for o in final["output"] if o["type"] == "message" for c in o["content"])
    assert text == expected["text"]
    assert [(o["name"], o["arguments"]) for o in final["output"] if o["type"] == "function_call"] == expected["calls"]
    assert final["status"] == ("incomplete" if expected["finish"] in ("length", "content_filter") else "completed")
    Response.model_validate(final)
    messages_body = translate(forward("messages").translator(), up, size).body
    assert terminal_messages(messages_body) == "message_stop"
    snapshot = None
    bufs: dict[int, bytes] = {}
    for name, data in sse_json(messages_body):
        if name != "ping":
            snapshot = accumulate_event(
                event=MESSAGE_EVENTS.validate_python(data), current_snapshot=snapshot, json_bufs=bufs
            )
    assert snapshot is not None
    uses = [(b.name, b.input) for b in snapshot.content if b.type == "tool_use"]
    assert uses == [(n, json.loads(a)) for n, a in expected["calls"]]
    assert "".join(b.text for b in snapshot.content if b.type == "text") == expected["text"]


def test_translators_are_fresh_per_attempt() -> None:
    f = forward("responses")
    first: Translator = f.translator()
    second: Translator = f.translator()
    assert first is not second
    translate(first, Upstream.load("llama_text_stream"))
    assert not second.done
    one = translate(second, Upstream.load("llama_text_stream"), 5).body
    assert pieces(one, 10)


def test_error_shapes_validate_against_the_sdks_types() -> None:
    from anthropic.types.shared import ErrorResponse
    from openai.types.shared import ErrorObject

    from meshd.agentapi.errors import AgentApiError

    for status in (400, 401, 403, 404, 405, 422, 429, 500, 502, 503, 504, 529):
        err = AgentApiError("boom", status=status, param="x")
        ErrorResponse.model_validate(err.anthropic_json())
        ErrorObject.model_validate(err.openai_json()["error"])
    # 413 is Anthropic's documented `request_too_large`, which the SDK's union does not list
    assert AgentApiError("big", status=413).anthropic_json()["error"]["type"] == "request_too_large"


def test_a_tool_call_never_named_is_dropped_with_a_note() -> None:
    chunks = [
        {
            "choices": [
                {"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c0", "function": {"arguments": "{"}}]}}
            ]
        },
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1, "id": "c1", "function": {"name": "f"}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode() + b"data: [DONE]\n\n"
    for api in ("responses", "messages"):
        translator = forward(api).translator()
        result = translate(translator, Upstream(200, "text/event-stream", body))
        assert "a tool call (index 0) without a name was dropped" in translator.notes, api
        if api == "responses":
            assert [o["type"] for o in terminal_responses(result.body)["output"]] == ["function_call"]
        else:
            terminal_messages(result.body)
