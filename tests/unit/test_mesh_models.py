"""Public model ids, ``GET /v1/models`` in mesh-llm 0.76's shape and the served name a request's model
stands for (``meshd.mesh.models``; MESH_PROTOCOL_076.md §9.1, §9.4), plus the gossip descriptors they are
computed from (``meshd.protocol.peers``)."""

from __future__ import annotations

import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.mesh.models import (
    VIRTUAL_MODEL,
    LocalModel,
    MeshModel,
    ModelRef,
    known_models,
    mesh_models,
    models_list,
    parse_model_ref,
    public_id,
    quant_selector_from_gguf_file,
    request_model,
    served_name,
    split_profile,
)
from meshd.mesh.state import MeshState
from meshd.protocol import node_pb2
from meshd.protocol.peers import (
    MAX_REMOTE_MODEL_LIST_LEN,
    CapabilityLevel,
    ModelCapabilities,
    ModelSourceKind,
    Role,
    ServedModel,
    build_self_announcement,
    peer_info_from_announcement,
)
from meshd.protocol.token import EndpointAddr

FALCON_FILE = "Falcon-H1-1.5B-Instruct-Q4_K_M.gguf"
FALCON_REPO = "tiiuae/Falcon-H1-1.5B-Instruct-GGUF"


def key(seed: int) -> bytes:
    private = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


OWN, H1, H2, H3 = key(1), key(2), key(3), key(4)


def hf(name: str, artifact: str | None = FALCON_FILE, **kw: Any) -> ServedModel:
    return ServedModel(
        name, ModelSourceKind.HUGGING_FACE, repository=FALCON_REPO, revision="0d3a6cfe", artifact=artifact, **kw
    )


# -- refs and ids ---------------------------------------------------------------------------------


def test_quant_selectors_of_gguf_file_names() -> None:
    cases = {
        "gemma-4-31B-it-UD-Q4_K_XL.gguf": "UD-Q4_K_XL",
        "Meta-Llama-3.1-8B-Instruct.Q4_K_M.gguf": "Q4_K_M",
        "BF16/gemma-4-31B-it-BF16-00001-of-00002.gguf": "BF16",
        "qwen3.5-moe-0.87B-d0.8B.Q2_K.gguf": "Q2_K",
        "gemma-4-31B-it-Q4_0.gguf": "Q4_0",
        "GLM-5.1-UD-IQ2_M-00001-of-00006.gguf": "UD-IQ2_M",
        FALCON_FILE: "Q4_K_M",
        "model.gguf": None,
        "Q4_K_M.safetensors": None,
    }
    assert {f: quant_selector_from_gguf_file(f) for f in cases} == cases


def test_model_refs_parse_and_display_as_mesh_llm_does() -> None:
    assert parse_model_ref("org/repo:Q4_K_M") == ModelRef("org/repo", None, "Q4_K_M")
    assert parse_model_ref("org/repo@abc123:Q4_K_M") == ModelRef("org/repo", "abc123", "Q4_K_M")
    assert parse_model_ref("org/repo:Q4_K_M@abc123") == ModelRef("org/repo", "abc123", "Q4_K_M")
    assert parse_model_ref("https://huggingface.co/org/repo:BF16").display_id() == "org/repo:BF16"  # type: ignore[union-attr]
    assert parse_model_ref("https://huggingface.co/org/repo/tree/main").display_id() == "org/repo@main"  # type: ignore[union-attr]
    for bad in ("", "repo-only", "org/:Q4_K_M", "org/repo:", "org/repo/file.gguf", "a:b/c", "org/repo@"):
        assert parse_model_ref(bad) is None, bad


@settings(max_examples=300)
@given(st.text(max_size=60))
def test_parse_model_ref_never_raises(text: str) -> None:
    ref = parse_model_ref(text)
    assert ref is None or (ref.repo and ref.revision != "" and ref.selector != "")


@settings(max_examples=300)
@given(st.text(alphabet=st.sampled_from("ab/:@#.-_Q4Ké"), max_size=40))
def test_a_parsed_ref_displays_as_a_ref_that_parses_back_to_it(text: str) -> None:
    ref = parse_model_ref(text)
    if ref is None:
        return
    parts = [p for p in (ref.revision, ref.selector) if p is not None]
    if not any(c in p for p in parts for c in ":@"):  # mesh-llm's parser keeps a second separator in a part
        assert parse_model_ref(ref.display_id()) == ref


@settings(max_examples=300)
@given(st.text(max_size=60).map(lambda t: t + ".gguf") | st.text(max_size=60))
def test_quant_selector_is_part_of_the_file_name(file: str) -> None:
    selector = quant_selector_from_gguf_file(file)
    assert selector is None or (selector and selector in file)


def test_public_ids() -> None:
    assert public_id("Falcon-Q4", hf("Falcon-Q4")) == f"{FALCON_REPO}:Q4_K_M"
    # without the GGUF file the HuggingFace identity would lose the quant: the served name stays
    assert public_id("Falcon-Q4", hf("Falcon-Q4", artifact=None)) == "Falcon-Q4"
    # an artifact that is already a selector is used as is
    assert public_id("x", hf("x", artifact="q4_k_m")) == f"{FALCON_REPO}:q4_k_m"
    catalog = ServedModel("Falcon-Q4", ModelSourceKind.CATALOG, canonical_ref=f"{FALCON_REPO}:Q4_K_M@rev1")
    assert public_id("Falcon-Q4", catalog) == f"{FALCON_REPO}@rev1:Q4_K_M"
    assert public_id("smollm2-a", ServedModel("smollm2-a", ModelSourceKind.LOCAL_GGUF)) == "smollm2-a"
    assert public_id("tiny", None) == "tiny"
    assert public_id("Falcon-Q4#low-ctx", hf("Falcon-Q4#low-ctx")) == f"{FALCON_REPO}:Q4_K_M#low-ctx"
    assert split_profile("m#") == ("m", "") and split_profile("a#b#c") == ("a#b", "c")


# -- the mesh's models ----------------------------------------------------------------------------


def host_info(
    pid: bytes,
    models: tuple[str, ...],
    *,
    descriptors: list[node_pb2.ServedModelDescriptor] = (),  # type: ignore[assignment]
    contexts: dict[str, int] | None = None,
    vram: int = 0,
) -> Any:
    ann = build_self_announcement(
        addr=EndpointAddr(pid), version="0.76.0", role=Role.HOST, http_port=9337, hosted_models=models, vram_bytes=vram
    )
    for d in descriptors:
        ann.served_model_descriptors.append(d)
    for name, ctx in (contexts or {}).items():
        ann.served_model_runtime.add(model_name=name, context_length=ctx, ready=True)
    return peer_info_from_announcement(ann)


def hf_descriptor(
    name: str, *, vision: int = 0, reasoning: int = 0, known: bool = True
) -> node_pb2.ServedModelDescriptor:
    d = node_pb2.ServedModelDescriptor(
        identity=node_pb2.ServedModelIdentity(
            model_name=name,
            source_kind=node_pb2.MODEL_SOURCE_KIND_HUGGING_FACE,
            repository=FALCON_REPO,
            artifact=FALCON_FILE,
        ),
        capabilities=node_pb2.ModelCapabilities(vision=vision, reasoning=reasoning),
        capabilities_known=known,
    )
    d.metadata.architecture = "falcon-h1"
    d.metadata.quant = "Q4_K_M"
    d.metadata.native_context_length = 32768
    return d


def mesh_of(*infos: Any) -> MeshState:
    mesh = MeshState(OWN, Role.CLIENT)
    for info in infos:
        mesh.ingest_gossip(info.endpoint_id, [info], 0.0)
    return mesh


def test_descriptors_travel_from_gossip_into_peer_info() -> None:
    info = host_info(H1, ("falcon",), descriptors=[hf_descriptor("falcon", vision=3)])
    (d,) = info.served_descriptors
    assert (d.model_name, d.source_kind, d.repository, d.artifact) == (
        "falcon",
        ModelSourceKind.HUGGING_FACE,
        FALCON_REPO,
        FALCON_FILE,
    )
    assert d.capabilities_known and d.capabilities.vision is CapabilityLevel.SUPPORTED
    assert dict(d.metadata) == {"architecture": "falcon-h1", "quant": "Q4_K_M", "native_context_length": 32768}
    assert info.descriptor("falcon") is d and info.descriptor("other") is None


def test_descriptors_are_bounded_and_odd_values_are_dropped() -> None:
    ann = build_self_announcement(addr=EndpointAddr(H1), version="0.76.0", role=Role.HOST, http_port=1)
    for i in range(MAX_REMOTE_MODEL_LIST_LEN + 10):
        ann.served_model_descriptors.add(identity=node_pb2.ServedModelIdentity(model_name=f"m{i}"))
    ann.served_model_descriptors.add(identity=node_pb2.ServedModelIdentity(model_name="x" * 600))
    bad = ann.served_model_descriptors.add(
        identity=node_pb2.ServedModelIdentity(model_name="odd", source_kind=99, repository="r" * 600)
    )
    bad.capabilities.vision = 42
    bad.metadata.parameter_count_b = float("nan")
    info = peer_info_from_announcement(ann)
    assert len(info.served_descriptors) == MAX_REMOTE_MODEL_LIST_LEN
    ann.ClearField("served_model_descriptors")
    ann.served_model_descriptors.append(bad)
    (odd,) = peer_info_from_announcement(ann).served_descriptors
    assert odd.source_kind is ModelSourceKind.UNKNOWN and odd.repository is None
    assert odd.capabilities.vision is CapabilityLevel.NONE and odd.metadata == ()


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.builds(
            lambda name, kind, repo, art, ref, vis, known, arch, ctx: node_pb2.ServedModelDescriptor(
                identity=node_pb2.ServedModelIdentity(
                    model_name=name, source_kind=kind, repository=repo, artifact=art, canonical_ref=ref
                ),
                capabilities=node_pb2.ModelCapabilities(vision=vis),
                capabilities_known=known,
                metadata=node_pb2.ServedModelMetadata(architecture=arch, native_context_length=ctx),
            ),
            st.text(max_size=20),
            st.integers(0, 1000),
            st.text(max_size=30),
            st.text(max_size=30),
            st.text(max_size=30),
            st.integers(0, 2**31 - 1),
            st.booleans(),
            st.text(max_size=10),
            st.integers(0, 2**32 - 1),
        ),
        max_size=8,
    ),
    st.lists(st.integers(0, 2**32 - 1), max_size=4),
)
def test_any_gossiped_descriptors_give_a_valid_model_list(descriptors: list[Any], contexts: list[int]) -> None:
    names = tuple(sorted({d.identity.model_name for d in descriptors if d.identity.model_name}))
    info = host_info(H1, names, descriptors=descriptors, contexts=dict(zip(names, contexts, strict=False)))
    models = mesh_models(mesh_of(info))
    body = json.loads(json.dumps(models_list(models)))
    ids = [m["id"] for m in body["data"]]
    assert len(ids) == len(set(ids))
    for entry in body["data"]:
        assert entry["object"] == "model" and entry["owned_by"] == "mesh-llm" and entry["capabilities"][0] == "text"
        assert entry["vision_status"] in ("supported", "likely", "none")
    for m in models:  # every public id leads back to a served model
        assert served_name(m.public_id, models) is not None


def test_models_list_is_mesh_llms_shape_with_public_ids_capabilities_and_context() -> None:
    a = host_info(H1, ("falcon", "tiny"), descriptors=[hf_descriptor("falcon", reasoning=2)], contexts={"falcon": 8192})
    b = host_info(H2, ("falcon",), descriptors=[hf_descriptor("falcon", reasoning=2)], contexts={"falcon": 4096})
    local = LocalModel("own", context_length=2048, native_context_length=4096, vision=True, parameter_count_b=0.5)
    body = models_list(mesh_models(mesh_of(a, b), [local]))
    by_id = {m["id"]: m for m in body["data"]}
    assert list(by_id) == [f"{FALCON_REPO}:Q4_K_M", "own", "tiny", VIRTUAL_MODEL]
    falcon = by_id[f"{FALCON_REPO}:Q4_K_M"]
    assert falcon == {
        "id": f"{FALCON_REPO}:Q4_K_M",
        "display_name": f"{FALCON_REPO}:Q4_K_M",
        "object": "model",
        "created": 0,
        "owned_by": "mesh-llm",
        "capabilities": ["text", "reasoning"],
        "multimodal_status": "none",
        "vision_status": "none",
        "audio_status": "none",
        "reasoning_status": "likely",
        "hosts": 2,
        "metadata": {
            "architecture": "falcon-h1",
            "quant": "Q4_K_M",
            "context_length": 4096,  # the smallest runtime context of its hosts
            "max_context_length": 8192,
            "native_context_length": 32768,
        },
    }
    own = by_id["own"]  # this host's backend: vision from /props, context from /v1/models meta
    assert own["capabilities"] == ["text", "multimodal", "vision"] and own["vision_status"] == "supported"
    assert own["metadata"] == {"context_length": 2048, "parameter_count_b": 0.5, "native_context_length": 4096}
    assert "metadata" not in by_id["tiny"] and by_id["tiny"]["capabilities"] == ["text"]
    virtual = by_id[VIRTUAL_MODEL]
    assert virtual["display_name"] == "Mesh (MoA)"
    assert virtual["capabilities"] == ["text", "multimodal", "vision", "reasoning"]  # the union
    assert virtual["metadata"] == {"context_length": 2048}  # the second-largest per-model context (4096, 2048)


def test_no_models_no_virtual_entry_and_a_public_id_is_listed_once() -> None:
    assert models_list(mesh_models(mesh_of())) == {"object": "list", "data": []}
    # two served names with the same identity: one entry, the first served name's
    a = host_info(H1, ("falcon-a",), descriptors=[hf_descriptor("falcon-a")])
    b = host_info(H2, ("falcon-b",), descriptors=[hf_descriptor("falcon-b")])
    models = mesh_models(mesh_of(a, b))
    assert [m["id"] for m in models_list(models)["data"]] == [f"{FALCON_REPO}:Q4_K_M", VIRTUAL_MODEL]
    assert served_name(f"{FALCON_REPO}:Q4_K_M", models) == "falcon-a"


def test_capabilities_unknown_to_the_host_say_none() -> None:
    info = host_info(H1, ("falcon",), descriptors=[hf_descriptor("falcon", vision=3, known=False)])
    assert MeshModel("falcon", "x", 1, info.served_descriptors[0]).capabilities() == ModelCapabilities()


# -- a request's model ----------------------------------------------------------------------------


def test_served_names_public_ids_and_the_virtual_model() -> None:
    a = host_info(H1, ("falcon", "tiny"), descriptors=[hf_descriptor("falcon")])
    b = host_info(H2, ("tiny",))
    models = known_models(mesh_of(a, b), ["own"])
    assert served_name("tiny", models) == "tiny"
    assert served_name(f"{FALCON_REPO}:Q4_K_M", models) == "falcon"
    assert served_name("own", models) == "own"
    assert served_name(VIRTUAL_MODEL, models) == "tiny"  # the model with the most hosts
    assert served_name("nope", models) is None and served_name("", models) is None


def test_a_profiled_model_is_reached_by_its_public_base() -> None:
    info = host_info(H1, ("falcon#low-ctx",), descriptors=[hf_descriptor("falcon#low-ctx")])
    models = known_models(mesh_of(info))
    assert served_name(f"{FALCON_REPO}:Q4_K_M", models) == "falcon#low-ctx"
    assert served_name(f"{FALCON_REPO}:Q4_K_M#low-ctx", models) == "falcon#low-ctx"
    assert served_name(f"{FALCON_REPO}:Q4_K_M#other", models) is None


def test_request_model_rewrites_a_public_id_in_the_body() -> None:
    mesh = mesh_of(host_info(H1, ("falcon",), descriptors=[hf_descriptor("falcon")]))
    parsed = {"model": f"{FALCON_REPO}:Q4_K_M", "messages": [{"role": "user", "content": "héllo"}], "user": "u"}
    body = json.dumps(parsed).encode()
    model, out = request_model(parsed["model"], parsed, body, mesh, [])
    assert model == "falcon"
    assert json.loads(out) == {**parsed, "model": "falcon"}
    # a served name, an unknown name and no model are left alone, byte for byte
    for name in ("falcon", "unknown"):
        raw = json.dumps({"model": name}).encode()
        assert request_model(name, {"model": name}, raw, mesh, []) == (name, raw)
    assert request_model(None, {}, b"{}", mesh, []) == (None, b"{}")


def test_a_public_id_of_a_model_away_for_a_moment_still_names_it() -> None:
    info = host_info(H1, ("falcon",), descriptors=[hf_descriptor("falcon")])
    mesh = mesh_of(info)
    mesh.peers[H1].admitted = False  # not routable now, still in the table
    assert mesh.routable_models() == {}
    assert request_model(f"{FALCON_REPO}:Q4_K_M", {"model": "x"}, b"", mesh, [])[0] == "falcon"


def test_mesh_chooses_a_model_that_can_do_what_the_request_needs() -> None:
    from meshd.mesh.models import LocalModel, MeshModel, choose_automatic

    def model(name: str, hosts: int, ctx: int | None = None, tools: bool | None = None) -> MeshModel:
        local = LocalModel(name, context_length=ctx, tools=tools) if tools is not None or ctx is not None else None
        return MeshModel(name, name, hosts, contexts=(ctx,) if ctx else (), local=local)

    small_tools = model("small-tools", 1, ctx=2048, tools=True)
    big_plain = model("big-plain", 3, ctx=32768, tools=False)
    unknown = model("unknown", 2)
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    assert choose_automatic([small_tools, big_plain, unknown], chat, 100) == "big-plain"  # fits, most hosts
    with_tools = {**chat, "tools": [{"type": "function", "function": {"name": "f"}}]}
    assert choose_automatic([small_tools, big_plain, unknown], with_tools, 100) == "small-tools"  # known to have them
    assert choose_automatic([big_plain, unknown], with_tools, 100) == "unknown"  # big-plain is known to lack them
    long_prompt = 4 * 10_000  # ~10k tokens: only the big model's context fits
    assert choose_automatic([small_tools, big_plain], chat, long_prompt) == "big-plain"
    assert choose_automatic([big_plain], with_tools, 100) == "big-plain"  # nothing else: still served
    assert choose_automatic([model("away", 0)], chat, 10) is None  # no host serves it now
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}
    seeing = MeshModel("seeing", "seeing", 1, local=LocalModel("seeing", vision=True))
    assert choose_automatic([big_plain, seeing], image, 100) == "seeing"
