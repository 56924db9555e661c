"""``GET /v1/models`` in mesh-llm 0.76's shape, seen by the ``openai`` SDK, and requests naming a public id
(MESH_PROTOCOL_076.md §9.1, §9.4).

A meshd host over a real llama-server reports what the backend says (context length, capabilities); a
host that announces a HuggingFace identity for its model (as a 0.76 host does in its
``served_model_descriptors``) is listed under the model's public id, and a request naming that id reaches
the host with the served name in ``model``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_twisted

from meshd.protocol import node_pb2
from meshd.protocol.peers import peer_info_from_announcement
from tests.integration.backend import LlamaBackend
from tests.integration.local_mesh import Mesh, get_json, sdk
from tests.integration.test_client_api import (  # noqa: F401  (cleanup is a fixture)
    aio,
    cleanup,
    start_client,
    start_host,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PUBLIC_ID = "tiiuae/Falcon-H1-1.5B-Instruct-GGUF:Q4_K_M"


@pytest.fixture
def llama_mesh(tmp_path: Path, llama_backend: LlamaBackend) -> Iterator[Mesh]:
    m = Mesh(tmp_path)
    try:
        m.host("host", llama_backend.url)
        m.client()
        m.wait_models(m.api, [llama_backend.model])
        yield m
    finally:
        m.stop()


def test_a_llama_server_host_lists_what_its_backend_says(llama_mesh: Mesh, llama_backend: LlamaBackend) -> None:
    host_api = str(llama_mesh.hosts["host"].wait_event("ready")["api_url"])
    backend = get_json(llama_backend.url + "/v1/models")["data"][0]["meta"]
    props = get_json(llama_backend.url + "/props")
    models = sdk(host_api).models.list().data
    assert [m.id for m in models] == ["tiny", "mesh"]
    tiny, virtual = (m.model_dump() for m in models)
    assert tiny["owned_by"] == "mesh-llm" and tiny["hosts"] == 1
    assert tiny["capabilities"] == ["text"] and not props["modalities"]["vision"]
    assert (tiny["vision_status"], tiny["audio_status"], tiny["multimodal_status"]) == ("none", "none", "none")
    assert tiny["metadata"]["context_length"] == backend["n_ctx"]
    assert tiny["metadata"]["native_context_length"] == backend["n_ctx_train"]
    assert tiny["metadata"]["embedding_size"] == backend["n_embd"]
    assert (virtual["display_name"], virtual["capabilities"]) == ("Mesh (MoA)", ["text"])
    assert "metadata" not in virtual  # one model: no second-largest context
    # the client lists the same model (no context: a meshd host does not gossip its runtime yet)
    client = {m.id: m.model_dump() for m in sdk(llama_mesh.api).models.list().data}
    assert list(client) == ["tiny", "mesh"] and client["tiny"]["hosts"] == 1


async def announce_identity(client: Any, host: Any) -> None:
    """The client hears from the host what a 0.76 host announces for ``tiny``: a HuggingFace identity."""
    ann = host.self_announcement()
    d = ann.served_model_descriptors.add()
    d.identity.CopyFrom(
        node_pb2.ServedModelIdentity(
            model_name="tiny",
            source_kind=node_pb2.MODEL_SOURCE_KIND_HUGGING_FACE,
            repository="tiiuae/Falcon-H1-1.5B-Instruct-GGUF",
            artifact="Falcon-H1-1.5B-Instruct-Q4_K_M.gguf",
        )
    )
    client.mesh.ingest_gossip(host.identity.public_bytes, [peer_info_from_announcement(ann)], client.now())


@pytest_twisted.ensureDeferred
async def test_a_model_with_an_identity_is_listed_under_its_public_id(
    tmp_path: Path,
    cleanup: list[Any],  # noqa: F811
) -> None:
    host, _, _ = await start_host(tmp_path / "h", cleanup, "A")
    client, base = await start_client(tmp_path / "c", cleanup, (host.token or "",))
    await announce_identity(client, host)
    api = openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0)
    listed = {m.id: m.model_dump() for m in (await aio(api.models.list())).data}
    assert list(listed) == [PUBLIC_ID, "mesh"]
    assert listed[PUBLIC_ID]["display_name"] == PUBLIC_ID and listed[PUBLIC_ID]["hosts"] == 1
    await aio(api.close())


@pytest_twisted.ensureDeferred
async def test_a_request_naming_a_public_id_or_mesh_reaches_the_host_as_its_served_name(
    tmp_path: Path,
    cleanup: list[Any],  # noqa: F811
) -> None:
    host, llm, _ = await start_host(tmp_path / "h", cleanup, "A")
    client, base = await start_client(tmp_path / "c", cleanup, (host.token or "",))
    await announce_identity(client, host)
    api = openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0)
    try:
        for name in (PUBLIC_ID, "mesh"):
            reply = await aio(
                api.chat.completions.create(model=name, messages=[{"role": "user", "content": name}], temperature=0)
            )
            assert reply.choices[0].message.content == "w0 w1 w2 w3 w4 A"
            assert llm.requests[-1]["model"] == "tiny" and llm.requests[-1]["messages"][0]["content"] == name
    finally:
        await aio(api.close())
