"""The management console (``--console``, default 3131): status API, live events, chat proxy, pages.

Routes (MESH_PROTOCOL.md §7):

* ``GET /health``, ``GET /api/status``, ``GET /api/models``, ``GET /api/discover``
* ``GET /api/events``: SSE of the status (``meshd.web.events``)
* ``POST /api/chat[/...]``: proxied to this node's own API port as ``/v1/chat/completions[/...]``,
  streamed with backpressure; the upstream request is cancelled when the browser goes away
* ``POST /api/join`` ``{"token": "..."}``: from loopback, or with ``Authorization: Bearer <--console-token>``
* UI (404 with ``--headless``): ``/``, ``/dashboard``, ``/chat``, ``/chat/*``, ``/assets/<file>``

Every error body is ``{"error": "<msg>"}``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from pathlib import Path
from typing import Any

from klein import Klein
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, ConnectionLost, DNSLookupError, TimeoutError
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest, IResponse
from werkzeug.exceptions import MethodNotAllowed, NotFound
from zope.interface import implementer

from meshd.autojoin import Discovery
from meshd.discovery.api import discover_api, parse_discover_query
from meshd.metrics import Metrics
from meshd.node import Node
from meshd.protocol.errors import InvalidToken
from meshd.protocol.token import decode_token
from meshd.web.errors import console_error, json_body
from meshd.web.events import EventHub, serve_events
from meshd.web.gate import ready_response
from meshd.web.http import LimitedSite, abort_response, unregister_producer

STATIC_DIR = Path(__file__).resolve().parent / "static"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
}
UPSTREAM_CONNECT_TIMEOUT = 10.0
#: Request headers passed on to the API port; the rest (cookies, the console token) stay here.
_FORWARD_REQUEST = (b"content-type", b"accept", b"user-agent", b"x-request-id", b"x-mesh-target", b"x-mesh-exclude")
_HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
}


def mesh_models(node: Node) -> list[dict[str, Any]]:
    """``mesh_models`` of ``/api/status``: warm models with their hosts, plus demanded cold ones."""
    now = node.now()
    routes = node.mesh.routable_models()
    local = set(node.hosted_models)
    demand = {d.model_name: d for d in node.mesh.live_demand(now)}
    out: list[dict[str, Any]] = []
    for name in sorted(set(routes) | local | set(demand)):
        count = len(routes.get(name, ())) + (1 if name in local else 0)
        row: dict[str, Any] = {
            "name": name,
            "display_name": name,
            "status": "warm" if count else "cold",
            "node_count": count,
        }
        d = demand.get(name)
        if d is not None:
            row["request_count"] = d.request_count
            row["last_active_secs_ago"] = max(0, int(now) - d.last_active)
        out.append(row)
    return out


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return bool(addr.is_loopback or (mapped is not None and mapped.is_loopback))


@implementer(IPushProducer)
class _BodyPump(Protocol):
    """Writes an upstream response body into the browser's response, as a push producer on it."""

    def __init__(self, request: IRequest) -> None:
        self.request = request
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if getattr(self.request, "channel", None) is not None:
            self.request.write(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionLost())) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)

    def pauseProducing(self) -> None:
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        if self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


class ConsoleApp:
    app = Klein()
    _log = Logger()

    def __init__(
        self,
        node: Node,
        discovery: Discovery | None = None,
        *,
        reactor: Any = None,
        http: HTTPClient | None = None,
        static_dir: Path = STATIC_DIR,
    ) -> None:
        self.node = node
        self.discovery = discovery
        self._reactor = reactor if reactor is not None else node._reactor
        self._http = http
        self.static_dir = static_dir
        self.events = EventHub(self._reactor, node.status)
        node.on_change.append(self.events.changed)
        node.status_extras.setdefault("mesh_models", lambda: mesh_models(node))

    def resource(self) -> Any:
        return self.app.resource()

    def site(self) -> LimitedSite:
        return LimitedSite(self.resource(), lambda status, message, code: json.dumps({"error": message}).encode())

    def close(self) -> None:
        """Detach from the node and end the live event streams' timers."""
        if self.events.changed in self.node.on_change:
            self.node.on_change.remove(self.events.changed)
        self.events.close()

    # -- read-only API ----------------------------------------------------------------------------

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

    @app.route("/api/models", methods=["GET"])
    def models(self, request: IRequest) -> bytes:
        request.setHeader(b"cache-control", b"no-cache")
        return json_body(request, 200, {"mesh_models": mesh_models(self.node)})

    @app.route("/api/events", methods=["GET"])
    def events_route(self, request: IRequest) -> Deferred[None]:
        return serve_events(self.events, request)

    @app.route("/api/discover", methods=["GET"])
    async def discover(self, request: IRequest) -> bytes:
        if self.discovery is None or not self.discovery.enabled:
            return console_error(request, 503, "Nostr discovery is off on this node (--no-nostr)")
        try:
            parse_discover_query(request.args)
        except ValueError as e:
            return console_error(request, 400, str(e))
        try:
            meshes = await self.discovery.recent()
        except Exception as e:
            # No relay reachable (offline, firewalled): say so with each relay's state, not as a server fault.
            return json_body(
                request,
                503,
                {"error": f"no Nostr relay answered: {e}", "relays": self.discovery.relay_status()},
            )
        body = discover_api(meshes, request.args, self.discovery.last_mesh_id())
        return json_body(request, 200, body)

    # -- join -------------------------------------------------------------------------------------

    def _may_administer(self, request: IRequest) -> bool:
        peer = request.getClientAddress()
        if is_loopback(getattr(peer, "host", None)):
            return True
        secret = self.node.config.console_token
        if not secret:
            return False
        given = request.getHeader(b"authorization") or b""
        if isinstance(given, str):
            given = given.encode("latin-1")
        scheme, _, value = given.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), secret.encode())

    @app.route("/api/join", methods=["POST"])
    async def join(self, request: IRequest) -> bytes:
        if not self._may_administer(request):
            return console_error(request, 403, "joining is allowed from loopback or with the console token")
        raw = request.content.read() if request.content is not None else b""
        try:
            body = json.loads(raw)
        except ValueError:
            return console_error(request, 400, 'body must be JSON: {"token": "..."}')
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token.strip():
            return console_error(request, 400, 'missing "token"')
        token = token.strip()
        try:
            decode_token(token)
        except InvalidToken as e:
            return console_error(request, 400, f"bad invite token: {e}")
        self._log.info("joining a mesh from the console", event="console_join")
        # The join goes on even if the browser leaves: wait on a copy of its result.
        joining = self.node.join_any([token])
        waiter: Deferred[str | None] = Deferred()

        def relay(result: Any) -> None:
            if not waiter.called:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)

        joining.addBoth(relay)
        joined = await waiter
        if joined is None:
            return console_error(request, 502, "could not join the mesh behind that token")
        return json_body(
            request, 200, {"joined": True, "node_state": self.node.state.value, "mesh_id": self.node.mesh_id}
        )

    # -- chat proxy -------------------------------------------------------------------------------

    def _client(self) -> HTTPClient:
        if self._http is None:
            pool = HTTPConnectionPool(self._reactor, persistent=False)
            agent = Agent(self._reactor, pool=pool, connectTimeout=UPSTREAM_CONNECT_TIMEOUT)
            self._http = HTTPClient(agent)
        return self._http

    @app.route("/api/chat", methods=["POST"], branch=True)
    async def chat(self, request: Any) -> bytes:
        port = self.node.api_port
        if not port:
            return console_error(request, 503, "LLM not ready")
        uri = request.uri.decode("latin-1")
        target = f"http://127.0.0.1:{port}" + uri.replace("/api/chat", "/v1/chat/completions", 1)
        body = request.content.read() if request.content is not None else b""
        headers = Headers()
        for name in _FORWARD_REQUEST:
            for value in request.requestHeaders.getRawHeaders(name, []):
                headers.addRawHeader(name, value)
        try:
            response: IResponse = await self._client().request(
                "POST", target, data=body, headers=headers, unbuffered=True
            )
        except CancelledError:
            raise
        except (ConnectError, DNSLookupError, TimeoutError, ResponseFailed) as e:
            self._log.info("chat proxy cannot reach {target}: {err}", target=target, err=str(e), event="chat_502")
            return console_error(request, 502, "Cannot reach LLM server")
        request.setResponseCode(response.code, response.phrase or None)
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() in _HOP_BY_HOP:
                continue
            for value in values:
                request.responseHeaders.addRawHeader(name, value)
        pump = _BodyPump(request)
        request.registerProducer(pump, True)
        response.deliverBody(pump)
        try:
            await pump.done
        except CancelledError:
            pump.stopProducing()  # the browser went away: close the upstream, which cancels the mesh request
            raise
        except Exception as e:
            self._log.info("chat stream broke: {err}", err=str(e), event="chat_stream_broken")
            unregister_producer(request)
            abort_response(request)
            return b""
        unregister_producer(request)
        return b""

    # -- UI ---------------------------------------------------------------------------------------

    def _page(self, request: IRequest, name: str) -> bytes:
        if self.node.config.headless:
            return console_error(request, 404, "Not found")
        try:
            data = (self.static_dir / name).read_bytes()
        except OSError:
            return console_error(request, 500, "Dashboard bundle missing")
        request.setHeader(b"content-type", CONTENT_TYPES[".html"].encode())
        request.setHeader(b"cache-control", b"no-cache")
        return data

    @app.route("/", methods=["GET", "HEAD"])
    @app.route("/dashboard", methods=["GET", "HEAD"])
    @app.route("/dashboard/", methods=["GET", "HEAD"])
    def index(self, request: IRequest) -> bytes:
        return self._page(request, "index.html")

    @app.route("/chat", methods=["GET", "HEAD"], branch=True)
    def chat_page(self, request: IRequest) -> bytes:
        return self._page(request, "chat.html")

    @app.route("/favicon.ico", methods=["GET", "HEAD"])
    def favicon(self, request: IRequest) -> bytes:
        return self._asset(request, "favicon.svg")

    @app.route("/assets/<string:name>", methods=["GET", "HEAD"])
    def asset(self, request: IRequest, name: str) -> bytes:
        return self._asset(request, name)

    def _asset(self, request: IRequest, name: str) -> bytes:
        if self.node.config.headless:
            return console_error(request, 404, "Not found")
        path = self.static_dir / name
        ctype = CONTENT_TYPES.get(path.suffix)
        if ctype is None or "/" in name or name.startswith(".") or not path.is_file():
            return console_error(request, 404, "Not found")
        request.setHeader(b"content-type", ctype.encode())
        request.setHeader(b"cache-control", b"no-cache")
        return path.read_bytes()

    # -- errors -----------------------------------------------------------------------------------

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


__all__ = ["ConsoleApp", "is_loopback", "mesh_models"]
