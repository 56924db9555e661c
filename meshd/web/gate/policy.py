"""The policy of one API port (``Gate``): its keys, limits and CORS, built from the Config; and the
pure helpers the adapter asks (the caller's address, a path's metrics label)."""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from meshd.concurrency import ConcurrencyLimiter
from meshd.web.gate.cors import CORSPolicy
from meshd.web.gate.keys import CONSOLE_ROUTE, APIKeys
from meshd.web.gate.limits import RequestRateLimiter, StreamLimiter
from meshd.web.origin import is_loopback

if TYPE_CHECKING:
    from meshd.config import Config
    from meshd.shared.policy import SharedGate

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
        self._next_token = 0

    @classmethod
    def from_config(cls, config: Config, clock: Any, shared: SharedGate | None = None) -> Gate:
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
