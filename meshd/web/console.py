"""The management console (``--console``, default 3131): status API and pages."""

from __future__ import annotations

import html
import json
from typing import Any

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from meshd.autojoin import Discovery
from meshd.discovery.api import discover_api, parse_discover_query
from meshd.metrics import Metrics
from meshd.node import Node
from meshd.web.errors import console_error, json_body
from meshd.web.gate import ready_response
from meshd.web.http import LimitedSite


class ConsoleApp:
    app = Klein()
    _log = Logger()

    def __init__(self, node: Node, discovery: Discovery | None = None) -> None:
        self.node = node
        self.discovery = discovery

    def resource(self) -> Any:
        return self.app.resource()

    def site(self) -> LimitedSite:
        return LimitedSite(self.resource(), lambda status, message, code: json.dumps({"error": message}).encode())

    @app.route("/health", methods=["GET", "HEAD"])
    def health(self, request: IRequest) -> bytes:
        return json_body(request, 200, {"status": "ok"})

    # Readiness and Prometheus metrics (meshd.web.gate, meshd.metrics); metrics is set by build_service.
    metrics: Metrics | None = None

    @app.route("/ready", methods=["GET", "HEAD"])
    def ready(self, request: IRequest) -> bytes:
        return ready_response(request, self.node)

    @app.route("/metrics", methods=["GET"])
    def prometheus(self, request: IRequest) -> bytes:
        if self.metrics is None:
            return console_error(request, 404, "Not found")
        request.setHeader(b"content-type", self.metrics.content_type.encode())
        return self.metrics.render()

    @app.route("/api/status", methods=["GET"])
    def status(self, request: IRequest) -> bytes:
        request.setHeader(b"cache-control", b"no-cache")
        return json_body(request, 200, self.node.status())

    @app.route("/api/discover", methods=["GET"])
    async def discover(self, request: IRequest) -> bytes:
        if self.discovery is None:
            return console_error(request, 503, "discovery is not running")
        try:
            parse_discover_query(request.args)
        except ValueError as e:
            return console_error(request, 400, str(e))
        try:
            meshes = await self.discovery.recent()
        except Exception as e:
            return console_error(request, 500, f"Discovery failed: {e}")
        body = discover_api(meshes, request.args, self.discovery.last_mesh_id())
        return json_body(request, 200, body)

    @app.route("/", methods=["GET"])
    @app.route("/dashboard", methods=["GET"])
    def index(self, request: IRequest) -> bytes:
        if self.node.config.headless:
            return console_error(request, 404, "Not found")
        st = self.node.status()
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><title>meshd</title></head><body>"
            f"<h1>meshd {html.escape(st['version'])}</h1>"
            f"<p>node <code>{html.escape(st['node_id'])}</code>, {html.escape(st['role'])}, "
            f"{html.escape(st['node_state'])}</p>"
            "<p><a href='/api/status'>/api/status</a></p></body></html>"
        )
        return page.encode("utf-8")

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        return console_error(request, 404, "Not found")

    @app.handle_errors(MethodNotAllowed)
    def bad_method(self, request: IRequest, failure: Failure) -> bytes:
        return console_error(request, 405, "Method Not Allowed")

    @app.handle_errors(Exception)
    def internal(self, request: IRequest, failure: Failure) -> bytes:
        self._log.failure("console handler failed", failure=failure, event="console_error")
        return console_error(request, 500, "internal error")
