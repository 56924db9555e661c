"""A pool of reconnecting Nostr relay websocket clients (Twisted + autobahn adapter).

One :class:`~meshd.wslink.WebSocketLink` per relay URL (``ClientService`` + autobahn, reconnect with jittered
exponential backoff, shared with the iroh relay client). This module only adds NIP-01: parsing is
:mod:`meshd.discovery.nip01`, and events are handed to subscribers as raw dicts (callers verify signatures
themselves).

Per-relay ``state`` (:class:`~meshd.wslink.LinkState`): ``connecting`` (a connect attempt is in progress),
``up`` (websocket open), ``failing`` (last attempt failed or the connection dropped; a retry is scheduled),
``stopped``. The backoff level goes back to 0 only after a connection stayed up ``stable_after`` seconds.
Bad data from one relay (binary, malformed JSON, oversized frames) is logged and dropped; an oversized
message makes autobahn fail that one connection (1009, by dropping it), which is then retried.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs
from twisted.application.internet import backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.logger import Logger

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
from meshd.listeners import Listeners
from meshd.wslink import LinkConnection, LinkOptions, LinkState, WebSocketLink, stream_endpoint

__all__ = [
    "NostrPool",
    "PublishResult",
    "validate_relay_url",
]

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


class _NostrRelay:
    """NIP-01 over one relay's :class:`WebSocketLink`: subscriptions re-sent on connect, OK waiters."""

    log = Logger()

    def __init__(self, pool: NostrPool, url: str, endpoint: IStreamClientEndpoint) -> None:
        self.pool = pool
        self.url = url
        self.pending_ok: dict[str, list[Deferred[PublishResult]]] = {}
        options = LinkOptions(
            max_message_bytes=pool.max_message_bytes,
            ping_interval=pool.ping_interval,
            ping_timeout=pool.ping_timeout,
            open_timeout=pool.open_timeout,
            stable_after=pool.stable_after,
        )
        self.link = WebSocketLink(
            pool.reactor,
            url,
            endpoint,
            self,
            ws_url=url,
            retry_policy=pool.retry_policy,
            options=options,
            label="nostr relay",
        )

    # -- LinkHandler -------------------------------------------------------------------------------

    def link_opened(self, conn: LinkConnection) -> None:
        self.link.set_up(conn)
        for sub in list(self.pool._subscriptions.values()):
            self.send_req(sub)

    def link_closed(self, conn: LinkConnection) -> None:
        for waiters in self.pending_ok.values():
            for w in waiters:
                if not w.called:
                    w.callback(PublishResult(self.url, False, "connection lost"))
        self.pending_ok.clear()

    def link_message(self, conn: LinkConnection, payload: bytes, binary: bool) -> None:
        if binary:
            self.log.warn("dropping binary message from {url}", url=self.url)
            return
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
        return self.link.send(text.encode("utf-8"), binary=False)

    def send_req(self, sub: _Subscription) -> None:
        self.send(format_req(sub.sub_id, sub.filters))

    def publish(self, event: Event, text: str, timeout: float) -> Deferred[PublishResult]:
        if not self.link.is_up:
            return _succeed(PublishResult(self.url, False, f"relay not connected ({self.link.state.value})"))
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
    return stream_endpoint(reactor, host, port, secure)


class NostrPool(MultiService):
    """Reconnecting websocket clients to a set of Nostr relays, with shared subscriptions.

    :param reactor: provides IReactorTime and IReactorTCP (a ``Clock`` works with ``endpoint_factory``).
    :param urls: relay URLs (``ws://`` or ``wss://``); duplicates are ignored.
    :param max_message_bytes: bound on one incoming websocket message/frame and on one outgoing EVENT.
    :param retry_policy: ``backoff level -> delay`` (default: ``backoffPolicy()`` with random jitter).
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
        self._listeners: Listeners[StateListener] = Listeners(self.log, "relay state listener")
        self._relays: dict[str, _NostrRelay] = {}
        make_endpoint = endpoint_factory or (lambda u: _default_endpoint(reactor, u))
        for url in urls:
            validate_relay_url(url)
            if url in self._relays:
                continue
            relay = _NostrRelay(self, url, make_endpoint(url))
            relay.link.setName(url)
            relay.link.setServiceParent(self)
            relay.link.watch(lambda link, state: self._state_changed(link.url, state.value))
            self._relays[url] = relay

    @property
    def urls(self) -> list[str]:
        return list(self._relays)

    def status(self) -> list[dict[str, Any]]:
        """One dict per relay: ``url``, ``state``, ``last_error``, ``since`` (unix s), ``attempts``."""
        return [relay.link.status() for relay in self._relays.values()]

    def up_urls(self) -> list[str]:
        return [u for u, relay in self._relays.items() if relay.link.is_up]

    def settling_urls(self) -> list[str]:
        """Relays still on their first connect attempt (never up, never failed)."""
        return [u for u, relay in self._relays.items() if _settling(relay.link)]

    def watch_state(self, listener: StateListener) -> Callable[[], None]:
        """Call ``listener(url, state)`` on every state change; returns an unsubscribe function."""
        return self._listeners.add(listener)

    def _state_changed(self, url: str, state: str) -> None:
        self._listeners.notify(url, state)

    # -- subscriptions -----------------------------------------------------------------------------

    def new_subscription_id(self, prefix: str = "meshd") -> str:
        return f"{prefix}-{next(self._sub_counter)}"

    def subscribe(self, sub_id: str, filters: Iterable[Mapping[str, Any]], on_event: OnEvent, on_eose: OnEose) -> None:
        """Send ``REQ`` to every relay that is up now, and again to each relay whenever it (re)connects."""
        sub = _Subscription(sub_id, tuple(dict(f) for f in filters), on_event, on_eose)
        format_req(sub.sub_id, sub.filters)  # validate before storing
        self._subscriptions[sub_id] = sub
        for relay in self._relays.values():
            relay.send_req(sub)

    def unsubscribe(self, sub_id: str) -> None:
        if self._subscriptions.pop(sub_id, None) is None:
            return
        text = format_close(sub_id)
        for relay in self._relays.values():
            relay.send(text)

    # -- publishing --------------------------------------------------------------------------------

    def publish(self, event: Event, *, timeout: float | None = None) -> Deferred[list[PublishResult]]:
        """Send ``EVENT`` to every relay; fires with one :class:`PublishResult` per relay (in URL order)
        once every relay answered ``OK``, lost its connection, was not connected, or timed out."""
        text = format_event(event)
        size = len(text.encode("utf-8"))
        if size > self.max_message_bytes:
            results = [
                PublishResult(u, False, f"event is {size} bytes; limit is {self.max_message_bytes}")
                for u in self._relays
            ]
            d: Deferred[list[PublishResult]] = Deferred()
            d.callback(results)
            return d
        t = self.publish_timeout if timeout is None else timeout
        per_relay = [relay.publish(event, text, t) for relay in self._relays.values()]
        gathered = DeferredList(per_relay, consumeErrors=True)

        def collect(results: list[tuple[bool, Any]]) -> list[PublishResult]:
            out: list[PublishResult] = []
            for url, (ok, value) in zip(self._relays, results, strict=True):
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


def _settling(link: WebSocketLink) -> bool:
    return link.state is LinkState.CONNECTING and link.attempts == 0 and not link.ever_up
