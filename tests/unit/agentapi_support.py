"""Helpers for the agent-API tests: recorded upstream answers, and a minimal stand-in for the web layer.

:class:`Gateway` drives the sans-IO face of :mod:`meshd.agentapi` the way the web layer is meant to (see
``docs/agent-apis.md``) and serves it to the official ``openai`` and ``anthropic`` SDK clients through an
``httpx2.MockTransport``: the SDKs build the requests and parse every answer, the upstream answers are
recorded chat-completions outputs fed in pieces of a chosen size.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import anthropic
import attrs
import httpx2
import openai

from meshd.agentapi import AgentApi, AgentApiError, MemoryResponseStore, load_history, match
from meshd.agentapi.adapter import Answer, Forward
from meshd.agentapi.sse import SSEParser
from meshd.agentapi.translate import Head, Output, Translator

DATA = Path(__file__).parent / "data"
CHAT = DATA / "chat"


#: Recorded chat-completions streams (in CHAT) that every translator must handle.
STREAMS = [
    "llama_text_stream",
    "llama_text_length_stream",
    "llama_tool_stream",
    "llama_tools_length_stream",
    "llama_json_schema_stream",
    "openai_parallel_tools_stream",
    "vllm_reasoning_stream",
    "ollama_tool_stream",
    "llama_error_midstream",
]


@attrs.frozen
class Upstream:
    """One upstream answer: status, content type and body."""

    status: int
    content_type: str
    body: bytes
    name: str = ""

    @classmethod
    def load(cls, name: str) -> Upstream:
        fixture = json.loads((CHAT / f"{name}.json").read_text())
        return cls(fixture["status"], fixture["content_type"], fixture["body"].encode(), name)

    def replace_body(self, body: bytes) -> Upstream:
        return attrs.evolve(self, body=body)


class CountingIds:
    """Deterministic ids: ``resp_1``, ``msg_2``, ..."""

    def __init__(self) -> None:
        self._n = itertools.count(1)

    def __call__(self, prefix: str) -> str:
        return f"{prefix}_{next(self._n)}"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """The result of a coroutine that never waits (the in-memory store's methods)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("the coroutine waited for something")


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] if size > 0 else [data]


@attrs.define
class Translated:
    head: Head
    body: bytes
    done: bool
    outputs: list[Output]


def translate(translator: Translator, upstream: Upstream, size: int = 0, *, finish: bool = True) -> Translated:
    """Run ``upstream`` through ``translator`` in pieces of ``size`` bytes (0: one piece)."""
    outputs = [translator.start(upstream.status, [(b"content-type", upstream.content_type.encode())])]
    for piece in pieces(upstream.body, size):
        outputs.append(translator.feed(piece))
    if finish:
        outputs.append(translator.finish())
    heads = [o.head for o in outputs if o.head is not None]
    assert len(heads) <= 1, "a translator gave more than one head"
    # the head always comes before (or with) the first body bytes
    first_body = next((i for i, o in enumerate(outputs) if o.body), None)
    first_head = next((i for i, o in enumerate(outputs) if o.head is not None), None)
    if first_body is not None:
        assert first_head is not None and first_head <= first_body, "body bytes before the head"
    done = [i for i, o in enumerate(outputs) if o.done]
    assert len(done) <= 1 and (
        not done or done[0] == len(outputs) - 1 or not any(o.body for o in outputs[done[0] + 1 :])
    )
    return Translated(heads[0] if heads else Head(0, ()), b"".join(o.body for o in outputs), bool(done), outputs)


def sse_json(body: bytes) -> list[tuple[str | None, dict[str, Any]]]:
    """(event name, decoded data) of every event of an SSE body."""
    parser = SSEParser()
    events = parser.feed(body)
    assert not parser.pending, "the stream ends in the middle of an event"
    return [(e.event, json.loads(e.data)) for e in events]


class Gateway:
    """The web layer's part, reduced to what the tests need: one upstream answer per routed request."""

    def __init__(self, upstream: Callable[[Forward], Upstream] | Upstream | list[Upstream], *, piece: int = 7) -> None:
        self.clock = 1_000_000.0
        self.ids = CountingIds()
        self.agent = AgentApi(ids=self.ids)
        self.store = MemoryResponseStore(lambda: self.clock, max_entries=50, max_bytes=1 << 20, ttl=600)
        if isinstance(upstream, Upstream):
            answers = itertools.repeat(upstream)
            self._upstream: Callable[[Forward], Upstream] = lambda _f: next(answers)
        elif isinstance(upstream, list):
            queue = iter(upstream)
            self._upstream = lambda _f: next(queue)
        else:
            self._upstream = upstream
        self.piece = piece
        self.forwarded: list[tuple[str, dict[str, Any]]] = []
        self.answers: list[Translated] = []

    def _answer(self, answer: Answer) -> httpx2.Response:
        return httpx2.Response(answer.status, headers=list(answer.headers), content=answer.body)

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        endpoint = match(request.method, request.url.path)
        if endpoint is None:
            return httpx2.Response(404, json={"error": "not an agent path"})
        if endpoint.action == "retrieve":
            return self._answer(self.agent.retrieved(endpoint, run(self.store.get(endpoint.response_id or ""))))
        if endpoint.action == "delete":
            return self._answer(self.agent.deleted(endpoint, run(self.store.delete(endpoint.response_id or ""))))
        try:
            prepared = self.agent.prepare(endpoint, request.read())
            previous = prepared.previous_response_id
            history = run(load_history(self.store, previous)) if previous else []
            forward = prepared.plan(now=self.clock, history=history)
        except AgentApiError as e:
            return self._answer(self.agent.error(endpoint.api, e))
        self.forwarded.append((forward.path, json.loads(forward.body)))
        translator = forward.translator()
        result = translate(translator, self._upstream(forward), self.piece)
        self.answers.append(result)
        assert result.done, "the translator did not finish the answer"
        if translator.stored is not None:
            run(self.store.put(translator.stored))
        return httpx2.Response(result.head.status, headers=list(result.head.headers), content=_chunks(result.outputs))

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(
            api_key="sk-test",
            base_url="http://mesh.test/v1",
            http_client=httpx2.Client(transport=httpx2.MockTransport(self.handle)),
            max_retries=0,
        )

    def anthropic(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            api_key="sk-ant-test",
            base_url="http://mesh.test",
            http_client=httpx2.Client(transport=httpx2.MockTransport(self.handle)),
            max_retries=0,
        )


def _chunks(outputs: list[Output]) -> Iterator[bytes]:
    for out in outputs:
        if out.body:
            yield out.body
