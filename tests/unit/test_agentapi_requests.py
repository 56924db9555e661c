"""Request translation: Responses and Messages bodies → chat-completions requests, and what is refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from meshd.agentapi import AgentApi, match
from meshd.agentapi.errors import AgentApiError, InvalidRequest, MethodNotAllowed, NotFound, TooLarge, Unsupported
from tests.unit.agentapi_support import CountingIds

AGENT = AgentApi(ids=CountingIds())


def responses(body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    prepared = AGENT.prepare(match("POST", "/v1/responses"), json.dumps(body).encode())  # type: ignore[arg-type]
    return json.loads(prepared.plan(now=0, history=history or []).body)


def messages(body: dict[str, Any], path: str = "/v1/messages") -> dict[str, Any]:
    prepared = AGENT.prepare(match("POST", path), json.dumps(body).encode())  # type: ignore[arg-type]
    return json.loads(prepared.plan(now=0).body)


def notes_of(api: str, body: dict[str, Any]) -> tuple[str, ...]:
    path = "/v1/responses" if api == "responses" else "/v1/messages"
    return AGENT.prepare(match("POST", path), json.dumps(body).encode()).request.notes  # type: ignore[arg-type]


def refused(api: str, body: Any, path: str | None = None) -> AgentApiError:
    path = path or ("/v1/responses" if api == "responses" else "/v1/messages")
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(AgentApiError) as info:
        AGENT.prepare(match("POST", path), raw).plan(now=0)  # type: ignore[arg-type]
    return info.value


# -- routing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "action", "rid"),
    [
        ("POST", "/v1/responses", "create", None),
        ("POST", "/v1/responses/?stream=x", "create", None),
        ("GET", "/v1/responses/resp_1", "retrieve", "resp_1"),
        ("DELETE", "/v1/responses/resp_1", "delete", "resp_1"),
        ("PUT", "/v1/responses/resp_1", "bad_method", "resp_1"),
        ("GET", "/v1/responses", "bad_method", None),
        ("GET", "/v1/responses/resp_1/input_items", "unknown", None),
        ("POST", "/v1/messages", "create", None),
        ("POST", "/v1/messages/count_tokens", "count_tokens", None),
        ("POST", "/v1/responses/input_tokens", "count_tokens", None),
        ("GET", "/v1/responses/input_tokens", "bad_method", None),
        ("POST", "/v1/messages/batches", "unknown", None),
    ],
)
def test_match(method: str, path: str, action: str, rid: str | None) -> None:
    endpoint = match(method.encode(), path.encode())
    assert endpoint is not None and endpoint.action == action and endpoint.response_id == rid


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/models", "/v1/responsesx", "/health"])
def test_other_paths_are_not_ours(path: str) -> None:
    assert match("POST", path) is None


def test_bad_method_and_unknown_path_errors() -> None:
    with pytest.raises(MethodNotAllowed):
        AGENT.prepare(match("GET", "/v1/messages"), b"")  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        AGENT.prepare(match("POST", "/v1/messages/batches"), b"{}")  # type: ignore[arg-type]


# -- Responses -------------------------------------------------------------------------------------


def test_string_input_and_sampling_fields() -> None:
    chat = responses(
        {"model": "m", "input": "hi", "max_output_tokens": 64, "temperature": 0.5, "top_p": 0.9, "stream": True}
    )
    assert chat == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 64,
        "temperature": 0.5,
        "top_p": 0.9,
    }


def test_instructions_and_leading_developer_messages_become_one_system_message() -> None:
    chat = responses(
        {
            "model": "m",
            "instructions": "Be brief.",
            "input": [
                {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Sandbox: on."}]},
                {"role": "user", "content": "hi"},
                {"role": "system", "content": "later system"},
            ],
        }
    )
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief.\n\nSandbox: on."},
        {"role": "user", "content": "hi"},
        {"role": "system", "content": "later system"},
    ]


def test_codex_style_turn_with_tool_calls_and_outputs() -> None:
    chat = responses(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "list files"}]},
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAA"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Running ls."}]},
                {"type": "function_call", "call_id": "c1", "name": "shell", "arguments": '{"command":["ls"]}'},
                {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "*** Begin Patch"},
                {"type": "function_call_output", "call_id": "c1", "output": "a.txt"},
                {"type": "custom_tool_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "ok"}]},
                {"role": "assistant", "content": "Done."},
            ],
        }
    )
    assert chat["messages"] == [
        {"role": "user", "content": "list files"},
        {
            "role": "assistant",
            "content": "Running ls.",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "shell", "arguments": '{"command":["ls"]}'}},
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "apply_patch", "arguments": '{"input": "*** Begin Patch"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "a.txt"},
        {"role": "tool", "tool_call_id": "c2", "content": "ok"},
        {"role": "assistant", "content": "Done."},
    ]


def test_dropped_input_items_are_noted() -> None:
    notes = notes_of(
        "responses",
        {
            "model": "m",
            "input": [
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "web_search_call", "id": "ws_1", "status": "completed"},
                {
                    "role": "user",
                    "content": [{"type": "input_file", "file_id": "f"}, {"type": "input_text", "text": "x"}],
                },
            ],
        },
    )
    assert any("reasoning item" in n for n in notes)
    assert any("web_search_call" in n for n in notes)
    assert any("input[2].content[0]" in n and "input_file" in n for n in notes)


def test_images_become_image_url_parts() -> None:
    chat = responses(
        {
            "model": "m",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "what is this?"},
                        {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
                    ],
                }
            ],
        }
    )
    assert chat["messages"][0]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
    ]


def test_tools_and_tool_choice() -> None:
    body = {
        "model": "m",
        "input": "x",
        "tools": [
            {
                "type": "function",
                "name": "shell",
                "parameters": {"type": "object"},
                "strict": False,
                "description": "d",
            },
            {
                "type": "custom",
                "name": "apply_patch",
                "format": {"type": "grammar", "syntax": "lark", "definition": "x"},
            },
            {"type": "web_search"},
        ],
        "tool_choice": {"type": "function", "name": "shell"},
        "parallel_tool_calls": False,
    }
    chat = responses(body)
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {"name": "shell", "description": "d", "parameters": {"type": "object"}, "strict": False},
        },
        {
            "type": "function",
            "function": {
                "name": "apply_patch",
                "parameters": {"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]},
            },
        },
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "shell"}}
    assert chat["parallel_tool_calls"] is False
    notes = notes_of("responses", body)
    assert any("grammar" in n for n in notes) and any("tools[2]" in n and "web_search" in n for n in notes)


def test_allowed_tools_filters_the_tools() -> None:
    chat = responses(
        {
            "model": "m",
            "input": "x",
            "tools": [{"type": "function", "name": "a"}, {"type": "function", "name": "b"}],
            "tool_choice": {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "b"}]},
        }
    )
    assert [t["function"]["name"] for t in chat["tools"]] == ["b"] and chat["tool_choice"] == "required"


def test_text_format_json_schema() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    chat = responses(
        {
            "model": "m",
            "input": "x",
            "text": {"format": {"type": "json_schema", "name": "out", "schema": schema, "strict": True}},
        }
    )
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": schema, "strict": True},
    }
    chat = responses({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}})
    assert chat["response_format"] == {"type": "json_object"}


def test_reasoning_effort_passes_and_the_rest_is_noted() -> None:
    body = {
        "model": "m",
        "input": "x",
        "reasoning": {"effort": "xhigh", "summary": "auto"},
        "include": ["reasoning.encrypted_content"],
    }
    assert responses(body)["reasoning_effort"] == "high"
    notes = notes_of("responses", body)
    assert any("'xhigh'" in n for n in notes) and any("summary" in n for n in notes)
    assert any("reasoning.encrypted_content" in n for n in notes)
    assert "reasoning_effort" not in responses({"model": "m", "input": "x", "reasoning": {"effort": "none"}})


def test_session_key_becomes_user() -> None:
    assert responses({"model": "m", "input": "x", "prompt_cache_key": "conv-1"})["user"] == "conv-1"


def test_history_comes_before_the_input() -> None:
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    chat = responses({"model": "m", "input": "c", "instructions": "sys"}, history)
    assert [m["content"] for m in chat["messages"]] == ["sys", "a", "b", "c"]


def test_passthrough_safety() -> None:
    def prepared(body: dict[str, Any]) -> Any:
        return AGENT.prepare(match("POST", "/v1/responses"), json.dumps(body).encode())  # type: ignore[arg-type]

    assert prepared({"model": "m", "input": "x", "store": False}).passthrough() is not None
    assert prepared({"model": "m", "input": "x"}).passthrough() is None  # store defaults to true
    assert prepared({"model": "m", "input": "x", "store": False, "previous_response_id": "r"}).passthrough() is None
    forward = prepared({"model": "m", "input": "x", "store": False}).passthrough()
    assert forward.path == "/v1/responses" and json.loads(forward.body)["input"] == "x"


@pytest.mark.parametrize(
    ("body", "param", "error"),
    [
        ({"input": "x"}, "model", InvalidRequest),
        ({"model": 3, "input": "x"}, "model", InvalidRequest),
        ({"model": "m", "input": 5}, "input", InvalidRequest),
        ({"model": "m", "input": [5]}, "input[0]", InvalidRequest),
        ({"model": "m", "input": [{"role": "robot", "content": "x"}]}, "input[0].role", InvalidRequest),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]},
            "input[0].content[0].text",
            InvalidRequest,
        ),
        (
            {"model": "m", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
            "input[0].call_id",
            InvalidRequest,
        ),
        (
            {"model": "m", "input": [{"type": "function_call_output", "call_id": "c"}]},
            "input[0].output",
            InvalidRequest,
        ),
        ({"model": "m", "input": [{"content": "x"}]}, "input[0]", InvalidRequest),
        ({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}, "input[0]", Unsupported),
        ({"model": "m", "input": "x", "temperature": 3}, "temperature", InvalidRequest),
        ({"model": "m", "input": "x", "top_p": "1"}, "top_p", InvalidRequest),
        ({"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens", InvalidRequest),
        ({"model": "m", "input": "x", "stream": "yes"}, "stream", InvalidRequest),
        ({"model": "m", "input": "x", "tools": [{"type": "function"}]}, "tools[0].name", InvalidRequest),
        (
            {
                "model": "m",
                "input": "x",
                "tools": [{"type": "function", "name": "a"}, {"type": "function", "name": "a"}],
            },
            "tools[1].name",
            InvalidRequest,
        ),
        (
            {
                "model": "m",
                "input": "x",
                "tools": [{"type": "function", "name": "a"}],
                "tool_choice": {"type": "function", "name": "b"},
            },
            "tool_choice.name",
            InvalidRequest,
        ),
        ({"model": "m", "input": "x", "tool_choice": "sometimes"}, "tool_choice", InvalidRequest),
        ({"model": "m", "input": "x", "tool_choice": "required"}, "tool_choice", InvalidRequest),
        (
            {"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}},
            "text.format.schema",
            InvalidRequest,
        ),
        ({"model": "m", "input": "x", "reasoning": {"effort": "extreme"}}, "reasoning.effort", InvalidRequest),
        ({"model": "m", "input": "x", "background": True}, "background", Unsupported),
        ({"model": "m", "input": "x", "conversation": "conv_1"}, "conversation", Unsupported),
        ({"model": "m", "input": []}, "input", InvalidRequest),
        ({"model": "m", "input": "x", "metadata": {"a": 1}}, "metadata", InvalidRequest),
    ],
)
def test_responses_errors_name_the_field(body: dict[str, Any], param: str, error: type[AgentApiError]) -> None:
    err = refused("responses", body)
    assert type(err) is error and err.status == 400
    assert err.param == param and param in err.message
    shaped = err.openai_json()["error"]
    assert shaped["param"] == param and shaped["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("raw", "status"),
    [(b"", 400), (b"not json", 400), (b"[1]", 400), (b'{"a": NaN}', 400), (b"\xff\xfe", 400), (b"[" * 100_000, 413)],
)
def test_undecodable_bodies(raw: bytes, status: int) -> None:
    assert refused("responses", raw).status == status
    assert refused("messages", raw).anthropic_json()["type"] == "error"


def test_deep_tool_schema_is_refused_by_the_nesting_limit() -> None:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(70):
        schema = {"type": "object", "properties": {"a": schema}}
    err = refused(
        "responses", {"model": "m", "input": "x", "tools": [{"type": "function", "name": "f", "parameters": schema}]}
    )
    assert isinstance(err, TooLarge) and err.status == 413


def test_too_many_items_is_refused() -> None:
    err = refused("responses", {"model": "m", "input": [{"role": "user", "content": "x"}] * 10_001})
    assert err.param == "input"


# -- Messages --------------------------------------------------------------------------------------


def test_claude_code_style_turn() -> None:
    chat = messages(
        {
            "model": "m",
            "max_tokens": 1024,
            "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "fix the bug"}]},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                        {"type": "text", "text": "Reading."},
                        {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "a.py"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": [{"type": "text", "text": "print(1)"}],
                        },
                        {"type": "text", "text": "and now?"},
                    ],
                },
            ],
            "tools": [{"name": "Read", "description": "read a file", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "stop_sequences": ["END"],
            "temperature": 0.2,
            "top_k": 40,
            "metadata": {"user_id": "u-1"},
        }
    )
    assert chat == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "You are Claude Code."},
            {"role": "user", "content": "fix the bug"},
            {
                "role": "assistant",
                "content": "Reading.",
                "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "Read", "arguments": '{"path": "a.py"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "print(1)"},
            {"role": "user", "content": "and now?"},
        ],
        "max_tokens": 1024,
        "temperature": 0.2,
        "top_k": 40,
        "stop": ["END"],
        "tools": [
            {
                "type": "function",
                "function": {"name": "Read", "parameters": {"type": "object"}, "description": "read a file"},
            }
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "user": "u-1",
        "stream": False,
    }


def test_tool_result_error_images_and_documents() -> None:
    chat = messages(
        {
            "model": "m",
            "max_tokens": 10,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t", "content": "no such file", "is_error": True},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/plain", "data": "doc"},
                            "title": "T",
                        },
                    ],
                }
            ],
        }
    )
    assert chat["messages"] == [
        {"role": "tool", "tool_call_id": "t", "content": "Error: no such file"},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": "T\ndoc"},
            ],
        },
    ]


def test_server_tools_thinking_and_structured_output() -> None:
    body = {
        "model": "m",
        "max_tokens": 10,
        "stream": True,
        "messages": [{"role": "user", "content": "x"}],
        "tools": [
            {"type": "web_search_20250305", "name": "web_search"},
            {"name": "f", "input_schema": {"type": "object"}},
        ],
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "output_config": {"effort": "max", "format": {"type": "json_schema", "schema": {"type": "object"}}},
    }
    chat = messages(body)
    assert [t["function"]["name"] for t in chat["tools"]] == ["f"]
    assert chat["reasoning_effort"] == "high"
    assert chat["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert chat["stream_options"] == {"include_usage": True}
    notes = notes_of("messages", body)
    assert any("tools[0]" in n for n in notes) and any("budget_tokens" in n for n in notes)


def test_tool_choice_none_sends_no_tools() -> None:
    chat = messages(
        {
            "model": "m",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"name": "f", "input_schema": {}}],
            "tool_choice": {"type": "none"},
        }
    )
    assert "tools" not in chat and "tool_choice" not in chat


def test_count_tokens_needs_no_max_tokens_and_goes_to_tokenize() -> None:
    prepared = AGENT.prepare(
        match("POST", "/v1/messages/count_tokens"),
        json.dumps({"model": "m", "messages": [{"role": "user", "content": "hello"}]}).encode(),
    )  # type: ignore[arg-type]
    forward = prepared.plan(now=0)
    assert forward.path == "/tokenize" and not forward.stream
    body = json.loads(forward.body)
    assert body["content"] == body["prompt"] == "user\nhello" and body["model"] == "m"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"model": "m", "max_tokens": 5}, "messages"),
        ({"model": "m", "max_tokens": 5, "messages": []}, "messages"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0].text",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": []}]}
                ],
            },
            "messages[0].content[0].input",
        ),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "temperature": 1.5},
            "temperature",
        ),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "stop_sequences": [""]},
            "stop_sequences[0]",
        ),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": [{"name": "f"}]},
            "tools[0].input_schema",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
                "tool_choice": {"type": "tool", "name": "g"},
            },
            "tool_choice.name",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
                "tool_choice": {"type": "maybe"},
            },
            "tool_choice.type",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
                "system": [{"type": "image"}],
            },
            "system[0].type",
        ),
    ],
)
def test_messages_errors_name_the_field(body: dict[str, Any], param: str) -> None:
    err = refused("messages", body)
    assert err.status == 400 and err.param == param
    assert err.anthropic_json() == {"type": "error", "error": {"type": "invalid_request_error", "message": err.message}}


@pytest.mark.parametrize("api", ["responses", "messages"])
def test_tool_names_are_unique_and_bounded(api: str) -> None:
    def tool(name: str) -> dict[str, Any]:
        if api == "responses":
            return {"type": "function", "name": name, "parameters": {"type": "object"}}
        return {"name": name, "input_schema": {"type": "object"}}

    base: dict[str, Any] = {"model": "m", "max_tokens": 5}
    base |= {"input": "x"} if api == "responses" else {"messages": [{"role": "user", "content": "x"}]}
    err = refused(api, {**base, "tools": [tool("f"), tool("g"), tool("f")]})
    assert isinstance(err, InvalidRequest) and err.param == "tools[2].name" and "used by another tool" in str(err)
    err = refused(api, {**base, "tools": [tool("x" * 257)]})
    assert isinstance(err, InvalidRequest) and err.param == "tools[0].name" and "longer than 256" in str(err)


def test_the_nesting_limit_counts_containers_not_brackets_in_strings() -> None:
    from meshd.agentapi.fields import MAX_DEPTH, check_depth, load_object

    def nested(levels: int) -> bytes:
        value: Any = {"s": "[[[[{{{{" * 50}  # brackets inside a string are no nesting
        for i in range(levels - 1):
            value = {"a": value} if (levels - i) % 2 == 0 else [value]  # the outermost is an object
        return json.dumps(value).encode()

    def depth(v: Any) -> int:
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        return 0

    at_limit, over = nested(MAX_DEPTH), nested(MAX_DEPTH + 1)
    assert depth(json.loads(at_limit)) == MAX_DEPTH and depth(json.loads(over)) == MAX_DEPTH + 1
    check_depth(at_limit, MAX_DEPTH, "request body")
    assert load_object(at_limit)
    with pytest.raises(TooLarge):
        check_depth(over, MAX_DEPTH, "request body")
    with pytest.raises(TooLarge):
        load_object(over)
