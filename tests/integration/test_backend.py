"""The real llama-server backend answers the OpenAI API (checked with the official openai SDK)."""

from __future__ import annotations

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.integration import backend
from tests.integration.backend import LlamaBackend

# The session-scoped fixture, made visible to this module (unneeded once the root conftest lists
# tests.integration.backend in pytest_plugins).
llama_backend = backend.llama_backend

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello mesh"}]
MAX_TOKENS = 24


def _client(backend: LlamaBackend) -> openai.OpenAI:
    return openai.OpenAI(base_url=backend.api_base, api_key="unused", timeout=60, max_retries=0)


def _complete(client: openai.OpenAI, model: str) -> str:
    resp = client.chat.completions.create(model=model, messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS)
    assert len(resp.choices) == 1
    content = resp.choices[0].message.content
    assert content is not None
    return content


def test_models_lists_alias(llama_backend: LlamaBackend) -> None:
    ids = [m.id for m in _client(llama_backend).models.list()]
    assert llama_backend.model in ids


def test_chat_completion_is_printable_and_deterministic(llama_backend: LlamaBackend) -> None:
    client = _client(llama_backend)
    first = _complete(client, llama_backend.model)
    second = _complete(client, llama_backend.model)
    assert first.strip()
    assert first.isprintable(), repr(first)
    assert first == second


def test_streaming_matches_non_streaming(llama_backend: LlamaBackend) -> None:
    client = _client(llama_backend)
    expected = _complete(client, llama_backend.model)
    stream = client.chat.completions.create(
        model=llama_backend.model,
        messages=MESSAGES,
        temperature=0,
        max_tokens=MAX_TOKENS,
        stream=True,
    )
    pieces: list[str] = []
    finish: list[str] = []
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    assert len(pieces) > 1, pieces
    assert "".join(pieces) == expected
    assert finish == ["length"]
