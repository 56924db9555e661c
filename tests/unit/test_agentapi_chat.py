"""Reading hosts' chat-completions answers into events: recorded streams, broken streams, odd hosts."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.agentapi.chat import (
    ChatEvent,
    End,
    Failed,
    Finish,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    UpstreamDecoder,
    Usage,
    completion_events,
)
from tests.unit.agentapi_support import STREAMS, Upstream, pieces


def decode(body: bytes, size: int = 0, *, streamed: bool = True, **limits: int) -> list[ChatEvent]:
    decoder = UpstreamDecoder(streamed=streamed, **limits)
    events: list[ChatEvent] = []
    for piece in pieces(body, size):
        events += decoder.feed(piece)
    events += decoder.finish()
    assert decoder.finish() == [] and decoder.feed(b"data: more\n\n") == []  # nothing after the end
    return events


def summary(events: list[ChatEvent]) -> dict[str, object]:
    tools: dict[int, list[str]] = {}
    for e in events:
        if isinstance(e, ToolCallDelta):
            entry = tools.setdefault(e.index, ["", "", ""])
            entry[0] = entry[0] or (e.call_id or "")
            entry[1] = entry[1] or (e.name or "")
            entry[2] += e.arguments
    return {
        "text": "".join(e.text for e in events if isinstance(e, TextDelta)),
        "reasoning": "".join(e.text for e in events if isinstance(e, ReasoningDelta)),
        "tools": tools,
        "finish": [e.reason for e in events if isinstance(e, Finish)],
        "usage": [e for e in events if isinstance(e, Usage)],
        "end": [type(e).__name__ for e in events if isinstance(e, End | Failed)],
    }


def test_recorded_tool_stream_matches_the_same_servers_json_answer() -> None:
    """llama-server streamed and non-streamed the same grammar-constrained call: both decode alike."""
    streamed = summary(decode(Upstream.load("llama_tool_stream").body))
    whole = summary(decode(Upstream.load("llama_tool_json").body, streamed=False))
    assert streamed["tools"][0][1:] == whole["tools"][0][1:] == ["get_weather", '{"unit" :\n "c"\n }']  # type: ignore[index]
    assert json.loads(streamed["tools"][0][2]) == {"unit": "c"}  # type: ignore[index]
    assert streamed["finish"] == whole["finish"] == ["tool_calls"]
    assert streamed["end"] == whole["end"] == ["End"]
    assert streamed["usage"] == [Usage(prompt_tokens=100, completion_tokens=77, cached_tokens=0)]


def test_arguments_arrive_in_many_pieces() -> None:
    events = decode(Upstream.load("llama_tool_stream").body)
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert len(deltas) == 12
    assert deltas[0].name == "get_weather" and all(d.name is None for d in deltas[1:])


def test_two_recorded_calls_then_length() -> None:
    s = summary(decode(Upstream.load("llama_tools_length_stream").body))
    assert [t[1] for t in s["tools"].values()] == ["get_weather", "get_weather"]  # type: ignore[attr-defined]
    assert s["finish"] == ["length"] and s["end"] == ["End"]


def test_openai_parallel_calls_and_usage_details() -> None:
    s = summary(decode(Upstream.load("openai_parallel_tools_stream").body))
    assert s["tools"] == {
        0: ["call_Wx81", "get_weather", '{"location": "São Paulo, \\"BR\\""}'],
        1: ["call_Tm42", "get_time", '{"zone": "utc", "seconds": true}'],
    }
    assert s["usage"] == [Usage(82, 45, cached_tokens=64, reasoning_tokens=0)]


def test_reasoning_then_text() -> None:
    s = summary(decode(Upstream.load("vllm_reasoning_stream").body))
    assert s["reasoning"] == "The user asks what a mesh is."
    assert s["text"] == "A mesh pools GPUs."


def test_stop_string_named_by_vllm() -> None:
    events = decode(Upstream.load("vllm_stop_sequence_json").body, streamed=False)
    assert Finish("stop", "END") in events


def test_error_in_the_middle_of_a_stream() -> None:
    events = decode(Upstream.load("llama_error_midstream").body)
    assert events[-1] == Failed("Failed to decode the batch (KV cache is full)", "server_error")
    assert TextDelta("Hel") in events


def test_stream_without_finish_reason_fails() -> None:
    body = Upstream.load("llama_text_stream").body
    cut = body.index(b'"finish_reason":"stop"')
    cut = body.rindex(b"data: ", 0, cut)
    events = decode(body[:cut])
    assert isinstance(events[-1], Failed) and events[-1].code == "upstream_truncated"


def test_done_without_finish_reason_fails() -> None:
    events = decode(b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\ndata: [DONE]\n\n')
    assert events[-1] == Failed("the host's stream said [DONE] before any finish_reason", "upstream_truncated")


def test_finish_reason_without_done_ends_at_eof() -> None:
    body = b'data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}]}\n\n'
    assert decode(body) == [TextDelta("x"), Finish("stop"), End()]


def test_invalid_json_event_fails_and_stops() -> None:
    body = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\ndata: {not json\n\ndata: [DONE]\n\n'
    events = decode(body)
    assert events[0] == TextDelta("x")
    assert isinstance(events[1], Failed) and events[1].code == "upstream_bad_event" and len(events) == 2


@pytest.mark.parametrize("event", [b"[1, 2]", b'"text"', b"null"])
def test_json_that_is_not_an_object_fails(event: bytes) -> None:
    assert isinstance(decode(b"data: " + event + b"\n\n")[0], Failed)


def test_tool_calls_without_index_and_with_decoded_arguments() -> None:
    """Some hosts leave ``index`` out (a new id starts a call) or send arguments as an object."""
    chunks = [
        {
            "choices": [
                {"index": 0, "delta": {"tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{"}}]}}
            ]
        },
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"function": {"arguments": "}"}}]}}]},
        {
            "choices": [
                {"index": 0, "delta": {"tool_calls": [{"id": "b", "function": {"name": "g", "arguments": {"x": 1}}}]}}
            ]
        },
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    assert summary(decode(body))["tools"] == {0: ["a", "f", "{}"], 1: ["b", "g", '{"x": 1}']}


def test_other_choices_are_ignored() -> None:
    chunk = {"choices": [{"index": 1, "delta": {"content": "other"}}, {"index": 0, "delta": {"content": "mine"}}]}
    assert decode(b"data: " + json.dumps(chunk).encode() + b"\n\n")[0] == TextDelta("mine")


def test_body_limit() -> None:
    body = Upstream.load("llama_tool_stream").body
    events = decode(body, 100, max_body=1000)
    assert isinstance(events[-1], Failed) and events[-1].code == "upstream_too_large"


def test_event_limit() -> None:
    events = decode(b"data: " + b"x" * 5000 + b"\n\n", max_line=1000)
    assert isinstance(events[-1], Failed) and events[-1].code == "upstream_too_large"


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"[]", b'{"choices": []}', b'{"error": {"message": "boom"}}', b'{"error": "plain"}', b'"x"'],
)
def test_bad_json_answers_fail(body: bytes) -> None:
    events = decode(body, streamed=False)
    assert len(events) == 1 and isinstance(events[0], Failed)


def test_completion_events_of_an_error_object() -> None:
    assert completion_events({"error": {"message": "no", "code": "x"}}) == [Failed("no", "x")]


@given(st.sampled_from(STREAMS), st.lists(st.integers(1, 10_000), max_size=10))
@settings(max_examples=150)
def test_any_segmentation_gives_the_same_events(name: str, cuts: list[int]) -> None:
    body = Upstream.load(name).body
    reference = decode(body)
    decoder = UpstreamDecoder(streamed=True)
    events: list[ChatEvent] = []
    start = 0
    for cut in [*sorted(c % (len(body) + 1) for c in cuts), len(body)]:
        events += decoder.feed(body[start:cut])
        start = cut
    events += decoder.finish()
    assert events == reference


@given(st.sampled_from(STREAMS), st.integers(0, 10_000))
@settings(max_examples=150)
def test_any_cut_ends_with_end_or_failed(name: str, cut: int) -> None:
    body = Upstream.load(name).body
    events = decode(body[: cut % (len(body) + 1)])
    terminal = [e for e in events if isinstance(e, End | Failed)]
    assert len(terminal) == 1 and events[-1] is terminal[0]


@given(st.binary(max_size=3000), st.booleans())
@settings(max_examples=300)
def test_garbage_never_raises(body: bytes, streamed: bool) -> None:
    events = decode(body, 13, streamed=streamed, max_line=512, max_event=1024)
    assert isinstance(events[-1], End | Failed)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 300) | st.text(max_size=8),
    lambda c: (
        st.lists(c, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "choices",
                    "delta",
                    "index",
                    "content",
                    "tool_calls",
                    "function",
                    "arguments",
                    "name",
                    "id",
                    "finish_reason",
                    "usage",
                    "prompt_tokens",
                    "error",
                    "message",
                    "reasoning_content",
                    "refusal",
                    "stop_reason",
                ]
            ),
            c,
            max_size=5,
        )
    ),
    max_leaves=30,
)


@given(st.lists(json_values, max_size=6), st.booleans())
@settings(max_examples=300)
def test_chunks_of_any_shape_never_raise(chunks: list[object], done: bool) -> None:
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    events = decode(body + (b"data: [DONE]\n\n" if done else b""))
    assert isinstance(events[-1], End | Failed)
    assert all(isinstance(e.arguments, str) for e in events if isinstance(e, ToolCallDelta))


@pytest.mark.parametrize(
    ("name", "size"),
    [("llama_tool_stream", 1), ("llama_tool_stream", 0), ("llama_tool_json", 1), ("llama_tool_json", 0)],
)
def test_unknown_content_type_is_sniffed(name: str, size: int) -> None:
    """A host that labels its answer neither SSE nor JSON (text/plain...): the first byte decides."""
    body = b"\n  " + Upstream.load(name).body
    streamed = name.endswith("stream")
    assert summary(decode(body, size, streamed=None)) == summary(decode(Upstream.load(name).body, streamed=streamed))
    assert decode(b"   ", streamed=None)[-1] == Failed("the host's answer is not valid JSON (it is cut short)")
