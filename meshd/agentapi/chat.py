"""What a host's chat-completions answer says, as a short list of normalised events.

Both agent APIs are rendered from the same events, whether the host streamed (SSE chunks) or answered
with one JSON object:

* :class:`TextDelta`, :class:`ReasoningDelta` (``reasoning_content`` of llama-server/vLLM, or
  ``reasoning``), :class:`ToolCallDelta` (one fragment of a tool call: its index, and its id/name the
  first time they appear);
* :class:`Finish` (the ``finish_reason``, and vLLM's matched ``stop_reason`` string when there is one),
  :class:`Usage` (the host's token counts);
* :class:`End` (``[DONE]``, or the end of a body after a ``finish_reason``);
* :class:`Failed`: an error object from the host, an event that is not JSON, an event over the size
  limit, or a stream that ended before any ``finish_reason``. Nothing follows a ``Failed``.

:class:`UpstreamDecoder` is the sans-IO reader: ``feed(bytes)`` and ``finish()`` return events; it never
raises on what the host sends.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from meshd.agentapi.sse import DEFAULT_MAX_EVENT, DEFAULT_MAX_LINE, SSELimitError, SSEParser

#: Most bytes of one upstream body a translator reads (the whole answer, streamed or not).
DEFAULT_MAX_BODY = 64 * 1024 * 1024
#: Most tool calls in one answer.
MAX_TOOL_CALLS = 256


@attrs.frozen
class TextDelta:
    text: str


@attrs.frozen
class ReasoningDelta:
    text: str


@attrs.frozen
class ToolCallDelta:
    index: int
    call_id: str | None
    name: str | None
    arguments: str


@attrs.frozen
class Finish:
    reason: str
    matched_stop: str | None = None


@attrs.frozen
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0


@attrs.frozen
class End:
    pass


@attrs.frozen
class Failed:
    message: str
    code: str = "upstream_error"


ChatEvent = TextDelta | ReasoningDelta | ToolCallDelta | Finish | Usage | End | Failed


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(0, int(value))


def usage_of(obj: Any) -> Usage | None:
    if not isinstance(obj, dict):
        return None
    prompt_details = obj.get("prompt_tokens_details")
    completion_details = obj.get("completion_tokens_details")
    return Usage(
        prompt_tokens=_int(obj.get("prompt_tokens")),
        completion_tokens=_int(obj.get("completion_tokens")),
        cached_tokens=_int(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0,
        reasoning_tokens=_int(completion_details.get("reasoning_tokens"))
        if isinstance(completion_details, dict)
        else 0,
    )


def _text_of(value: Any) -> str:
    """Content as text: a string, or the text parts of a list of parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(p["text"] for p in value if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def error_message_of(obj: Any) -> tuple[str, str] | None:
    """(message, code) when ``obj`` is an error object (OpenAI's envelope, llama-server's, or a bare string)."""
    if not isinstance(obj, dict) or "error" not in obj:
        return None
    err = obj["error"]
    if isinstance(err, dict):
        message = err.get("message")
        text = message if isinstance(message, str) and message else json.dumps(err)[:500]
        code = err.get("code") if isinstance(err.get("code"), str) else err.get("type")
        return text, code if isinstance(code, str) and code else "upstream_error"
    if isinstance(err, str):
        return err, "upstream_error"
    return json.dumps(err)[:500], "upstream_error"


class _ToolIndexer:
    """Tool-call indexes, also for hosts that leave ``index`` out (then each new ``id`` starts a call)."""

    def __init__(self) -> None:
        self.last: int | None = None
        self.next = 0
        self.ids: dict[str, int] = {}

    def index(self, tc: dict[str, Any], position: int) -> int:
        idx = tc.get("index")
        call_id = tc.get("id") if isinstance(tc.get("id"), str) and tc.get("id") else None
        if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
            if call_id is not None:
                idx = self.ids.get(call_id, self.next)
            else:
                idx = self.last if self.last is not None else position
        if call_id is not None:
            self.ids.setdefault(call_id, idx)
        self.last = idx
        self.next = max(self.next, idx + 1)
        return idx


def _tool_call_events(calls: Any, indexer: _ToolIndexer) -> list[ChatEvent]:
    events: list[ChatEvent] = []
    if not isinstance(calls, list):
        return events
    for position, tc in enumerate(calls):
        if not isinstance(tc, dict):
            continue
        raw_fn = tc.get("function")
        fn: dict[str, Any] = raw_fn if isinstance(raw_fn, dict) else {}
        args = fn.get("arguments")
        if isinstance(args, dict | list):  # some hosts send decoded arguments
            args = json.dumps(args)
        call_id = tc.get("id")
        name = fn.get("name")
        events.append(
            ToolCallDelta(
                index=indexer.index(tc, position),
                call_id=call_id if isinstance(call_id, str) and call_id else None,
                name=name if isinstance(name, str) and name else None,
                arguments=args if isinstance(args, str) else "",
            )
        )
    return events


def _message_events(message: Any, indexer: _ToolIndexer) -> list[ChatEvent]:
    """Events for a streamed ``delta`` or a complete ``message`` (same field names)."""
    if not isinstance(message, dict):
        return []
    events: list[ChatEvent] = []
    reasoning = message.get("reasoning_content")
    if not isinstance(reasoning, str) or not reasoning:
        reasoning = message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        events.append(ReasoningDelta(reasoning))
    text = _text_of(message.get("content"))
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        text += refusal
    if text:
        events.append(TextDelta(text))
    events.extend(_tool_call_events(message.get("tool_calls"), indexer))
    return events


def _choice_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    choices = obj.get("choices")
    if not isinstance(choices, list):
        return None
    for choice in choices:
        if isinstance(choice, dict) and choice.get("index", 0) in (0, None):
            return choice
    return None


def _finish_of(choice: dict[str, Any]) -> Finish | None:
    reason = choice.get("finish_reason")
    if not isinstance(reason, str) or not reason:
        return None
    matched = choice.get("stop_reason")  # vLLM: the stop string that matched
    return Finish(reason, matched if isinstance(matched, str) else None)


def completion_events(obj: Any) -> list[ChatEvent]:
    """The events of a complete (non-streamed) chat completion object."""
    err = error_message_of(obj)
    if err is not None:
        return [Failed(*err)]
    if not isinstance(obj, dict):
        return [Failed("the host's answer is not a JSON object")]
    choice = _choice_of(obj)
    if choice is None:
        return [Failed("the host's answer has no choices")]
    events = _message_events(choice.get("message"), _ToolIndexer())
    finish = _finish_of(choice)
    events.append(finish or Finish("stop"))
    usage = usage_of(obj.get("usage"))
    if usage is not None:
        events.append(usage)
    events.append(End())
    return events


class UpstreamDecoder:
    """Reads one upstream 2xx body, streamed (``text/event-stream``) or not, into :data:`ChatEvent` lists.

    ``streamed=None`` (a content type that says neither) decides on the first non-blank byte: ``{`` or ``[``
    is a JSON answer, anything else an event stream.
    """

    def __init__(
        self,
        *,
        streamed: bool | None,
        max_body: int = DEFAULT_MAX_BODY,
        max_line: int = DEFAULT_MAX_LINE,
        max_event: int = DEFAULT_MAX_EVENT,
    ) -> None:
        self.streamed = streamed
        self.max_body = max_body
        self._sse = SSEParser(max_line=max_line, max_event=max_event)
        self._buffer: list[bytes] = []
        self._size = 0
        self._indexer = _ToolIndexer()
        self._finished = False  # a finish_reason was seen
        self.closed = False  # End or Failed was returned: everything after is ignored

    def feed(self, data: bytes) -> list[ChatEvent]:
        if self.closed or not data:
            return []
        self._size += len(data)
        if self._size > self.max_body:
            return self._fail(f"the host's answer is larger than {self.max_body} bytes", "upstream_too_large")
        if self.streamed is None:
            self._buffer.append(data)
            head = b"".join(self._buffer).lstrip()
            if not head:
                return []
            self.streamed = head[:1] not in (b"{", b"[")
            if not self.streamed:
                return []
            data = b"".join(self._buffer)
            self._buffer = []
        if not self.streamed:
            self._buffer.append(data)
            return []
        try:
            sse_events = self._sse.feed(data)
        except SSELimitError as e:
            return self._fail(f"the host's event stream broke a limit: {e}", "upstream_too_large")
        out: list[ChatEvent] = []
        for sse in sse_events:
            out.extend(self._chunk(sse.data))
            if self.closed:
                break
        return out

    def finish(self) -> list[ChatEvent]:
        """The body ended (EOF)."""
        if self.closed:
            return []
        if self.streamed is None:  # nothing but blanks: an empty answer
            self.streamed = False
        if not self.streamed:
            self.closed = True
            body = b"".join(self._buffer)
            self._buffer = []
            try:
                obj = json.loads(body)
            except (ValueError, RecursionError):
                return [Failed("the host's answer is not valid JSON" + (" (it is cut short)" if body else ""))]
            return completion_events(obj)
        if self._finished:
            self.closed = True
            return [End()]
        return self._fail("the host's stream ended before the model finished (no finish_reason)", "upstream_truncated")

    def _fail(self, message: str, code: str) -> list[ChatEvent]:
        self.closed = True
        return [Failed(message, code)]

    def _chunk(self, data: str) -> list[ChatEvent]:
        if data.strip() == "[DONE]":
            self.closed = True
            if not self._finished:
                return [Failed("the host's stream said [DONE] before any finish_reason", "upstream_truncated")]
            return [End()]
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            return self._fail(f"the host sent an event that is not JSON: {data[:120]!r}", "upstream_bad_event")
        err = error_message_of(obj)
        if err is not None:
            return self._fail(*err)
        if not isinstance(obj, dict):
            return self._fail("the host sent an event that is not a JSON object", "upstream_bad_event")
        events: list[ChatEvent] = []
        choice = _choice_of(obj)
        if choice is not None:
            events.extend(_message_events(choice.get("delta"), self._indexer))
            finish = _finish_of(choice)
            if finish is not None and not self._finished:
                self._finished = True
                events.append(finish)
        usage = usage_of(obj.get("usage"))
        if usage is not None:
            events.append(usage)
        return events
