"""A host's backend: the OpenAI-compatible server tunnel requests are relayed to, with its slots.

``Backend`` holds the slots (a bounded FIFO of waiting requests with deadlines) and opens one
connection per request; ``BackendStats`` counts what happened. The relay of one request is
``meshd.tunnel.host.HostTunnel``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as TxProtocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger

from meshd.concurrency import Admission, ConcurrencyLimiter
from meshd.httpwire import ParsedRequest, render_request

#: mesh-llm's BACKEND_PROXY_MAX_INFLIGHT: the backend limit when neither the flag nor the backend says.
DEFAULT_BACKEND_INFLIGHT = 4
BACKEND_CONNECT_TIMEOUT = 10.0
#: How long a tunnel may wait for a backend slot when its client does not say (``--backend-queue-timeout``).
DEFAULT_BACKEND_QUEUE_TIMEOUT = 30.0
#: Distinct model names counted in ``BackendStats.served`` (the names come from callers); the rest,
#: and names longer than MAX_MODEL_NAME, count as OTHER_MODEL.
MAX_SERVED_MODELS = 64
MAX_MODEL_NAME = 256
OTHER_MODEL = "(other)"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@attrs.define
class BackendStats:
    requests: int = 0
    #: Requests answered busy (no slot within their wait).
    rejected_busy: int = 0
    #: Requests that waited for a slot.
    queued: int = 0
    failed: int = 0
    timeouts: int = 0
    #: Tunnel requests whose response the backend sent in full, per requested model (bounded).
    served: dict[str, int] = attrs.Factory(dict)
    #: Called after each ``count_served`` (the console's live events follow it).
    on_served: list[Callable[[], None]] = attrs.Factory(list)

    def count_served(self, model: str | None) -> None:
        key = model if model and len(model) <= MAX_MODEL_NAME else OTHER_MODEL
        if key not in self.served and len(self.served) >= MAX_SERVED_MODELS:
            key = OTHER_MODEL
        self.served[key] = self.served.get(key, 0) + 1
        for listener in list(self.on_served):
            listener()


class Backend:
    """An OpenAI-compatible server this host relays tunnel requests to, with its slots.

    A slot is held from the moment a request may go to the backend until its response is complete
    (not until the backend closes). Requests over the limit wait in a bounded FIFO for their wait time.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        url: str,
        max_inflight: int | None = None,
        queue_timeout: float = DEFAULT_BACKEND_QUEUE_TIMEOUT,
        *,
        endpoint: IStreamClientEndpoint | None = None,
    ) -> None:
        """``endpoint``: where to connect instead of the URL's host and port (a Unix socket, or an
        in-memory server in tests); the URL still names the backend (``Host`` header, base path)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"backend URL must be http(s)://host[:port], got {url!r}")
        self.url = url
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.base_path = parts.path.rstrip("/")
        #: Where the limit came from: ``flag``, ``default``, or what the backend said of itself.
        self.limit_source = "flag" if max_inflight is not None else "default"
        self.slots = ConcurrencyLimiter(max_inflight or DEFAULT_BACKEND_INFLIGHT, queue_timeout)
        self.stats = BackendStats()
        self.clock = reactor
        self._reactor = reactor
        self._waiters: dict[int, tuple[Callable[[], None], Callable[[], None], Any]] = {}
        self._next_token = 0
        self._endpoint = endpoint

    @property
    def max_inflight(self) -> int:
        return self.slots.max_inflight

    @property
    def inflight(self) -> int:
        return self.slots.inflight

    def learned_limit(self, limit: int, source: str) -> None:
        """The backend said how many requests it serves at once; the flag, when given, still wins."""
        if self.limit_source == "flag":
            return
        changed = limit != self.slots.max_inflight
        self.limit_source = source
        if not changed:
            return
        self._log.info(
            "backend {url} serves {n} requests at once ({source}); using that as the host's limit",
            url=self.url,
            n=limit,
            source=source,
            event="backend_limit",
        )
        for token in self.slots.set_limit(limit):
            self._grant(token)

    @property
    def host_header(self) -> bytes:
        default = 443 if self.tls else 80
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return (host if self.port == default else f"{host}:{self.port}").encode("idna")

    # slots ---------------------------------------------------------------------------------------

    def request_slot(
        self, granted: Callable[[], None], expired: Callable[[], None], wait: float | None
    ) -> tuple[Admission, int]:
        """Take a slot now (``ADMIT``), queue for one (``QUEUED``: ``granted`` or ``expired`` is called
        later; the token is for ``cancel``), or ``REJECT`` (busy). ``wait`` caps the queueing time."""
        self._next_token += 1
        token = self._next_token
        now = float(self.clock.seconds())
        admission, deadline = self.slots.admit(token, now, wait)
        if admission is Admission.ADMIT:
            self.stats.requests += 1
        elif admission is Admission.REJECT:
            self.stats.rejected_busy += 1
        else:
            self.stats.queued += 1
            timer = self.clock.callLater(max(0.0, deadline - now), self._expire)
            self._waiters[token] = (granted, expired, timer)
        return admission, token

    def cancel(self, token: int) -> None:
        waiter = self._waiters.pop(token, None)
        self.slots.withdraw(token)
        if waiter is not None and waiter[2].active():
            waiter[2].cancel()

    def release(self) -> None:
        token = self.slots.release()
        if token is not None:
            self._grant(token)

    def _grant(self, token: int) -> None:
        waiter = self._waiters.pop(token, None)
        if waiter is None:  # pragma: no cover - queued tokens always have a waiter
            self.release()
            return
        granted, _, timer = waiter
        if timer.active():
            timer.cancel()
        self.stats.requests += 1
        granted()

    def _expire(self) -> None:
        for token in self.slots.expired(float(self.clock.seconds())):
            waiter = self._waiters.pop(token, None)
            if waiter is not None:
                self.stats.rejected_busy += 1
                waiter[1]()

    # connections ---------------------------------------------------------------------------------

    def connect(self, protocol: TxProtocol) -> Deferred[Any]:
        endpoint: Any
        if self._endpoint is not None:
            endpoint = self._endpoint
        elif _is_ip(self.host):
            # An address needs no resolver round trip through the thread pool (the usual 127.0.0.1).
            cls = TCP6ClientEndpoint if ":" in self.host else TCP4ClientEndpoint
            endpoint = cls(self._reactor, self.host, self.port, timeout=BACKEND_CONNECT_TIMEOUT)
        else:
            endpoint = HostnameEndpoint(self._reactor, self.host, self.port, timeout=BACKEND_CONNECT_TIMEOUT)
        if self.tls and self._endpoint is None:
            endpoint = wrapClientTLS(optionsForClientTLS(self.host), endpoint)
        factory = Factory.forProtocol(lambda: protocol)
        factory.noisy = False
        return endpoint.connect(factory)

    def render(self, request: ParsedRequest) -> bytes:
        target = self.base_path.encode() + request.target if self.base_path else request.target
        headers = [(k, v) for k, v in request.headers if not k.lower().startswith(b"x-meshd-")]
        return render_request(request.method, target, headers, request.body, host=self.host_header)
