"""The OpenAI-compatible front door (``--port``, default 9337)."""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from meshd.node import Node
from meshd.web.errors import json_body, openai_error


class APIApp:
    app = Klein()
    _log = Logger()

    def __init__(self, node: Node) -> None:
        self.node = node

    def resource(self) -> Any:
        return self.app.resource()

    @app.route("/health", methods=["GET", "HEAD"])
    def health(self, request: IRequest) -> bytes:
        return json_body(request, 200, {"status": "ok"})

    @app.route("/", branch=True)
    def everything_else(self, request: IRequest) -> bytes:
        # Tunnelling to mesh hosts arrives with the client role; until a mesh is joined the API
        # says what the node is doing rather than hanging.
        state = self.node.state.value
        return openai_error(
            request,
            503,
            f"no mesh joined yet (node state: {state})",
            "server_error",
            code="mesh_not_joined",
            headers={"Retry-After": "5"},
        )

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
