"""OpenAI's Responses API (``POST /v1/responses``) over a chat-completions host.

:func:`parse_request` validates a request body and returns a :class:`ResponsesRequest`, which builds the
chat-completions request (:meth:`ResponsesRequest.chat_request`, given the history of a
``previous_response_id``). :class:`ResponsesTranslator` turns the host's answer into the Response object
(JSON) or into the Responses event stream the official SDK's stream helper accumulates
(``response.created``, ``response.in_progress``, ``response.output_item.added``,
``response.content_part.added``, ``response.output_text.delta``/``.done``,
``response.reasoning_text.delta``/``.done``, ``response.function_call_arguments.delta``/``.done``,
``response.custom_tool_call_input.delta``/``.done``, ``response.content_part.done``,
``response.output_item.done``, then ``response.completed``, ``response.incomplete`` or
``response.failed``). The field-by-field mapping is in ``docs/agent-apis.md``.
"""

from __future__ import annotations

import json
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
from meshd.agentapi.errors import InvalidRequest, Unsupported
from meshd.agentapi.sse import encode_event
from meshd.agentapi.store import StoredResponse
from meshd.agentapi.translate import PendingToolCalls, Translator, UpstreamProblem

IdSource = Callable[[str], str]

MAX_INPUT_ITEMS = 10_000
MAX_CONTENT_PARTS = 1_000
MAX_TOOLS = 512
MAX_TOKENS_LIMIT = 10_000_000
ROLES = ("user", "assistant", "system", "developer")
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
#: Responses ``reasoning.effort`` → chat ``reasoning_effort`` (the values backends widely accept).
_EFFORT_MAP = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "high"}
_INPUT_STRING_PARAMETERS = {"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}


@attrs.frozen
class ResponsesRequest:
    model: str
    stream: bool
    store: bool
    previous_response_id: str | None
    instructions: str | None
    #: Chat messages made from ``input`` (no instructions): stored as this turn.
    messages: list[dict[str, Any]]
    #: Everything of the chat request except ``messages``.
    chat_fields: dict[str, Any]
    #: Names of the caller's ``custom`` tools (sent as functions with one ``input`` string).
    custom_tools: frozenset[str]
    #: Fields echoed in the Response object.
    echo: dict[str, Any]
    notes: tuple[str, ...]

    @property
    def passthrough_safe(self) -> bool:
        """May a host with a native ``/v1/responses`` serve it? Only when no state of this node is needed."""
        return self.previous_response_id is None and not self.store

    def chat_request(self, history: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        messages = merge_leading_system(self.instructions, [*history, *self.messages])
        if not any(m.get("role") in ("user", "tool") for m in messages):
            raise InvalidRequest("the request has no user input: `input` is empty", param="input")
        return {"model": self.model, "messages": messages, **self.chat_fields}


def merge_leading_system(instructions: str | None, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One system message first: the instructions and the system/developer messages the input starts with.

    Many chat templates accept a system message only in first place.
    """
    texts = [instructions] if instructions else []
    i = 0
    while i < len(messages) and messages[i].get("role") == "system" and isinstance(messages[i].get("content"), str):
        texts.append(messages[i]["content"])
        i += 1
    head = [{"role": "system", "content": "\n\n".join(texts)}] if texts else []
    return head + messages[i:]


# -- request ---------------------------------------------------------------------------------------


def parse_request(body: dict[str, Any]) -> ResponsesRequest:
    """Validate a ``/v1/responses`` body (already decoded by :func:`meshd.agentapi.fields.load_object`)."""
    notes: list[str] = []
    model = f.req_str(body, "model")
    stream = bool(f.opt_bool(body, "stream"))
    store = f.opt_bool(body, "store")
    store = True if store is None else store
    if f.opt_bool(body, "background"):
        raise Unsupported("background responses are not supported by this gateway", param="background")
    for key in ("conversation", "prompt"):
        if body.get(key) is not None:
            raise Unsupported(f"`{key}` is not supported by this gateway; send the input itself", param=key)
    previous = f.opt_str(body, "previous_response_id")
    instructions = _instructions(body, notes)

    raw_input = body.get("input")
    if raw_input is None:
        raw_input = []
    if isinstance(raw_input, str):
        messages = [{"role": "user", "content": raw_input}]
    elif isinstance(raw_input, list):
        if len(raw_input) > MAX_INPUT_ITEMS:
            raise InvalidRequest(
                f"input has {len(raw_input)} items; at most {MAX_INPUT_ITEMS} are accepted", param="input"
            )
        messages = _input_items(raw_input, notes)
    else:
        raise f.bad("input", "a string or an array of items", raw_input)

    chat: dict[str, Any] = {"stream": stream}
    if stream:
        chat["stream_options"] = {"include_usage": True}
    max_out = f.opt_int(body, "max_output_tokens", low=1, high=MAX_TOKENS_LIMIT)
    if max_out is not None:
        chat["max_tokens"] = max_out
    temperature = f.opt_number(body, "temperature", low=0, high=2)
    if temperature is not None:
        chat["temperature"] = temperature
    top_p = f.opt_number(body, "top_p", low=0, high=1)
    if top_p is not None:
        chat["top_p"] = top_p

    tools, echo_tools, custom = _tools(body, notes)
    tool_choice, echo_choice, tools = _tool_choice(body, tools, notes)
    if tools:
        chat["tools"] = tools
        if tool_choice is not None:
            chat["tool_choice"] = tool_choice
        parallel = f.opt_bool(body, "parallel_tool_calls")
        if parallel is not None:
            chat["parallel_tool_calls"] = parallel
    elif tool_choice not in (None, "none", "auto"):
        raise InvalidRequest("tool_choice requires tools, but no usable tool was given", param="tool_choice")

    echo_text = _text_format(body, chat, notes)
    echo_reasoning = _reasoning(body, chat, notes)
    for key in ("user", "safety_identifier", "prompt_cache_key"):
        value = f.opt_str(body, key)
        if value:
            chat["user"] = value[:256]  # the proxy keeps a session on one host by `user`
            break
    include = f.opt_list(body, "include", limit=64)
    for i, item in enumerate(include or []):
        if not isinstance(item, str):
            raise f.bad(f"include[{i}]", "a string", item)
        notes.append(f"include {item!r} is not available and was ignored")
    if f.opt_str(body, "truncation") == "auto":
        notes.append("truncation 'auto' is not applied; the host fails when the context is full")
    for key in ("max_tool_calls", "top_logprobs"):
        if body.get(key) is not None:
            notes.append(f"{key} is not supported and was ignored")
    metadata = f.opt_dict(body, "metadata")
    if metadata is not None and (len(metadata) > 16 or not all(isinstance(v, str) for v in metadata.values())):
        raise InvalidRequest("metadata must be an object of at most 16 string values", param="metadata")

    echo = {
        "instructions": instructions,
        "max_output_tokens": max_out,
        "metadata": metadata or {},
        "parallel_tool_calls": chat.get("parallel_tool_calls", True),
        "previous_response_id": previous,
        "reasoning": echo_reasoning,
        "store": store,
        "temperature": temperature,
        "text": echo_text,
        "tool_choice": echo_choice,
        "tools": echo_tools,
        "top_p": top_p,
        "truncation": "disabled",
    }
    return ResponsesRequest(
        model=model,
        stream=stream,
        store=store,
        previous_response_id=previous,
        instructions=instructions,
        messages=messages,
        chat_fields=chat,
        custom_tools=frozenset(custom),
        echo=echo,
        notes=tuple(notes),
    )


def _instructions(body: dict[str, Any], notes: list[str]) -> str | None:
    value = body.get("instructions")
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, list):  # instructions given as input items: keep their text
        texts = [
            _content_text(m.get("content"), f"instructions[{i}].content", notes)
            for i, m in enumerate(value)
            if isinstance(m, dict)
        ]
        return "\n\n".join(t for t in texts if t) or None
    raise f.bad("instructions", "a string", value)


def _content_text(content: Any, path: str, notes: list[str]) -> str:
    parts = _content_parts(content, path, notes, assistant=False)
    if isinstance(parts, str):
        return parts
    return "\n".join(p["text"] for p in parts if p.get("type") == "text")


def _content_parts(content: Any, path: str, notes: list[str], *, assistant: bool) -> str | list[dict[str, Any]]:
    """A message's ``content`` as chat content: a string when it is only text, else a list of parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise f.bad(path, "a string or an array of content parts", content)
    if len(content) > MAX_CONTENT_PARTS:
        raise InvalidRequest(f"{path} has more than {MAX_CONTENT_PARTS} parts", param=path)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        ppath = f"{path}[{j}]"
        part = f.as_dict(part, ppath)
        ptype = f.req_str(part, "type", ppath)
        if ptype in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": f.req_str(part, "text", ppath, nonempty=False)})
        elif ptype == "refusal":
            parts.append({"type": "text", "text": f.req_str(part, "refusal", ppath, nonempty=False)})
        elif ptype == "input_image" and not assistant:
            url = f.opt_str(part, "image_url", ppath)
            if not url:
                notes.append(f"{ppath}: images by file_id are not available and were dropped")
                continue
            image: dict[str, Any] = {"url": url}
            detail = f.opt_str(part, "detail", ppath)
            if detail in ("low", "high", "auto"):
                image["detail"] = detail
            parts.append({"type": "image_url", "image_url": image})
        elif ptype == "input_audio" and not assistant:
            audio = f.opt_dict(part, "input_audio", ppath)
            if audio is None:
                raise InvalidRequest(f"{ppath}.input_audio is required", param=f"{ppath}.input_audio")
            parts.append({"type": "input_audio", "input_audio": audio})
        else:
            notes.append(f"{ppath}: content of type {ptype[:40]!r} is not available and was dropped")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _output_text(output: Any, path: str, notes: list[str]) -> str:
    """A tool output (a string, or content parts of which the text is kept)."""
    if isinstance(output, str):
        return output
    parts = _content_parts(output, path, notes, assistant=False)
    if isinstance(parts, str):
        return parts
    dropped = sum(1 for p in parts if p["type"] != "text")
    if dropped:
        notes.append(f"{path}: {dropped} non-text part(s) of a tool output were dropped")
    return "\n".join(p["text"] for p in parts if p["type"] == "text")


def _input_items(items: list[Any], notes: list[str]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    assistant: dict[str, Any] | None = None  # being built from consecutive assistant items
    skipped: dict[str, int] = {}

    def flush() -> None:
        nonlocal assistant
        if assistant is not None:
            if not assistant["tool_calls"]:
                del assistant["tool_calls"]
            messages.append(assistant)
            assistant = None

    def open_assistant() -> dict[str, Any]:
        nonlocal assistant
        if assistant is None:
            assistant = {"role": "assistant", "content": "", "tool_calls": []}
        return assistant

    for i, raw in enumerate(items):
        path = f"input[{i}]"
        item = f.as_dict(raw, path)
        itype = f.opt_str(item, "type", path)
        if itype in (None, "message") and "role" in item:
            role = f.one_of(f.req_str(item, "role", path), ROLES, f"{path}.role")
            if role == "assistant":
                content = _content_parts(item.get("content", ""), f"{path}.content", notes, assistant=True)
                text = content if isinstance(content, str) else ""
                msg = open_assistant()
                if msg["tool_calls"]:  # text after tool calls starts a new assistant message
                    flush()
                    msg = open_assistant()
                msg["content"] += text
                continue
            flush()
            content = _content_parts(item.get("content"), f"{path}.content", notes, assistant=False)
            messages.append({"role": "system" if role == "developer" else role, "content": content})
        elif itype in ("function_call", "custom_tool_call"):
            call_id = f.req_str(item, "call_id", path)
            name = f.req_str(item, "name", path)
            if itype == "function_call":
                arguments = f.req_str(item, "arguments", path, nonempty=False)
            else:
                arguments = json.dumps({"input": f.req_str(item, "input", path, nonempty=False)})
            open_assistant()["tool_calls"].append(
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            )
        elif itype in ("function_call_output", "custom_tool_call_output"):
            flush()
            call_id = f.req_str(item, "call_id", path)
            if "output" not in item:
                raise InvalidRequest(f"{path}.output is required", param=f"{path}.output")
            output = _output_text(item["output"], f"{path}.output", notes)
            messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
        elif itype == "item_reference":
            raise Unsupported(
                f"{path}: item_reference is not supported by this gateway; send the item itself", param=path
            )
        elif itype is None:
            raise InvalidRequest(f"{path} needs a `type` (or a `role`)", param=path)
        else:
            skipped[itype[:40]] = skipped.get(itype[:40], 0) + 1
    flush()
    for itype, count in skipped.items():
        if itype == "reasoning":
            notes.append(f"{count} reasoning item(s) in input were not sent to the model")
        else:
            notes.append(f"{count} input item(s) of type {itype!r} are not available and were dropped")
    return messages


def _tools(body: dict[str, Any], notes: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], set[str]]:
    raw = f.opt_list(body, "tools", limit=MAX_TOOLS) or []
    chat_tools: list[dict[str, Any]] = []
    echo: list[dict[str, Any]] = []
    custom: set[str] = set()
    names: set[str] = set()
    for i, tool in enumerate(raw):
        path = f"tools[{i}]"
        tool = f.as_dict(tool, path)
        ttype = f.req_str(tool, "type", path)
        if ttype not in ("function", "custom"):
            notes.append(f"{path} (type {ttype[:40]!r}) is not available through this gateway and was dropped")
            continue
        name = f.tool_name(tool, path, names)
        description = f.opt_str(tool, "description", path)
        function: dict[str, Any] = {"name": name}
        if description:
            function["description"] = description
        if ttype == "function":
            parameters = f.opt_dict(tool, "parameters", path)
            strict = f.opt_bool(tool, "strict", path)
            function["parameters"] = parameters if parameters is not None else {"type": "object", "properties": {}}
            if strict is not None:
                function["strict"] = strict
            echo.append(
                {
                    "type": "function",
                    "name": name,
                    "description": description,
                    "parameters": parameters,
                    "strict": strict,
                }
            )
        else:
            fmt = f.opt_dict(tool, "format", path)
            if fmt is not None and fmt.get("type") == "grammar":
                notes.append(f"{path}: the grammar of custom tool {name!r} is not enforced")
            function["parameters"] = _INPUT_STRING_PARAMETERS
            custom.add(name)
            entry: dict[str, Any] = {"type": "custom", "name": name}
            if description:
                entry["description"] = description
            if fmt is not None:
                entry["format"] = fmt
            echo.append(entry)
        chat_tools.append({"type": "function", "function": function})
    return chat_tools, echo, custom


def _tool_choice(
    body: dict[str, Any], tools: list[dict[str, Any]], notes: list[str]
) -> tuple[Any, Any, list[dict[str, Any]]]:
    """(chat tool_choice, echoed tool_choice, tools after an ``allowed_tools`` filter)."""
    raw = body.get("tool_choice")
    names = {t["function"]["name"] for t in tools}
    if raw is None:
        return None, "auto", tools
    if isinstance(raw, str):
        return f.one_of(raw, ("auto", "none", "required"), "tool_choice"), raw, tools
    choice = f.as_dict(raw, "tool_choice")
    ctype = f.req_str(choice, "type", "tool_choice")
    if ctype in ("function", "custom"):
        name = f.req_str(choice, "name", "tool_choice")
        if name not in names:
            raise InvalidRequest(f"tool_choice.name {name!r} is not among the tools", param="tool_choice.name")
        return {"type": "function", "function": {"name": name}}, {"type": ctype, "name": name}, tools
    if ctype == "allowed_tools":
        mode = f.one_of(f.req_str(choice, "mode", "tool_choice"), ("auto", "required"), "tool_choice.mode")
        allowed_raw = f.opt_list(choice, "tools", "tool_choice", limit=MAX_TOOLS) or []
        allowed: set[str] = set()
        for j, entry in enumerate(allowed_raw):
            allowed_name = f.opt_str(f.as_dict(entry, f"tool_choice.tools[{j}]"), "name", f"tool_choice.tools[{j}]")
            if allowed_name:
                allowed.add(allowed_name)
        kept = [t for t in tools if t["function"]["name"] in allowed]
        return mode, {"type": "allowed_tools", "mode": mode, "tools": allowed_raw}, kept
    notes.append(f"tool_choice of type {ctype[:40]!r} is not available; 'auto' was used")
    return "auto", "auto", tools


def _text_format(body: dict[str, Any], chat: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    text = f.opt_dict(body, "text")
    if text is None:
        return {"format": {"type": "text"}}
    if text.get("verbosity") is not None:
        notes.append("text.verbosity is not supported and was ignored")
    fmt = f.opt_dict(text, "format", "text")
    if fmt is None:
        return {"format": {"type": "text"}}
    ftype = f.one_of(f.req_str(fmt, "type", "text.format"), ("text", "json_object", "json_schema"), "text.format.type")
    if ftype == "json_object":
        chat["response_format"] = {"type": "json_object"}
        return {"format": {"type": "json_object"}}
    if ftype == "json_schema":
        name = f.req_str(fmt, "name", "text.format")
        schema = f.opt_dict(fmt, "schema", "text.format")
        if schema is None:
            raise InvalidRequest("text.format.schema is required for json_schema", param="text.format.schema")
        spec: dict[str, Any] = {"name": name, "schema": schema}
        strict = f.opt_bool(fmt, "strict", "text.format")
        if strict is not None:
            spec["strict"] = strict
        description = f.opt_str(fmt, "description", "text.format")
        if description:
            spec["description"] = description
        chat["response_format"] = {"type": "json_schema", "json_schema": spec}
        return {"format": {"type": "json_schema", **spec}}
    return {"format": {"type": "text"}}


def _reasoning(body: dict[str, Any], chat: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    reasoning = f.opt_dict(body, "reasoning")
    if reasoning is None:
        return {"effort": None, "summary": None}
    effort = f.opt_str(reasoning, "effort", "reasoning")
    if effort is not None:
        f.one_of(effort, EFFORTS, "reasoning.effort")
        mapped = _EFFORT_MAP.get(effort)
        if mapped is not None:
            chat["reasoning_effort"] = mapped
            if mapped != effort:
                notes.append(f"reasoning.effort {effort!r} was sent to the host as {mapped!r}")
        else:
            notes.append(f"reasoning.effort {effort!r} is not sent to the host")
    for key in ("summary", "generate_summary"):
        if reasoning.get(key) is not None:
            notes.append(f"reasoning.{key} is not available (the host's reasoning text is returned as is)")
    return {"effort": effort, "summary": None}


# -- response --------------------------------------------------------------------------------------


class _Item:
    def __init__(self, kind: str, item_id: str, index: int) -> None:
        self.kind = kind  # message | reasoning | function_call | custom_tool_call
        self.id = item_id
        self.index = index
        self.parts: list[str] = []
        self.call_id = ""
        self.name = ""
        self.open = True
        self.status = "in_progress"

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def custom_input(self) -> str:
        raw = self.text
        try:
            decoded = json.loads(raw)
        except (ValueError, RecursionError):
            return raw
        if isinstance(decoded, dict) and isinstance(decoded.get("input"), str):
            return str(decoded["input"])
        return raw

    def json(self) -> dict[str, Any]:
        if self.kind == "message":
            content = [] if self.open and not self.parts else [_output_text_part(self.text)]
            return {"id": self.id, "type": "message", "status": self.status, "role": "assistant", "content": content}
        if self.kind == "reasoning":
            return {
                "id": self.id,
                "type": "reasoning",
                "status": self.status,
                "summary": [],
                "content": [{"type": "reasoning_text", "text": self.text}],
            }
        if self.kind == "function_call":
            return {
                "id": self.id,
                "type": "function_call",
                "status": self.status,
                "call_id": self.call_id,
                "name": self.name,
                "arguments": self.text,
            }
        return {
            "id": self.id,
            "type": "custom_tool_call",
            "status": self.status,
            "call_id": self.call_id,
            "name": self.name,
            "input": self.custom_input() if not self.open else "",
        }


def _output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class ResponsesTranslator(Translator):
    """One host answer → a Response object, or the Responses event stream when the request streamed."""

    def __init__(
        self,
        request: ResponsesRequest,
        *,
        response_id: str,
        created_at: float,
        ids: IdSource,
        notes: Sequence[str] = (),
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        super().__init__(stream=request.stream, notes=[*request.notes, *notes], max_body=max_body)
        self.request = request
        self.response_id = response_id
        self.created_at = int(created_at)
        self._ids = ids
        self._seq = 0
        self._items: list[_Item] = []
        self._message: _Item | None = None
        self._reasoning: _Item | None = None
        self._tools: dict[int, _Item] = {}
        self._pending = PendingToolCalls()
        self._finish: Finish | None = None
        self._usage: Usage | None = None

    # -- events out --

    def _event(self, etype: str, **payload: Any) -> bytes:
        if not self.stream:
            return b""
        data = {"type": etype, "sequence_number": self._seq, **payload}
        self._seq += 1
        return encode_event(etype, data)

    def response_json(self, status: str, *, error: dict[str, Any] | None = None) -> dict[str, Any]:
        incomplete = None
        if status == "incomplete" and self._finish is not None:
            incomplete = {
                "reason": "content_filter" if self._finish.reason == "content_filter" else "max_output_tokens"
            }
        obj: dict[str, Any] = {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": incomplete,
            "model": self.request.model,
            "output": [item.json() for item in self._items] if status != "in_progress" else [],
            "usage": self._usage_json() if status in ("completed", "incomplete") else None,
            **self.request.echo,
        }
        if self.notes:
            obj["meshd_notes"] = list(self.notes)
        return obj

    def _usage_json(self) -> dict[str, Any] | None:
        u = self._usage
        if u is None:
            return None
        return {
            "input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
            "total_tokens": u.prompt_tokens + u.completion_tokens,
        }

    # -- Translator hooks --

    def _open_stream(self) -> bytes:
        opening = self.response_json("in_progress")
        return self._event("response.created", response=opening) + self._event("response.in_progress", response=opening)

    def _on_event(self, event: ChatEvent) -> bytes:
        if isinstance(event, TextDelta):
            return self._text(event.text)
        if isinstance(event, ReasoningDelta):
            return self._reasoning_text(event.text)
        if isinstance(event, ToolCallDelta):
            return self._tool(event)
        if isinstance(event, Finish):
            self._finish = event
        elif isinstance(event, Usage):
            self._usage = event
        return b""

    def _new_item(self, kind: str, prefix: str) -> _Item:
        item = _Item(kind, self._ids(prefix), len(self._items))
        self._items.append(item)
        return item

    def _text(self, text: str) -> bytes:
        out = self._close_reasoning()
        item = self._message
        if item is None:
            item = self._message = self._new_item("message", "msg")
            out += self._event("response.output_item.added", output_index=item.index, item=item.json())
            out += self._event(
                "response.content_part.added",
                item_id=item.id,
                output_index=item.index,
                content_index=0,
                part=_output_text_part(""),
            )
        item.parts.append(text)
        return out + self._event(
            "response.output_text.delta",
            item_id=item.id,
            output_index=item.index,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _reasoning_text(self, text: str) -> bytes:
        out = self._close_message()
        item = self._reasoning
        if item is None:
            item = self._reasoning = self._new_item("reasoning", "rs")
            added = {**item.json(), "content": []}
            out += self._event("response.output_item.added", output_index=item.index, item=added)
            out += self._event(
                "response.content_part.added",
                item_id=item.id,
                output_index=item.index,
                content_index=0,
                part={"type": "reasoning_text", "text": ""},
            )
        item.parts.append(text)
        return out + self._event(
            "response.reasoning_text.delta", item_id=item.id, output_index=item.index, content_index=0, delta=text
        )

    def _tool(self, delta: ToolCallDelta) -> bytes:
        if delta.index not in self._tools:
            self._pending.make_room(delta.index, len(self._tools))
        out = self._close_message() + self._close_reasoning()
        item = self._tools.get(delta.index)
        if item is not None:
            if not delta.arguments:
                return out
            item.parts.append(delta.arguments)
            if item.kind == "function_call":
                out += self._event(
                    "response.function_call_arguments.delta",
                    item_id=item.id,
                    output_index=item.index,
                    delta=delta.arguments,
                )
            return out
        pending = self._pending.gather(delta)
        if pending is None:
            return out  # wait for the name before announcing the item
        return out + self._open_tool(delta.index, pending)

    def _open_tool(self, index: int, pending: dict[str, Any]) -> bytes:
        custom = pending["name"] in self.request.custom_tools
        item = self._new_item("custom_tool_call" if custom else "function_call", "ctc" if custom else "fc")
        item.name = pending["name"]
        item.call_id = pending["call_id"] or self._ids("call")
        self._tools[index] = item
        out = self._event("response.output_item.added", output_index=item.index, item=item.json())
        args = "".join(pending["args"])
        if args:
            item.parts.append(args)
            if not custom:
                out += self._event(
                    "response.function_call_arguments.delta", item_id=item.id, output_index=item.index, delta=args
                )
        return out

    def _close_message(self, status: str = "completed") -> bytes:
        item = self._message
        if item is None:
            return b""
        self._message = None
        item.open = False
        item.status = status
        text = item.text
        return (
            self._event(
                "response.output_text.done",
                item_id=item.id,
                output_index=item.index,
                content_index=0,
                text=text,
                logprobs=[],
            )
            + self._event(
                "response.content_part.done",
                item_id=item.id,
                output_index=item.index,
                content_index=0,
                part=_output_text_part(text),
            )
            + self._event("response.output_item.done", output_index=item.index, item=item.json())
        )

    def _close_reasoning(self, status: str = "completed") -> bytes:
        item = self._reasoning
        if item is None:
            return b""
        self._reasoning = None
        item.open = False
        item.status = status
        text = item.text
        return (
            self._event(
                "response.reasoning_text.done", item_id=item.id, output_index=item.index, content_index=0, text=text
            )
            + self._event(
                "response.content_part.done",
                item_id=item.id,
                output_index=item.index,
                content_index=0,
                part={"type": "reasoning_text", "text": text},
            )
            + self._event("response.output_item.done", output_index=item.index, item=item.json())
        )

    def _close_tools(self, status: str) -> bytes:
        out = b""
        self._pending.drop_unnamed(self.notes)
        for item in sorted(self._tools.values(), key=lambda it: it.index):
            if not item.open:
                continue
            item.open = False
            item.status = status
            if item.kind == "function_call":
                out += self._event(
                    "response.function_call_arguments.done",
                    item_id=item.id,
                    output_index=item.index,
                    name=item.name,
                    arguments=item.text,
                )
            else:
                value = item.custom_input()
                if value:
                    out += self._event(
                        "response.custom_tool_call_input.delta", item_id=item.id, output_index=item.index, delta=value
                    )
                out += self._event(
                    "response.custom_tool_call_input.done", item_id=item.id, output_index=item.index, input=value
                )
            out += self._event("response.output_item.done", output_index=item.index, item=item.json())
        return out

    def _final_status(self) -> str:
        if self._finish is not None and self._finish.reason in ("length", "content_filter"):
            return "incomplete"
        return "completed"

    def _close_all(self) -> bytes:
        status = self._final_status()
        item_status = "incomplete" if status == "incomplete" else "completed"
        return self._close_reasoning(item_status) + self._close_message(item_status) + self._close_tools(item_status)

    def _close_stream(self) -> bytes:
        out = self._close_all()
        status = self._final_status()
        final = self.response_json(status)
        self._remember(final)
        return out + self._event(f"response.{status}", response=final)

    def _final_json(self) -> dict[str, Any]:
        self._close_all()
        final = self.response_json(self._final_status())
        self._remember(final)
        return final

    def _fail_stream(self, failed: Failed) -> bytes:
        for item in self._items:
            if item.open:
                item.open = False
                item.status = "incomplete"
        error = {"code": _response_error_code(failed.code), "message": failed.message}
        return self._event("response.failed", response=self.response_json("failed", error=error))

    def _error_json(self, problem: UpstreamProblem) -> dict[str, Any]:
        return {
            "error": {"message": problem.message, "type": problem.type_, "param": problem.param, "code": problem.code}
        }

    def _remember(self, final: dict[str, Any]) -> None:
        if not self.request.store:
            return
        self.stored = StoredResponse(
            id=self.response_id,
            created_at=self.created_at,
            response=final,
            messages=[*self.request.messages, *self.answer_messages()],
            previous_id=self.request.previous_response_id,
        )

    def answer_messages(self) -> list[dict[str, Any]]:
        """The answer as chat messages (reasoning left out), for the next turn's history."""
        text = "".join(item.text for item in self._items if item.kind == "message")
        calls = []
        for item in self._items:
            if item.kind == "function_call":
                arguments = item.text
            elif item.kind == "custom_tool_call":
                arguments = json.dumps({"input": item.custom_input()})
            else:
                continue
            calls.append(
                {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": arguments}}
            )
        if not text and not calls:
            return []
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = calls
        return [message]


def _response_error_code(code: str) -> str:
    """The ``error.code`` of a failed response: the codes Codex acts on, else ``server_error``.

    ``context_length_exceeded`` is what OpenAI sends (and Codex checks for) when the context is full,
    though the SDK's type does not list it.
    """
    if code in ("context_length_exceeded", "exceed_context_size_error"):
        return "context_length_exceeded"
    return code if code in ("rate_limit_exceeded", "invalid_prompt") else "server_error"
