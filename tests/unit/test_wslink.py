"""WebSocketLink with a Clock, a scripted endpoint and an in-memory autobahn server (no sockets).

The retry policy is ``backoffPolicy(jitter=lambda: 0)`` and the ClientService runs on the Clock, so every
reconnect happens at an exact, checkable moment.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.application.internet import backoffPolicy
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher

from meshd.wslink import LinkConnection, LinkOptions, LinkState, LinkStopped, WebSocketLink
from tests.unit.ws_memory import MemoryEndpoint

POLICY = backoffPolicy(jitter=lambda: 0)  # 1.5, 2.25, 3.375, ... for levels 1, 2, 3, ...
URL = "ws://relay.test:7000"
# autobahn's handshake/close timers run on txaio's loop, not on the Clock: off in these tests.
QUIET = {"open_timeout": 0, "close_timeout": 0}


class Handler:
    """A recording LinkHandler: up at once on open (like Nostr) unless ``up_on_open`` is False; a binary
    b"deny" message denies the link, b"up" brings it up (a handshake, like iroh's)."""

    def __init__(self, up_on_open: bool = True) -> None:
        self.up_on_open = up_on_open
        self.events: list[Any] = []
        self.link: WebSocketLink | None = None
        self.fail_on_message = False

    def link_opened(self, conn: LinkConnection) -> None:
        self.events.append("opened")
        if self.up_on_open:
            assert self.link is not None
            self.link.set_up(conn)

    def link_message(self, conn: LinkConnection, payload: bytes, binary: bool) -> None:
        self.events.append(("message", payload, binary))
        assert self.link is not None
        if self.fail_on_message:
            raise RuntimeError("handler bug")
        if payload == b"deny":
            self.link.deny(conn, "no token")
        elif payload == b"up":
            self.link.set_up(conn)

    def link_closed(self, conn: LinkConnection) -> None:
        self.events.append("closed")


def make_link(clock: Clock, up_on_open: bool = True, **options: Any) -> tuple[WebSocketLink, MemoryEndpoint, Handler]:
    ep = MemoryEndpoint(clock)
    handler = Handler(up_on_open)
    link = WebSocketLink(
        clock,
        URL,
        ep,
        handler,
        ws_url=URL,
        retry_policy=POLICY,
        options=LinkOptions(**{**QUIET, **options}),
        label="test link",
    )
    handler.link = link
    return link, ep, handler


@pytest.fixture
def log_lines() -> Any:
    lines: list[tuple[LogLevel, str]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "meshd.wslink.WebSocketLink" and "(attempt" in event.get("log_format", ""):
            lines.append((event["log_level"], event["state"]))

    globalLogPublisher.addObserver(observer)
    yield lines
    globalLogPublisher.removeObserver(observer)


def test_refused_connects_back_off_by_the_policy_and_stop_ends_the_retries(log_lines: Any) -> None:
    clock = Clock()
    clock.advance(1000)
    link, ep, _ = make_link(clock)
    seen: list[LinkState] = []
    link.watch(lambda lk, state: seen.append(state))
    assert link.status() == {"url": URL, "state": "stopped", "last_error": None, "since": 1000, "attempts": 0}
    link.startService()
    s = link.status()
    assert s["state"] == "failing" and s["attempts"] == 1 and "scripted refusal" in s["last_error"]
    assert seen == [LinkState.CONNECTING, LinkState.FAILING]
    for level in range(1, 6):
        clock.advance(POLICY(level) - 0.001)
        assert len(ep.connects) == level
        clock.advance(0.001)
        assert len(ep.connects) == level + 1
        assert link.attempts == level + 1 and link.counters.connect_failures == level + 1
    gaps = [b - a for a, b in zip(ep.connects, ep.connects[1:], strict=False)]
    assert gaps == pytest.approx([POLICY(n) for n in range(1, 6)])
    # one line for the streak, then debug
    assert [level for level, _ in log_lines] == [LogLevel.info] + [LogLevel.debug] * 5
    link.stopService()
    assert link.state is LinkState.STOPPED and seen[-1] is LinkState.STOPPED
    n = len(ep.connects)
    clock.advance(10_000)
    assert len(ep.connects) == n


def test_up_when_up_counters_and_a_drop_then_reconnect(log_lines: Any) -> None:
    clock = Clock()
    link, ep, handler = make_link(clock)
    ep.outcomes = ["refuse", "accept", "accept"]
    early = link.when_up()
    link.startService()
    assert not early.called
    clock.advance(POLICY(1))
    assert link.state is LinkState.CONNECTING
    clock.advance(0.25)  # the websocket handshake takes a while
    ep.flush()
    assert link.is_up and link.state is LinkState.UP
    assert early.result is link
    assert link.when_up().result is link  # at once while up
    assert (link.attempts, link.last_error, link.counters.connects) == (0, None, 1)
    assert link.handshake_seconds == 0.25
    assert handler.events == ["opened"]
    ep.drop()
    assert handler.events == ["opened", "closed"]
    assert link.state is LinkState.FAILING and link.counters.disconnects == 1
    assert link.last_error is not None and link.last_error.startswith("connection closed (code")
    pending = link.when_up()
    assert not pending.called
    # a new streak logs again
    assert [level for level, _ in log_lines] == [LogLevel.info, LogLevel.info]
    link.stopService()
    assert pending.called
    pending.addErrback(lambda f: f.trap(LinkStopped))


def test_backoff_resets_only_after_a_stable_connection() -> None:
    clock = Clock()
    link, ep, _ = make_link(clock, stable_after=10.0)
    ep.outcomes = ["accept", "accept", "accept", "accept"]
    link.startService()
    ep.flush()
    assert link.is_up
    clock.advance(3)  # up for less than stable_after
    ep.drop()
    dropped = clock.seconds()
    clock.advance(POLICY(1))
    assert ep.connects[-1] == pytest.approx(dropped + POLICY(1))  # level 1
    ep.flush()
    assert link.is_up
    ep.drop()  # at once again: the level goes on from 1
    dropped = clock.seconds()
    clock.advance(POLICY(1))
    assert len(ep.connects) == 2
    clock.advance(POLICY(2) - POLICY(1))
    assert ep.connects[-1] == pytest.approx(dropped + POLICY(2))
    ep.flush()
    clock.advance(10)  # stable now
    ep.drop()
    dropped = clock.seconds()
    clock.advance(POLICY(1))
    assert ep.connects[-1] == pytest.approx(dropped + POLICY(1))  # back to level 1
    link.stopService()


def test_denial_is_its_own_state_and_keeps_backing_off(log_lines: Any) -> None:
    """A server that accepts TCP and then denies us is retried ever more slowly (not once a second)."""
    clock = Clock()
    link, ep, handler = make_link(clock, up_on_open=False)
    ep.outcomes = ["accept"] * 4
    ep.greeting = b"deny"
    link.startService()
    ep.flush()
    assert link.state is LinkState.DENIED
    assert link.last_error == "denied: no token" and link.counters.denied == 1 and link.attempts == 1
    assert link.connection is None and handler.events[-1] == "closed"  # we closed, the close did not count again
    assert link.counters.disconnects == 0  # it was never up
    for level in (1, 2, 3):
        start = clock.seconds()
        clock.advance(POLICY(level) - 0.001)
        assert link.state is LinkState.DENIED
        clock.advance(0.001)
        assert ep.connects[-1] == pytest.approx(start + POLICY(level))
        assert link.state is LinkState.CONNECTING
        ep.flush()
        assert link.state is LinkState.DENIED and link.counters.denied == level + 1
    assert [level for level, _ in log_lines] == [LogLevel.warn] + [LogLevel.debug] * 3
    link.stopService()


def test_failure_then_denial_logs_the_denial() -> None:
    clock = Clock()
    link, ep, _ = make_link(clock, up_on_open=False)
    ep.outcomes = ["refuse", "accept"]
    ep.greeting = b"deny"
    lines: list[LogLevel] = []

    def observer(event: dict[str, Any]) -> None:
        if "(attempt" in event.get("log_format", ""):
            lines.append(event["log_level"])

    globalLogPublisher.addObserver(observer)
    try:
        link.startService()
        clock.advance(POLICY(1))
        ep.flush()
    finally:
        globalLogPublisher.removeObserver(observer)
    assert link.state is LinkState.DENIED and link.attempts == 2
    assert lines == [LogLevel.info, LogLevel.warn]
    link.stopService()


def test_handshake_before_up_queue_bound_and_drain_order() -> None:
    clock = Clock()
    link, ep, _ = make_link(clock, up_on_open=False, max_queue=3)
    ep.outcomes = ["accept"]
    for i in range(5):
        assert link.send(b"m%d" % i, binary=True)
    assert link.queued == 3 and link.counters.queue_drops == 2
    link.startService()
    ep.flush()
    assert link.state is LinkState.CONNECTING and link.connection is not None  # open, handshake pending
    assert ep.received == []  # nothing goes out before the handler says up
    assert ep.server is not None
    ep.server.sendMessage(b"up", isBinary=True)
    ep.flush()
    assert link.is_up and link.queued == 0
    assert ep.received == [b"m2", b"m3", b"m4"]  # oldest dropped, order kept
    link.stopService()


def test_without_a_queue_a_send_while_not_up_is_refused() -> None:
    clock = Clock()
    link, ep, _ = make_link(clock)
    assert link.send(b"early", binary=False) is False
    assert link.queued == 0
    ep.outcomes = ["accept"]
    link.startService()
    ep.flush()
    assert link.send(b"now", binary=False) is True
    ep.flush()
    assert ep.received == [b"now"]
    link.stopService()


def test_backpressure_holds_queued_sends_until_the_transport_drains() -> None:
    clock = Clock()
    link, ep, _ = make_link(clock, max_queue=10)
    ep.outcomes = ["accept"]
    link.startService()
    ep.flush()
    conn = link.connection
    assert conn is not None
    conn.pauseProducing()  # what a full transport buffer does
    link.send(b"a", binary=True)
    link.send(b"b", binary=True)
    ep.flush()
    assert ep.received == [] and link.queued == 2
    conn.resumeProducing()
    ep.flush()
    assert ep.received == [b"a", b"b"] and link.queued == 0
    link.stopService()


def test_queue_survives_a_reconnect_and_is_cleared_on_stop() -> None:
    clock = Clock()
    link, ep, _ = make_link(clock, max_queue=10)
    ep.outcomes = ["accept", "accept"]
    link.startService()
    ep.flush()
    ep.drop()
    link.send(b"while down", binary=True)
    clock.advance(POLICY(1))
    ep.flush()
    assert ep.received == [b"while down"]
    link.send(b"x", binary=True)
    link.stopService()
    assert link.queued == 0


def test_oversized_message_fails_the_connection_and_the_link_reconnects() -> None:
    clock = Clock()
    link, ep, handler = make_link(clock, max_message_bytes=1024)
    ep.outcomes = ["accept", "accept"]
    link.startService()
    ep.flush()
    assert ep.server is not None
    ep.server.sendMessage(b"x" * 4096, isBinary=True)
    ep.flush()
    assert not any(isinstance(e, tuple) for e in handler.events)  # never reached the handler
    assert link.state is LinkState.FAILING
    # autobahn fails the connection with 1009 by dropping it (failByDrop), so the close we see is 1006
    assert link.last_error is not None and "exceeds payload limit of 1024" in link.last_error
    clock.advance(POLICY(1))
    ep.flush()
    assert link.is_up
    link.stopService()


def test_headers_and_subprotocols_reach_the_server() -> None:
    clock = Clock()
    link, ep, _ = make_link(clock, subprotocols=("proto-v2", "proto-v1"), headers={"Authorization": "Bearer s3cret"})
    ep.outcomes = ["accept"]
    ep.pick_subprotocol = "proto-v1"
    link.startService()
    ep.flush()
    assert link.is_up
    request = ep.requests[0]
    assert request.headers["authorization"] == "Bearer s3cret"
    assert request.protocols == ["proto-v2", "proto-v1"]
    assert link.connection is not None and link.connection.subprotocol == "proto-v1"
    link.stopService()


def test_a_server_that_picks_no_subprotocol_fails_the_handshake(logged_errors: Any) -> None:
    clock = Clock()
    link, ep, handler = make_link(clock, subprotocols=("proto-v2",))
    ep.outcomes = ["accept"]
    ep.pick_subprotocol = None
    link.startService()
    ep.flush()
    assert link.state is LinkState.FAILING and not handler.events
    assert link.last_error is not None and link.last_error.startswith("websocket handshake failed")
    logged_errors.flush(lambda e: "onConnect failed" in str(e.get("log_format", "")))  # autobahn's own line
    link.stopService()


def test_stop_while_up_closes_and_fails_waiters_but_not_the_up_ones() -> None:
    clock = Clock()
    link, ep, handler = make_link(clock, up_on_open=False)
    ep.outcomes = ["accept"]
    link.startService()
    ep.flush()
    waiting = link.when_up()
    cancelled = link.when_up()
    cancelled.cancel()
    assert isinstance(cancelled.result.value, CancelledError)
    cancelled.addErrback(lambda _: None)
    link.stopService()
    assert link.state is LinkState.STOPPED
    ep.flush()
    assert handler.events == ["opened", "closed"]
    assert isinstance(waiting.result.value, LinkStopped)
    waiting.addErrback(lambda _: None)
    clock.advance(1000)
    assert len(ep.connects) == 1 and link.state is LinkState.STOPPED


def test_stop_during_a_connect_attempt_is_not_a_failure(log_lines: Any) -> None:
    clock = Clock()
    link, ep, _ = make_link(clock)
    ep.outcomes = ["hang"]
    link.startService()
    assert link.state is LinkState.CONNECTING
    link.stopService()
    assert link.state is LinkState.STOPPED
    assert link.counters.connect_failures == 0 and link.attempts == 0 and log_lines == []


def test_listener_and_handler_bugs_are_logged_and_contained(logged_errors: Any) -> None:
    clock = Clock()
    link, ep, handler = make_link(clock)
    ep.outcomes = ["accept"]
    seen: list[LinkState] = []

    def broken(lk: WebSocketLink, state: LinkState) -> None:
        raise RuntimeError("listener bug")

    link.watch(broken)
    unwatch = link.watch(lambda lk, state: seen.append(state))
    link.startService()
    ep.flush()
    assert link.is_up and seen == [LinkState.CONNECTING, LinkState.UP]
    handler.fail_on_message = True
    assert ep.server is not None
    ep.server.sendMessage(b"boom", isBinary=True)
    ep.flush()
    assert link.is_up  # the handler's bug did not cost the connection
    failures = logged_errors.flush()
    assert len(failures) == 3  # two listener calls and one handler call
    unwatch()
    link.stopService()
    assert seen == [LinkState.CONNECTING, LinkState.UP]
    logged_errors.flush()


def test_options_reach_autobahn() -> None:
    clock = Clock()
    link, ep, _ = make_link(clock, max_message_bytes=2048, ping_interval=0)
    ep.outcomes = ["accept"]
    link.startService()
    ep.flush()
    conn = link.connection
    assert conn is not None
    assert (conn.maxMessagePayloadSize, conn.maxFramePayloadSize, conn.autoPingInterval) == (2048, 2048, 0)
    link.stopService()


ACTIONS = st.lists(
    st.sampled_from(["refuse", "accept", "deny", "hang", "flush", "drop", "tick", "long", "stop", "start", "send"]),
    max_size=40,
)


@given(ACTIONS)
def test_any_sequence_keeps_the_link_consistent(actions: list[str]) -> None:
    """Whatever the network does, in any order: one state at a time, up only with an open connection,
    attempts 0 exactly while up, nothing connects while stopped, the queue stays bounded."""
    clock = Clock()
    link, ep, _ = make_link(clock, up_on_open=True, max_queue=4)
    link.startService()
    for action in actions:
        if action in ("refuse", "accept", "hang"):
            ep.outcomes.append(action)
        elif action == "deny":
            ep.outcomes.append("accept")
            ep.greeting = b"deny"
            link._handler.up_on_open = False  # type: ignore[attr-defined]
        elif action == "flush" and ep.pump is not None:
            ep.flush()
        elif action == "drop" and ep.server is not None and ep.server.transport is not None:
            ep.server.transport.loseConnection()
            ep.flush()
        elif action == "tick":
            clock.advance(POLICY(1))
        elif action == "long":
            clock.advance(60)
        elif action == "stop" and link.running:
            link.stopService()
            if ep.pump is not None:
                ep.flush()
        elif action == "start" and not link.running:
            link.startService()
        elif action == "send":
            link.send(b"x", binary=True)
        assert link.is_up == (link.state is LinkState.UP)
        if link.is_up:
            assert link.connection is not None and link.attempts == 0 and link.last_error is None
        if not link.running:
            assert link.state is LinkState.STOPPED
            n = len(ep.connects)
            clock.advance(1000)
            assert len(ep.connects) == n
        assert link.queued <= 4
    if link.running:
        link.stopService()
        if ep.pump is not None:
            ep.flush()
    assert link.state is LinkState.STOPPED and link.connection is None
