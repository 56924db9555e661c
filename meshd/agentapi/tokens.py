"""Token counts for ``POST /v1/messages/count_tokens``.

The count comes from the host's tokenizer when its backend has one: the layer sends the conversation as
text to ``POST /tokenize`` (llama-server takes ``content``; vLLM takes ``prompt`` and answers ``count``),
and adds a small per-message allowance for the chat template's markup, which that text lacks. A host
without ``/tokenize`` (Ollama, a 404, anything unexpected) gives way to an estimate from the text's UTF-8
length. The answer says which it is (``meshd_token_count``: ``"tokenizer"`` or ``"estimate"``).
"""

from __future__ import annotations

import json
import math
from typing import Any

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
