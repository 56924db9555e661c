"""NostrPool with a Clock, a scripted endpoint and an in-memory autobahn server (no sockets)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.application.internet import backoffPolicy
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from meshd.discovery.discover import discover
from meshd.discovery.keys import NostrKeys
from meshd.discovery.listing import MeshListing, build_listing_event
from meshd.discovery.nostr_pool import NostrPool, validate_relay_url
from tests.unit.ws_memory import MemoryEndpoint, ServerProto

POLICY = backoffPolicy(jitter=lambda: 0)
URL_A = "ws://relay-a.test:7000"
URL_B = "wss://relay-b.test"


class NostrServerProto(ServerProto):
    """The in-memory relay: records each message decoded, and can send JSON."""

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.owner.received.append(json.loads(payload))

    def send_json(self, obj: Any) -> None:
        self.sendMessage(json.dumps(obj).encode())


class ScriptedEndpoint(MemoryEndpoint):
    """Each connect() pops an outcome: "refuse" fails; "accept" wires an in-memory relay (JSON messages)."""

    protocol = NostrServerProto


@pytest.fixture
def logged_errors() -> Any:
    errors: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None:
            errors.append(event)

    globalLogPublisher.addObserver(observer)
    yield errors
    globalLogPublisher.removeObserver(observer)


def make_pool(clock: Clock, urls: list[str], **kw: Any) -> tuple[NostrPool, dict[str, ScriptedEndpoint]]:
    endpoints = {u: ScriptedEndpoint(clock) for u in urls}
    options: dict[str, Any] = {
        "retry_policy": POLICY,
        "endpoint_factory": endpoints.__getitem__,
        "ping_interval": 0,
        "open_timeout": 0,
        "stable_after": 10.0,
    }
    options.update(kw)
    return NostrPool(clock, urls, **options), endpoints


def state(pool: NostrPool, url: str) -> dict[str, Any]:
    return next(s for s in pool.status() if s["url"] == url)


def test_url_validation() -> None:
    assert validate_relay_url("wss://relay.damus.io") == (True, "relay.damus.io", 443)
    assert validate_relay_url("ws://127.0.0.1:7000/path") == (False, "127.0.0.1", 7000)
    for bad in ("http://x", "relay.damus.io", "ws://", "ws://x:notaport"):
        with pytest.raises(ValueError):
            validate_relay_url(bad)
    with pytest.raises(ValueError):
        NostrPool(Clock(), ["https://nope"])


def test_backoff_and_status_while_refused(logged_errors: list[Any]) -> None:
    clock = Clock()
    clock.advance(1000)
    pool, eps = make_pool(clock, [URL_A])
    ep = eps[URL_A]
    assert state(pool, URL_A)["state"] == "stopped"
    pool.startService()
    s = state(pool, URL_A)
    assert s["state"] == "failing" and s["attempts"] == 1 and "refus" in s["last_error"].lower()
    assert s["since"] == 1000
    # delays follow the policy on our own consecutive-failure count: 1.5, 2.25, 3.375 ...
    for attempt in range(1, 5):
        delay = POLICY(attempt)
        clock.advance(delay - 0.001)
        assert len(ep.connects) == attempt
        clock.advance(0.001)
        assert len(ep.connects) == attempt + 1
        assert state(pool, URL_A)["attempts"] == attempt + 1
    gaps = [b - a for a, b in zip(ep.connects, ep.connects[1:], strict=False)]
    assert gaps == sorted(gaps) and gaps[0] < gaps[-1]
    pool.stopService()
    assert state(pool, URL_A)["state"] == "stopped"
    n = len(ep.connects)
    clock.advance(1000)
    assert len(ep.connects) == n  # no retries after stop
    assert logged_errors == []


def test_up_subscribe_events_drop_and_resubscribe(logged_errors: list[Any]) -> None:
    clock = Clock()
    pool, eps = make_pool(clock, [URL_A])
    ep = eps[URL_A]
    ep.outcomes = ["refuse", "accept", "refuse", "accept"]
    got: list[tuple[str, Any]] = []
    pool.subscribe("s1", [{"kinds": [31990]}], lambda u, e: got.append((u, e)), lambda u: got.append((u, "EOSE")))
    pool.startService()
    assert state(pool, URL_A)["state"] == "failing"
    clock.advance(POLICY(1))
    assert state(pool, URL_A)["state"] == "connecting"
    ep.flush()  # websocket handshake
    s = state(pool, URL_A)
    assert s["state"] == "up" and s["attempts"] == 0 and s["last_error"] is None
    assert ep.received == [["REQ", "s1", {"kinds": [31990]}]]

    assert ep.server is not None
    ep.server.send_json(["EVENT", "s1", {"id": "x"}])
    ep.server.send_json(["EVENT", "other-sub", {"id": "y"}])  # unknown subscription: ignored
    ep.server.sendMessage(b"{garbage")
    ep.server.sendMessage(b"\x00\x01", isBinary=True)
    ep.server.send_json(["NOTICE", "hello"])
    ep.server.send_json(["AUTH", "challenge"])
    ep.server.send_json(["EOSE", "s1"])
    ep.flush()
    assert got == [(URL_A, {"id": "x"}), (URL_A, "EOSE")]
    assert state(pool, URL_A)["state"] == "up"  # bad data did not cost the connection

    ep.drop()
    s = state(pool, URL_A)
    assert s["state"] == "failing" and s["attempts"] == 1 and "closed" in s["last_error"]
    # it was up < stable_after, so backoff continues from where it was (level 2 now)
    clock.advance(POLICY(2))
    assert len(ep.connects) == 3 and state(pool, URL_A)["attempts"] == 2
    clock.advance(POLICY(3))
    ep.flush()
    assert state(pool, URL_A)["state"] == "up"
    assert ep.received[-1] == ["REQ", "s1", {"kinds": [31990]}]  # re-sent on reconnect

    pool.unsubscribe("s1")
    ep.flush()
    assert ep.received[-1] == ["CLOSE", "s1"]
    pool.stopService()
    ep.flush()
    assert state(pool, URL_A)["state"] == "stopped"
    assert logged_errors == []


def test_callback_errors_are_contained(logged_errors: list[Any]) -> None:
    clock = Clock()
    pool, eps = make_pool(clock, [URL_A])
    eps[URL_A].outcomes = ["accept"]
    pool.startService()
    eps[URL_A].flush()

    def boom(url: str, event: Any) -> None:
        raise RuntimeError("subscriber bug")

    pool.subscribe("s", [{}], boom, lambda u: None)
    assert eps[URL_A].server is not None
    eps[URL_A].server.send_json(["EVENT", "s", {}])
    eps[URL_A].server.send_json(["EVENT", "s", {}])
    eps[URL_A].flush()
    assert len(logged_errors) == 2  # logged, and the connection survived both
    assert state(pool, URL_A)["state"] == "up"
    pool.stopService()


def test_oversized_message_closes_only_that_relay() -> None:
    clock = Clock()
    pool, eps = make_pool(clock, [URL_A, URL_B], max_message_bytes=1024)
    for ep in eps.values():
        ep.outcomes = ["accept"]
    got: list[str] = []
    pool.subscribe("s", [{}], lambda u, e: got.append(u), lambda u: None)
    pool.startService()
    for ep in eps.values():
        ep.flush()
    assert {s["state"] for s in pool.status()} == {"up"}
    a, b = eps[URL_A], eps[URL_B]
    assert a.server is not None and b.server is not None
    a.server.send_json(["EVENT", "s", {"content": "x" * 4096}])
    b.server.send_json(["EVENT", "s", {"content": "fine"}])
    a.flush()
    b.flush()
    assert got == [URL_B]
    assert state(pool, URL_A)["state"] == "failing"
    assert "exceeds payload limit" in state(pool, URL_A)["last_error"]
    assert state(pool, URL_B)["state"] == "up"
    pool.stopService()


def test_publish_results_ok_timeout_and_not_connected() -> None:
    clock = Clock()
    pool, eps = make_pool(clock, [URL_A, URL_B], publish_timeout=5)
    eps[URL_A].outcomes = ["accept"]
    pool.startService()
    eps[URL_A].flush()
    keys = NostrKeys.generate()
    ev = keys.sign(kind=1, tags=[], content="hi", created_at=1)
    d = pool.publish(ev)
    eps[URL_A].flush()
    assert eps[URL_A].received[-1] == ["EVENT", ev.to_dict()]
    assert not d.called
    assert eps[URL_A].server is not None
    eps[URL_A].server.send_json(["OK", ev.id, True, ""])
    eps[URL_A].flush()
    results = d.result
    assert [(r.url, r.accepted) for r in results] == [(URL_A, True), (URL_B, False)]
    assert "not connected" in results[1].message

    ev2 = keys.sign(kind=1, tags=[], content="again", created_at=2)
    d2 = pool.publish(ev2)
    clock.advance(5)
    assert d2.result[0].message == "timed out waiting for OK"

    big = keys.sign(kind=1, tags=[], content="x" * (600 * 1024), created_at=3)
    d3 = pool.publish(big)
    assert all(not r.accepted and "limit" in r.message for r in d3.result)
    pool.stopService()


def test_discover_with_clock_window_and_eose() -> None:
    clock = Clock()
    clock.advance(1_700_000_000)
    pool, eps = make_pool(clock, [URL_A, URL_B])
    eps[URL_A].outcomes = ["accept"]
    eps[URL_B].outcomes = ["accept"]
    pool.startService()
    keys = NostrKeys.generate()
    ev = build_listing_event(
        keys,
        MeshListing(invite_token=_token(), serving=[], total_vram_bytes=0, node_count=1),
        now=int(clock.seconds()),
    )
    d = discover(pool, clock, window=5.0)
    for ep in eps.values():
        ep.flush()
    sub = eps[URL_A].received[-1][1]
    assert eps[URL_A].received[-1] == ["REQ", sub, {"kinds": [31990], "#k": ["mesh-llm"], "limit": 100}]
    assert eps[URL_A].server is not None and eps[URL_B].server is not None
    eps[URL_A].server.send_json(["EVENT", sub, ev.to_dict()])
    eps[URL_A].server.send_json(["EOSE", sub])
    eps[URL_A].flush()
    assert not d.called  # B is up and has not finished
    eps[URL_B].server.send_json(["EOSE", sub])
    eps[URL_B].flush()
    assert [m.publisher_npub for m in d.result] == [keys.npub]
    for ep in eps.values():
        ep.flush()
    assert eps[URL_B].received[-1] == ["CLOSE", sub]

    d2 = discover(pool, clock, window=5.0)  # B never answers this time
    for ep in eps.values():
        ep.flush()
    sub2 = eps[URL_A].received[-1][1]
    eps[URL_A].server.send_json(["EOSE", sub2])
    eps[URL_A].flush()
    assert not d2.called
    clock.advance(5.0)
    assert d2.result == []
    pool.stopService()


def _token() -> str:
    from meshd.identity import Identity
    from meshd.protocol.token import EndpointAddr, encode_token

    return encode_token(EndpointAddr(Identity.generate().public_bytes, ip_addrs=(("127.0.0.1", 4000),)))
