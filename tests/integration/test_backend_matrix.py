"""Nothing lost, whatever the backend's write pattern: one real mesh (a ``meshd --client`` process and one
``meshd --serve`` process per backend), every backend a real server of a different kind
(``tests/integration/odd_backends.py``, plus llama-server), driven with the ``openai`` SDK. Every body that
comes through the mesh is compared byte for byte with what the same backend sends when called directly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2  # the HTTP client inside openai>=3
import openai
import pytest

from tests.integration.backend import LlamaBackend
from tests.integration.local_mesh import Mesh, get_json, sdk, start_odd_backend
from tests.integration.odd_backends import STYLES

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MSGS: Any = [{"role": "user", "content": "the quick brown fox jumps over the lazy dog"}]
#: A body far larger than what an ``early`` backend reads before it answers and closes.
BIG_MSGS: Any = [{"role": "user", "content": "word " * 300_000}]


def odd_model(style: str) -> str:
    return f"odd-{style}"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, llama_backend: LlamaBackend) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("matrix")
    m = Mesh(tmp)
    try:
        m.host("llama", llama_backend.url)
        m.direct[llama_backend.model] = llama_backend.url
        for style in STYLES:
            proc, url = start_odd_backend(style, odd_model(style), tmp / f"{style}.log")
            m.backends.append(proc)
            m.direct[odd_model(style)] = url
            m.host(style, url)
        m.client()
        m.wait_models(m.api, list(m.direct))
        yield m
    finally:
        m.stop()


def plain(base: str, model: str, messages: Any = MSGS) -> bytes:
    r = sdk(base).chat.completions.with_raw_response.create(model=model, messages=messages, temperature=0)
    assert r.status_code == 200
    completion = r.parse()  # the SDK accepts what arrived
    assert completion.choices[0].message.content
    return bytes(r.content)


def streamed(base: str, model: str) -> bytes:
    with sdk(base).chat.completions.with_streaming_response.create(
        model=model, messages=MSGS, temperature=0, stream=True
    ) as r:
        assert r.status_code == 200
        return b"".join(r.iter_bytes())


def embeddings(base: str, model: str) -> bytes:
    r = sdk(base).embeddings.with_raw_response.create(model=model, input="the quick brown fox")
    assert r.status_code == 200
    assert len(r.parse().data[0].embedding) == 16
    return bytes(r.content)


WELL_FORMED = [s for s in STYLES if s != "midclose"]


@pytest.mark.parametrize("style", WELL_FORMED)
def test_plain_completion_is_byte_exact(mesh: Mesh, style: str) -> None:
    model = odd_model(style)
    messages = BIG_MSGS if style == "early" else MSGS
    direct = plain(mesh.direct[model], model, messages)
    assert plain(mesh.api, model, messages) == direct


@pytest.mark.parametrize("style", [s for s in WELL_FORMED if s != "early"])
def test_streamed_completion_is_byte_exact(mesh: Mesh, style: str) -> None:
    model = odd_model(style)
    direct = streamed(mesh.direct[model], model)
    assert direct.endswith(b"data: [DONE]\n\n")
    assert streamed(mesh.api, model) == direct
    # and the SDK's own stream reader takes it
    chunks = list(sdk(mesh.api).chat.completions.create(model=model, messages=MSGS, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo the quick brown fox jumps over the lazy dog end"


@pytest.mark.parametrize("style", WELL_FORMED)
def test_embeddings_are_byte_exact(mesh: Mesh, style: str) -> None:
    model = odd_model(style)
    assert embeddings(mesh.api, model) == embeddings(mesh.direct[model], model)


def test_a_backend_closing_mid_body_is_an_error_never_a_short_success(mesh: Mesh) -> None:
    """Directly and through the mesh alike, the caller's HTTP client sees a cut body (the raw stream reader
    raises the transport's own error, the parsing calls ``openai.APIError``): never a complete-looking one."""
    model = odd_model("midclose")
    cut_short = (openai.APIError, httpx2.RemoteProtocolError)
    for base in (mesh.direct[model], mesh.api):
        with pytest.raises(cut_short):
            plain(base, model)
        with pytest.raises(cut_short):
            streamed(base, model)


def test_llama_server_through_the_mesh(mesh: Mesh, llama_backend: LlamaBackend) -> None:
    model = llama_backend.model

    def content(raw: bytes) -> Any:
        return json.loads(raw)["choices"][0]["message"]["content"]

    assert content(plain(mesh.api, model)) == content(plain(mesh.direct[model], model))

    def stream_text(base: str) -> str:
        chunks = list(sdk(base).chat.completions.create(model=model, messages=MSGS, temperature=0, stream=True))
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    assert stream_text(mesh.api) == stream_text(mesh.direct[model])
    # the host took llama-server's own concurrency (its slots) as its backend limit
    backend = get_json(mesh.consoles["llama"] + "/api/status")["meshd"]["backend"]
    assert (backend["max_inflight"], backend["max_inflight_source"]) == (4, "llama-server /props")


def test_the_reported_loss_500_on_one_connection_and_200_fresh(mesh: Mesh) -> None:
    """The issue's measurement: a ``http.server`` backend (head and body in separate writes), non-streaming,
    500 requests over one keep-alive connection and 200 on fresh connections: every one answered in full."""
    model = odd_model("stdlib")
    expected = plain(mesh.direct[model], model)
    client = sdk(mesh.api)
    kept = [client.chat.completions.with_raw_response.create(model=model, messages=MSGS) for _ in range(500)]
    assert [(r.status_code, r.content) for r in kept] == [(200, expected)] * 500
    fresh = []
    for _ in range(200):
        with sdk(mesh.api) as one:
            fresh.append(one.chat.completions.with_raw_response.create(model=model, messages=MSGS))
    assert [(r.status_code, r.content) for r in fresh] == [(200, expected)] * 200
