"""``GET /api/events``: the full status JSON as server-sent events (MESH_PROTOCOL.md §7.4).

The first event goes out at once. After that a change (``Node.add_listener``) sends the state again, at
most once a second per client while things keep changing: a change inside the window schedules one
send at the end of it, and that send carries the newest state (one snapshot per change, shared by
all clients). After 15 s without an
event a ``: keepalive`` comment goes out.

Buffering is bounded per client: each client is a push producer on its response. While its socket
buffer is full (``pauseProducing``) nothing is written or queued; on ``resumeProducing`` it gets the
state as it is then. A slow reader sees the latest state, never a growing queue.

The core (:class:`EventHub`, :class:`Subscriber`) takes a clock and a sink and has no sockets.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

MIN_INTERVAL = 1.0
KEEPALIVE_AFTER = 15.0
KEEPALIVE = b": keepalive\n\n"
SSE_HEADERS = (
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
)


def encode_event(payload: Any) -> bytes:
    """``data: <json>\\n\\n``; the JSON has no raw newlines, so one ``data:`` line is enough."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode("utf-8") + b"\n\n"


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...


class EventHub:
    """Fans the status out to subscribers; each gets at most one event per ``min_interval``."""

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        snapshot: Callable[[], Any],
        *,
        min_interval: float = MIN_INTERVAL,
        keepalive_after: float = KEEPALIVE_AFTER,
    ) -> None:
        self.clock = clock
        self.snapshot = snapshot
        self.min_interval = min_interval
        self.keepalive_after = keepalive_after
        self.subscribers: set[Subscriber] = set()
        self.events_built = 0
        self._cached: bytes | None = None
        self._dirty = True

    def subscribe(self, sink: Sink) -> Subscriber:
        """A new client: it gets the current state at once."""
        sub = Subscriber(self, sink)
        self.subscribers.add(sub)
        self._dirty = True  # a fresh snapshot for a new client (uptimes, ages)
        sub.send_now()
        return sub

    def changed(self) -> None:
        """Something visible changed: every subscriber sends now or at the end of its window."""
        self._dirty = True
        for sub in list(self.subscribers):
            sub.changed()

    def current(self) -> bytes | None:
        """The encoded state, built once per change however many clients send it."""
        if self._dirty or self._cached is None:
            try:
                self._cached = encode_event(self.snapshot())
            except Exception:
                self._log.failure("cannot build the status event", event="events_snapshot_failed")
                return None
            self._dirty = False
            self.events_built += 1
        return self._cached

    def _remove(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        if not self.subscribers:
            self._cached = None

    def close(self) -> None:
        """Stop every subscriber's timers (service shutdown)."""
        for sub in list(self.subscribers):
            sub.close()


@implementer(IPushProducer)
class Subscriber:
    """One SSE client: rate-limited events, keepalives, and nothing queued while its socket is full.

    While paused it only remembers that the state changed (``stale``); on resume it sends the state
    as it is then. So what waits for a slow reader is bounded by one event, never a backlog.
    """

    def __init__(self, hub: EventHub, sink: Sink) -> None:
        self.hub = hub
        self.sink = sink
        self.paused = False
        self.closed = False
        self.stale = False
        self.last_sent: float | None = None
        self.sent_events = 0
        self.sent_keepalives = 0
        self._pending: IDelayedCall | None = None
        self._keepalive: IDelayedCall | None = None

    def changed(self) -> None:
        if self.closed or self._pending is not None:
            return
        if self.paused:
            self.stale = True
            return
        now = self.hub.clock.seconds()
        if self.last_sent is None or now - self.last_sent >= self.hub.min_interval:
            self.send_now()
        else:
            delay = self.last_sent + self.hub.min_interval - now
            self._pending = self.hub.clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._pending = None
        if self.closed:
            return
        if self.paused:
            self.stale = True
        else:
            self.send_now()

    def send_now(self) -> None:
        event = self.hub.current()
        self.last_sent = self.hub.clock.seconds()
        if event is None:
            self.arm_keepalive()
            return
        if self._write(event):
            self.sent_events += 1

    def _write(self, data: bytes) -> bool:
        try:
            self.sink.write(data)
        except Exception:
            self.close()  # the connection is gone
            return False
        self.arm_keepalive()
        return True

    def arm_keepalive(self) -> None:
        if self.closed:
            return
        if self._keepalive is not None and self._keepalive.active():
            self._keepalive.reset(self.hub.keepalive_after)
        else:
            self._keepalive = self.hub.clock.callLater(self.hub.keepalive_after, self._send_keepalive)

    def _send_keepalive(self) -> None:
        self._keepalive = None
        if self.closed:
            return
        if self.paused:
            self.arm_keepalive()  # the socket has bytes queued already
            return
        if self._write(KEEPALIVE):
            self.sent_keepalives += 1

    # IPushProducer, driven by the response's transport.
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.stale:
            self.stale = False
            self.changed()

    def stopProducing(self) -> None:
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for call in (self._pending, self._keepalive):
            if call is not None and call.active():
                call.cancel()
        self._pending = self._keepalive = None
        self.hub._remove(self)


def serve_events(hub: EventHub, request: Any) -> Deferred[None]:
    """Klein glue: SSE headers, subscribe, and unsubscribe when the client goes away.

    The returned Deferred never fires by itself; Klein cancels it when the client disconnects.
    """
    request.setResponseCode(200)
    for name, value in SSE_HEADERS:
        request.setHeader(name, value)
    sub: Subscriber | None = None

    def cancelled(_: Deferred[None]) -> None:
        if sub is not None:
            sub.close()

    done: Deferred[None] = Deferred(cancelled)
    sub = hub.subscribe(request)
    request.registerProducer(sub, True)

    def finished(_: Any) -> None:
        if sub is not None:
            sub.close()

    request.notifyFinish().addBoth(finished)
    return done
