"""The OpenAI-compatible front door (``--port``, default 9337).

``GET /v1/models`` is answered locally from the mesh state in mesh-llm 0.76's shape (public ids,
capabilities, ``metadata``, the virtual ``mesh`` entry: ``meshd.mesh.models``); every other path is
tunnelled to a host that serves the request's model (``meshd.web.proxy``). Errors use OpenAI's envelope.
Every request passes the gate first (``meshd.web.gate``: keys, rate limits, in-flight cap, CORS,
access log); ``/health``, ``/ready`` and ``/metrics`` bypass keys and limits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from meshd.agentapi.store import MemoryResponseStore, ResponseStore
from meshd.httpwire import openai_error_body
from meshd.mesh.models import LocalModel, mesh_models, models_list
from meshd.metrics import Metrics
from meshd.node import Node
from meshd.web.errors import json_body, openai_error
from meshd.web.gate import Gate, GateResource, ready_response
from meshd.web.http import HEADER_READ_TIMEOUT, MAX_CONNECTIONS_PER_ADDRESS, LimitedSite
from meshd.web.proxy import MeshProxy

if TYPE_CHECKING:
    from meshd.host import BackendWatch


class APIApp:
    app = Klein()
    _log = Logger()

    def __init__(
        self,
        node: Node,
        reactor: Any = None,
        gate: Gate | None = None,
        backend: BackendWatch | None = None,
        store: ResponseStore | None = None,
    ) -> None:
        """``backend``: a host's backend watch (what its own models can do, and ``/ready``); ``store``: where
        Responses are kept for ``previous_response_id`` (default: in this process, per the config)."""
        self.node = node
        self.backend = backend
        clock = reactor if reactor is not None else node.clock
        config = node.config
        if store is None:
            store = MemoryResponseStore(
                clock=clock.seconds, max_entries=config.responses_store_entries, ttl=config.responses_store_ttl
            )
        self.proxy = MeshProxy(node, clock, busy_wait=config.queue_timeout, store=store)
        self.gate = gate if gate is not None else Gate.from_config(node.config, clock)
        self.metrics = Metrics(node, self.proxy, self.gate) if node.config.metrics else None

    def resource(self) -> Any:
        return GateResource(self.app.resource(), self.gate, self.metrics)

    def site(self, header_timeout: float = HEADER_READ_TIMEOUT) -> LimitedSite:
        # Behind a proxy (--trust-proxy) every connection comes from the proxy: no per-address cap
        # there (the proxy limits its clients), only the port's own connection limit.
        per_address = 0 if self.gate.trust_proxy else MAX_CONNECTIONS_PER_ADDRESS
        return LimitedSite(self.resource(), _api_error_body, timeout=header_timeout, per_address=per_address)

    @app.route("/health", methods=["GET", "HEAD"])
    def health(self, request: IRequest) -> bytes:
        return json_body(request, 200, {"status": "ok"})

    @app.route("/ready", methods=["GET", "HEAD"])
    def ready(self, request: IRequest) -> bytes:
        return ready_response(request, self.node, self.backend, self.gate.shared)

    @app.route("/metrics", methods=["GET"])
    def prometheus(self, request: IRequest) -> bytes:
        if self.metrics is None:
            return openai_error(
                request, 404, "metrics are off (start meshd with --metrics)", "invalid_request_error", code="not_found"
            )
        request.setHeader(b"content-type", self.metrics.content_type.encode())
        return self.metrics.render()

    @app.route("/v1/models", methods=["GET"])
    @app.route("/models", methods=["GET"])
    def models(self, request: IRequest) -> bytes:
        if self.backend is not None:
            local = self.backend.local_models()
        else:
            local = [LocalModel(name) for name in self.node.hosted_models]
        return json_body(request, 200, models_list(mesh_models(self.node.mesh, local)))

    @app.route("/", branch=True, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
    async def tunnel(self, request: IRequest) -> bytes:
        return await self.proxy.handle(request)

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        return openai_error(request, 404, "not found", "invalid_request_error", code="not_found")

    @app.handle_errors(MethodNotAllowed)
    def bad_method(self, request: IRequest, failure: Failure) -> bytes:
        return openai_error(request, 405, "method not allowed", "invalid_request_error", code="method_not_allowed")

    @app.handle_errors(Exception)
    def internal(self, request: IRequest, failure: Failure) -> bytes:
        self._log.failure("API handler failed", failure=failure, event="api_error")
        return openai_error(request, 500, "internal error", "server_error", code="internal_error")


def _api_error_body(status: int, message: str, code: str) -> bytes:
    type_ = "invalid_request_error" if status < 500 else "server_error"
    return openai_error_body(message, type_, code)
