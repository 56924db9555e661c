"""The /api/events core (meshd.web.events) on a Clock: first event, coalescing, keepalive, slow readers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.task import Clock

from meshd.web.events import KEEPALIVE, EventHub, encode_event


class Sink:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.broken = False

    def write(self, data: bytes) -> None:
        if self.broken:
            raise RuntimeError("connection lost")
        self.writes.append(data)

    def events(self) -> list[Any]:
        return [json.loads(w[len(b"data: ") :]) for w in self.writes if w.startswith(b"data: ")]

    def keepalives(self) -> int:
        return sum(1 for w in self.writes if w == KEEPALIVE)


class State:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> dict[str, Any]:
        return {"n": self.n, "peers": [{"id": "p"}] * (self.n % 3)}


def make_hub() -> tuple[Clock, State, EventHub]:
    clock = Clock()
    clock.advance(1000)
    state = State()
    return clock, state, EventHub(clock, state)


def test_event_wire_format_is_one_data_line() -> None:
    event = encode_event({"a": "line\nbreak", "b": [1, 2]})
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert event.count(b"\n") == 2
    assert json.loads(event[6:]) == {"a": "line\nbreak", "b": [1, 2]}


def test_first_event_at_once_then_each_change() -> None:
    clock, state, hub = make_hub()
    sink = Sink()
    hub.subscribe(sink)
    assert sink.events() == [{"n": 0, "peers": []}]
    clock.advance(5)
    state.n = 1
    hub.changed()
    assert [e["n"] for e in sink.events()] == [0, 1]


def test_changes_within_a_second_coalesce_into_one_event_with_the_newest_state() -> None:
    clock, state, hub = make_hub()
    sink = Sink()
    hub.subscribe(sink)
    clock.advance(2)
    state.n = 1
    hub.changed()  # sent now: the window was open
    for i in range(2, 12):
        clock.advance(0.0625)
        state.n = i
        hub.changed()
    assert [e["n"] for e in sink.events()] == [0, 1]
    clock.advance(0.3125)
    assert [e["n"] for e in sink.events()] == [0, 1]
    clock.advance(0.0625)
    assert [e["n"] for e in sink.events()] == [0, 1, 11]
    # 10 s of continuous changes, 20 a second: at most one event per second.
    for i in range(200):
        clock.advance(0.05)
        state.n = 100 + i
        hub.changed()
    clock.advance(1)
    ns = [e["n"] for e in sink.events()]
    assert 10 <= len(ns) - 3 <= 11
    assert ns[-1] == 299
    assert hub.events_built == len(ns)


def test_keepalive_after_fifteen_quiet_seconds_and_events_reset_it() -> None:
    clock, state, hub = make_hub()
    sink = Sink()
    hub.subscribe(sink)
    clock.advance(14.9)
    assert sink.keepalives() == 0
    clock.advance(0.1)
    assert sink.keepalives() == 1
    assert sink.writes[-1] == b": keepalive\n\n"
    clock.advance(10)
    state.n = 5
    hub.changed()
    clock.advance(14.5)
    assert sink.keepalives() == 1
    clock.advance(0.5)
    assert sink.keepalives() == 2
    clock.advance(15)
    assert sink.keepalives() == 3
    assert len(sink.events()) == 2


def test_a_paused_reader_gets_only_the_latest_state_on_resume() -> None:
    clock, state, hub = make_hub()
    fast, slow = Sink(), Sink()
    hub.subscribe(fast)
    sub = hub.subscribe(slow)
    sub.pauseProducing()
    for i in range(1, 50):
        clock.advance(1.0)
        state.n = i
        hub.changed()
        assert sub.stale  # a flag, not a queue
    assert [e["n"] for e in slow.events()] == [0]
    assert len(fast.events()) == 50
    clock.advance(60)  # no keepalives pile up behind a full socket either
    assert slow.keepalives() == 0
    sub.resumeProducing()
    assert [e["n"] for e in slow.events()] == [0, 49]
    assert not sub.stale


def test_disconnect_cleans_up_timers_and_subscription() -> None:
    clock, state, hub = make_hub()
    a, b = Sink(), Sink()
    sub_a = hub.subscribe(a)
    hub.subscribe(b)
    clock.advance(0.5)
    hub.changed()  # pending: inside the window
    assert len(clock.getDelayedCalls()) == 4  # two keepalives and two pending sends
    sub_a.stopProducing()
    assert sub_a.closed and sub_a not in hub.subscribers
    b.broken = True  # the next write finds b's connection gone
    clock.advance(0.5)
    assert len(hub.subscribers) == 0
    assert clock.getDelayedCalls() == []
    state.n = 7
    hub.changed()
    assert clock.getDelayedCalls() == []
    assert len(a.events()) == 1


def test_no_subscribers_means_no_work() -> None:
    clock, _, hub = make_hub()
    hub.changed()
    assert hub.events_built == 0 and clock.getDelayedCalls() == []


def test_a_failing_snapshot_is_logged_and_the_stream_keeps_its_keepalive(logged_errors: Any) -> None:
    clock = Clock()

    def broken() -> Any:
        raise ValueError("boom")

    hub = EventHub(clock, broken)
    sink = Sink()
    hub.subscribe(sink)
    assert sink.writes == []
    clock.advance(15)
    assert sink.keepalives() == 1
    assert len(logged_errors.flush()) == 1


@pytest.mark.parametrize("interval", [0.25, 2.0])
def test_interval_is_configurable(interval: float) -> None:
    clock = Clock()
    state = State()
    hub = EventHub(clock, state, min_interval=interval)
    sink = Sink()
    hub.subscribe(sink)
    state.n = 1
    hub.changed()
    clock.advance(interval - 0.01)
    assert len(sink.events()) == 1
    clock.advance(0.01)
    assert [e["n"] for e in sink.events()] == [0, 1]
