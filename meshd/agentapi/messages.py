"""Anthropic's Messages API (``POST /v1/messages``, ``POST /v1/messages/count_tokens``) over a chat host.

:func:`parse_request` validates a request and builds the chat-completions request. :class:`MessagesTranslator`
turns the host's answer into a Message object (JSON) or into Anthropic's event stream: ``message_start``,
``ping``, then per content block ``content_block_start``, ``content_block_delta`` (``text_delta``,
``thinking_delta``, ``input_json_delta``), ``content_block_stop``, and finally ``message_delta`` (with
``stop_reason`` and usage) and ``message_stop``; a failure ends the stream with an ``error`` event.
``count_tokens`` is answered by :class:`meshd.agentapi.tokens.CountTokensTranslator`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from meshd.agentapi import fields as f
from meshd.agentapi.chat import (
    DEFAULT_MAX_BODY,
    ChatEvent,
    Failed,
    Finish,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from meshd.agentapi.errors import InvalidRequest, anthropic_type
from meshd.agentapi.sse import encode_event
from meshd.agentapi.tokens import estimate_tokens, flatten_chat, tokenize_request
from meshd.agentapi.translate import Abort, PendingToolCalls, Translator, UpstreamProblem

IdSource = Callable[[str], str]

MAX_MESSAGES = 10_000
MAX_BLOCKS = 1_000
MAX_TOOLS = 512
MAX_STOP_SEQUENCES = 64
MAX_TOKENS_LIMIT = 10_000_000
_TOOL_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_EFFORT_MAP = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}


@attrs.frozen
class MessagesRequest:
    model: str
    stream: bool
    #: The chat-completions request.
    chat: dict[str, Any]
    stop_sequences: tuple[str, ...]
    #: Was thinking asked for? Then the host's reasoning is returned as ``thinking`` blocks.
    thinking: bool
    notes: tuple[str, ...]

    def input_estimate(self) -> int:
        text, count = flatten_chat(self.chat)
        return estimate_tokens(text, count)

    def tokenize_body(self) -> dict[str, Any]:
        text, _ = flatten_chat(self.chat)
        return tokenize_request(self.model, text)


# -- request ---------------------------------------------------------------------------------------


def parse_request(body: dict[str, Any], *, count_only: bool = False) -> MessagesRequest:
    notes: list[str] = []
    model = f.req_str(body, "model")
    stream = bool(f.opt_bool(body, "stream")) and not count_only
    chat: dict[str, Any] = {}
    max_tokens = f.opt_int(body, "max_tokens", low=1, high=MAX_TOKENS_LIMIT)
    if max_tokens is None and not count_only:
        raise InvalidRequest("max_tokens is required (a positive integer)", param="max_tokens")

    messages: list[dict[str, Any]] = []
    system = _system(body, notes)
    if system:
        messages.append({"role": "system", "content": system})
    raw_messages = f.opt_list(body, "messages", limit=MAX_MESSAGES)
    if not raw_messages:
        raise InvalidRequest("messages is required (a non-empty array)", param="messages")
    dropped: dict[str, int] = {}
    for i, raw in enumerate(raw_messages):
        messages.extend(_message(raw, f"messages[{i}]", notes, dropped))
    for what, count in dropped.items():
        notes.append(f"{count} {what} block(s) in messages were not sent to the model")
    chat["messages"] = messages

    if max_tokens is not None:
        chat["max_tokens"] = max_tokens
    temperature = f.opt_number(body, "temperature", low=0, high=1)
    if temperature is not None:
        chat["temperature"] = temperature
    top_p = f.opt_number(body, "top_p", low=0, high=1)
    if top_p is not None:
        chat["top_p"] = top_p
    top_k = f.opt_int(body, "top_k", low=0, high=1_000_000)
    if top_k is not None:
        chat["top_k"] = top_k
    stops_raw = f.opt_list(body, "stop_sequences", limit=MAX_STOP_SEQUENCES) or []
    stops = []
    for i, stop in enumerate(stops_raw):
        if not isinstance(stop, str) or not stop:
            raise f.bad(f"stop_sequences[{i}]", "a non-empty string", stop)
        stops.append(stop)
    if stops:
        chat["stop"] = stops

    tools = _tools(body, notes)
    choice, parallel = _tool_choice(body, {t["function"]["name"] for t in tools})
    if tools and choice != "none":
        chat["tools"] = tools
        if choice is not None:
            chat["tool_choice"] = choice
        if parallel is not None:
            chat["parallel_tool_calls"] = parallel
    elif choice not in (None, "auto", "none"):
        raise InvalidRequest("tool_choice requires tools, but no usable tool was given", param="tool_choice")

    thinking = _thinking(body, notes)
    _output_config(body, chat, notes)
    metadata = f.opt_dict(body, "metadata")
    if metadata is not None:
        user = f.opt_str(metadata, "user_id", "metadata")
        if user:
            chat["user"] = user[:256]  # the proxy keeps a session on one host by `user`
    if body.get("mcp_servers"):
        notes.append("mcp_servers are not available through this gateway and were ignored")
    if body.get("container") is not None:
        notes.append("container is not available through this gateway and was ignored")

    chat["stream"] = stream
    if stream:
        chat["stream_options"] = {"include_usage": True}
    return MessagesRequest(
        model=model,
        stream=stream,
        chat={"model": model, **chat},
        stop_sequences=tuple(stops),
        thinking=thinking,
        notes=tuple(notes),
    )


def _system(body: dict[str, Any], notes: list[str]) -> str:
    system = body.get("system")
    if system is None or isinstance(system, str):
        return system or ""
    if not isinstance(system, list):
        raise f.bad("system", "a string or an array of text blocks", system)
    texts = []
    for i, block in enumerate(system[:MAX_BLOCKS]):
        path = f"system[{i}]"
        block = f.as_dict(block, path)
        btype = f.req_str(block, "type", path)
        if btype != "text":
            raise InvalidRequest(f"{path}.type must be 'text'", param=f"{path}.type")
        texts.append(f.req_str(block, "text", path, nonempty=False))
    if len(system) > MAX_BLOCKS:
        raise InvalidRequest(f"system has more than {MAX_BLOCKS} blocks", param="system")
    return "\n\n".join(texts)


def _image_part(block: dict[str, Any], path: str, notes: list[str]) -> dict[str, Any] | None:
    source = f.opt_dict(block, "source", path)
    if source is None:
        raise InvalidRequest(f"{path}.source is required", param=f"{path}.source")
    stype = f.req_str(source, "type", f"{path}.source")
    if stype == "base64":
        media = f.req_str(source, "media_type", f"{path}.source")
        data = f.req_str(source, "data", f"{path}.source")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if stype == "url":
        return {"type": "image_url", "image_url": {"url": f.req_str(source, "url", f"{path}.source")}}
    notes.append(f"{path}: images of source type {stype[:40]!r} are not available and were dropped")
    return None


def _document_text(block: dict[str, Any], path: str, notes: list[str]) -> str | None:
    source = f.opt_dict(block, "source", path) or {}
    if source.get("type") == "text" and isinstance(source.get("data"), str):
        title = f.opt_str(block, "title", path)
        return f"{title}\n{source['data']}" if title else str(source["data"])
    notes.append(f"{path}: documents other than plain text are not available and were dropped")
    return None


def _user_parts(
    blocks: list[Any], path: str, notes: list[str], dropped: dict[str, int]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(tool messages, content parts) of a user message's blocks."""
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        bpath = f"{path}[{j}]"
        block = f.as_dict(block, bpath)
        btype = f.req_str(block, "type", bpath)
        if btype == "text":
            parts.append({"type": "text", "text": f.req_str(block, "text", bpath, nonempty=False)})
        elif btype == "image":
            image = _image_part(block, bpath, notes)
            if image is not None:
                parts.append(image)
        elif btype == "document":
            text = _document_text(block, bpath, notes)
            if text is not None:
                parts.append({"type": "text", "text": text})
        elif btype == "tool_result":
            tool_use_id = f.req_str(block, "tool_use_id", bpath)
            content = block.get("content", "")
            if isinstance(content, str):
                text = content
            elif isinstance(content, list):
                _, inner = _user_parts(content, f"{bpath}.content", notes, dropped)
                text = "\n".join(p["text"] for p in inner if p["type"] == "text")
                images = sum(1 for p in inner if p["type"] != "text")
                if images:
                    notes.append(f"{bpath}: {images} image(s) in a tool result were dropped")
            else:
                raise f.bad(f"{bpath}.content", "a string or an array of blocks", content)
            if f.opt_bool(block, "is_error", bpath):
                text = f"Error: {text}"
            tool_messages.append({"role": "tool", "tool_call_id": tool_use_id, "content": text})
        elif btype in ("thinking", "redacted_thinking"):
            dropped[btype] = dropped.get(btype, 0) + 1
        else:
            dropped[btype[:40]] = dropped.get(btype[:40], 0) + 1
    return tool_messages, parts


def _joined(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts) if len(parts) != 1 else parts[0]["text"]
    return parts


def _message(raw: Any, path: str, notes: list[str], dropped: dict[str, int]) -> list[dict[str, Any]]:
    message = f.as_dict(raw, path)
    role = f.one_of(f.req_str(message, "role", path), ("user", "assistant"), f"{path}.role")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise f.bad(f"{path}.content", "a string or an array of content blocks", content)
    if len(content) > MAX_BLOCKS:
        raise InvalidRequest(f"{path}.content has more than {MAX_BLOCKS} blocks", param=f"{path}.content")
    if role == "user":
        tool_messages, parts = _user_parts(content, f"{path}.content", notes, dropped)
        out = list(tool_messages)
        if parts or not tool_messages:
            out.append({"role": "user", "content": _joined(parts) if parts else ""})
        return out
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        bpath = f"{path}.content[{j}]"
        block = f.as_dict(block, bpath)
        btype = f.req_str(block, "type", bpath)
        if btype == "text":
            texts.append(f.req_str(block, "text", bpath, nonempty=False))
        elif btype == "tool_use":
            tool_input = block.get("input", {})
            if not isinstance(tool_input, dict):
                raise f.bad(f"{bpath}.input", "an object", tool_input)
            calls.append(
                {
                    "id": f.req_str(block, "id", bpath),
                    "type": "function",
                    "function": {"name": f.req_str(block, "name", bpath), "arguments": json.dumps(tool_input)},
                }
            )
        else:
            dropped[btype[:40]] = dropped.get(btype[:40], 0) + 1
    out_message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        out_message["tool_calls"] = calls
    return [out_message]


def _tools(body: dict[str, Any], notes: list[str]) -> list[dict[str, Any]]:
    raw = f.opt_list(body, "tools", limit=MAX_TOOLS) or []
    tools = []
    names: set[str] = set()
    for i, tool in enumerate(raw):
        path = f"tools[{i}]"
        tool = f.as_dict(tool, path)
        ttype = f.opt_str(tool, "type", path)
        if ttype not in (None, "custom"):
            notes.append(f"{path} (type {ttype[:40]!r}) is a server tool, not available through this gateway; dropped")
            continue
        name = f.tool_name(tool, path, names)
        schema = f.opt_dict(tool, "input_schema", path)
        if schema is None:
            raise InvalidRequest(
                f"{path}.input_schema is required (a JSON schema object)", param=f"{path}.input_schema"
            )
        function: dict[str, Any] = {"name": name, "parameters": schema}
        description = f.opt_str(tool, "description", path)
        if description:
            function["description"] = description
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(body: dict[str, Any], names: set[str]) -> tuple[Any, bool | None]:
    raw = f.opt_dict(body, "tool_choice")
    if raw is None:
        return None, None
    ctype = f.one_of(f.req_str(raw, "type", "tool_choice"), ("auto", "any", "tool", "none"), "tool_choice.type")
    disable = f.opt_bool(raw, "disable_parallel_tool_use", "tool_choice")
    parallel = None if disable is None else not disable
    if ctype == "auto":
        return "auto", parallel
    if ctype == "any":
        return "required", parallel
    if ctype == "none":
        return "none", None
    name = f.req_str(raw, "name", "tool_choice")
    if name not in names:
        raise InvalidRequest(f"tool_choice.name {name!r} is not among the tools", param="tool_choice.name")
    return {"type": "function", "function": {"name": name}}, parallel


def _thinking(body: dict[str, Any], notes: list[str]) -> bool:
    thinking = f.opt_dict(body, "thinking")
    if thinking is None:
        return False
    ttype = f.req_str(thinking, "type", "thinking")
    if ttype in ("enabled", "adaptive"):
        if thinking.get("budget_tokens") is not None:
            notes.append("thinking.budget_tokens is not enforced")
        return True
    return False


def _output_config(body: dict[str, Any], chat: dict[str, Any], notes: list[str]) -> None:
    config = f.opt_dict(body, "output_config") or {}
    effort = f.opt_str(config, "effort", "output_config")
    if effort is not None:
        mapped = _EFFORT_MAP.get(effort)
        if mapped is None:
            raise InvalidRequest(
                "output_config.effort must be low, medium, high, xhigh or max", param="output_config.effort"
            )
        chat["reasoning_effort"] = mapped
        if mapped != effort:
            notes.append(f"output_config.effort {effort!r} was sent to the host as {mapped!r}")
    fmt = f.opt_dict(config, "format", "output_config")
    fpath = "output_config.format"
    if fmt is None:
        fmt = f.opt_dict(body, "output_format")
        fpath = "output_format"
    if fmt is not None:
        f.one_of(f.req_str(fmt, "type", fpath), ("json_schema",), f"{fpath}.type")
        schema = f.opt_dict(fmt, "schema", fpath)
        if schema is None:
            raise InvalidRequest(f"{fpath}.schema is required", param=f"{fpath}.schema")
        chat["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema, "strict": True},
        }


# -- response --------------------------------------------------------------------------------------


class _Block:
    def __init__(self, kind: str, index: int) -> None:
        self.kind = kind  # text | thinking | tool_use
        self.index = index
        self.parts: list[str] = []
        self.tool_id = ""
        self.name = ""
        self.open = True

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def json(self, notes: list[str] | None = None) -> dict[str, Any]:
        if self.kind == "text":
            return {"type": "text", "text": self.text}
        if self.kind == "thinking":
            return {"type": "thinking", "thinking": self.text, "signature": ""}
        raw = self.text
        tool_input: Any = {}
        if raw.strip():
            try:
                tool_input = json.loads(raw)
            except (ValueError, RecursionError):
                tool_input = None
            if not isinstance(tool_input, dict):
                if notes is not None:
                    notes.append(f"the arguments of tool call {self.tool_id} were not a JSON object; sent as {{}}")
                tool_input = {}
        return {"type": "tool_use", "id": self.tool_id, "name": self.name, "input": tool_input}


class MessagesTranslator(Translator):
    """One host answer → an Anthropic Message, or Anthropic's event stream when the request streamed."""

    def __init__(
        self,
        request: MessagesRequest,
        *,
        message_id: str,
        ids: IdSource,
        notes: Sequence[str] = (),
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        super().__init__(stream=request.stream, notes=[*request.notes, *notes], max_body=max_body)
        self.request = request
        self.message_id = message_id
        self._ids = ids
        self._estimate = request.input_estimate()
        self._blocks: list[_Block] = []
        self._current: _Block | None = None
        self._tools: dict[int, _Block] = {}
        self._pending = PendingToolCalls()
        self._finish: Finish | None = None
        self._usage: Usage | None = None
        self._reasoning_dropped = False

    def _event(self, etype: str, **payload: Any) -> bytes:
        if not self.stream:
            return b""
        return encode_event(etype, {"type": etype, **payload})

    # -- Translator hooks --

    def _open_stream(self) -> bytes:
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.request.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self._estimate, "output_tokens": 0},
        }
        if self.notes:
            message["meshd_notes"] = list(self.notes)
        return self._event("message_start", message=message) + self._event("ping")

    def _on_event(self, event: ChatEvent) -> bytes:
        if isinstance(event, TextDelta):
            block, out = self._block("text")
            block.parts.append(event.text)
            return out + self._event(
                "content_block_delta", index=block.index, delta={"type": "text_delta", "text": event.text}
            )
        if isinstance(event, ReasoningDelta):
            if not self.request.thinking:
                self._reasoning_dropped = True
                return b""
            block, out = self._block("thinking")
            block.parts.append(event.text)
            return out + self._event(
                "content_block_delta", index=block.index, delta={"type": "thinking_delta", "thinking": event.text}
            )
        if isinstance(event, ToolCallDelta):
            return self._tool(event)
        if isinstance(event, Finish):
            self._finish = event
        elif isinstance(event, Usage):
            self._usage = event
        return b""

    def _block(self, kind: str) -> tuple[_Block, bytes]:
        if self._current is not None and self._current.kind == kind:
            return self._current, b""
        out = self._close_current()
        block = _Block(kind, len(self._blocks))
        self._blocks.append(block)
        self._current = block
        start = (
            {"type": "text", "text": ""} if kind == "text" else {"type": "thinking", "thinking": "", "signature": ""}
        )
        return block, out + self._event("content_block_start", index=block.index, content_block=start)

    def _close_current(self) -> bytes:
        block = self._current
        if block is None:
            return b""
        self._current = None
        block.open = False
        return self._event("content_block_stop", index=block.index)

    def _tool(self, delta: ToolCallDelta) -> bytes:
        block = self._tools.get(delta.index)
        if block is not None:
            if not delta.arguments:
                return b""
            if block is not self._current:
                raise Abort(Failed("the host interleaved the arguments of several tool calls", "upstream_bad_event"))
            block.parts.append(delta.arguments)
            return self._event(
                "content_block_delta",
                index=block.index,
                delta={"type": "input_json_delta", "partial_json": delta.arguments},
            )
        self._pending.make_room(delta.index, len(self._tools))
        pending = self._pending.gather(delta)
        if pending is None:
            return b""
        return self._open_tool(delta.index, pending)

    def _open_tool(self, index: int, pending: dict[str, Any]) -> bytes:
        out = self._close_current()
        block = _Block("tool_use", len(self._blocks))
        call_id = pending["call_id"]
        block.tool_id = call_id if isinstance(call_id, str) and _TOOL_ID.match(call_id) else self._ids("toolu")
        block.name = pending["name"]
        self._blocks.append(block)
        self._tools[index] = block
        self._current = block
        out += self._event(
            "content_block_start",
            index=block.index,
            content_block={"type": "tool_use", "id": block.tool_id, "name": block.name, "input": {}},
        )
        args = "".join(pending["args"])
        if args:
            block.parts.append(args)
            out += self._event(
                "content_block_delta", index=block.index, delta={"type": "input_json_delta", "partial_json": args}
            )
        return out

    def _stop(self) -> tuple[str, str | None]:
        finish = self._finish
        reason = finish.reason if finish is not None else "stop"
        if reason == "length":
            return "max_tokens", None
        if reason == "content_filter":
            return "refusal", None
        if self._tools or reason in ("tool_calls", "function_call"):
            return "tool_use", None
        if finish is not None and finish.matched_stop in self.request.stop_sequences:
            return "stop_sequence", finish.matched_stop
        return "end_turn", None

    def _usage_json(self) -> dict[str, Any]:
        u = self._usage
        if u is None:
            output = sum(estimate_tokens(b.text) for b in self._blocks)
            return {"input_tokens": self._estimate, "output_tokens": output, "cache_read_input_tokens": 0}
        cached = min(u.cached_tokens, u.prompt_tokens)
        return {
            "input_tokens": u.prompt_tokens - cached,
            "output_tokens": u.completion_tokens,
            "cache_read_input_tokens": cached,
        }

    def _finalise(self) -> None:
        self._pending.drop_unnamed(self.notes)
        if self._reasoning_dropped:
            self.notes.append("the model's reasoning was not returned (thinking is not enabled)")

    def _close_stream(self) -> bytes:
        out = self._close_current()
        self._finalise()
        stop_reason, stop_sequence = self._stop()
        return (
            out
            + self._event(
                "message_delta",
                delta={"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                usage=self._usage_json(),
            )
            + self._event("message_stop")
        )

    def _final_json(self) -> dict[str, Any]:
        self._close_current()
        self._finalise()
        stop_reason, stop_sequence = self._stop()
        content = [b.json(self.notes) for b in self._blocks]
        usage = {"cache_creation_input_tokens": 0, **self._usage_json()}
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.request.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": usage,
        }
        if self.notes:
            message["meshd_notes"] = list(self.notes)
        return message

    def _fail_stream(self, failed: Failed) -> bytes:
        kind = "overloaded_error" if failed.code == "server_busy" else "api_error"
        message = failed.message
        if failed.code in ("context_length_exceeded", "exceed_context_size_error"):
            kind, message = "invalid_request_error", f"prompt is too long: {message}"
        return self._event("error", error={"type": kind, "message": message})

    def _error_json(self, problem: UpstreamProblem) -> dict[str, Any]:
        return anthropic_error_json(problem)


def anthropic_error_json(problem: UpstreamProblem) -> dict[str, Any]:
    message = problem.message
    if problem.context_overflow:
        message = f"prompt is too long: {message}"
    return {"type": "error", "error": {"type": anthropic_type(problem.status), "message": message}}
