"""The API port's gate: API keys, per-caller rate limits, the in-flight cap, CORS and the access log.

The cores are sans-IO (they take ``now`` and return decisions): ``APIKeys``, ``RequestRateLimiter``
(a token bucket per caller), ``StreamLimiter``, ``ConcurrencyLimiter`` (hard cap with a short FIFO
queue), ``CORSPolicy`` and ``readiness``. ``GateResource`` is the thin twisted.web adapter: it wraps
the Klein resource of the API app and applies, in order: CORS preflight (answered before anything
else), bypass of ``/health``, ``/ready`` and ``/metrics``, API key (401), requests per minute (429),
concurrent streams per caller (429), the process-wide in-flight cap (queue, then 503). It writes one
``event="access"`` log line and one metrics observation per request when the response ends.

With ``--redis`` the gate also holds a ``meshd.shared.policy.SharedGate``: its per-caller limits, leases
and key set live in Redis, shared by every API process using it; those checks are Deferreds, so ``render``
answers such requests asynchronously (``NOT_DONE_YET``), as it does for queued ones. Without it nothing
here waits on anything.

The console's chat proxy passes the key check with ``Gate.console_credential``: a random secret made
per process, handed in memory to the console, sent only over loopback in ``x-meshd-console``, accepted
only from a loopback peer on ``/v1/chat/completions``, removed from every request before anything
else looks at it, and never logged or shown (the console adds it server-side; browsers never see it).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import re
import secrets
import signal
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from meshd import jsonbound
from meshd.concurrency import Admission, ConcurrencyLimiter
from meshd.httpwire import MAX_BODY_BYTES
from meshd.shared.keys import UNAVAILABLE, Unavailable
from meshd.web.errors import json_body, openai_error
from meshd.web.origin import is_loopback

if TYPE_CHECKING:
    from meshd.config import Config
    from meshd.host import BackendWatch
    from meshd.metrics import Metrics
    from meshd.node import Node
    from meshd.shared.policy import Lease, SharedGate

_log = Logger()

#: Paths that bypass keys and limits (liveness, readiness, scraping).
BYPASS_PATHS = frozenset({"/health", "/ready", "/metrics"})
#: Paths answered locally by the API app (not tunnelled): no in-flight slot needed.
LOCAL_PATHS = frozenset({"/v1/models", "/models"})
#: Route labels for metrics; anything else is "other" (bounded label set).
ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/models",
    "/health",
    "/ready",
    "/metrics",
)
#: Seconds a busy (503) caller is told to wait.
BUSY_RETRY_AFTER = 2
#: Callers whose request buckets are kept (least recently seen are forgotten first).
MAX_CALLERS = 10_000
#: Status recorded for a request whose caller went away before the response ended (nginx's).
CLIENT_CLOSED = 499
EXPOSED_HEADERS = (
    "x-request-id, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, "
    "retry-after, x-mesh-served-by, x-meshd-host"
)
DEFAULT_ALLOWED_HEADERS = "authorization, content-type, x-request-id"
_TOKEN_LIST = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: Request header carrying the console's credential (see the module docstring).
CONSOLE_CREDENTIAL_HEADER = b"x-meshd-console"
#: The only route the console's credential opens (and its sub-paths).
CONSOLE_ROUTE = "/v1/chat/completions"
#: What the access log and rate limiter call the console's proxy.
CONSOLE_KEY_ID = "console"


# -- API keys -------------------------------------------------------------------------------------


def key_id(key: str) -> str:
    """What logs say about a key: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]


def parse_keys(text: str) -> tuple[list[str], list[int]]:
    """Keys from a keys file (one a line, ``#`` comment lines); also the numbers of unusable lines."""
    keys: list[str] = []
    bad: list[int] = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if any(c.isspace() for c in s) or not s.isprintable():
            bad.append(n)
            continue
        keys.append(s)
    return keys, bad


def bearer_token(header: bytes | None) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (scheme case-insensitive), else None."""
    if not header:
        return None
    try:
        text = header.decode("latin-1").strip()
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        return None
    scheme, _, token = text.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def presented_key(authorization: bytes | None, x_api_key: bytes | None) -> str | None:
    """The key a caller presents: ``Authorization: Bearer KEY`` (OpenAI's SDKs), else ``x-api-key: KEY``
    (Anthropic's SDK and Claude Code)."""
    token = bearer_token(authorization)
    if token is not None:
        return token
    if x_api_key:
        text = x_api_key.decode("latin-1").strip()
        return text or None
    return None


class APIKeys:
    """The accepted keys, kept only as SHA-256 digests; checked in constant time against all of them.

    Keys come from ``--api-key`` (fixed) and ``--api-keys-file`` (re-read by ``reload``). With neither
    configured the API is open. With a keys file configured the API stays closed even if the file
    ends up empty (it never opens by accident).
    """

    def __init__(self, keys: Iterable[str] = (), path: Path | None = None) -> None:
        self._static = [k for k in keys if k]
        self.path = path
        self._file_keys: list[str] = []
        self._entries: list[tuple[bytes, str]] = []
        if path is not None:
            self._file_keys = self._read(path)
        self._rebuild()

    @property
    def required(self) -> bool:
        return bool(self._static) or self.path is not None

    @property
    def count(self) -> int:
        return len(self._entries)

    def ids(self) -> list[str]:
        return sorted({kid for _, kid in self._entries})

    @staticmethod
    def _read(path: Path) -> list[str]:
        keys, bad = parse_keys(path.read_text(encoding="utf-8"))
        if bad:
            _log.warn(
                "ignored {n} malformed line(s) in {path}: line(s) {lines}",
                n=len(bad),
                path=str(path),
                lines=bad,
                event="api_keys_bad_lines",
            )
        return keys

    def _rebuild(self) -> None:
        seen: dict[bytes, str] = {}
        for key in [*self._static, *self._file_keys]:
            seen[hashlib.sha256(key.encode("utf-8")).digest()] = key_id(key)
        self._entries = list(seen.items())

    def reload(self) -> bool:
        """Re-read the keys file. On a read error the previous keys stay in force."""
        if self.path is None:
            return False
        try:
            keys = self._read(self.path)
        except (OSError, UnicodeDecodeError) as e:
            _log.warn(
                "could not reload API keys from {path}: {err}; keeping {n} key(s)",
                path=str(self.path),
                err=str(e),
                n=self.count,
                event="api_keys_reload_failed",
            )
            return False
        old = set(self.ids())
        self._file_keys = keys
        self._rebuild()
        new = set(self.ids())
        _log.info(
            "API keys reloaded from {path}: {n} key(s) ({added} added, {removed} removed)",
            path=str(self.path),
            n=self.count,
            added=len(new - old),
            removed=len(old - new),
            event="api_keys_reloaded",
        )
        return True

    def check(self, presented: str | None) -> str | None:
        """The key id of ``presented`` if it is an accepted key, else None (constant time over all keys)."""
        digest = hashlib.sha256((presented or "").encode("utf-8")).digest()
        found: str | None = None
        for entry, kid in self._entries:
            if hmac.compare_digest(entry, digest) and presented is not None:
                found = kid
        return found


# -- rate limits ----------------------------------------------------------------------------------


@attrs.define
class _Bucket:
    tokens: float
    updated: float


@attrs.frozen
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_secs: float  # until the bucket is full again
    retry_after: int  # whole seconds until one request is allowed (0 when allowed)

    def headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(self.remaining),
            "x-ratelimit-reset-requests": format_duration(self.reset_secs),
        }


def format_duration(secs: float) -> str:
    """OpenAI's reset format: ``120ms``, ``1s``, ``6m0s``."""
    if secs <= 0:
        return "0s"
    if secs < 1:
        return f"{max(1, math.ceil(secs * 1000))}ms"
    whole = math.ceil(secs * 1000) / 1000
    minutes, rest = divmod(whole, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


class RequestRateLimiter:
    """Requests per minute per caller: a token bucket of ``rpm`` tokens refilled at ``rpm``/60 per second."""

    def __init__(self, rpm: int, max_callers: int = MAX_CALLERS) -> None:
        if rpm < 1:
            raise ValueError("rpm must be at least 1")
        self.rpm = rpm
        self.rate = rpm / 60.0
        self.max_callers = max_callers
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, caller: str, now: float) -> RateDecision:
        b = self._buckets.get(caller)
        if b is None:
            b = self._buckets[caller] = _Bucket(float(self.rpm), now)
            while len(self._buckets) > self.max_callers:
                self._buckets.popitem(last=False)
        else:
            b.tokens = min(float(self.rpm), b.tokens + max(0.0, now - b.updated) * self.rate)
            b.updated = now
            self._buckets.move_to_end(caller)
        allowed = b.tokens >= 1.0
        if allowed:
            b.tokens -= 1.0
        retry = 0 if allowed else max(1, math.ceil((1.0 - b.tokens) / self.rate))
        return RateDecision(
            allowed=allowed,
            limit=self.rpm,
            remaining=int(b.tokens),
            reset_secs=(self.rpm - b.tokens) / self.rate,
            retry_after=retry,
        )


class StreamLimiter:
    """Concurrent streaming requests per caller."""

    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        self._active: dict[str, int] = {}

    def active(self, caller: str) -> int:
        return self._active.get(caller, 0)

    def acquire(self, caller: str) -> bool:
        n = self._active.get(caller, 0)
        if n >= self.max_streams:
            return False
        self._active[caller] = n + 1
        return True

    def release(self, caller: str) -> None:
        n = self._active.get(caller, 0) - 1
        if n > 0:
            self._active[caller] = n
        else:
            self._active.pop(caller, None)


# -- CORS ------------------------------------------------------------------------------------------


class CORSPolicy:
    """``Access-Control-*`` answers for allowed origins (``*`` allows any)."""

    def __init__(self, origins: Iterable[str]) -> None:
        self.origins = tuple(o.rstrip("/") for o in origins)
        self.any = "*" in self.origins

    def allow(self, origin: bytes | None) -> bytes | None:
        if not self.origins:
            return None
        if self.any:
            return b"*"
        if origin is None:
            return None
        text = origin.decode("latin-1").rstrip("/")
        return origin if text in self.origins else None

    def headers(self, origin: bytes | None) -> dict[bytes, bytes]:
        allowed = self.allow(origin)
        if allowed is None:
            return {}
        out = {b"access-control-allow-origin": allowed, b"access-control-expose-headers": EXPOSED_HEADERS.encode()}
        if not self.any:
            out[b"vary"] = b"Origin"
        return out

    def preflight(
        self, origin: bytes | None, method: bytes | None, request_headers: bytes | None
    ) -> dict[bytes, bytes]:
        out = self.headers(origin)
        if not out:
            return {}
        out.pop(b"access-control-expose-headers", None)
        out[b"access-control-allow-methods"] = b"GET, POST, PUT, PATCH, DELETE, OPTIONS"
        allowed_headers = DEFAULT_ALLOWED_HEADERS.encode()
        if request_headers:
            text = request_headers.decode("latin-1").strip()
            if len(text) <= 2048 and _TOKEN_LIST.match(text):
                allowed_headers = text.lower().encode()
        out[b"access-control-allow-headers"] = allowed_headers
        out[b"access-control-max-age"] = b"600"
        if not self.any:
            out[b"vary"] = b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
        return out


# -- readiness, callers, request shape ------------------------------------------------------------


def readiness(
    node_state: str,
    models: Iterable[str],
    own_models: Iterable[str] = (),
    backend_problem: str | None = None,
    shared_problem: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """``/ready``: 200 when joined with at least one routable model, or when this host's own backend
    serves a model (a host that started its own mesh is ready alone); else 503 with the reason (a host's
    own backend being down comes first: it is what the operator can fix). A Redis the gate cannot work
    without (``shared_problem``: fail-closed keys or limits) makes it 503 before anything else."""
    if shared_problem is not None:
        return 503, {"status": "not_ready", "reason": shared_problem, "node_state": node_state}
    own = sorted(set(own_models))
    names = sorted(set(models) | set(own))
    if own:
        return 200, {"status": "ready", "node_state": node_state, "models": names}
    if backend_problem is not None and (node_state != "joined" or not names):
        return 503, {"status": "not_ready", "reason": backend_problem, "node_state": node_state}
    if node_state != "joined":
        return 503, {"status": "not_ready", "reason": f"node state is {node_state}", "node_state": node_state}
    if not names:
        return 503, {"status": "not_ready", "reason": "no routable model in the mesh", "node_state": node_state}
    return 200, {"status": "ready", "node_state": node_state, "models": names}


def ready_response(
    request: IRequest, node: Node, backend: BackendWatch | None = None, shared: SharedGate | None = None
) -> bytes:
    """``/ready`` of ``node``; ``backend``: a host's backend watch (its backend being down comes first);
    ``shared``: the Redis-backed gate, whose fail-closed outage makes the node not ready."""
    own = node.hosted_models if node.serves_locally(None) else ()
    problem = None
    if backend is not None and not backend.healthy:
        problem = f"backend {backend.backend.url} is down: {backend.last_error or 'no answer yet'}"
    redis = shared.status() if shared is not None else None
    shared_problem = redis["ready_problem"] if redis is not None else None
    code, payload = readiness(node.state.value, node.mesh.routable_models(), own, problem, shared_problem)
    if redis is not None:
        payload["redis"] = {k: redis[k] for k in ("state", "since", "last_error")}
    request.setHeader(b"cache-control", b"no-cache")
    return json_body(request, code, payload)


def client_ip(peer: str, fly_client_ip: bytes | None, forwarded_for: bytes | None, trust_proxy: bool) -> str:
    """The caller's address: the socket peer, or with ``trust_proxy`` Fly-Client-IP, then X-Forwarded-For[0]."""
    if trust_proxy:
        for raw in (fly_client_ip, forwarded_for.split(b",")[0] if forwarded_for else None):
            if not raw:
                continue
            text = raw.decode("latin-1").strip()
            try:
                return str(ipaddress.ip_address(text))
            except ValueError:
                continue
    return peer


def route_label(path: str) -> str:
    if path == "/models":
        return "/v1/models"
    return path if path in ROUTES else "other"


def inspect_body(body: bytes) -> tuple[str | None, bool]:
    """(model, stream) of a JSON request body; (None, False) when it is not one."""
    if not body or body.lstrip()[:1] != b"{":
        return None, False
    try:
        data = jsonbound.loads(body, max_bytes=MAX_BODY_BYTES)
    except jsonbound.BadJSON:
        return None, False
    if not isinstance(data, dict):
        return None, False
    model = data.get("model")
    return (model if isinstance(model, str) else None), data.get("stream") is True


# -- the adapter ----------------------------------------------------------------------------------


@attrs.define
class _Exchange:
    """What the gate knows about one request while it runs."""

    start: float
    request_id: str
    route: str
    client: str
    key_id: str | None = None
    caller: str = ""
    model: str | None = None
    model_label: str = "other"
    stream: bool = False
    first_byte: float | None = None
    sent: int = 0
    holds_slot: bool = False
    holds_stream: bool = False
    stream_lease: Lease | None = None
    global_lease: Lease | None = None
    queued_token: int | None = None
    queue_timer: Any = None
    done: bool = False


class Gate:
    """Limits and keys of one API port, built from the Config."""

    def __init__(
        self,
        clock: Any,
        *,
        keys: APIKeys | None = None,
        max_inflight: int = 0,
        queue_timeout: float = 30.0,
        max_queue: int | None = None,
        rate_limit_rpm: int = 0,
        rate_limit_streams: int = 0,
        trust_proxy: bool = False,
        cors_origins: Iterable[str] = ("*",),
        metrics: Metrics | None = None,
        console_credential: str | None = None,
        shared: SharedGate | None = None,
    ) -> None:
        self.clock = clock
        #: The console's proxy credential (module docstring); never logged, never in a response.
        self.console_credential = console_credential or secrets.token_urlsafe(32)
        self.keys = keys or APIKeys()
        self.concurrency = ConcurrencyLimiter(max_inflight, queue_timeout, max_queue)
        #: Limits and keys in Redis (``--redis``); it then holds the per-caller limits (and their fallbacks).
        self.shared = shared
        local = shared is None
        self.requests = RequestRateLimiter(rate_limit_rpm) if rate_limit_rpm > 0 and local else None
        self.streams = StreamLimiter(rate_limit_streams) if rate_limit_streams > 0 and local else None
        self.trust_proxy = trust_proxy
        self.cors = CORSPolicy(cors_origins)
        self.metrics = metrics
        self._next_token = 0

    @classmethod
    def from_config(
        cls, config: Config, clock: Any, metrics: Metrics | None = None, shared: SharedGate | None = None
    ) -> Gate:
        return cls(
            clock,
            keys=APIKeys(config.api_keys, config.api_keys_file),
            max_inflight=config.max_inflight,
            queue_timeout=config.queue_timeout,
            max_queue=config.max_queue,
            rate_limit_rpm=config.rate_limit_rpm,
            rate_limit_streams=config.rate_limit_streams,
            trust_proxy=config.trust_proxy,
            cors_origins=config.cors_origins,
            metrics=metrics,
            shared=shared,
        )

    def now(self) -> float:
        return float(self.clock.seconds())

    def token(self) -> int:
        self._next_token += 1
        return self._next_token

    @property
    def keys_required(self) -> bool:
        """Keys from the flags or file, or the key set in Redis (``--redis-keys``)."""
        return self.keys.required or (self.shared is not None and self.shared.keys is not None)

    def check_key(self, presented: str | None) -> Any:
        """The key id of ``presented`` (flags and file first, then Redis), None if unknown, or UNAVAILABLE
        when only Redis could tell and it cannot (fail-closed)."""
        kid = self.keys.check(presented)
        if kid is not None or self.shared is None:
            return kid
        return self.shared.check_key(presented)

    def status(self) -> dict[str, Any]:
        """The ``gate`` section of ``/api/status`` (the ``redis`` section is the shared gate's own)."""
        shared = self.shared
        keys = self.keys.count
        rpm = self.requests.rpm if self.requests else 0
        streams = self.streams.max_streams if self.streams else 0
        if shared is not None:
            keys += shared.keys.count if shared.keys is not None else 0
            rpm = shared.requests.rpm if shared.requests is not None else 0
            streams = shared.max_streams
        return {
            "inflight": self.concurrency.inflight,
            "queued": self.concurrency.queued,
            "max_inflight": self.concurrency.max_inflight,
            "queue_timeout": self.concurrency.queue_timeout,
            "rate_limit_rpm": rpm,
            "rate_limit_streams": streams,
            "api_keys": keys if self.keys_required else None,
            "shared": shared is not None,
        }

    def is_console(self, presented: bytes | None, peer: str, path: str) -> bool:
        """Is this the console's own proxy: its credential, from a loopback peer, on the chat route?"""
        if presented is None or not is_loopback(peer):
            return False
        if path != CONSOLE_ROUTE and not path.startswith(CONSOLE_ROUTE + "/"):
            return False
        return hmac.compare_digest(presented, self.console_credential.encode())

    def describe_keys(self) -> str:
        if not self.keys_required:
            return "API open: no keys configured"
        if self.shared is not None and self.shared.keys is not None:
            return f"API keys required ({self.keys.count} keys, and the key set in Redis)"
        return f"API keys required ({self.keys.count} keys)"


class GateResource(Resource):
    """Wraps the API app's resource with the gate (the root resource of the API site)."""

    isLeaf = True

    def __init__(self, wrapped: Any, gate: Gate) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.gate = gate
        self._waiting: dict[int, tuple[IRequest, _Exchange]] = {}

    def render(self, request: IRequest) -> Any:
        gate = self.gate
        path = request.path.decode("latin-1", "replace")
        peer = getattr(request.getClientAddress(), "host", None) or "unknown"
        # The console's credential never goes further than this line (not to the app, not to a host).
        console_credential = request.getHeader(CONSOLE_CREDENTIAL_HEADER)
        request.requestHeaders.removeHeader(CONSOLE_CREDENTIAL_HEADER)
        ip = client_ip(
            str(peer), request.getHeader(b"fly-client-ip"), request.getHeader(b"x-forwarded-for"), gate.trust_proxy
        )
        incoming_id = request.getHeader(b"x-request-id")
        rid_text = incoming_id.decode("latin-1") if incoming_id else ""
        request_id = rid_text if _REQUEST_ID.match(rid_text) else uuid.uuid4().hex
        ex = _Exchange(start=gate.now(), request_id=request_id, route=route_label(path), client=ip)
        request.setHeader(b"x-request-id", request_id.encode())
        self._instrument(request, ex)
        origin = request.getHeader(b"origin")

        if request.method == b"OPTIONS" and origin is not None:
            acrm = request.getHeader(b"access-control-request-method")
            if acrm is not None:
                for name, value in gate.cors.preflight(
                    origin, acrm, request.getHeader(b"access-control-request-headers")
                ).items():
                    request.setHeader(name, value)
                request.setResponseCode(204)
                return b""
        for name, value in gate.cors.headers(origin).items():
            request.setHeader(name, value)
        if path in BYPASS_PATHS:
            return self.wrapped.render(request)

        keys_required = gate.keys_required
        if keys_required and gate.is_console(console_credential, str(peer), path):
            ex.key_id = CONSOLE_KEY_ID
            ex.caller = CONSOLE_KEY_ID
            request.requestHeaders.removeHeader(b"authorization")
        elif keys_required:
            kid = gate.check_key(presented_key(request.getHeader(b"authorization"), request.getHeader(b"x-api-key")))
            if kid is UNAVAILABLE:
                return self._unavailable(request)
            if kid is None:
                # Failed attempts spend the client address's bucket: guessing keys is rate limited too.
                if gate.shared is not None and gate.shared.requests is not None:
                    return self._run_async(request, self._shared_denied(request, ex, "ip:" + ip))
                if gate.requests is not None:
                    decision = gate.requests.check("ip:" + ip, gate.now())
                    if not decision.allowed:
                        return self._rate_limited(request, decision)
                    self._rate_headers(request, decision)
                return self._denied(request)
            ex.key_id = kid
            ex.caller = "key:" + kid
            # The key is for this gate: never forward it through the tunnel to a mesh host.
            request.requestHeaders.removeHeader(b"authorization")
            request.requestHeaders.removeHeader(b"x-api-key")
        else:
            ex.caller = "ip:" + ip

        content = request.content
        if request.method in (b"POST", b"PUT", b"PATCH") and content is not None:
            body = content.read()
            content.seek(0)
            ex.model, ex.stream = inspect_body(body)
        ex.model_label = gate.metrics.model_label(ex.model) if gate.metrics is not None else "other"

        if gate.shared is not None:
            return self._run_async(request, self._shared_admit(request, ex, path))
        now = gate.now()
        if gate.requests is not None:
            decision = gate.requests.check(ex.caller, now)
            if not decision.allowed:
                return self._rate_limited(request, decision)
            self._rate_headers(request, decision)
        if ex.stream and gate.streams is not None:
            if not gate.streams.acquire(ex.caller):
                return self._streams_limited(request, gate.streams.max_streams)
            ex.holds_stream = True
        return self._admit_local(request, ex, path, now)

    def _admit_local(self, request: IRequest, ex: _Exchange, path: str, now: float) -> Any:
        """This process's in-flight cap (with its queue), then the app."""
        gate = self.gate
        if path in LOCAL_PATHS:
            return self.wrapped.render(request)
        token = gate.token()
        admission, deadline = gate.concurrency.admit(token, now)
        if admission is Admission.ADMIT:
            ex.holds_slot = True
            return self.wrapped.render(request)
        if admission is Admission.REJECT:
            self._reject("busy")
            return self._busy(request)
        ex.queued_token = token
        self._waiting[token] = (request, ex)
        ex.queue_timer = gate.clock.callLater(max(0.0, deadline - now), self._expire)
        return NOT_DONE_YET

    # -- shared limits (--redis) -----------------------------------------------------------------

    def _run_async(self, request: IRequest, coro: Any) -> Any:
        """Finish a request's checks in ``coro`` (it sends the answer itself); the gate answers later."""
        d: Deferred[None] = Deferred.fromCoroutine(coro)
        d.addErrback(self._async_failed, request)
        return NOT_DONE_YET

    def _async_failed(self, failure: Failure, request: IRequest) -> None:
        _log.failure("API gate failed", failure=failure, event="api_error")
        if not getattr(request, "startedWriting", False):
            _send(request, openai_error(request, 500, "internal error", "server_error", code="internal_error"))

    async def _shared_denied(self, request: IRequest, ex: _Exchange, caller: str) -> None:
        shared = self.gate.shared
        assert shared is not None
        decision = await shared.check_rate(caller)
        if ex.done:
            return
        if not isinstance(decision, RateDecision):
            _send(request, self._unavailable(request))
            return
        if not decision.allowed:
            _send(request, self._rate_limited(request, decision))
            return
        self._rate_headers(request, decision)
        _send(request, self._denied(request))

    async def _shared_admit(self, request: IRequest, ex: _Exchange, path: str) -> None:
        """The shared checks in one Redis call (rate, a stream slot, a cluster-wide slot), then this process's cap."""
        shared = self.gate.shared
        assert shared is not None
        got = await shared.admit(ex.caller, stream=ex.stream, inflight=path not in LOCAL_PATHS)
        if ex.done:  # the caller left while Redis answered: give back what it got
            for lease in got.leases():
                shared.release(lease)
            return
        rate, stream, inflight = got.rate, got.stream, got.inflight
        if isinstance(rate, Unavailable):
            _send(request, self._unavailable(request))
            return
        if rate is not None:
            if not rate.allowed:
                _send(request, self._rate_limited(request, rate))
                return
            self._rate_headers(request, rate)
        if isinstance(stream, Unavailable) or isinstance(inflight, Unavailable):
            for lease in got.leases():
                shared.release(lease)
            _send(request, self._unavailable(request))
            return
        if stream is None:
            _send(request, self._streams_limited(request, shared.max_streams))
            return
        if inflight is None:
            if stream.kind != "none":
                shared.release(stream)
            self._reject("busy")
            _send(request, self._busy(request, shared.max_inflight_global, "across the cluster"))
            return
        ex.stream_lease = stream if stream.kind != "none" else None
        ex.global_lease = inflight if inflight.kind != "none" else None
        result = self._admit_local(request, ex, path, self.gate.now())
        if result is not NOT_DONE_YET:
            _send(request, result)

    def _unavailable(self, request: IRequest) -> bytes:
        self._reject("redis_unavailable")
        return openai_error(
            request,
            503,
            "server busy: the shared limits store does not answer; retry shortly",
            "server_error",
            code="server_busy",
            headers={"Retry-After": str(BUSY_RETRY_AFTER)},
        )

    # -- answers --------------------------------------------------------------------------------

    def _denied(self, request: IRequest) -> bytes:
        self._reject("auth")
        return openai_error(
            request,
            401,
            "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.",
            "invalid_request_error",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )

    def _streams_limited(self, request: IRequest, limit: int) -> bytes:
        self._reject("rate_limit_streams")
        return openai_error(
            request,
            429,
            f"Rate limit reached on concurrent streams: limit {limit}. "
            "Please try again when one of your streams has finished.",
            "requests",
            code="rate_limit_exceeded",
            headers={"Retry-After": "1"},
        )

    def _rate_headers(self, request: IRequest, decision: RateDecision) -> None:
        for header, text in decision.headers().items():
            request.setHeader(header.encode(), text.encode())

    def _rate_limited(self, request: IRequest, decision: RateDecision) -> bytes:
        self._rate_headers(request, decision)
        self._reject("rate_limit_requests")
        return openai_error(
            request,
            429,
            f"Rate limit reached on requests per minute (RPM): limit {decision.limit}. "
            f"Please try again in {decision.retry_after}s.",
            "requests",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(decision.retry_after)},
        )

    # -- queue ----------------------------------------------------------------------------------

    def _busy(self, request: IRequest, limit: int | None = None, where: str = "") -> bytes:
        n = self.gate.concurrency.max_inflight if limit is None else limit
        return openai_error(
            request,
            503,
            f"server busy: {n} requests in flight{' ' + where if where else ''}; retry shortly",
            "server_error",
            code="server_busy",
            headers={"Retry-After": str(BUSY_RETRY_AFTER)},
        )

    def _expire(self) -> None:
        for token in self.gate.concurrency.expired(self.gate.now()):
            waiting = self._waiting.pop(token, None)
            if waiting is None:
                continue
            request, ex = waiting
            ex.queued_token = None
            ex.queue_timer = None
            self._reject("busy")
            _send(request, self._busy(request))

    def _hand_slot(self, token: int) -> None:
        waiting = self._waiting.pop(token, None)
        if waiting is None:  # pragma: no cover - tokens in the queue always have a waiter
            self._release_slot()
            return
        request, ex = waiting
        if ex.queue_timer is not None and ex.queue_timer.active():
            ex.queue_timer.cancel()
        ex.queue_timer = None
        ex.queued_token = None
        ex.holds_slot = True
        self._dispatch(request)

    def _release_slot(self) -> None:
        token = self.gate.concurrency.release()
        if token is not None:
            self._hand_slot(token)

    def _dispatch(self, request: IRequest) -> None:
        try:
            result = self.wrapped.render(request)
        except Exception:
            _log.failure("API dispatch failed", event="api_error")
            request.setResponseCode(500)
            result = b""
        if result is not NOT_DONE_YET:
            _send(request, result)

    def _reject(self, reason: str) -> None:
        if self.gate.metrics is not None:
            self.gate.metrics.rejected(reason)

    # -- instrumentation ------------------------------------------------------------------------

    def _instrument(self, request: IRequest, ex: _Exchange) -> None:
        write = request.write
        clock = self.gate.clock

        def counted_write(data: bytes) -> None:
            if data and ex.first_byte is None:
                ex.first_byte = float(clock.seconds())
            ex.sent += len(data)
            write(data)

        request.write = counted_write  # type: ignore[method-assign]
        request.notifyFinish().addBoth(self._finished, request, ex)  # type: ignore[attr-defined]

    def _finished(self, result: Any, request: IRequest, ex: _Exchange) -> None:
        if ex.done:
            return
        ex.done = True
        completed = not isinstance(result, Failure)
        if ex.queued_token is not None:
            self.gate.concurrency.withdraw(ex.queued_token)
            self._waiting.pop(ex.queued_token, None)
            if ex.queue_timer is not None and ex.queue_timer.active():
                ex.queue_timer.cancel()
        if ex.holds_stream and self.gate.streams is not None:
            self.gate.streams.release(ex.caller)
        shared = self.gate.shared
        for lease in (ex.stream_lease, ex.global_lease):
            if lease is not None and shared is not None:
                shared.release(lease)
        ex.stream_lease = ex.global_lease = None
        status = int(getattr(request, "code", 200)) if completed else CLIENT_CLOSED
        end = self.gate.now()
        duration = end - ex.start
        ttfb = None if ex.first_byte is None else ex.first_byte - ex.start
        if self.gate.metrics is not None:
            self.gate.metrics.observe(ex.route, ex.model_label, status, duration, ttfb)
        served_by = request.responseHeaders.getRawHeaders(b"x-mesh-served-by") or request.responseHeaders.getRawHeaders(
            b"x-meshd-host"
        )
        ids = request.responseHeaders.getRawHeaders(b"x-request-id") or [ex.request_id.encode()]
        _log.info(
            "{method} {path} {status} {bytes}B {duration_ms}ms key={key_id} client={client} model={model}",
            event="access",
            request_id=ids[0].decode("latin-1"),
            key_id=ex.key_id,
            client=ex.client,
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1", "replace")[:512],
            route=ex.route,
            model=ex.model[:256] if ex.model else None,
            stream=ex.stream,
            status=status,
            bytes=ex.sent,
            duration_ms=round(duration * 1000, 1),
            ttfb_ms=None if ttfb is None else round(ttfb * 1000, 1),
            served_by=served_by[0].decode("latin-1") if served_by else None,
        )
        if ex.holds_slot:
            ex.holds_slot = False
            self._release_slot()


def _send(request: IRequest, body: bytes) -> None:
    """Write a whole body and end the response (unless the caller already went away)."""
    if getattr(request, "_disconnected", False) or getattr(request, "finished", False):
        return
    if body:
        request.setHeader(b"content-length", str(len(body)).encode())
        request.write(body)
    request.finish()


class GateService(Service):
    """Says at start-up whether the API needs keys, and reloads the keys file on SIGHUP."""

    def __init__(self, reactor: Any, gate: Gate) -> None:
        self._reactor = reactor
        self.gate = gate
        self._previous: Any = None
        self._installed = False

    def startService(self) -> None:
        super().startService()
        _log.info(
            "{description}",
            description=self.gate.describe_keys(),
            event="api_keys",
            required=self.gate.keys.required,
            keys=self.gate.keys.count,
        )
        if self.gate.keys.path is not None:
            try:
                self._previous = signal.signal(signal.SIGHUP, self._on_sighup)
                self._installed = True
            except (ValueError, OSError, AttributeError) as e:  # not the main thread, or no SIGHUP here
                _log.warn("cannot reload API keys on SIGHUP: {err}", err=str(e), event="api_keys_no_sighup")

    def _on_sighup(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self.reload)

    def reload(self) -> bool:
        return self.gate.keys.reload()

    def stopService(self) -> Any:
        if self._installed:
            self._installed = False
            try:
                signal.signal(signal.SIGHUP, self._previous if self._previous is not None else signal.SIG_DFL)
            except (ValueError, OSError):
                pass
        return super().stopService()
