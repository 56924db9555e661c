"""The sans-IO face of a response translator: upstream head and bytes in, the caller's head and bytes out.

A translator is made for one attempt at one host. The web layer calls

* ``start(status, headers)`` when the host's response head arrives,
* ``feed(data)`` with each piece of the host's (de-chunked) body,
* ``finish()`` at the end of that body, or ``fail(message)`` when the attempt broke (tunnel reset,
  timeout, the caller's deadline),

and writes what each returns: an :class:`Output` with at most one :class:`Head` over the translator's life
(always before any body bytes) and body bytes; ``done`` means the caller's response is complete, so the web
layer finishes it and calls nothing more. A streamed answer gets its head at ``start`` (so the caller sees
``response.created``/``message_start`` at once); a JSON answer, and every error, gets head and body
together at the end. Nothing here raises on what the host sends: bad input becomes the API's error event or
error body.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

from meshd.agentapi.chat import (
    DEFAULT_MAX_BODY,
    MAX_TOOL_CALLS,
    ChatEvent,
    End,
    Failed,
    ToolCallDelta,
    UpstreamDecoder,
    error_message_of,
)
from meshd.agentapi.store import StoredResponse
from meshd.httpwire import reshape_upstream_error  # pure; the proxy re-shapes the same way

#: Most bytes of an upstream error body read to re-shape it.
MAX_ERROR_BODY = 256 * 1024
NOTES_HEADER = "x-meshd-notes"


class Abort(Exception):
    """Raised by a translator's event handler, before it emitted anything, to end with ``failed``."""

    def __init__(self, failed: Failed) -> None:
        super().__init__(failed.message)
        self.failed = failed


class PendingToolCalls:
    """Tool calls the host began but has not named yet (a chat stream may send the id or the first
    arguments before the name), gathered until the name comes; with the calls already announced they
    count against ``MAX_TOOL_CALLS``."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def make_room(self, index: int, announced: int) -> None:
        """Abort if a call at ``index`` would be one more than ``MAX_TOOL_CALLS`` (``announced``: calls already out)."""
        if index not in self._calls and announced + len(self._calls) >= MAX_TOOL_CALLS:
            raise Abort(Failed(f"the host sent more than {MAX_TOOL_CALLS} tool calls", "too_many_tool_calls"))

    def gather(self, delta: ToolCallDelta) -> dict[str, Any] | None:
        """Add ``delta`` to its call; the call (``call_id``, ``name``, ``args``), taken out, once it has a name."""
        pending = self._calls.setdefault(delta.index, {"call_id": None, "name": "", "args": []})
        pending["call_id"] = pending["call_id"] or delta.call_id
        pending["name"] = pending["name"] or (delta.name or "")
        if delta.arguments:
            pending["args"].append(delta.arguments)
        if not pending["name"]:
            return None
        return self._calls.pop(delta.index)

    def drop_unnamed(self, notes: list[str]) -> None:
        """Calls never named cannot be announced: say so in ``notes`` and forget them."""
        for index in sorted(self._calls):
            notes.append(f"a tool call (index {index}) without a name was dropped")
        self._calls.clear()


@attrs.frozen
class Head:
    status: int
    headers: tuple[tuple[str, str], ...]


@attrs.frozen
class Output:
    head: Head | None = None
    body: bytes = b""
    done: bool = False


def header(headers: Sequence[tuple[bytes, bytes]] | Sequence[tuple[str, str]], name: str) -> str:
    """The first value of header ``name`` (case-insensitive), decoded as Latin-1, or ``""``."""
    wanted = name.lower()
    for key, value in headers:
        k = key.decode("latin-1") if isinstance(key, bytes) else key
        if k.lower() == wanted:
            return value.decode("latin-1") if isinstance(value, bytes) else value
    return ""


def notes_header(notes: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """The notes as one header value (ASCII, no line breaks), when there are any."""
    if not notes:
        return ()
    text = "; ".join(notes).encode("ascii", "replace").decode("ascii")
    return ((NOTES_HEADER, " ".join(text.split())[:4000]),)


@attrs.frozen
class UpstreamProblem:
    """An upstream error, understood: status, message, and the OpenAI ``type``/``code`` it maps to."""

    status: int
    message: str
    type_: str
    code: str | None
    param: str | None

    @property
    def context_overflow(self) -> bool:
        return self.code == "context_length_exceeded"


def upstream_problem(status: int, body: bytes, truncated: bool) -> UpstreamProblem:
    """Re-shape a host's error body the way the API port does (OpenAI envelope, context overflow named)."""
    shaped = json.loads(reshape_upstream_error(status, body, truncated))["error"]
    return UpstreamProblem(
        status=status if 400 <= status <= 599 else 502,
        message=str(shaped.get("message") or f"the host answered HTTP {status}"),
        type_=str(shaped.get("type") or "server_error"),
        code=shaped.get("code") if isinstance(shaped.get("code"), str) else None,
        param=shaped.get("param") if isinstance(shaped.get("param"), str) else None,
    )


class Translator:
    """Base of the response translators; subclasses render the caller's API from chat events."""

    #: Content type of a streamed answer.
    stream_content_type = "text/event-stream; charset=utf-8"

    def __init__(self, *, stream: bool, notes: Sequence[str] = (), max_body: int = DEFAULT_MAX_BODY) -> None:
        self.stream = stream
        self.notes = list(notes)
        self.max_body = max_body
        self._decoder: UpstreamDecoder | None = None
        self._error_status: int | None = None
        self._error_parts: list[bytes] = []
        self._error_size = 0
        self._error_truncated = False
        self._retry_after: str | None = None
        self._head_sent = False
        self.done = False
        #: A Responses answer to keep for ``previous_response_id`` (set once complete, when ``store`` is on).
        self.stored: StoredResponse | None = None

    # -- the face ---------------------------------------------------------------------------------

    def start(self, status: int, headers: Sequence[tuple[bytes, bytes]] | Sequence[tuple[str, str]]) -> Output:
        if self.done or self._decoder is not None or self._error_status is not None:
            return Output()
        if not 200 <= status <= 299:
            self._error_status = status
            retry = header(headers, "retry-after")
            if retry and len(retry) <= 32 and retry.isprintable():
                self._retry_after = retry
            return Output()
        content_type = header(headers, "content-type").lower()
        streamed = True if "text/event-stream" in content_type else False if "json" in content_type else None
        self._decoder = UpstreamDecoder(streamed=streamed, max_body=self.max_body)
        if not self.stream:
            return Output()
        self._head_sent = True
        head = Head(200, (("content-type", self.stream_content_type), ("cache-control", "no-cache"), *self._notes()))
        return Output(head=head, body=self._open_stream())

    def feed(self, data: bytes) -> Output:
        if self.done or not data:
            return Output()
        if self._error_status is not None:
            room = MAX_ERROR_BODY - self._error_size
            if len(data) > room:
                self._error_truncated = True
                data = data[: max(room, 0)]
            self._error_parts.append(data)
            self._error_size += len(data)
            return Output()
        opened = Output()
        if self._decoder is None:  # no start(): take it as a 200 of unknown type
            opened = self.start(200, ())
        assert self._decoder is not None
        out = self._handle(self._decoder.feed(data))
        return Output(head=opened.head or out.head, body=opened.body + out.body, done=out.done)

    def finish(self) -> Output:
        if self.done:
            return Output()
        if self._error_status is not None:
            problem = upstream_problem(self._error_status, b"".join(self._error_parts), self._error_truncated)
            return self._error(problem)
        if self._decoder is None:
            return self.fail("the host sent no response")
        return self._handle(self._decoder.finish())

    def fail(self, message: str, code: str = "upstream_stream_broken") -> Output:
        """The attempt broke before the answer was complete: end with the API's error."""
        if self.done:
            return Output()
        return self._failure(Failed(message, code))

    # -- shared machinery ------------------------------------------------------------------------

    def _notes(self) -> tuple[tuple[str, str], ...]:
        return notes_header(self.notes)

    def _handle(self, events: list[ChatEvent]) -> Output:
        parts: list[bytes] = []
        for event in events:
            if isinstance(event, Failed):
                out = self._failure(event)
                return Output(head=out.head, body=b"".join(parts) + out.body, done=True)
            if isinstance(event, End):
                out = self._complete()
                return Output(head=out.head, body=b"".join(parts) + out.body, done=True)
            try:
                parts.append(self._on_event(event))
            except Abort as abort:
                out = self._failure(abort.failed)
                return Output(head=out.head, body=b"".join(parts) + out.body, done=True)
        return Output(body=b"".join(parts))

    def _complete(self) -> Output:
        self.done = True
        if self.stream:
            return Output(body=self._close_stream(), done=True)
        body = json.dumps(self._final_json()).encode()
        return Output(head=Head(200, (("content-type", "application/json"), *self._notes())), body=body, done=True)

    def _failure(self, failed: Failed) -> Output:
        self.done = True
        if self._head_sent:
            return Output(body=self._fail_stream(failed), done=True)
        problem = UpstreamProblem(
            502, f"the host's answer could not be used: {failed.message}", "server_error", failed.code, None
        )
        return self._error(problem)

    def _error(self, problem: UpstreamProblem) -> Output:
        self.done = True
        if self._head_sent:  # cannot happen for an error status, kept for safety
            return Output(body=self._fail_stream(Failed(problem.message, problem.code or "upstream_error")), done=True)
        self._head_sent = True
        retry = (("retry-after", self._retry_after),) if self._retry_after else ()
        head = Head(problem.status, (("content-type", "application/json"), *retry, *self._notes()))
        return Output(head=head, body=json.dumps(self._error_json(problem)).encode(), done=True)

    # -- for subclasses --------------------------------------------------------------------------

    def _open_stream(self) -> bytes:
        raise NotImplementedError

    def _on_event(self, event: ChatEvent) -> bytes:
        raise NotImplementedError

    def _close_stream(self) -> bytes:
        raise NotImplementedError

    def _final_json(self) -> dict[str, Any]:
        raise NotImplementedError

    def _fail_stream(self, failed: Failed) -> bytes:
        raise NotImplementedError

    def _error_json(self, problem: UpstreamProblem) -> dict[str, Any]:
        raise NotImplementedError


class PassThrough(Translator):
    """For a host that speaks the caller's API natively: the answer is relayed as it is."""

    def __init__(self) -> None:
        super().__init__(stream=False)

    def start(self, status: int, headers: Sequence[tuple[bytes, bytes]] | Sequence[tuple[str, str]]) -> Output:
        if self.done or self._head_sent:
            return Output()
        self._head_sent = True
        kept = tuple(
            (k.decode("latin-1") if isinstance(k, bytes) else k, v.decode("latin-1") if isinstance(v, bytes) else v)
            for k, v in headers
            if (k.decode("latin-1") if isinstance(k, bytes) else k).lower() == "content-type"
        )
        return Output(head=Head(status, kept))

    def feed(self, data: bytes) -> Output:
        return Output() if self.done else Output(body=data)

    def finish(self) -> Output:
        if self.done:
            return Output()
        self.done = True
        return Output(done=True)

    def fail(self, message: str, code: str = "upstream_stream_broken") -> Output:
        if self.done:
            return Output()
        self.done = True
        return Output(done=True)


__all__ = ["Head", "Output", "PassThrough", "Translator", "UpstreamProblem", "error_message_of", "upstream_problem"]
