"""Property tests of request translation: valid shapes always translate, garbage only raises documented errors."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshd.agentapi import AgentApi, match
from meshd.agentapi.errors import AgentApiError
from tests.unit.agentapi_support import CountingIds

AGENT = AgentApi(ids=CountingIds())
FAST = settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)

text = st.text(max_size=30)
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,15}", fullmatch=True)
ids = st.from_regex(r"[A-Za-z0-9_]{1,12}", fullmatch=True)
small_json = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(text, c, max_size=3),
    max_leaves=10,
)


def plan(path: str, body: Any) -> dict[str, Any]:
    endpoint = match("POST", path)
    assert endpoint is not None
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return json.loads(AGENT.prepare(endpoint, raw).plan(now=0).body)


# -- Responses -------------------------------------------------------------------------------------

input_text = st.builds(lambda t: {"type": "input_text", "text": t}, text)
input_image = st.builds(lambda u: {"type": "input_image", "image_url": "https://x.test/" + u, "detail": "auto"}, ids)
user_content = text | st.lists(input_text | input_image, min_size=1, max_size=3)
messages_r = st.builds(
    lambda role, content, typed: {"role": role, "content": content, **({"type": "message"} if typed else {})},
    st.sampled_from(["user", "system", "developer"]),
    user_content,
    st.booleans(),
)
assistant_r = st.builds(
    lambda t: {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": t}]}, text
)
calls_r = st.builds(
    lambda cid, name, args: {"type": "function_call", "call_id": cid, "name": name, "arguments": args},
    ids,
    names,
    text,
)
custom_calls_r = st.builds(
    lambda cid, name, inp: {"type": "custom_tool_call", "call_id": cid, "name": name, "input": inp}, ids, names, text
)
outputs_r = st.builds(
    lambda kind, cid, out: {"type": kind, "call_id": cid, "output": out},
    st.sampled_from(["function_call_output", "custom_tool_call_output"]),
    ids,
    text | st.lists(input_text, max_size=2),
)
other_items = st.builds(
    lambda t: {"type": t, "id": "x"}, st.sampled_from(["reasoning", "web_search_call", "compaction", "zz"])
)
items_r = st.lists(messages_r | assistant_r | calls_r | custom_calls_r | outputs_r | other_items, max_size=8)


@st.composite
def responses_bodies(draw: st.DrawFn) -> dict[str, Any]:
    items = draw(items_r)
    items.insert(draw(st.integers(0, len(items))), {"role": "user", "content": draw(user_content)})
    tool_names = draw(st.lists(names, unique=True, max_size=4))
    tools: list[dict[str, Any]] = []
    for name in tool_names:
        if draw(st.booleans()):
            tools.append(
                {
                    "type": "function",
                    "name": name,
                    "parameters": {"type": "object", "properties": {}},
                    "strict": draw(st.booleans()),
                }
            )
        else:
            tools.append({"type": "custom", "name": name, "description": draw(text)})
    if draw(st.booleans()):
        tools.append({"type": draw(st.sampled_from(["web_search", "file_search", "local_shell", "mcp"]))})
    body: dict[str, Any] = {"model": draw(names), "input": items, "tools": tools}
    optional = {
        "instructions": text,
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "max_output_tokens": st.integers(1, 100_000),
        "stream": st.booleans(),
        "store": st.booleans(),
        "parallel_tool_calls": st.booleans(),
        "reasoning": st.fixed_dictionaries(
            {"effort": st.sampled_from(["none", "minimal", "low", "medium", "high", "xhigh"])}
        ),
        "text": st.sampled_from(
            [
                {"format": {"type": "text"}},
                {"format": {"type": "json_object"}},
                {"format": {"type": "json_schema", "name": "o", "schema": {"type": "object"}}},
            ]
        ),
        "include": st.lists(
            st.sampled_from(["reasoning.encrypted_content", "message.output_text.logprobs"]), max_size=2
        ),
        "prompt_cache_key": ids,
        "metadata": st.dictionaries(ids, text, max_size=3),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            body[key] = draw(strategy)
    choices: list[Any] = ["auto", "none"]
    if tool_names:
        choices += ["required", {"type": "function", "name": draw(st.sampled_from(tool_names))}]
    if draw(st.booleans()):
        body["tool_choice"] = draw(st.sampled_from(choices))
    return body


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [p["text"] for p in content if p.get("type") in ("input_text", "output_text")]


@given(responses_bodies())
@FAST
def test_valid_responses_requests_translate(body: dict[str, Any]) -> None:
    chat = plan("/v1/responses", body)
    sent = json.dumps(chat["messages"])
    # every piece of text the caller wrote reaches the model
    for item in body["input"]:
        if "role" in item:
            for t in _texts(item["content"]):
                assert json.dumps(t)[1:-1] in sent
    calls = [i for i in body["input"] if i.get("type") in ("function_call", "custom_tool_call")]
    assert sum(len(m.get("tool_calls", [])) for m in chat["messages"]) == len(calls)
    outputs = [i for i in body["input"] if i.get("type") in ("function_call_output", "custom_tool_call_output")]
    assert [m["tool_call_id"] for m in chat["messages"] if m["role"] == "tool"] == [o["call_id"] for o in outputs]
    assert sum(1 for m in chat["messages"] if m["role"] == "system") <= 1 + sum(
        1 for i in body["input"] if i.get("role") in ("system", "developer")
    )
    kept = [t for t in body["tools"] if t["type"] in ("function", "custom")]
    if chat.get("tool_choice") != "none" and kept:
        assert len(chat["tools"]) == len(kept)


# -- Messages --------------------------------------------------------------------------------------

text_block = st.builds(lambda t: {"type": "text", "text": t}, text)
image_block = st.builds(
    lambda d: {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": d}}, ids
)
tool_result = st.builds(
    lambda tid, content, err: {"type": "tool_result", "tool_use_id": tid, "content": content, "is_error": err},
    ids,
    text | st.lists(text_block, max_size=2),
    st.booleans(),
)
user_m = st.builds(
    lambda c: {"role": "user", "content": c},
    text | st.lists(text_block | image_block | tool_result, min_size=1, max_size=4),
)
tool_use = st.builds(
    lambda tid, name, inp: {"type": "tool_use", "id": tid, "name": name, "input": inp},
    ids,
    names,
    st.dictionaries(ids, small_json, max_size=3),
)
thinking = st.builds(lambda t: {"type": "thinking", "thinking": t, "signature": "s"}, text)
assistant_m = st.builds(
    lambda c: {"role": "assistant", "content": c},
    text | st.lists(text_block | tool_use | thinking, min_size=1, max_size=4),
)


@st.composite
def messages_bodies(draw: st.DrawFn) -> dict[str, Any]:
    msgs = draw(st.lists(user_m | assistant_m, min_size=1, max_size=6))
    tool_names = draw(st.lists(names, unique=True, max_size=3))
    body: dict[str, Any] = {
        "model": draw(names),
        "max_tokens": draw(st.integers(1, 100_000)),
        "messages": msgs,
        "tools": [{"name": n, "description": draw(text), "input_schema": {"type": "object"}} for n in tool_names],
    }
    optional = {
        "system": text | st.lists(text_block, max_size=2),
        "temperature": st.floats(0, 1),
        "top_p": st.floats(0, 1),
        "top_k": st.integers(0, 100),
        "stop_sequences": st.lists(st.text(min_size=1, max_size=5), max_size=3),
        "stream": st.booleans(),
        "metadata": st.fixed_dictionaries({"user_id": ids}),
        "thinking": st.sampled_from([{"type": "enabled", "budget_tokens": 1024}, {"type": "disabled"}]),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            body[key] = draw(strategy)
    choices: list[Any] = [{"type": "auto"}, {"type": "none"}]
    if tool_names:
        choices += [{"type": "any"}, {"type": "tool", "name": draw(st.sampled_from(tool_names))}]
    if draw(st.booleans()):
        body["tool_choice"] = draw(st.sampled_from(choices))
    return body


@given(messages_bodies())
@FAST
def test_valid_messages_requests_translate(body: dict[str, Any]) -> None:
    chat = plan("/v1/messages", body)
    sent = json.dumps(chat["messages"])
    uses = [
        b for m in body["messages"] if isinstance(m["content"], list) for b in m["content"] if b["type"] == "tool_use"
    ]
    results = [
        b
        for m in body["messages"]
        if isinstance(m["content"], list)
        for b in m["content"]
        if b["type"] == "tool_result"
    ]
    assert sum(len(m.get("tool_calls", [])) for m in chat["messages"]) == len(uses)
    assert [m["tool_call_id"] for m in chat["messages"] if m["role"] == "tool"] == [r["tool_use_id"] for r in results]
    for use in uses:
        assert any(
            json.loads(c["function"]["arguments"]) == use["input"]
            for m in chat["messages"]
            for c in m.get("tool_calls", [])
        )
    for m in body["messages"]:
        blocks = [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str) else m["content"]
        for b in blocks:
            if b["type"] == "text":
                assert json.dumps(b["text"])[1:-1] in sent
    count = plan("/v1/messages/count_tokens", {k: v for k, v in body.items() if k != "max_tokens"})
    assert isinstance(count["content"], str)


# -- garbage ---------------------------------------------------------------------------------------

RESPONSES_KEYS = [
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "text",
    "reasoning",
    "stream",
    "store",
    "previous_response_id",
    "max_output_tokens",
    "temperature",
    "top_p",
    "include",
    "metadata",
    "type",
    "role",
    "content",
    "call_id",
    "name",
    "arguments",
    "output",
    "format",
    "schema",
    "effort",
    "mode",
    "image_url",
    "parameters",
    "strict",
    "input_audio",
    "background",
    "truncation",
]
MESSAGES_KEYS = [
    "model",
    "max_tokens",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "stream",
    "thinking",
    "metadata",
    "output_config",
    "output_format",
    "type",
    "role",
    "content",
    "text",
    "source",
    "media_type",
    "data",
    "url",
    "tool_use_id",
    "is_error",
    "id",
    "name",
    "input",
    "input_schema",
    "budget_tokens",
    "user_id",
    "effort",
    "format",
    "schema",
    "title",
]


WORDS = ["user", "assistant", "function", "custom", "text", "message", "function_call", "input_text", "tool_use"]
WORDS += ["tool_result", "auto", "any", "tool", "json_schema", "base64", "enabled"]


def garbage(keys: list[str]) -> st.SearchStrategy[Any]:
    leaf = st.none() | st.booleans() | st.integers(-3, 10**7) | st.floats() | st.sampled_from([*keys, *WORDS]) | text
    return st.recursive(
        leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(keys), c, max_size=6), max_leaves=40
    )


def only_documented_errors(path: str, body: Any) -> None:
    try:
        plan(path, body)
    except AgentApiError as e:
        assert 400 <= e.status < 500
        json.dumps(e.openai_json())
        json.dumps(e.anthropic_json())


@given(st.dictionaries(st.sampled_from(RESPONSES_KEYS), garbage(RESPONSES_KEYS), max_size=8))
@FAST
def test_garbage_responses_requests_raise_only_documented_errors(body: dict[str, Any]) -> None:
    only_documented_errors("/v1/responses", body)


@given(st.dictionaries(st.sampled_from(MESSAGES_KEYS), garbage(MESSAGES_KEYS), max_size=8))
@FAST
def test_garbage_messages_requests_raise_only_documented_errors(body: dict[str, Any]) -> None:
    only_documented_errors("/v1/messages", body)
    only_documented_errors("/v1/messages/count_tokens", body)


@given(st.binary(max_size=300))
@FAST
def test_garbage_bytes_raise_only_documented_errors(raw: bytes) -> None:
    for path in ("/v1/responses", "/v1/messages", "/v1/messages/count_tokens"):
        only_documented_errors(path, raw)


@given(st.integers(1, 200_000), st.sampled_from(["[", '{"a":', '[{"x":[']))
@settings(max_examples=30, deadline=None)
def test_deep_nesting_is_bounded(depth: int, opener: str) -> None:
    raw = (opener * depth).encode()
    for path in ("/v1/responses", "/v1/messages"):
        try:
            plan(path, raw)
        except AgentApiError as e:
            assert e.status in (400, 413)
        else:
            raise AssertionError("an unterminated body was accepted")


@given(st.integers(65, 700))  # the test itself encodes the body with json.dumps (recursive)
@settings(max_examples=20, deadline=None)
def test_deep_but_valid_json_is_refused_with_413(depth: int) -> None:
    nested: Any = "x"
    for _ in range(depth):
        nested = [nested]
    for path, body in (
        ("/v1/responses", {"model": "m", "input": "x", "metadata": nested}),
        (
            "/v1/messages",
            {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}], "metadata": nested},
        ),
    ):
        try:
            plan(path, body)
        except AgentApiError as e:
            assert e.status == 413
        else:
            raise AssertionError("nesting beyond the limit was accepted")
