"""What coding agents speak, through a real mesh: the official ``openai`` (Responses API) and ``anthropic``
(Messages API) SDKs call a ``meshd --client`` process, which translates to chat completions and routes to
``meshd --serve`` hosts on real llama-servers.

Two hosts: one on the tiny model (``tiny``), one on its tool-calling variant (``tiny-tools``,
tests/integration/tool_backend.py). That random model picks a tool only when pushed, so its llama-server
runs with server-wide ``--logit-bias`` on ``<tool_call>`` and ``</s>``: with tools in a request the grammar
then makes it call one at once; without tools it answers with an empty text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.integration.backend import LlamaBackend, find_llama_server, start_llama_server
from tests.integration.local_mesh import Mesh, get_json, start_odd_backend
from tests.integration.tool_backend import EOS_ID, STOP_AFTER_ONE_CALL, TOOL_CALL_ID, write_tool_model

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

WEATHER = {"type": "object", "properties": {"unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["unit"]}
KEY = "sk-agent-test"


@pytest.fixture(scope="module")
def tools_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaBackend]:
    binary = find_llama_server()
    assert binary is not None, "llama-server is not installed (scripts/install-llama-server)"
    work = tmp_path_factory.mktemp("tools")
    backend = start_llama_server(
        binary,
        write_tool_model(work / "tools.gguf"),
        work / "llama-server.log",
        alias="tiny-tools",
        parallel=2,
        extra_args=["--logit-bias", f"{TOOL_CALL_ID}+30", "--logit-bias", f"{EOS_ID}+{STOP_AFTER_ONE_CALL}"],
    )
    try:
        yield backend
    finally:
        backend.stop()


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory, llama_backend: LlamaBackend, tools_backend: LlamaBackend
) -> Iterator[Mesh]:
    m = Mesh(tmp_path_factory.mktemp("agents"))
    try:
        m.host("plain", llama_backend.url)
        m.host("tools", tools_backend.url)
        m.client("--api-key", KEY)
        m.wait_models(m.api, ["tiny", "tiny-tools"], headers={"authorization": f"Bearer {KEY}"})
        yield m
    finally:
        m.stop()


def oa(mesh: Mesh) -> openai.OpenAI:
    return openai.OpenAI(base_url=mesh.api + "/v1", api_key=KEY, max_retries=0, timeout=60)


def an(mesh: Mesh) -> anthropic.Anthropic:
    # Claude Code's way: ANTHROPIC_BASE_URL is the server root; the key goes in x-api-key.
    return anthropic.Anthropic(base_url=mesh.api, api_key=KEY, max_retries=0, timeout=60)


def test_responses_create_and_stream(mesh: Mesh) -> None:
    raw = oa(mesh).responses.with_raw_response.create(
        model="tiny", input="hello mesh", max_output_tokens=8, temperature=0
    )
    assert raw.headers["x-mesh-model"] == "tiny" and raw.headers["x-mesh-served-by"]
    response = raw.parse()
    assert response.model == "tiny" and response.output_text and response.usage is not None
    with oa(mesh).responses.stream(model="tiny", input="hello mesh", max_output_tokens=8, temperature=0) as stream:
        events = list(stream)
    kinds = [e.type for e in events]
    # cut at 8 tokens: the stream ends with response.incomplete (the SDK's get_final_response() wants completed)
    assert kinds[0] == "response.created" and kinds[-1] == "response.incomplete"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == response.output_text  # temperature 0: the same answer as without streaming


def test_responses_tool_round_trip_with_previous_response_id(mesh: Mesh) -> None:
    client = oa(mesh)
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": False}]
    # temperature 0 throughout: the biased tiny model then calls the tool every time
    with client.responses.stream(model="tiny-tools", input="weather and time?", tools=tools, temperature=0) as stream:
        argument_deltas = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
        first = stream.get_final_response()
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert "".join(argument_deltas) == call.arguments and json.loads(call.arguments)["unit"] in ("c", "f")
    stored = client.responses.retrieve(first.id)  # GET /v1/responses/{id}
    assert stored.id == first.id and stored.output[0].type == "function_call"
    output = [{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}]
    alone = client.responses.create(
        model="tiny-tools", input=[*output, {"role": "user", "content": "so?"}], temperature=0
    )
    chained = client.responses.create(
        model="tiny-tools",
        previous_response_id=first.id,
        input=[*output, {"role": "user", "content": "so?"}],
        temperature=0,
    )
    assert chained.status == "completed" and alone.usage is not None and chained.usage is not None
    # the stored first turn (the question and the call) went to the model too
    assert chained.usage.input_tokens > alone.usage.input_tokens
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="tiny-tools", previous_response_id="resp_nosuchthing", input="again")
    assert "resp_nosuchthing" in str(e.value)


def test_messages_create_stream_count_and_tool_round_trip(mesh: Mesh) -> None:
    client = an(mesh)  # (this SDK takes temperature only as an extra body field)
    message = client.messages.create(
        model="tiny",
        max_tokens=8,
        system="be brief",
        messages=[{"role": "user", "content": "hello mesh"}],
        extra_body={"temperature": 0},
    )
    assert message.type == "message" and message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens") and message.usage.output_tokens > 0
    with client.messages.stream(
        model="tiny", max_tokens=8, messages=[{"role": "user", "content": "hi"}], extra_body={"temperature": 0}
    ) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == final.content[0].text  # type: ignore[union-attr]
    counted = client.messages.count_tokens(model="tiny", messages=[{"role": "user", "content": "hello mesh"}])
    assert counted.input_tokens > 0
    tools: Any = [{"name": "get_weather", "description": "the weather", "input_schema": WEATHER}]
    asked: Any = [{"role": "user", "content": "weather and time?"}]
    called = client.messages.create(
        model="tiny-tools", max_tokens=200, messages=asked, tools=tools, extra_body={"temperature": 0}
    )
    use = called.content[0]
    assert called.stop_reason == "tool_use" and use.type == "tool_use" and use.input["unit"] in ("c", "f")
    answered = client.messages.create(
        model="tiny-tools",
        max_tokens=16,
        extra_body={"temperature": 0},
        tools=tools,
        messages=[
            *asked,
            {"role": "assistant", "content": [use.model_dump()]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]},
        ],
    )
    assert answered.type == "message" and answered.usage.input_tokens > called.usage.input_tokens


def test_agent_errors_come_in_each_apis_own_shape(mesh: Mesh) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        an(mesh).messages.create(model="claude-opus-4", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    body: Any = missing.value.body
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    assert "tiny" in body["error"]["message"]  # it lists what the mesh serves
    bad_key = anthropic.Anthropic(base_url=mesh.api, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad_key.messages.create(model="tiny", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as bad:
        oa(mesh).responses.create(model="tiny", input=[{"type": "nonsense"}])  # type: ignore[list-item]
    assert "input" in str(bad.value)


def test_callers_keys_never_reach_a_hosts_backend(mesh: Mesh, tmp_path: Path) -> None:
    """Whatever credential headers a caller sends (Bearer, x-api-key, api-key, proxy-authorization), no host's
    backend sees any of them (0.76 §9.3), with the client's own --api-key on and off; an OpenAI-style and an
    Anthropic-style call each."""
    proc, url = start_odd_backend("stdlib", "odd-stdlib", tmp_path / "backend.log")
    mesh.backends.append(proc)
    mesh.host("recorder", url)
    open_api = mesh.client()  # no --api-key
    mesh.wait_models(open_api, ["tiny", "tiny-tools", "odd-stdlib"])
    mesh.wait_models(mesh.api, ["tiny", "tiny-tools", "odd-stdlib"], headers={"authorization": f"Bearer {KEY}"})
    secrets = {"x-api-key": "sk-anthropic-caller", "api-key": "sk-azure-caller", "proxy-authorization": "Basic c2Vj"}
    calls = 0
    for api, key in ((open_api, "sk-caller"), (mesh.api, KEY)):
        client = openai.OpenAI(base_url=api + "/v1", api_key=key, max_retries=0, default_headers=secrets)
        client.chat.completions.create(model="odd-stdlib", messages=[{"role": "user", "content": "hi"}])
        claude = anthropic.Anthropic(base_url=api, api_key=key, max_retries=0, default_headers=secrets)
        claude.messages.create(model="odd-stdlib", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
        calls += 2
    seen = get_json(url + "/debug/headers")
    posts = [h for h in seen if h.get("content-type", "").startswith("application/json")]
    assert len(posts) == calls
    for headers in posts:
        assert not {"authorization", "x-api-key", "api-key", "proxy-authorization"} & set(headers), headers
        assert not any(v in json.dumps(headers) for v in ("sk-caller", KEY, *secrets.values()))
