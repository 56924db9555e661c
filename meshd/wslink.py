"""One reconnecting websocket link: the stack the Nostr relay pool and the iroh relay client share.

A :class:`WebSocketLink` keeps one autobahn websocket client to one URL open: a Twisted ``ClientService`` over
an observed endpoint (so the link sees every connect attempt and its failure), reconnecting with a backoff
policy. It knows nothing of what the messages mean. Its *handler* (a :class:`LinkHandler`) does: it is told
when a websocket opens, gets every message and is told when a connection closes, and it says when the link
is up (:meth:`WebSocketLink.set_up`: at once for a Nostr relay, after the challenge handshake for an iroh
relay) or denied (:meth:`WebSocketLink.deny`).

States (:class:`LinkState`) and what moves them::

    stopped    --start / connect attempt--> connecting
    connecting --handler calls set_up----> up
    connecting --connect failed, closed before up--> failing --retry timer--> connecting
    connecting --handler calls deny-----> denied --retry timer--> connecting
    up         --connection closed------> failing
    any        --stop-------------------> stopped

Backoff: the delay before the next attempt is ``retry_policy(level)``. ``level`` counts failures (a failed
connect, a websocket closed before it was up, a denial, a dropped connection) and goes back to 0 only when a
connection that was up closes after having been up for at least ``stable_after`` seconds: a server that
accepts and at once drops (or denies) us is retried ever more slowly rather than in a tight loop.

``attempts`` counts the current failure streak (consecutive failures, 0 once the link is up). The first
failure of a streak is logged at info (a denial at warn), the others at debug; the state and the last
error are in :meth:`WebSocketLink.status`.

Sends go through :meth:`WebSocketLink.send`: written at once while the link is up, else held in a bounded
queue (``max_queue``; the oldest message is dropped beyond it) that drains when the link comes up and
while the transport accepts data; with ``max_queue=0`` a send while not up is refused (returns False).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.types import ConnectionResponse
from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IPushProducer, IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from meshd.listeners import Listeners

__all__ = [
    "LinkConnection",
    "LinkCounters",
    "LinkHandler",
    "LinkOptions",
    "LinkState",
    "LinkStopped",
    "RetryPolicy",
    "StateListener",
    "WebSocketLink",
    "stream_endpoint",
]


class LinkState(enum.StrEnum):
    STOPPED = "stopped"
    CONNECTING = "connecting"
    UP = "up"
    FAILING = "failing"
    DENIED = "denied"


class LinkStopped(Exception):
    """The link was stopped before it came up (the error of a pending :meth:`WebSocketLink.when_up`)."""


#: ``level -> seconds`` before the next connect attempt (``twisted.application.internet.backoffPolicy()``).
RetryPolicy = Callable[[int], float]
StateListener = Callable[["WebSocketLink", LinkState], object]


@attrs.frozen
class LinkOptions:
    #: Largest websocket message (and frame) accepted; a bigger one closes the connection with 1009.
    max_message_bytes: int = 1024 * 1024
    #: Seconds between websocket pings (autobahn autoPing); 0 turns them off.
    ping_interval: float = 0.0
    #: Seconds a websocket ping waits for its pong before the connection is dropped.
    ping_timeout: float = 10.0
    #: Seconds for the opening handshake (0: no limit) and for the closing one.
    open_timeout: float = 10.0
    close_timeout: float = 2.0
    #: A connection up this long resets the backoff when it closes.
    stable_after: float = 10.0
    #: Messages held while the link is not up (oldest dropped beyond it); 0: refuse sends while not up.
    max_queue: int = 0
    #: Websocket subprotocols offered, preferred first; when given, the server must pick one of them.
    subprotocols: tuple[str, ...] = ()
    #: Extra headers of the opening handshake (e.g. ``Authorization: Bearer ...``).
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)


@attrs.define
class LinkCounters:
    """What happened to a link; a user may pass a subclass with its own counters (one object, one status)."""

    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    denied: int = 0
    queue_drops: int = 0


class LinkHandler(Protocol):
    """The protocol-specific side of a link (NIP-01 for Nostr, iroh relay frames for iroh)."""

    def link_opened(self, conn: LinkConnection) -> None:
        """The websocket is open; call ``link.set_up(conn)`` once the link is usable (or ``link.deny``)."""

    def link_message(self, conn: LinkConnection, payload: bytes, binary: bool) -> None:
        """One websocket message (already bounded by ``max_message_bytes``)."""

    def link_closed(self, conn: LinkConnection) -> None:
        """A connection that had opened is gone (the link has already left ``up``)."""


def stream_endpoint(reactor: Any, host: str, port: int, secure: bool, timeout: float = 10) -> IStreamClientEndpoint:
    """TCP to ``host:port``, wrapped in TLS checked against *host* (without a trailing dot) when *secure*."""
    endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    if secure:
        endpoint = wrapClientTLS(optionsForClientTLS(host.rstrip(".")), endpoint)
    return endpoint


@implementer(IPushProducer)
class LinkConnection(WebSocketClientProtocol):  # type: ignore[misc]
    """One websocket connection of a link. It forwards events to the link and holds no logic."""

    link: WebSocketLink
    #: The subprotocol the server picked (None when none was offered or picked).
    subprotocol: str | None = None
    #: The transport's buffer is full (IPushProducer); queued sends wait for ``resumeProducing``.
    paused = False

    def onConnect(self, response: ConnectionResponse) -> None:
        offered = self.link.options.subprotocols
        if offered and response.protocol not in offered:
            raise ValueError(f"server answered with subprotocol {response.protocol!r}, offered {list(offered)}")
        self.subprotocol = response.protocol

    def onOpen(self) -> None:
        transport: Any = self.transport
        try:
            transport.registerProducer(self, True)
        except RuntimeError:  # a producer is registered already
            pass
        self.link._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.link._message(self, payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.link._closed(self, code, reason)

    def send_message(self, payload: bytes, binary: bool) -> None:
        """Write one message now (dropped when the websocket is no longer open)."""
        if self.state == WebSocketClientProtocol.STATE_OPEN:
            self.sendMessage(payload, isBinary=binary)

    def close_link(self, code: int = 1000, reason: str | None = None) -> None:
        """A clean websocket close."""
        self.sendClose(code, reason)

    def abort(self) -> None:
        """Drop the connection at once (bad data, a missed keepalive)."""
        self.dropConnection(abort=True)

    # IPushProducer: the transport's buffer is full / drained
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.link._drain()

    def stopProducing(self) -> None:
        self.paused = True


class _LinkFactory(WebSocketClientFactory):  # type: ignore[misc]
    noisy = False
    protocol = LinkConnection

    def __init__(self, link: WebSocketLink, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.link = link

    def buildProtocol(self, addr: Any) -> LinkConnection:
        conn = super().buildProtocol(addr)
        assert isinstance(conn, LinkConnection)
        conn.link = self.link
        return conn


@implementer(IStreamClientEndpoint)
class _ObservedEndpoint:
    """Wraps the real endpoint so the link sees every connect attempt and its failure."""

    def __init__(self, link: WebSocketLink, endpoint: IStreamClientEndpoint) -> None:
        self._link = link
        self._endpoint = endpoint

    def __repr__(self) -> str:
        return self._link.url

    def connect(self, factory: Any) -> Deferred[Any]:
        self._link._attempt_started()
        d: Deferred[Any] = self._endpoint.connect(factory)

        def failed(f: Failure) -> Failure:
            self._link._attempt_failed(f)
            return f

        return d.addErrback(failed)


class WebSocketLink(Service):
    """One reconnecting websocket client: state, backoff, counters, a bounded send queue, ``when_up``.

    :param reactor: IReactorTime (and whatever *endpoint* needs); a ``Clock`` works with a fake endpoint.
    :param url: the name the link is shown and logged as (the relay's URL as configured).
    :param endpoint: where to connect (see :func:`stream_endpoint`).
    :param handler: the protocol-specific side (:class:`LinkHandler`).
    :param ws_url: the websocket URL of the opening handshake (Host header and path).
    :param retry_policy: ``level -> delay`` (see the module docstring).
    :param counters: a :class:`LinkCounters` (or subclass) the link updates; a new one by default.
    :param label: what the log lines call this kind of link (``"nostr relay"``, ``"iroh relay"``).
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        url: str,
        endpoint: IStreamClientEndpoint,
        handler: LinkHandler,
        *,
        ws_url: str,
        retry_policy: RetryPolicy,
        options: LinkOptions = LinkOptions(),
        counters: LinkCounters | None = None,
        label: str = "websocket",
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.url = url
        self.options = options
        self.counters = counters if counters is not None else LinkCounters()
        self.label = label
        self.state = LinkState.STOPPED
        self.since: float = reactor.seconds()
        self.last_error: str | None = None
        #: Consecutive failures (the current failure streak); 0 once the link is up.
        self.attempts = 0
        self.ever_up = False
        self.connected_at: float | None = None
        #: Seconds from the start of the connect attempt to ``up`` (TCP, TLS, websocket and the handler's handshake).
        self.handshake_seconds: float | None = None
        self._handler = handler
        self._retry_policy = retry_policy
        self._retry_level = 0
        self._attempt_at = 0.0
        self._conn: LinkConnection | None = None  # the open websocket, if any
        self._up = False  # ... and the handler said it is usable
        self._up_at: float | None = None
        self._streak_state: LinkState | None = None
        self._queue: deque[tuple[bytes, bool]] = deque()
        self._up_waiters: list[Deferred[WebSocketLink]] = []
        self._listeners: Listeners[StateListener] = Listeners(self._log, f"{self.label} link state listener")
        factory = _LinkFactory(
            self,
            url=ws_url,
            protocols=list(options.subprotocols) or None,
            headers=dict(options.headers) or None,
            reactor=reactor,
        )
        factory.setProtocolOptions(
            autoPingInterval=options.ping_interval,
            autoPingTimeout=options.ping_timeout,
            maxMessagePayloadSize=options.max_message_bytes,
            maxFramePayloadSize=options.max_message_bytes,
            openHandshakeTimeout=options.open_timeout,
            closeHandshakeTimeout=options.close_timeout,
        )
        self._client = ClientService(
            _ObservedEndpoint(self, endpoint),
            factory,
            retryPolicy=lambda _n: self._retry_policy(self._retry_level),
            clock=reactor,
        )

    # -- read-only views ---------------------------------------------------------------------------

    @property
    def is_up(self) -> bool:
        return self.state is LinkState.UP and self._up

    @property
    def connection(self) -> LinkConnection | None:
        """The open websocket (up or still in the handler's handshake), or None."""
        return self._conn

    @property
    def queued(self) -> int:
        return len(self._queue)

    def status(self) -> dict[str, Any]:
        """``url``, ``state``, ``last_error``, ``since`` (reactor seconds of the last change), ``attempts``."""
        return {
            "url": self.url,
            "state": self.state.value,
            "last_error": self.last_error,
            "since": self.since,
            "attempts": self.attempts,
        }

    def watch(self, listener: StateListener) -> Callable[[], None]:
        """Call ``listener(link, state)`` on every state change; returns the function that stops it."""
        return self._listeners.add(listener)

    def when_up(self) -> Deferred[WebSocketLink]:
        """Fires with the link once it is up (at once if it is); fails with :class:`LinkStopped` on stop."""
        if self.is_up:
            return succeed(self)

        def cancel(d: Deferred[WebSocketLink]) -> None:
            if d in self._up_waiters:
                self._up_waiters.remove(d)

        d: Deferred[WebSocketLink] = Deferred(cancel)
        self._up_waiters.append(d)
        return d

    # -- lifecycle ---------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._client.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._set_state(LinkState.STOPPED)
        self._queue.clear()
        waiters, self._up_waiters = self._up_waiters, []
        for d in waiters:
            d.errback(LinkStopped(f"{self.label} {self.url}: the link was stopped"))
        return maybeDeferred(self._client.stopService)  # type: ignore[arg-type]

    # -- for the handler ---------------------------------------------------------------------------

    def set_up(self, conn: LinkConnection) -> None:
        """*conn* is usable: the link is up, queued sends go out, ``when_up`` waiters fire."""
        if conn is not self._conn or self._up or not self.running:
            return
        now = self.reactor.seconds()
        self._up = True
        self._up_at = self.connected_at = now
        self.handshake_seconds = now - self._attempt_at
        self.attempts = 0
        self._streak_state = None
        self.ever_up = True
        self.last_error = None
        self.counters.connects += 1
        self._set_state(LinkState.UP)
        self._log.info("{label} {url} up", label=self.label, url=self.url)
        self._drain()
        waiters, self._up_waiters = self._up_waiters, []
        for d in waiters:
            d.callback(self)

    def deny(self, conn: LinkConnection, reason: str) -> None:
        """The server refused us (e.g. a bad token): state ``denied`` until the next attempt, and close *conn*."""
        if conn is not self._conn:
            return
        self.counters.denied += 1
        self._fail(f"denied: {reason}", LinkState.DENIED)
        conn.close_link(1000)

    def report_problem(self, problem: str) -> None:
        """A problem the server reported without closing the link (shown as ``last_error``)."""
        self.last_error = problem

    def send(self, payload: bytes, binary: bool) -> bool:
        """Send now if the link is up and writable, else queue (bounded); False when refused (no queue)."""
        conn = self._conn if self.is_up else None
        queueing = self.options.max_queue > 0
        if conn is not None and not self._queue and not (queueing and conn.paused):
            conn.send_message(payload, binary)
            return True
        if not queueing:
            return False
        if len(self._queue) >= self.options.max_queue:
            self._queue.popleft()
            self.counters.queue_drops += 1
        self._queue.append((payload, binary))
        return True

    # -- from the endpoint and the connection ------------------------------------------------------

    def _attempt_started(self) -> None:
        self._attempt_at = self.reactor.seconds()
        if self.running:
            self._set_state(LinkState.CONNECTING)

    def _attempt_failed(self, f: Failure) -> None:
        if f.check(CancelledError) and not self.running:
            return  # our own stop cancelled the attempt
        self.counters.connect_failures += 1
        self._fail(f"connect failed: {f.getErrorMessage()}")

    def _opened(self, conn: LinkConnection) -> None:
        if not self.running:
            return  # opened while we stop: ClientService is closing it
        self._conn = conn
        self._up = False
        self._guarded(self._handler.link_opened, conn)

    def _message(self, conn: LinkConnection, payload: bytes, binary: bool) -> None:
        if conn is self._conn:
            self._guarded(self._handler.link_message, conn, payload, binary)

    def _closed(self, conn: LinkConnection, code: int | None, reason: str | None) -> None:
        opened = conn is self._conn
        was_up = opened and self._up
        if opened:
            self._conn = None
            self._up = False
            if was_up:
                self.counters.disconnects += 1
                if self._up_at is not None and self.reactor.seconds() - self._up_at >= self.options.stable_after:
                    self._retry_level = 0
                self._up_at = None
            self._guarded(self._handler.link_closed, conn)
        if not self.running:
            self._set_state(LinkState.STOPPED)
            return
        if self.state is LinkState.DENIED:
            return  # the close that follows a denial is not another failure
        if opened:
            detail = f"connection closed (code {code}): {reason}" if reason else f"connection closed (code {code})"
        else:
            detail = f"websocket handshake failed: {reason or code}"
        self._fail(detail)

    def _drain(self) -> None:
        conn = self._conn
        while self._queue and conn is not None and self._up and not conn.paused:
            payload, binary = self._queue.popleft()
            conn.send_message(payload, binary)

    # -- internals ---------------------------------------------------------------------------------

    def _fail(self, error: str, state: LinkState = LinkState.FAILING) -> None:
        self.attempts += 1
        self._retry_level += 1
        if self.running:
            self._set_state(state, error)
        # One line when a streak starts (or turns into a denial); the retries after it are debug.
        loud = self.attempts == 1 or (state is LinkState.DENIED and self._streak_state is not LinkState.DENIED)
        self._streak_state = state
        if not loud:
            log = self._log.debug
        elif state is LinkState.DENIED:
            log = self._log.warn
        else:
            log = self._log.info
        log(
            "{label} {url} {state} (attempt {n}): {error}",
            label=self.label,
            url=self.url,
            state=state.value,
            n=self.attempts,
            error=error,
        )

    def _set_state(self, state: LinkState, error: str | None = None) -> None:
        if error is not None:
            self.last_error = error
        if state is self.state:
            return
        self.state = state
        self.since = self.reactor.seconds()
        self._listeners.notify(self, state)

    def _guarded(self, call: Callable[..., object], *args: Any) -> None:
        """A handler's bug is logged; it never costs the connection or the reconnect loop."""
        try:
            call(*args)
        except Exception:
            self._log.failure("{label} {url}: error in the link handler", label=self.label, url=self.url)
