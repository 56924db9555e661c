"""Token counts for ``POST /v1/messages/count_tokens`` and ``POST /v1/responses/input_tokens``.

The count comes from the host's tokenizer when its backend has one: the layer sends the conversation as
text to ``POST /tokenize`` (llama-server takes ``content``; vLLM takes ``prompt`` and answers ``count``),
and adds a small per-message allowance for the chat template's markup, which that text lacks. A host
without ``/tokenize`` (Ollama, a 404, anything unexpected) gives way to an estimate from the text's UTF-8
length. The answer says which it is (``meshd_token_count``: ``"tokenizer"`` or ``"estimate"``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from meshd.agentapi.translate import MAX_ERROR_BODY, Head, Output, Translator, notes_header

#: Tokens added per chat message for the template's role markers.
PER_MESSAGE_TOKENS = 4
#: UTF-8 bytes per token assumed by the estimate (English prose is ~4, code ~3).
BYTES_PER_TOKEN = 3.5


def flatten_chat(chat: dict[str, Any]) -> tuple[str, int]:
    """The text a chat request puts in front of the model, and its number of messages."""
    parts: list[str] = []
    raw = chat.get("messages")
    messages: list[Any] = raw if isinstance(raw, list) else []
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role") if isinstance(message.get("role"), str) else ""
        content = message.get("content")
        if isinstance(content, list):
            text = "\n".join(
                p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
            )
        else:
            text = content if isinstance(content, str) else ""
        for call in message.get("tool_calls") or []:
            if isinstance(call, dict) and isinstance(call.get("function"), dict):
                fn = call["function"]
                text += f"\n{fn.get('name', '')}({fn.get('arguments', '')})"
        parts.append(f"{role}\n{text}")
    if chat.get("tools"):
        parts.append(json.dumps(chat["tools"], separators=(",", ":")))
    return "\n".join(parts), len(messages)


def estimate_tokens(text: str, messages: int = 0) -> int:
    return math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN) + PER_MESSAGE_TOKENS * messages


def tokenize_request(model: str, text: str) -> dict[str, Any]:
    """A ``/tokenize`` body that llama-server (``content``) and vLLM (``prompt``) both accept."""
    return {"model": model, "content": text, "prompt": text, "add_special": True}


def tokenizer_count(body: bytes) -> int | None:
    """The token count in a ``/tokenize`` answer, or None when it is not one."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    count = obj.get("count")
    if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
        return count
    tokens = obj.get("tokens")
    if isinstance(tokens, list):
        return len(tokens)
    return None


class CountTokensTranslator(Translator):
    """The host's ``/tokenize`` answer → the caller's count object; any other answer → the estimate.

    ``render(count)`` makes the API's object: ``{"input_tokens": N}`` for Anthropic,
    ``{"object": "response.input_tokens", "input_tokens": N}`` for OpenAI.
    """

    def __init__(
        self, chat: dict[str, Any], render: Callable[[int], dict[str, Any]], notes: Sequence[str] = ()
    ) -> None:
        super().__init__(stream=False, notes=notes)
        text, self._messages = flatten_chat(chat)
        self._estimate = estimate_tokens(text, self._messages)
        self._render = render
        self._ok = False
        self._parts: list[bytes] = []
        self._size = 0

    def start(self, status: int, headers: Sequence[tuple[bytes, bytes]] | Sequence[tuple[str, str]]) -> Output:
        self._ok = 200 <= status <= 299
        return Output()

    def feed(self, data: bytes) -> Output:
        if not self.done and self._size + len(data) <= 16 * MAX_ERROR_BODY:
            self._parts.append(data)
            self._size += len(data)
        elif not self.done:
            self._ok = False
        return Output()

    def finish(self) -> Output:
        if self.done:
            return Output()
        counted = tokenizer_count(b"".join(self._parts)) if self._ok else None
        if counted is None:
            return self.answer(self._estimate, "estimate")
        return self.answer(counted + PER_MESSAGE_TOKENS * self._messages, "tokenizer")

    def fail(self, message: str, code: str = "upstream_stream_broken") -> Output:
        return Output() if self.done else self.answer(self._estimate, "estimate")

    def answer(self, count: int, source: str) -> Output:
        self.done = True
        body = json.dumps({**self._render(count), "meshd_token_count": source}).encode()
        headers = (("content-type", "application/json"), ("x-meshd-token-count", source), *notes_header(self.notes))
        return Output(head=Head(200, headers), body=body, done=True)
