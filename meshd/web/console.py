"""The management console (``--console``, default 3131): status API, live events, chat proxy, pages.

Routes (MESH_PROTOCOL.md §7):

* ``GET /health``, ``GET /api/status`` (``meshd.status``), ``GET /api/models``, ``GET /api/discover``
* ``GET /api/plugins``: ``[]`` (meshd runs no mesh-llm plugins; mesh-llm's own console asks for the list)
* ``GET /api/events``: SSE of the status (``meshd.web.events``)
* ``POST /api/chat[/...]``: proxied to this node's own API port as ``/v1/chat/completions[/...]``,
  streamed with backpressure; the upstream request is cancelled when the browser goes away. With API
  keys on, the console passes the API's key check with the gate's in-memory console credential
  (``meshd.web.gate``), so its callers must pass the admin rule below.
* ``POST /api/join`` ``{"token": "..."}``: the admin rule: from loopback (with a loopback name in
  ``Host``), or with ``Authorization: Bearer <--console-token>``
* UI (404 with ``--headless``): ``/``, ``/dashboard``, ``/chat``, ``/chat/*``, ``/assets/<file>``

Every POST route refuses what a page on another site could send (``meshd.web.origin``): the body must
be ``Content-Type: application/json`` (415 otherwise) and the request must carry a same-origin
``Origin`` or ``Sec-Fetch-Site: same-origin``/``none`` (403 otherwise); a caller with neither header
(not a browser) needs the console token. Every error body is ``{"error": "<msg>"}``.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectError, ConnectionLost, DNSLookupError, TimeoutError
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IRequest, IResponse
from werkzeug.exceptions import MethodNotAllowed, NotFound
from zope.interface import implementer

from meshd import jsonbound
from meshd.autojoin import Discovery
from meshd.discovery.api import discover_api, parse_discover_query
from meshd.metrics import Metrics
from meshd.node import Node
from meshd.protocol.errors import InvalidToken
from meshd.protocol.token import decode_token
from meshd.status import StatusView
from meshd.web.errors import console_error, json_body
from meshd.web.events import EventHub, serve_events
from meshd.web.gate import CONSOLE_CREDENTIAL_HEADER, ready_response
from meshd.web.http import LimitedSite, abort_response, unregister_producer
from meshd.web.origin import Provenance, is_json, is_loopback, names_loopback, provenance

if TYPE_CHECKING:
    from meshd.host import BackendWatch

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: ``POST /api/join`` bodies are one token (at most 64 Ki characters) in a small JSON object.
MAX_JOIN_BODY = 128 * 1024
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
#: Response headers of the API port that are not passed on: hop-by-hop ones, the ones the console's
#: own server sets (``Server``, ``Date``), and the API port's CORS answer (the console is same-origin).
_NOT_RELAYED = {
    b"server",
    b"date",
    b"connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
}


def mesh_models(node: Node, backend: BackendWatch | None = None) -> list[dict[str, Any]]:
    """``mesh_models`` of ``/api/models`` (see :meth:`meshd.status.StatusView.mesh_models`)."""
    return StatusView(node, backend=backend).mesh_models()


@implementer(IBodyProducer)
class _Body:
    """A request body that is all in memory (what ``FileBodyProducer`` does, without a cooperator)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        if self.data:
            consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


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
        agent: IAgent | None = None,
        static_dir: Path = STATIC_DIR,
        api_credential: str | None = None,
        status: StatusView | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """``api_credential``: the API gate's console credential (``Gate.console_credential``), added to
        every chat request this console proxies; ``status``: what ``/api/status`` reports (the node and
        its parts, ``meshd.status``; by default the node and ``discovery`` alone); ``metrics``: the API's
        Prometheus registry, served at ``/metrics`` here too (404 without it)."""
        self.node = node
        self.discovery = discovery
        self._reactor = reactor if reactor is not None else node.clock
        self._agent = agent
        self.static_dir = static_dir
        self._api_credential = api_credential
        self.metrics = metrics
        self.status_view = status if status is not None else StatusView(node, discovery=discovery)
        self.events = EventHub(self._reactor, self.status_view)
        node.add_listener(self.events.changed)
        self._backend_stats = self.status_view.backend.backend.stats if self.status_view.backend is not None else None
        if self._backend_stats is not None:
            self._backend_stats.on_served.append(self.events.changed)

    def resource(self) -> Any:
        return self.app.resource()

    def site(self) -> LimitedSite:
        return LimitedSite(self.resource(), lambda status, message, code: json.dumps({"error": message}).encode())

    def close(self) -> None:
        """Detach from the node and end the live event streams' timers."""
        self.node.remove_listener(self.events.changed)
        if self._backend_stats is not None and self.events.changed in self._backend_stats.on_served:
            self._backend_stats.on_served.remove(self.events.changed)
        self.events.close()

    # -- read-only API ----------------------------------------------------------------------------

    @app.route("/health", methods=["GET", "HEAD"])
    def health(self, request: IRequest) -> bytes:
        return json_body(request, 200, {"status": "ok"})

    # Readiness and Prometheus metrics (meshd.web.gate, meshd.metrics).

    @app.route("/ready", methods=["GET", "HEAD"])
    def ready(self, request: IRequest) -> bytes:
        return ready_response(request, self.node, self.status_view.backend)

    @app.route("/metrics", methods=["GET"])
    def prometheus(self, request: IRequest) -> bytes:
        if self.metrics is None:
            return console_error(request, 404, "Not found")
        request.setHeader(b"content-type", self.metrics.content_type.encode())
        return self.metrics.render()

    @app.route("/api/status", methods=["GET"])
    def status(self, request: IRequest) -> bytes:
        request.setHeader(b"cache-control", b"no-cache")
        return json_body(request, 200, self.status_view())

    @app.route("/api/models", methods=["GET"])
    def models(self, request: IRequest) -> bytes:
        request.setHeader(b"cache-control", b"no-cache")
        return json_body(request, 200, {"mesh_models": self.status_view.mesh_models()})

    @app.route("/api/plugins", methods=["GET"])
    def plugins(self, request: IRequest) -> bytes:
        """No mesh-llm plugins run here; mesh-llm's console lists them (an empty list hides its plugin menu)."""
        request.setHeader(b"cache-control", b"no-cache")
        return json_body(request, 200, [])

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
                {"error": f"no Nostr relay answered: {e}", "relays": self.discovery.nostr_status()},
            )
        body = discover_api(meshes, request.args, self.discovery.last_mesh_id())
        return json_body(request, 200, body)

    # -- join -------------------------------------------------------------------------------------

    def _has_console_token(self, request: IRequest) -> bool:
        secret = self.node.config.console_token
        if not secret:
            return False
        given = request.getHeader(b"authorization") or b""
        if isinstance(given, str):
            given = given.encode("latin-1")
        scheme, _, value = given.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), secret.encode())

    def _refuse_change(self, request: IRequest, *, admin: bool) -> bytes | None:
        """The error response for a POST the console must not act on, else None (module docstring).

        ``admin``: the route also needs the admin rule (loopback by a loopback name, or the token).
        """
        token = self._has_console_token(request)
        if not is_json(request.getHeader(b"content-type")):
            return self._refused(request, 415, "send the body as Content-Type: application/json")
        origin = provenance(
            request.getHeader(b"origin"), request.getHeader(b"sec-fetch-site"), request.getHeader(b"host")
        )
        if origin is Provenance.CROSS_SITE:
            return self._refused(request, 403, "cross-site request refused")
        if origin is Provenance.UNKNOWN and not token:
            return self._refused(
                request, 403, "send Origin (the console's own URL) or Authorization: Bearer <console token>"
            )
        if not admin or token:
            return None
        peer = getattr(request.getClientAddress(), "host", None)
        if is_loopback(peer) and names_loopback(request.getHeader(b"host")):
            return None
        return self._refused(
            request, 403, "allowed from loopback (by a loopback address or localhost) or with the console token"
        )

    def _refused(self, request: IRequest, status: int, message: str) -> bytes:
        def field(name: bytes) -> str | None:
            value = request.getHeader(name)
            return None if value is None else value.decode("latin-1")[:256]

        self._log.info(
            "refused {method} {path} ({status}): {reason}",
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1", "replace")[:256],
            status=status,
            reason=message,
            origin=field(b"origin"),
            fetch_site=field(b"sec-fetch-site"),
            content_type=field(b"content-type"),
            client=getattr(request.getClientAddress(), "host", None),
            event="console_refused",
        )
        return console_error(request, status, message)

    @app.route("/api/join", methods=["POST"])
    async def join(self, request: IRequest) -> bytes:
        refused = self._refuse_change(request, admin=True)
        if refused is not None:
            return refused
        raw = request.content.read() if request.content is not None else b""
        try:
            body = jsonbound.loads(raw, max_bytes=MAX_JOIN_BODY)
        except jsonbound.BadJSON as e:
            return console_error(request, 400, f'body must be JSON: {{"token": "..."}} ({e.reason})')
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

    def _upstream(self) -> IAgent:
        # A plain Agent: the response comes back byte for byte (no decoding, no cookie jar, no redirects).
        if self._agent is None:
            pool = HTTPConnectionPool(self._reactor, persistent=False)
            self._agent = Agent(self._reactor, pool=pool, connectTimeout=UPSTREAM_CONNECT_TIMEOUT)
        return self._agent

    def _keys_required(self) -> bool:
        config = self.node.config
        return bool(config.api_keys) or config.api_keys_file is not None or config.redis_keys

    @app.route("/api/chat", methods=["POST"], branch=True)
    async def chat(self, request: Any) -> bytes:
        # With keys on, the console's credential opens the API: the same callers as for joining.
        refused = self._refuse_change(request, admin=self._keys_required())
        if refused is not None:
            return refused
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
        if self._api_credential is not None:
            headers.setRawHeaders(CONSOLE_CREDENTIAL_HEADER, [self._api_credential.encode()])
        try:
            response: IResponse = await self._upstream().request(b"POST", target.encode(), headers, _Body(body))
        except CancelledError:
            raise
        except (ConnectError, DNSLookupError, TimeoutError, ResponseFailed) as e:
            self._log.info("chat proxy cannot reach {target}: {err}", target=target, err=str(e), event="chat_502")
            return console_error(request, 502, "Cannot reach LLM server")
        request.setResponseCode(response.code, response.phrase or None)
        for name, values in response.headers.getAllRawHeaders():
            lower = name.lower()
            if lower in _NOT_RELAYED or lower.startswith(b"access-control-"):
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
