"""What a host learns from its backend (``meshd.host``): model names, context lengths and capabilities from
llama-server's ``/v1/models`` and ``/props``, bounded and robust to any JSON."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from meshd.config import Config, Role
from meshd.host import (
    MAX_BACKEND_MODELS,
    BackendWatch,
    ModelFacts,
    PropsFacts,
    local_models,
    parse_model_list,
    parse_props,
)
from meshd.identity import Identity
from meshd.mesh.models import LocalModel
from meshd.node import Node
from meshd.protocol.streams import StreamType
from meshd.status import StatusView
from meshd.tunnel import Backend

#: What llama-server b6000+ answers (captured from the test suite's llama-server with the tiny model).
LLAMA_MODELS = {
    "object": "list",
    "data": [
        {
            "id": "tiny",
            "aliases": ["tiny"],
            "object": "model",
            "architecture": {"input_modalities": ["text"], "output_modalities": ["text"]},
            "owned_by": "llamacpp",
            "meta": {
                "vocab_type": 1,
                "n_vocab": 273,
                "n_ctx": 256,
                "n_ctx_train": 512,
                "n_embd": 64,
                "n_params": 166336,
            },
        }
    ],
}
LLAMA_PROPS = {
    "total_slots": 4,
    "modalities": {"vision": False, "video": False, "audio": False},
    "chat_template_caps": {"supports_tools": False, "supports_system_role": True},
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)
model_entries = st.fixed_dictionaries(
    {"id": json_values | st.text(max_size=600)},
    optional={"meta": st.dictionaries(st.sampled_from(["n_ctx", "n_ctx_train", "n_embd", "n_params"]), json_values)}
    | {"architecture": json_values},
)


def test_llama_servers_answers_give_context_and_capabilities() -> None:
    names, facts = parse_model_list(LLAMA_MODELS)
    assert names == ("tiny",)
    assert facts["tiny"] == ModelFacts(256, 512, 64, 0.000166, vision=False, audio=False)
    props = parse_props(LLAMA_PROPS)
    assert props == PropsFacts(vision=False, audio=False, tools=False)
    (local,) = local_models(("tiny",), names, facts, props)
    assert local == LocalModel("tiny", 256, 512, 64, 0.000166, vision=False, audio=False, tools=False)


def test_a_renamed_model_takes_the_facts_of_the_backends_only_model() -> None:
    names, facts = parse_model_list(LLAMA_MODELS)
    vision = PropsFacts(vision=True, audio=None, tools=True)
    (local,) = local_models(("my-name",), names, facts, vision)
    assert (local.name, local.context_length, local.vision, local.tools) == ("my-name", 256, True, True)
    # with two models /props cannot say which one it describes, and renamed models learn nothing
    two = {"data": [{"id": "a", "meta": {"n_ctx": 10}}, {"id": "b"}]}
    names, facts = parse_model_list(two)
    a, renamed = local_models(("a", "c"), names, facts, vision)
    assert (a.context_length, a.vision, a.tools) == (10, None, None)
    assert renamed == LocalModel("c")


def test_odd_answers_are_not_believed() -> None:
    names, facts = parse_model_list(
        {
            "data": [
                {"id": 7, "meta": {"n_ctx": True, "n_ctx_train": -1, "n_embd": 1.5, "n_params": 10**16}},
                {"id": "v", "architecture": {"input_modalities": ["text", "image", 3]}},
                {"no": "id"},
                "junk",
            ]
        }
    )
    assert names == ("7", "v")
    assert facts["7"] == ModelFacts()
    assert (facts["v"].vision, facts["v"].audio) == (True, False)
    assert parse_model_list({"data": {"id": "x"}}) == ((), {})
    assert parse_props({"modalities": "yes", "chat_template_caps": {"supports_tools": 1}}) == PropsFacts()


@settings(max_examples=200, deadline=None)
@given(json_values | st.fixed_dictionaries({"data": st.lists(model_entries | json_values, max_size=300)}))
def test_any_models_answer_parses_within_bounds(data: Any) -> None:
    names, facts = parse_model_list(data)
    assert len(names) <= MAX_BACKEND_MODELS and all(len(n) <= 512 for n in names)
    assert set(facts) <= set(names)
    for f in facts.values():
        for value in (f.context_length, f.native_context_length, f.embedding_size):
            assert value is None or (type(value) is int and 0 < value <= 1 << 32)
    json.dumps([local_models(names, names, facts, PropsFacts()) and None])


@settings(max_examples=200)
@given(json_values | st.fixed_dictionaries({"modalities": json_values, "chat_template_caps": json_values}))
def test_any_props_answer_parses(data: Any) -> None:
    props = parse_props(data)
    assert all(v is None or isinstance(v, bool) for v in (props.vision, props.audio, props.tools))


class Canned(Resource):
    """A backend that answers fixed JSON per path (404 elsewhere) and counts what it was asked."""

    isLeaf = True

    def __init__(self, answers: dict[bytes, Any]) -> None:
        super().__init__()
        self.answers = answers
        self.asked: list[bytes] = []

    def render_GET(self, request: Any) -> bytes:
        self.asked.append(request.path)
        if request.path not in self.answers:
            request.setResponseCode(404)
            return b"{}"
        return json.dumps(self.answers[request.path]).encode()


def watched(answers: dict[bytes, Any]) -> tuple[Node, BackendWatch, Canned]:
    clock = Clock()
    node = Node(Config(role=Role.HOST, serve_url="http://127.0.0.1:1"), Identity.generate(), clock)
    backend = Canned(answers)
    watch = BackendWatch(clock, node, Backend(clock, "http://127.0.0.1:1"), http=StubTreq(backend))
    node.streams.register(StreamType.TUNNEL_HTTP, watch.tunnel_for)
    return node, watch, backend


def test_the_watch_keeps_what_the_backend_says_and_the_status_shows_it() -> None:
    node, watch, backend = watched({b"/v1/models": LLAMA_MODELS, b"/props": {**LLAMA_PROPS, "total_slots": 8}})
    assert not watch.polled and StatusView(node, backend=watch).status()["node_state"] == "loading"
    watch.poll()
    assert watch.polled and node.hosted_models == ("tiny",)
    assert watch.local_models() == [LocalModel("tiny", 256, 512, 64, 0.000166, False, False, False)]
    assert (watch.backend.max_inflight, watch.backend.limit_source) == (8, "llama-server /props")  # as before
    status = StatusView(node, backend=watch).status()
    assert (status["node_state"], status["serving_models"], status["llama_ready"]) == ("serving", ["tiny"], True)
    assert status["runtime"]["n_ctx"] == 256 and status["runtime"]["backend"] == "openai-compatible"
    (row,) = status["meshd"]["mesh_models"]
    assert (row["name"], row["context_length"], row["tool_use"], row["vision_status"]) == ("tiny", 256, False, "none")
    # /props is read again only when the backend's models change
    watch.poll()
    assert backend.asked.count(b"/props") == 1
    backend.answers[b"/v1/models"] = {"data": [{"id": "other"}]}
    watch.poll()
    assert backend.asked.count(b"/props") == 2


def test_a_backend_that_goes_down_forgets_its_facts_and_stands_by() -> None:
    node, watch, backend = watched({b"/v1/models": LLAMA_MODELS, b"/props": LLAMA_PROPS})
    watch.poll()
    del backend.answers[b"/v1/models"]
    watch.poll()
    assert node.hosted_models == () and watch.model_facts == {} and watch.props == PropsFacts()
    status = StatusView(node, backend=watch).status()
    assert (status["node_state"], status["node_status"], status["llama_ready"]) == ("standby", "Standby", False)


def test_without_total_slots_the_length_of_slots_is_the_limit() -> None:
    props = {k: v for k, v in LLAMA_PROPS.items() if k != "total_slots"}
    _, watch, _ = watched({b"/v1/models": LLAMA_MODELS, b"/props": props, b"/slots": [{}] * 6})
    watch.poll()
    assert (watch.backend.max_inflight, watch.backend.limit_source) == (6, "llama-server /slots")
    assert watch.props == PropsFacts(vision=False, audio=False, tools=False)
