"""The face the web layer calls: method, path and body in; a request to route, or a local answer, out.

    endpoint = match(method, path)             # None: not an agent API, proxy as usual
    prepared = agent.prepare(endpoint, body)   # validates; AgentApiError → agent.error(endpoint.api, e)
    history = await load_history(store, prepared.previous_response_id) if prepared.previous_response_id else []
    forward = prepared.plan(now=reactor.seconds(), history=history)
    # for each host attempt: translator = forward.translator(); start/feed/finish/fail it (translate.py)
    # after a completed answer: if translator.stored: await store.put(translator.stored)

``GET``/``DELETE /v1/responses/{id}`` are answered from the store: :meth:`AgentApi.retrieved` and
:meth:`AgentApi.deleted` render the answers. Errors made by the web layer itself (no host, busy, a bad key)
are OpenAI-shaped; :meth:`AgentApi.reshape_error` renders them in the caller's API. See docs/agent-apis.md.
"""

from __future__ import annotations

import enum
import json
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from meshd.agentapi import messages, responses
from meshd.agentapi.chat import DEFAULT_MAX_BODY
from meshd.agentapi.errors import AgentApiError, MethodNotAllowed, NotFound
from meshd.agentapi.fields import MAX_DEPTH, check_depth, load_object
from meshd.agentapi.store import StoredResponse, not_found_message
from meshd.agentapi.tokens import CountTokensTranslator, flatten_chat, tokenize_request
from meshd.agentapi.translate import PassThrough, Translator, notes_header, upstream_problem

IdSource = Callable[[str], str]

CHAT_PATH = "/v1/chat/completions"
TOKENIZE_PATH = "/tokenize"


def random_id(prefix: str) -> str:
    """``prefix_`` and 24 random hex digits (``resp_…``, ``msg_…``, ``toolu_…``)."""
    return f"{prefix}_{secrets.token_hex(12)}"


class Api(enum.Enum):
    RESPONSES = "responses"  # OpenAI's Responses API: OpenAI error shape
    MESSAGES = "messages"  # Anthropic's Messages API: Anthropic error shape


@attrs.frozen
class Endpoint:
    api: Api
    #: create | retrieve | delete | count_tokens (``/v1/messages/count_tokens``, ``/v1/responses/input_tokens``)
    #: | bad_method | unknown
    action: str
    path: str
    response_id: str | None = None


def match(method: str | bytes, path: str | bytes) -> Endpoint | None:
    """The agent endpoint a request is for, or None when it is not one (other paths are proxied as they are)."""
    m = (method.decode("latin-1") if isinstance(method, bytes) else method).upper()
    p = (path.decode("latin-1") if isinstance(path, bytes) else path).split("?", 1)[0]
    if len(p) > 1 and p.endswith("/"):
        p = p[:-1]
    if p == "/v1/responses":
        return Endpoint(Api.RESPONSES, "create" if m == "POST" else "bad_method", p)
    if p == "/v1/responses/input_tokens":
        return Endpoint(Api.RESPONSES, "count_tokens" if m == "POST" else "bad_method", p)
    if p.startswith("/v1/responses/"):
        rest = p[len("/v1/responses/") :]
        if "/" in rest or not rest:
            return Endpoint(Api.RESPONSES, "unknown", p)
        action = {"GET": "retrieve", "DELETE": "delete"}.get(m, "bad_method")
        return Endpoint(Api.RESPONSES, action, p, rest)
    if p == "/v1/messages":
        return Endpoint(Api.MESSAGES, "create" if m == "POST" else "bad_method", p)
    if p == "/v1/messages/count_tokens":
        return Endpoint(Api.MESSAGES, "count_tokens" if m == "POST" else "bad_method", p)
    if p.startswith("/v1/messages/"):
        return Endpoint(Api.MESSAGES, "unknown", p)
    return None


@attrs.frozen
class Answer:
    """A response the web layer sends as it is."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@attrs.frozen
class Forward:
    """A request to route to a host serving ``model``, with a fresh translator for each attempt."""

    path: str
    body: bytes
    model: str
    stream: bool
    translator: Callable[[], Translator]
    headers: tuple[tuple[str, str], ...] = (("content-type", "application/json"),)
    #: ``body`` decoded (what it was made from), so routing reads it without parsing it again; None for a
    #: body passed through as the caller sent it.
    payload: Any = None


class Prepared:
    """A validated agent request."""

    def __init__(
        self,
        agent: AgentApi,
        endpoint: Endpoint,
        body: bytes,
        request: responses.ResponsesRequest | messages.MessagesRequest,
    ) -> None:
        self._agent = agent
        self.endpoint = endpoint
        self.body = body
        self.request = request

    @property
    def previous_response_id(self) -> str | None:
        req = self.request
        return req.previous_response_id if isinstance(req, responses.ResponsesRequest) else None

    @property
    def model(self) -> str:
        return self.request.model

    @property
    def passthrough_safe(self) -> bool:
        """May this request go unchanged to a host that serves the API natively (see :meth:`passthrough`)?"""
        req = self.request
        if isinstance(req, responses.ResponsesRequest):
            return req.passthrough_safe
        return True

    def passthrough(self) -> Forward | None:
        """The request as it came, for a host with native support; None when it needs this node's state."""
        if not self.passthrough_safe:
            return None
        return Forward(self.endpoint.path, self.body, self.model, self.request.stream, PassThrough)

    def plan(self, *, now: float, history: Sequence[dict[str, Any]] = ()) -> Forward:
        """The chat-completions (or ``/tokenize``) request for a host, and how to translate its answer."""
        agent = self._agent
        req = self.request
        if isinstance(req, responses.ResponsesRequest) and self.endpoint.action == "count_tokens":
            chat = req.chat_request(history)
            text, _ = flatten_chat(chat)
            return _forward(
                TOKENIZE_PATH,
                tokenize_request(req.model, text),
                req.model,
                False,
                lambda: CountTokensTranslator(
                    chat, lambda n: {"object": "response.input_tokens", "input_tokens": n}, req.notes
                ),
            )
        if isinstance(req, responses.ResponsesRequest):
            chat = req.chat_request(history)
            response_id = agent.ids("resp")

            def make_responses() -> Translator:
                return responses.ResponsesTranslator(
                    req, response_id=response_id, created_at=now, ids=agent.ids, max_body=agent.max_body
                )

            return _forward(CHAT_PATH, chat, req.model, req.stream, make_responses)
        if self.endpoint.action == "count_tokens":
            return _forward(
                TOKENIZE_PATH,
                req.tokenize_body(),
                req.model,
                False,
                lambda: CountTokensTranslator(req.chat, lambda n: {"input_tokens": n}, req.notes),
            )
        message_id = agent.ids("msg")

        def make_messages() -> Translator:
            return messages.MessagesTranslator(req, message_id=message_id, ids=agent.ids, max_body=agent.max_body)

        return _forward(CHAT_PATH, req.chat, req.model, req.stream, make_messages)


def _forward(
    path: str, payload: dict[str, Any], model: str, stream: bool, translator: Callable[[], Translator]
) -> Forward:
    return Forward(path, _dumps(payload), model, stream, translator, payload=payload)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class AgentApi:
    """Stateless apart from its id source; one per node."""

    def __init__(self, *, ids: IdSource = random_id, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.ids = ids
        self.max_body = max_body

    def prepare(self, endpoint: Endpoint, body: bytes, decoded: Any = None) -> Prepared:
        """Validate a create/count_tokens request. Raises :class:`AgentApiError` (render with :meth:`error`).
        ``decoded``: the body already decoded (a JSON object), so it is not parsed again."""
        if endpoint.action == "bad_method":
            raise MethodNotAllowed(f"this method is not allowed on {endpoint.path}")
        if endpoint.action == "unknown":
            raise NotFound(f"{endpoint.path} is not available through this gateway")
        if endpoint.action not in ("create", "count_tokens"):
            raise ValueError(f"prepare() is for create/count_tokens, not {endpoint.action}")
        if isinstance(decoded, dict):
            check_depth(body, MAX_DEPTH, "request body")
            obj = decoded
        else:  # not decoded, or not an object: decode it here for the precise error
            obj = load_object(body)
        request: responses.ResponsesRequest | messages.MessagesRequest
        if endpoint.api is Api.RESPONSES:
            request = responses.parse_request(obj)
        else:
            request = messages.parse_request(obj, count_only=endpoint.action == "count_tokens")
        return Prepared(self, endpoint, body, request)

    def error(self, api: Api, err: AgentApiError) -> Answer:
        body = err.openai_body() if api is Api.RESPONSES else err.anthropic_body()
        return Answer(err.status, (("content-type", "application/json"),), body)

    def reshape_error(self, api: Api, status: int, body: bytes) -> Answer:
        """An error the web layer made (OpenAI envelope), or a host's error body, in the caller's shape."""
        problem = upstream_problem(status, body[:262144], len(body) > 262144)
        if api is Api.RESPONSES:
            payload: dict[str, Any] = {
                "error": {
                    "message": problem.message,
                    "type": problem.type_,
                    "param": problem.param,
                    "code": problem.code,
                }
            }
        else:
            payload = messages.anthropic_error_json(problem)
        return Answer(problem.status, (("content-type", "application/json"),), _dumps(payload))

    def retrieved(self, endpoint: Endpoint, record: StoredResponse | None) -> Answer:
        """The answer to ``GET /v1/responses/{id}``: the stored Response, or 404."""
        if record is None:
            return self.error(
                Api.RESPONSES, NotFound(not_found_message(endpoint.response_id or ""), code="response_not_found")
            )
        return Answer(200, (("content-type", "application/json"),), _dumps(record.response))

    def deleted(self, endpoint: Endpoint, existed: bool) -> Answer:
        """The answer to ``DELETE /v1/responses/{id}``."""
        if not existed:
            return self.retrieved(endpoint, None)
        body = {"id": endpoint.response_id, "object": "response", "deleted": True}
        return Answer(200, (("content-type", "application/json"),), _dumps(body))


__all__ = [
    "AgentApi",
    "AgentApiError",
    "Answer",
    "Api",
    "Endpoint",
    "Forward",
    "Prepared",
    "match",
    "notes_header",
    "random_id",
]
