"""NostrPool and Publisher against real relay processes: restart, drops, oversized events, delisting."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.application.internet import backoffPolicy
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from meshd.discovery.discover import discover
from meshd.discovery.keys import NostrKeys
from meshd.discovery.listing import MeshListing, build_listing_event
from meshd.discovery.nostr_pool import NostrPool
from meshd.discovery.publish import Publisher
from tests.integration.relays import (  # noqa: F401  (fixtures)
    RelayProcess,
    ScriptedRelay,
    py_relay_fixture,
    rust_relay_fixture,
    sdk_fetch,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

FAST_RETRY = backoffPolicy(initialDelay=0.2, maxDelay=1.0, factor=1.5, jitter=lambda: 0.05)


def token(seed: int) -> str:
    """A plain token of a node whose id is a real Ed25519 key (discovery drops any other)."""
    key = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32).public_key().public_bytes_raw()
    raw = json.dumps({"id": key.hex(), "addrs": [{"Ip": "127.0.0.1:1"}]}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def listing(seed: int = 1, **kw: Any) -> MeshListing:
    fields: dict[str, Any] = {
        "invite_token": token(seed),
        "serving": ["m"],
        "total_vram_bytes": 1,
        "node_count": 1,
    }
    fields.update(kw)
    return MeshListing(**fields)


def wait_until(predicate: Any, timeout: float = 20.0, step: float = 0.05) -> Deferred[None]:
    @pytest_twisted.inlineCallbacks
    def loop() -> Any:
        for _ in range(int(timeout / step)):
            if predicate():
                return
            yield deferLater(reactor, step)
        raise AssertionError("condition not reached in time")

    return loop()


def state_of(pool: NostrPool, url: str) -> dict[str, Any]:
    return next(s for s in pool.status() if s["url"] == url)


@pytest_twisted.inlineCallbacks
def test_relay_restart_reconnects_with_backoff_and_resubscribes(rust_relay: RelayProcess):
    pool = NostrPool(reactor, [rust_relay.url], retry_policy=FAST_RETRY)
    seen: list[str] = []
    eoses: list[str] = []
    pool.subscribe("live", [{"kinds": [1]}], lambda u, e: seen.append(e["content"]), eoses.append)
    pool.startService()
    try:
        yield wait_until(lambda: state_of(pool, rust_relay.url)["state"] == "up")
        rust_relay.stop()
        yield wait_until(lambda: state_of(pool, rust_relay.url)["state"] == "failing")
        yield wait_until(lambda: state_of(pool, rust_relay.url)["attempts"] >= 2)  # retried while down
        failing = state_of(pool, rust_relay.url)
        assert failing["last_error"]
        rust_relay.start()  # same port
        yield wait_until(lambda: state_of(pool, rust_relay.url)["state"] == "up")
        up = state_of(pool, rust_relay.url)
        assert up["attempts"] == 0 and up["since"] >= failing["since"]
        # the subscription was re-sent on reconnect: a new event reaches us live
        yield wait_until(lambda: len(eoses) >= 2)
        ev = NostrKeys.generate().sign(kind=1, tags=[], content="after-restart", created_at=int(time.time()))
        results = yield pool.publish(ev)
        assert results[0].accepted, results
        yield wait_until(lambda: "after-restart" in seen)
    finally:
        yield pool.stopService()


@pytest_twisted.inlineCallbacks
def test_relay_dropping_mid_subscription_does_not_disturb_the_other(py_relay: RelayProcess):
    dropper = ScriptedRelay(reactor, events=[], send_eose=False).start()
    dropper.extra_on_req.append(lambda proto: reactor.callLater(0.2, proto.transport.abortConnection))
    pool = NostrPool(reactor, [dropper.url, py_relay.url], retry_policy=FAST_RETRY)
    got: list[tuple[str, str]] = []
    pool.subscribe("live", [{"kinds": [1]}], lambda u, e: got.append((u, e["content"])), lambda u: None)
    pool.startService()
    try:
        yield wait_until(lambda: len(pool.up_urls()) == 2)
        yield wait_until(
            lambda: state_of(pool, dropper.url)["attempts"] >= 1 or state_of(pool, dropper.url)["state"] != "up"
        )
        ev = NostrKeys.generate().sign(kind=1, tags=[], content="still-flowing", created_at=int(time.time()))
        results = yield pool.publish(ev)
        by_url = {r.url: r for r in results}
        assert by_url[py_relay.url].accepted
        yield wait_until(lambda: (py_relay.url, "still-flowing") in got)
        assert state_of(pool, py_relay.url)["state"] == "up"
        # the dropping relay keeps being retried (and keeps dropping): REQ arrived more than once
        yield wait_until(lambda: sum(1 for m in dropper.received if m[0] == "REQ") >= 2)
    finally:
        yield pool.stopService()
        yield dropper.stop()


@pytest_twisted.inlineCallbacks
def test_one_mib_event_is_refused_cleanly(rust_relay: RelayProcess, py_relay: RelayProcess):
    keys = NostrKeys.generate()
    huge = build_listing_event(keys, listing(serving=["x" * (1024 * 1024)]), now=int(time.time()))
    normal = build_listing_event(NostrKeys.generate(), listing(2), now=int(time.time()))
    # 1) our own bound: refused locally, nothing sent
    pool = NostrPool(reactor, [rust_relay.url, py_relay.url])
    pool.startService()
    try:
        yield pool.wait_settled(10)
        results = yield pool.publish(huge)
        assert all(not r.accepted and "limit" in r.message for r in results)
    finally:
        yield pool.stopService()
    # 2) with our bound lifted the real relays refuse it (OK false, or close the connection)
    big_pool = NostrPool(reactor, [rust_relay.url, py_relay.url], max_message_bytes=4 * 1024 * 1024)
    big_pool.startService()
    try:
        yield big_pool.wait_settled(10)
        # rust-nostr answers OK false ("blocked: event size ..."); nostr-relay 1.14 never answers (timeout)
        results = yield big_pool.publish(huge, timeout=4)
        assert all(not r.accepted for r in results), results
        yield wait_until(lambda: len(big_pool.up_urls()) == 2)  # back up (reconnected if it was dropped)
        results = yield big_pool.publish(normal)
        assert all(r.accepted for r in results), results
    finally:
        yield big_pool.stopService()
    # 3) a relay that serves a 1 MiB message: that connection is closed, discovery still works
    flood = ScriptedRelay(reactor, events=[huge.to_dict()], send_eose=True).start()
    try:
        meshes = yield discover([flood.url, rust_relay.url], reactor, window=3.0)
        assert [m.listing.invite_token for m in meshes] == [token(2)]
    finally:
        yield flood.stop()


@pytest_twisted.inlineCallbacks
def test_publisher_publishes_honours_max_clients_and_delists(
    rust_relay: RelayProcess, py_relay: RelayProcess, tmp_path: Path
):
    current = {"listing": listing(5, max_clients=2, client_count=0, mesh_id="pub-mesh")}
    pool = NostrPool(reactor, [rust_relay.url, py_relay.url])
    pool.startService()
    publisher = Publisher(reactor, pool, lambda: current["listing"], state_dir=tmp_path / "state", interval=0.5)
    try:
        yield pool.wait_settled(10)
        publisher.startService()
        npub = publisher.npub
        assert (tmp_path / "state" / "nostr.nsec").exists()

        def listed() -> Deferred[list[str]]:
            return discover(pool, reactor).addCallback(lambda ms: [m.publisher_npub for m in ms])

        yield wait_until(lambda: len(publisher.published_ids) >= 1 and publisher.last_results)
        assert (yield listed()) == [npub]
        # mesh full -> delisted (NIP-09 deletion); the relays stop returning it
        current["listing"] = listing(5, max_clients=2, client_count=2, mesh_id="pub-mesh")
        yield wait_until(lambda: publisher.delisted)
        yield deferLater(reactor, 1.0)
        assert (yield listed()) == []
        # below the cap again -> re-published
        current["listing"] = listing(5, max_clients=2, client_count=1, mesh_id="pub-mesh")
        yield wait_until(lambda: not publisher.delisted)
        yield deferLater(reactor, 1.0)
        assert (yield listed()) == [npub]
        # stopService delists
        yield publisher.stopService()
        for relay in (rust_relay, py_relay):
            deletions = yield sdk_fetch(reactor, relay.url, {"kinds": [5], "authors": [publisher.keys.pubkey]})
            assert deletions, relay.kind
            tags = deletions[-1]["json"]["tags"]
            assert ["a", f"31990:{publisher.keys.pubkey}:mesh-llm"] in tags
            assert any(t[0] == "e" for t in tags)
        assert (yield listed()) == []
    finally:
        if publisher.running:
            yield publisher.stopService()
        yield pool.stopService()
