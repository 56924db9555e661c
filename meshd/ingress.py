"""What a meshd host answers itself on an inbound tunnel (mesh-llm 0.76 hosts put 0x04 into their API ingress,
MESH_PROTOCOL_076.md §9.5): pure decisions, no I/O.

* ``GET /v1/models`` is answered by the host in 0.76's shape (what it serves and what the mesh serves), not by
  its backend;
* a model named by its public id (or ``mesh``) is rewritten to the served name the backend knows;
* OpenAI's Responses API and Anthropic's Messages API are translated to chat completions
  (:mod:`meshd.agentapi`); there is no response store on this path, so ``previous_response_id`` is refused
  with a clear error (a meshd client keeps its own store and sends whole conversations);
* a model this host does not serve gets ``404 model_not_found`` listing what it serves (0.76 forwards such a
  request onward to another host; meshd clients never send one, so meshd does not relay between hosts).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from meshd.agentapi.adapter import AgentApi
from meshd.agentapi.adapter import match as agent_endpoint
from meshd.agentapi.errors import AgentApiError, InvalidRequest
from meshd.agentapi.translate import Translator
from meshd.httpwire import ParsedRequest, openai_error_body
from meshd.mesh.models import LocalModel, mesh_models, models_list, request_model
from meshd.mesh.state import MeshState

MODELS_PATHS = frozenset({b"/v1/models", b"/models"})
#: Request bodies parsed here are JSON objects of at most this nesting (deeper ones are relayed as they are).
_MAX_DEPTH = 64


@attrs.frozen
class Answer:
    """A response the host makes itself."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json"


@attrs.frozen
class Relay:
    """The request to send to the backend (rewritten when needed), and the translator of its answer."""

    request: ParsedRequest
    translator: Translator | None = None


class HostIngress:
    """One per host: ``decide(request)`` says what to do with each inbound tunnel's request."""

    def __init__(self, local: Callable[[], list[LocalModel]], mesh: MeshState, agent: AgentApi | None = None) -> None:
        self._local = local
        self._mesh = mesh
        self._agent = agent or AgentApi()

    def decide(self, request: ParsedRequest) -> Answer | Relay:
        path = request.target.split(b"?", 1)[0]
        if request.method == b"GET" and path in MODELS_PATHS:
            body = json.dumps(models_list(mesh_models(self._mesh, self._local()))).encode()
            return Answer(200, body)
        endpoint = agent_endpoint(request.method, path)
        if endpoint is not None:
            return self._agent_request(request, endpoint)
        return self._named_model(request)

    def _agent_request(self, request: ParsedRequest, endpoint: Any) -> Answer | Relay:
        agent = self._agent
        try:
            if endpoint.action in ("retrieve", "delete"):
                raise InvalidRequest(
                    "stored responses live on the node that answered them, not on this host", param="response_id"
                )
            prepared = agent.prepare(endpoint, request.body)
            if prepared.previous_response_id:
                raise InvalidRequest(
                    "this host keeps no stored responses: send the whole conversation in `input` "
                    "(or use a meshd client, which stores them)",
                    param="previous_response_id",
                )
            forward = prepared.plan(now=0.0)
        except AgentApiError as e:
            answer = agent.error(endpoint.api, e)
            return Answer(answer.status, answer.body)
        headers = tuple((k, v) for k, v in request.headers if k.lower() not in (b"content-type", b"content-length"))
        chat = ParsedRequest(
            method=b"POST",
            target=forward.path.encode("latin-1"),
            headers=(*headers, (b"content-type", b"application/json")),
            body=forward.body,
        )
        relay = self._named_model(chat)
        if isinstance(relay, Answer):  # the model is not here: in the caller's API's shape
            shaped = agent.reshape_error(endpoint.api, relay.status, relay.body)
            return Answer(shaped.status, shaped.body)
        return Relay(relay.request, forward.translator())

    def _named_model(self, request: ParsedRequest) -> Answer | Relay:
        """A request naming a model: its served name for the backend, or 404 when this host does not serve it."""
        parsed = _json_object(request.body)
        model = parsed.get("model") if parsed is not None else None
        if not isinstance(model, str) or model in ("", "auto"):
            return Relay(request)  # no model named: the backend chooses
        local = [m.name for m in self._local()]
        served, body = request_model(model, parsed, request.body, self._mesh, local)
        if served not in local:
            listed = ", ".join(repr(name) for name in local[:20]) or "nothing right now"
            message = f"model {model[:120]!r} is not served by this host; it serves {listed}"
            return Answer(404, openai_error_body(message, "invalid_request_error", "model_not_found", "model"))
        if body is request.body:
            return Relay(request)
        headers = tuple((k, v) for k, v in request.headers if k.lower() != b"content-length")
        return Relay(ParsedRequest(method=request.method, target=request.target, headers=headers, body=body))


def _json_object(body: bytes) -> dict[str, Any] | None:
    if not body or body.lstrip()[:1] != b"{":
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) and _depth(data) <= _MAX_DEPTH else None


def _depth(value: Any, limit: int = _MAX_DEPTH) -> int:
    """Nesting depth of decoded JSON, counted up to just past ``limit`` (iteratively: no recursion)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        children: Iterable[Any] = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest
