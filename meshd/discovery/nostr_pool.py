"""A pool of reconnecting Nostr relay websocket clients (Twisted + autobahn adapter).

One :class:`~twisted.application.internet.ClientService` per relay URL, each driving an autobahn websocket
client. The adapter only moves messages: parsing is :mod:`meshd.discovery.nip01`, and events are handed
to subscribers as raw dicts (callers verify signatures themselves).

Per-relay ``state``: ``connecting`` (a connect attempt is in progress), ``up`` (websocket open),
``failing`` (last attempt failed or the connection dropped; a retry is scheduled with jittered exponential
backoff), ``stopped``. Bad data from one relay (binary, malformed JSON, oversized frames) is logged and
dropped; an oversized message makes autobahn close that one connection (1009), which is then retried.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.types import ConnectionResponse
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure

from meshd.discovery.errors import MalformedMessage
from meshd.discovery.nip01 import (
    Event,
    RelayClosed,
    RelayEOSE,
    RelayEvent,
    RelayNotice,
    RelayOK,
    RelayUnknown,
    format_close,
    format_event,
    format_req,
    parse_relay_message,
)

__all__ = [
    "CONNECTING",
    "FAILING",
    "STOPPED",
    "UP",
    "NostrPool",
    "PublishResult",
    "validate_relay_url",
]

CONNECTING = "connecting"
UP = "up"
FAILING = "failing"
STOPPED = "stopped"

DEFAULT_MAX_MESSAGE_BYTES = 512 * 1024

OnEvent = Callable[[str, dict[str, Any]], object]
OnEose = Callable[[str], object]
StateListener = Callable[[str, str], object]


def validate_relay_url(url: str) -> tuple[bool, str, int]:
    """Return ``(secure, host, port)`` for a ``ws://`` or ``wss://`` URL; raise ``ValueError`` otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"relay URL must start with ws:// or wss://: {url!r}")
    if not parts.hostname:
        raise ValueError(f"relay URL has no host: {url!r}")
    try:
        port = parts.port
    except ValueError as e:
        raise ValueError(f"relay URL has a bad port: {url!r}") from e
    secure = parts.scheme == "wss"
    return secure, parts.hostname, port if port is not None else (443 if secure else 80)


@attrs.frozen
class PublishResult:
    """One relay's answer to an EVENT: ``accepted`` from its ``OK``, or False with a local reason."""

    url: str
    accepted: bool
    message: str


@attrs.define
class _Subscription:
    sub_id: str
    filters: tuple[dict[str, Any], ...]
    on_event: OnEvent
    on_eose: OnEose


class _RelayProtocol(WebSocketClientProtocol):  # type: ignore[misc]
    """Forwards websocket events to the owning :class:`_RelayLink`; holds no logic."""

    link: _RelayLink

    def onConnect(self, response: ConnectionResponse) -> None:
        pass

    def onOpen(self) -> None:
        self.link.opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self.link.log.warn("dropping binary message from {url}", url=self.link.url)
            return
        self.link.message_received(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.link.closed(self, code, reason)

    def send_text(self, text: str) -> None:
        self.sendMessage(text.encode("utf-8"), isBinary=False)


class _RelayFactory(WebSocketClientFactory):  # type: ignore[misc]
    noisy = False
    protocol = _RelayProtocol

    def __init__(self, link: _RelayLink, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.link = link

    def buildProtocol(self, addr: Any) -> _RelayProtocol:
        proto = super().buildProtocol(addr)
        assert isinstance(proto, _RelayProtocol)
        proto.link = self.link
        return proto


class _ObservedEndpoint:
    """Wraps the real endpoint so the link sees every connect attempt and its failure."""

    def __init__(self, link: _RelayLink, endpoint: IStreamClientEndpoint) -> None:
        self._link = link
        self._endpoint = endpoint

    def __repr__(self) -> str:
        return self._link.url

    def connect(self, factory: Any) -> Deferred[Any]:
        self._link.attempt_started()
        d: Deferred[Any] = self._endpoint.connect(factory)

        def failed(f: Failure) -> Failure:
            self._link.attempt_failed(f)
            return f

        d.addErrback(failed)
        return d


class _RelayLink(Service):
    """State and bookkeeping for one relay; the protocol calls into it, the pool reads it."""

    log = Logger()

    def __init__(self, pool: NostrPool, url: str, endpoint: IStreamClientEndpoint) -> None:
        super().__init__()
        self.pool = pool
        self.url = url
        self.state = STOPPED
        self.last_error: str | None = None
        self.since = pool.reactor.seconds()
        self.attempts = 0  # consecutive failures, reset when the websocket opens
        self.ever_up = False
        self._retry_level = 0  # drives backoff; reset only after a stable connection
        self._up_at: float | None = None
        self.protocol: _RelayProtocol | None = None
        self.pending_ok: dict[str, list[Deferred[PublishResult]]] = {}
        factory = _RelayFactory(self, url=url, reactor=pool.reactor)
        factory.setProtocolOptions(
            autoPingInterval=pool.ping_interval,
            autoPingTimeout=pool.ping_timeout,
            maxMessagePayloadSize=pool.max_message_bytes,
            maxFramePayloadSize=pool.max_message_bytes,
            openHandshakeTimeout=pool.open_timeout,
            closeHandshakeTimeout=2,
        )
        self.client_service = ClientService(
            _ObservedEndpoint(self, endpoint),  # type: ignore[arg-type]
            factory,
            retryPolicy=lambda _n: pool.retry_policy(self._retry_level),
            clock=pool.reactor,
        )

    # -- lifecycle ---------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.client_service.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        d: Deferred[None] = maybeDeferred(self.client_service.stopService)

        def done(result: object) -> object:
            self._set_state(STOPPED)
            return result

        return d.addBoth(done)

    def _set_state(self, state: str, error: str | None = None) -> None:
        if error is not None:
            self.last_error = error
        if state != self.state:
            self.state = state
            self.since = self.pool.reactor.seconds()
            self.pool._state_changed(self.url, state)

    def status(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "state": self.state,
            "last_error": self.last_error,
            "since": self.since,
            "attempts": self.attempts,
        }

    # -- events from the endpoint / protocol -------------------------------------------------------

    def attempt_started(self) -> None:
        if self.running:
            self._set_state(CONNECTING)

    def attempt_failed(self, f: Failure) -> None:
        self._fail(f"connect failed: {f.getErrorMessage()}")

    def _fail(self, error: str) -> None:
        self.attempts += 1
        self._retry_level += 1
        if self.running:
            self._set_state(FAILING, error)
        # One line when a relay starts failing; the retries after it are debug (state is in /api/status).
        log = self.log.info if self.attempts == 1 else self.log.debug
        log("nostr relay {url} failing (attempt {n}): {error}", url=self.url, n=self.attempts, error=error)

    def opened(self, proto: _RelayProtocol) -> None:
        self.protocol = proto
        self.attempts = 0
        self.ever_up = True
        self._up_at = self.pool.reactor.seconds()
        self.last_error = None
        self._set_state(UP)
        self.log.info("nostr relay {url} up", url=self.url)
        for sub in list(self.pool._subscriptions.values()):
            self.send_req(sub)

    def closed(self, proto: _RelayProtocol, code: int | None, reason: str | None) -> None:
        was_current = proto is self.protocol
        if was_current:
            self.protocol = None
        for waiters in self.pending_ok.values():
            for w in waiters:
                if not w.called:
                    w.callback(PublishResult(self.url, False, "connection lost"))
        self.pending_ok.clear()
        if was_current and self._up_at is not None:
            if self.pool.reactor.seconds() - self._up_at >= self.pool.stable_after:
                self._retry_level = 0
            self._up_at = None
        if not self.running:
            self._set_state(STOPPED)
            return
        detail = f"connection closed (code {code}): {reason}" if reason else f"connection closed (code {code})"
        self._fail(detail if was_current else f"websocket handshake failed: {reason or code}")

    def message_received(self, payload: bytes) -> None:
        try:
            msg = parse_relay_message(payload)
        except MalformedMessage as e:
            self.log.warn("dropping malformed message from {url}: {reason}", url=self.url, reason=e.reason)
            return
        except Exception as e:  # never let one message drop the relay's connection
            self.log.warn(
                "dropping a message from {url} that could not be read: {error}",
                url=self.url,
                error=f"{type(e).__name__}: {str(e)[:200]}",
            )
            return
        try:
            self._dispatch(msg)
        except Exception:
            self.log.failure("error handling a message from {url}", url=self.url)

    def _dispatch(self, msg: object) -> None:
        pool = self.pool
        if isinstance(msg, RelayEvent):
            sub = pool._subscriptions.get(msg.sub_id)
            if sub is not None:
                sub.on_event(self.url, msg.event)
        elif isinstance(msg, RelayEOSE):
            sub = pool._subscriptions.get(msg.sub_id)
            if sub is not None:
                sub.on_eose(self.url)
        elif isinstance(msg, RelayClosed):
            self.log.info(
                "nostr relay {url} closed subscription {sub}: {message}",
                url=self.url,
                sub=msg.sub_id,
                message=msg.message,
            )
            sub = pool._subscriptions.get(msg.sub_id)
            if sub is not None:  # the relay will send nothing more for it: same as end of stored events
                sub.on_eose(self.url)
        elif isinstance(msg, RelayOK):
            for w in self.pending_ok.pop(msg.event_id, []):
                if not w.called:
                    w.callback(PublishResult(self.url, msg.accepted, msg.message))
        elif isinstance(msg, RelayNotice):
            self.log.info("nostr relay {url} notice: {message}", url=self.url, message=msg.message[:500])
        elif isinstance(msg, RelayUnknown):
            self.log.debug("ignoring {type} message from {url}", type=msg.type, url=self.url)

    # -- sending -----------------------------------------------------------------------------------

    def send(self, text: str) -> bool:
        proto = self.protocol
        if proto is None or self.state != UP:
            return False
        proto.send_text(text)
        return True

    def send_req(self, sub: _Subscription) -> None:
        self.send(format_req(sub.sub_id, sub.filters))

    def publish(self, event: Event, text: str, timeout: float) -> Deferred[PublishResult]:
        if self.state != UP:
            return _succeed(PublishResult(self.url, False, f"relay not connected ({self.state})"))
        d: Deferred[PublishResult] = Deferred()
        self.pending_ok.setdefault(event.id, []).append(d)

        def timed_out() -> None:
            if not d.called:
                d.callback(PublishResult(self.url, False, "timed out waiting for OK"))

        timer: IDelayedCall = self.pool.reactor.callLater(timeout, timed_out)

        def cleanup(result: PublishResult) -> PublishResult:
            if timer.active():
                timer.cancel()
            waiters = self.pending_ok.get(event.id)
            if waiters is not None and d in waiters:
                waiters.remove(d)
                if not waiters:
                    del self.pending_ok[event.id]
            return result

        d.addBoth(cleanup)
        self.send(text)
        return d


def _succeed(value: PublishResult) -> Deferred[PublishResult]:
    d: Deferred[PublishResult] = Deferred()
    d.callback(value)
    return d


def _default_endpoint(reactor: Any, url: str) -> IStreamClientEndpoint:
    secure, host, port = validate_relay_url(url)
    endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, host, port, timeout=10)
    if secure:
        endpoint = wrapClientTLS(optionsForClientTLS(host.rstrip(".")), endpoint)
    return endpoint


class NostrPool(MultiService):
    """Reconnecting websocket clients to a set of Nostr relays, with shared subscriptions.

    :param reactor: provides IReactorTime and IReactorTCP (a ``Clock`` works with ``endpoint_factory``).
    :param urls: relay URLs (``ws://`` or ``wss://``); duplicates are ignored.
    :param max_message_bytes: bound on one incoming websocket message/frame and on one outgoing EVENT.
    :param retry_policy: ``attempt -> delay`` (default: ``backoffPolicy()`` with random jitter).
    :param endpoint_factory: ``url -> IStreamClientEndpoint`` (default: TCP, plus TLS for ``wss``).
    """

    log = Logger()
    _sub_counter = itertools.count(1)

    def __init__(
        self,
        reactor: Any,
        urls: Iterable[str],
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        ping_interval: float = 30.0,
        ping_timeout: float = 10.0,
        open_timeout: float = 10.0,
        publish_timeout: float = 10.0,
        stable_after: float = 10.0,
        retry_policy: Callable[[int], float] | None = None,
        endpoint_factory: Callable[[str], IStreamClientEndpoint] | None = None,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.max_message_bytes = max_message_bytes
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.open_timeout = open_timeout
        self.publish_timeout = publish_timeout
        self.stable_after = stable_after
        self.retry_policy = retry_policy or backoffPolicy(jitter=random.random)
        self._subscriptions: dict[str, _Subscription] = {}
        self._listeners: list[StateListener] = []
        self._links: dict[str, _RelayLink] = {}
        make_endpoint = endpoint_factory or (lambda u: _default_endpoint(reactor, u))
        for url in urls:
            validate_relay_url(url)
            if url in self._links:
                continue
            link = _RelayLink(self, url, make_endpoint(url))
            link.setName(url)
            link.setServiceParent(self)
            self._links[url] = link

    @property
    def urls(self) -> list[str]:
        return list(self._links)

    def status(self) -> list[dict[str, Any]]:
        """One dict per relay: ``url``, ``state``, ``last_error``, ``since`` (unix s), ``attempts``."""
        return [link.status() for link in self._links.values()]

    def up_urls(self) -> list[str]:
        return [u for u, link in self._links.items() if link.state == UP]

    def settling_urls(self) -> list[str]:
        """Relays still on their first connect attempt (never up, never failed)."""
        return [
            u for u, link in self._links.items() if link.state == CONNECTING and link.attempts == 0 and not link.ever_up
        ]

    def watch_state(self, listener: StateListener) -> Callable[[], None]:
        """Call ``listener(url, state)`` on every state change; returns an unsubscribe function."""
        self._listeners.append(listener)

        def unwatch() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unwatch

    def _state_changed(self, url: str, state: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(url, state)
            except Exception:
                self.log.failure("relay state listener failed")

    # -- subscriptions -----------------------------------------------------------------------------

    def new_subscription_id(self, prefix: str = "meshd") -> str:
        return f"{prefix}-{next(self._sub_counter)}"

    def subscribe(self, sub_id: str, filters: Iterable[Mapping[str, Any]], on_event: OnEvent, on_eose: OnEose) -> None:
        """Send ``REQ`` to every relay that is up now, and again to each relay whenever it (re)connects."""
        sub = _Subscription(sub_id, tuple(dict(f) for f in filters), on_event, on_eose)
        format_req(sub.sub_id, sub.filters)  # validate before storing
        self._subscriptions[sub_id] = sub
        for link in self._links.values():
            link.send_req(sub)

    def unsubscribe(self, sub_id: str) -> None:
        if self._subscriptions.pop(sub_id, None) is None:
            return
        text = format_close(sub_id)
        for link in self._links.values():
            link.send(text)

    # -- publishing --------------------------------------------------------------------------------

    def publish(self, event: Event, *, timeout: float | None = None) -> Deferred[list[PublishResult]]:
        """Send ``EVENT`` to every relay; fires with one :class:`PublishResult` per relay (in URL order)
        once every relay answered ``OK``, lost its connection, was not connected, or timed out."""
        text = format_event(event)
        size = len(text.encode("utf-8"))
        if size > self.max_message_bytes:
            results = [
                PublishResult(u, False, f"event is {size} bytes; limit is {self.max_message_bytes}")
                for u in self._links
            ]
            d: Deferred[list[PublishResult]] = Deferred()
            d.callback(results)
            return d
        t = self.publish_timeout if timeout is None else timeout
        per_relay = [link.publish(event, text, t) for link in self._links.values()]
        gathered = DeferredList(per_relay, consumeErrors=True)

        def collect(results: list[tuple[bool, Any]]) -> list[PublishResult]:
            out: list[PublishResult] = []
            for url, (ok, value) in zip(self._links, results, strict=True):
                out.append(value if ok else PublishResult(url, False, f"error: {value.getErrorMessage()}"))
            return out

        return gathered.addCallback(collect)

    # -- waiting -----------------------------------------------------------------------------------

    def wait_settled(self, timeout: float) -> Deferred[None]:
        """Fire once no relay is on its first connect attempt, or after ``timeout`` seconds."""
        d: Deferred[None] = Deferred()

        def check(_url: str = "", _state: str = "") -> None:
            if not d.called and not self.settling_urls():
                finish()

        def finish() -> None:
            unwatch()
            if timer.active():
                timer.cancel()
            if not d.called:
                d.callback(None)

        timer = self.reactor.callLater(timeout, finish)
        unwatch = self.watch_state(check)
        check()
        return d
