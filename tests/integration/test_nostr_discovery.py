"""Discovery against real relays: rust-nostr's LocalRelay and PyPI nostr-relay (subprocesses)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import nostr_sdk
import pytest
import pytest_twisted
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet import reactor
from twisted.internet.task import deferLater

from meshd.discovery.discover import discover
from meshd.discovery.errors import NoRelayAvailable
from meshd.discovery.keys import NostrKeys
from meshd.discovery.listing import MeshFilter, MeshListing, build_listing_event, discovery_filter
from meshd.discovery.nostr_pool import NostrPool
from meshd.discovery.scoring import score_mesh, smart_auto
from tests.integration.relays import (  # noqa: F401  (fixtures)
    RelayProcess,
    ScriptedRelay,
    dead_relay_url,
    py_relay_fixture,
    rust_relay_fixture,
    sdk_fetch,
    sdk_publish,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def token(seed: int = 1) -> str:
    """A plain invite token for a node whose id is a real Ed25519 key (discovery drops any other)."""
    key = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32).public_key().public_bytes_raw()
    addr = {"id": key.hex(), "addrs": [{"Ip": "127.0.0.1:4000"}]}
    return base64.urlsafe_b64encode(json.dumps(addr, separators=(",", ":")).encode()).decode().rstrip("=")


def mesh_llm_listing_json(seed: int, **kw: Any) -> str:
    """Content shaped exactly like mesh-llm's serde output (struct order, optionals omitted)."""
    obj: dict[str, Any] = {
        "invite_token": token(seed),
        "serving": ["Qwen3-8B-Q4_K_M"],
        "wanted": ["GLM-4.7-Flash-Q4_K_M"],
        "on_disk": [],
        "total_vram_bytes": 24_000_000_000,
        "node_count": 2,
        "client_count": 0,
        "max_clients": 0,
    }
    obj.update(kw)
    return json.dumps(obj, separators=(",", ":"))


def sdk_listing_event(keys: nostr_sdk.Keys, content: str, *, created_at: int, ttl: int = 120) -> dict[str, Any]:
    tags = [["d", "mesh-llm"], ["k", "mesh-llm"], ["expiration", str(created_at + ttl)]]
    ev = (
        nostr_sdk.EventBuilder(nostr_sdk.Kind(31990), content)
        .tags([nostr_sdk.Tag.parse(t) for t in tags])
        .custom_created_at(nostr_sdk.Timestamp.from_secs(created_at))
        .finalize(keys)
    )
    return json.loads(ev.as_json())


@pytest_twisted.inlineCallbacks
def test_nostr_sdk_listing_discovered_and_scored(rust_relay: RelayProcess, py_relay: RelayProcess, tmp_path: Path):
    now = int(time.time())
    a, b = nostr_sdk.Keys.generate(), nostr_sdk.Keys.generate()
    ev_a = sdk_listing_event(a, mesh_llm_listing_json(1, node_count=3, mesh_id="m-a"), created_at=now - 5)
    ev_b = sdk_listing_event(b, mesh_llm_listing_json(2, name="bobs", region="EU"), created_at=now - 5)
    for relay in (rust_relay, py_relay):
        oks = yield sdk_publish(reactor, relay.url, [ev_a, ev_b], tmp_path)
        assert [ok[1] for ok in oks] == [True, True], oks

    meshes = yield discover([rust_relay.url, py_relay.url], reactor)
    assert [m.publisher_npub for m in meshes] == [a.public_key().to_bech32(), b.public_key().to_bech32()]
    top = meshes[0]
    assert top.listing.to_json() == ev_a["content"]  # byte-identical re-serialization
    assert top.published_at == now - 5 and top.expires_at == now + 115
    assert score_mesh(top, "m-a") == 100 + 300 + 500 + 15 + 10 + 15
    assert [tok for tok, _ in smart_auto(meshes, None).join] == [token(1)]  # "bobs" is not auto-eligible
    assert [tok for tok, _ in smart_auto(meshes, "BOBS").join] == [token(2)]

    only_eu = yield discover([py_relay.url], reactor, mesh_filter=MeshFilter(region="eu"))
    assert [m.listing.name for m in only_eu] == ["bobs"]


@pytest_twisted.inlineCallbacks
def test_meshd_listing_fetched_and_verified_by_nostr_sdk(rust_relay: RelayProcess, py_relay: RelayProcess):
    keys = NostrKeys.generate()
    listing = MeshListing(
        invite_token=token(7),
        serving=["Llama-ü"],
        total_vram_bytes=8_000_000_000,
        node_count=1,
        name="mesh-llm",
    )
    pool = NostrPool(reactor, [rust_relay.url, py_relay.url])
    pool.startService()
    try:
        yield pool.wait_settled(10)
        event = build_listing_event(keys, listing, now=int(time.time()))
        results = yield pool.publish(event)
        assert [(r.url, r.accepted) for r in results] == [(rust_relay.url, True), (py_relay.url, True)], results
    finally:
        yield pool.stopService()
    for relay in (rust_relay, py_relay):
        fetched = yield sdk_fetch(reactor, relay.url, {"kinds": [31990], "authors": [keys.pubkey]})
        assert len(fetched) == 1
        assert fetched[0]["json"] == event.to_dict()
        assert fetched[0]["author_npub"] == keys.npub
        assert MeshListing.from_json(fetched[0]["json"]["content"]) == listing


@pytest_twisted.inlineCallbacks
def test_dead_relay_does_not_block_discovery(rust_relay: RelayProcess, py_relay: RelayProcess, tmp_path: Path):
    now = int(time.time())
    k = nostr_sdk.Keys.generate()
    yield sdk_publish(
        reactor, rust_relay.url, [sdk_listing_event(k, mesh_llm_listing_json(3), created_at=now)], tmp_path
    )
    dead = dead_relay_url()
    pool = NostrPool(reactor, [dead, rust_relay.url, py_relay.url])
    pool.startService()
    try:
        meshes = yield discover(pool, reactor, window=5.0)
        assert [m.publisher_npub for m in meshes] == [k.public_key().to_bech32()]
        states = {s["url"]: s for s in pool.status()}
        assert states[dead]["state"] in ("failing", "connecting")
        assert states[dead]["attempts"] >= 1 and "refused" in (states[dead]["last_error"] or "").lower()
        assert states[rust_relay.url]["state"] == states[py_relay.url]["state"] == "up"
    finally:
        yield pool.stopService()
    assert {s["state"] for s in pool.status()} == {"stopped"}


@pytest_twisted.inlineCallbacks
def test_all_relays_dead_fails_clearly():
    urls = [dead_relay_url(), dead_relay_url()]
    with pytest.raises(NoRelayAvailable, match=r"Could not connect to any Nostr relay \(tried 2\)"):
        yield discover(urls, reactor, window=5.0)


@pytest_twisted.inlineCallbacks
def test_relay_never_sending_eose_is_bounded_by_window(rust_relay: RelayProcess, tmp_path: Path):
    now = int(time.time())
    good_keys, silent_keys = NostrKeys.generate(), NostrKeys.generate()
    good = build_listing_event(
        good_keys, MeshListing(invite_token=token(4), serving=[], total_vram_bytes=0, node_count=1), now=now
    )
    yield sdk_publish(reactor, rust_relay.url, [good.to_dict()], tmp_path)
    from_silent = build_listing_event(
        silent_keys, MeshListing(invite_token=token(5), serving=[], total_vram_bytes=0, node_count=4), now=now
    )
    silent = ScriptedRelay(reactor, events=[from_silent.to_dict()], send_eose=False).start()
    try:
        started = reactor.seconds()
        meshes = yield discover([silent.url, rust_relay.url], reactor, window=2.0)
        elapsed = reactor.seconds() - started
        # Both relays' events are used; completion came from the window, not an EOSE.
        assert [m.listing.node_count for m in meshes] == [4, 1]
        assert elapsed >= 2.0
        assert any(m[0] == "REQ" and m[2] == discovery_filter() for m in silent.received)
    finally:
        yield silent.stop()


@pytest_twisted.inlineCallbacks
def test_bad_events_from_relays_are_dropped(py_relay: RelayProcess, tmp_path: Path):
    now = int(time.time())
    keys = [NostrKeys.generate() for _ in range(4)]

    def lst(n: int) -> MeshListing:
        return MeshListing(invite_token=token(n), serving=[], total_vram_bytes=0, node_count=n)

    good = build_listing_event(keys[0], lst(1), now=now).to_dict()
    expired = build_listing_event(keys[1], lst(2), now=now - 600).to_dict()  # nostr-relay still serves it
    forged = build_listing_event(keys[2], lst(3), now=now).to_dict()
    forged["content"] = lst(30).to_json()
    bad_token = build_listing_event(
        keys[3], MeshListing(invite_token="nope", serving=[], total_vram_bytes=0, node_count=9), now=now
    ).to_dict()
    # nostr-relay (as found in the wild) accepts the expired event; a scripted relay sends the forged one.
    yield sdk_publish(reactor, py_relay.url, [good, expired, bad_token], tmp_path)
    scripted = ScriptedRelay(reactor, events=[forged, ["not", "an", "event"], {"id": 5}], send_eose=True).start()
    scripted.extra_on_req.append(lambda proto: proto.sendMessage(b"{not json"))
    scripted.extra_on_req.append(lambda proto: proto.sendMessage(b"\x00\x01", isBinary=True))
    try:
        meshes = yield discover([py_relay.url, scripted.url], reactor, window=5.0)
        assert [m.publisher_npub for m in meshes] == [keys[0].npub]
    finally:
        yield scripted.stop()


@pytest_twisted.inlineCallbacks
def test_stale_replaceable_after_newer_newest_wins(py_relay: RelayProcess, tmp_path: Path):
    now = int(time.time())
    k = NostrKeys.generate()
    newer = build_listing_event(
        k, MeshListing(invite_token=token(1), serving=["new"], total_vram_bytes=0, node_count=1), now=now
    )
    older = build_listing_event(
        k, MeshListing(invite_token=token(1), serving=["old"], total_vram_bytes=0, node_count=1), now=now - 30
    )
    yield sdk_publish(reactor, py_relay.url, [newer.to_dict(), older.to_dict()], tmp_path)
    meshes = yield discover([py_relay.url], reactor)
    assert [m.listing.serving for m in meshes] == [("new",)]


@pytest_twisted.inlineCallbacks
def test_discovery_reuses_running_pool(rust_relay: RelayProcess):
    pool = NostrPool(reactor, [rust_relay.url])
    pool.startService()
    try:
        for _ in range(2):
            meshes = yield discover(pool, reactor)
            assert meshes == []
        yield deferLater(reactor, 0.05)
        assert pool.status()[0]["state"] == "up"
    finally:
        yield pool.stopService()
