"""Publishing this node's mesh listing (MESH_PROTOCOL.md §1.1) — a Twisted service over a NostrPool.

Every 60 s the listing (from a caller-supplied callable) is signed with the persisted ``nostr.nsec`` key as
a kind-31990 replaceable event expiring 120 s later. ``max_clients``: when the listing says
``client_count >= max_clients > 0`` the publisher delists (once) and stays quiet until the count drops.
Delisting is a NIP-09 kind-5 deletion with an ``e`` tag per own listing id (own ids remembered plus those
fetched from the relays, author filter, limit 10, 5 s) and an ``a`` tag ``31990:<pubkey>:mesh-llm``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from meshd.discovery.discover import fetch_events
from meshd.discovery.keys import NostrKeys, load_or_create_keys
from meshd.discovery.listing import (
    LISTING_TTL,
    MESH_SERVICE_KIND,
    PUBLISH_INTERVAL,
    MeshListing,
    build_listing_event,
    listing_coordinate,
)
from meshd.discovery.nip01 import Event, validate_event
from meshd.discovery.nostr_pool import NostrPool, PublishResult

__all__ = ["DELETION_KIND", "Publisher", "build_deletion_event"]

DELETION_KIND = 5
_MAX_REMEMBERED_IDS = 10


def build_deletion_event(keys: NostrKeys, event_ids: list[str], *, now: int) -> Event:
    """NIP-09 deletion of our listing: ``e`` tags for ``event_ids``, ``a`` for the replaceable address."""
    tags = [["e", eid] for eid in event_ids]
    tags.append(["a", listing_coordinate(keys.pubkey)])
    tags.append(["k", str(MESH_SERVICE_KIND)])
    return keys.sign(kind=DELETION_KIND, tags=tags, content="", created_at=now)


#: Before the first accepted listing: poll this often, this many times (mesh-llm: 500 ms x 120).
FIRST_PUBLISH_POLL = 0.5
FIRST_PUBLISH_TRIES = 120


class Publisher(Service):
    """Keeps this node's listing fresh on every relay of ``pool`` while running.

    :param listing_source: returns the current listing, or ``None`` to skip this round (not ready yet).
    :param state_dir: holds ``nostr.nsec`` (loaded or created in ``startService``), unless ``keys`` given.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        pool: NostrPool,
        listing_source: Callable[[], MeshListing | None],
        *,
        state_dir: Path | str | None = None,
        keys: NostrKeys | None = None,
        interval: float = PUBLISH_INTERVAL,
        ttl: int = LISTING_TTL,
        fetch_window: float = 5.0,
    ) -> None:
        super().__init__()
        if keys is None and state_dir is None:
            raise ValueError("Publisher needs state_dir (for nostr.nsec) or keys")
        self.reactor = reactor
        self.pool = pool
        self.listing_source = listing_source
        self.state_dir = state_dir
        self.keys = keys
        self.interval = interval
        self.ttl = ttl
        self.fetch_window = fetch_window
        self.delisted = False
        self.published_ids: list[str] = []
        self.last_results: list[PublishResult] = []
        self._loop: LoopingCall | None = None
        self._first: LoopingCall | None = None
        self._first_tries = 0
        self._in_flight: Deferred[Any] | None = None

    @property
    def npub(self) -> str | None:
        return self.keys.npub if self.keys is not None else None

    def startService(self) -> None:
        if self.keys is None:
            assert self.state_dir is not None
            self.keys = load_or_create_keys(self.state_dir)
        super().startService()
        self.log.info("publishing mesh listing to Nostr as {npub}", npub=self.keys.npub)
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: self.log.failure("publish loop stopped", failure=f)
        )

        # Until a relay has taken a listing, try every 0.5 s (mesh-llm polls readiness the same way):
        # the first listing goes out as soon as the backend serves a model and a relay is up.
        self._first_tries = 0
        self._first = LoopingCall(self._first_tick)
        self._first.clock = self.reactor
        self._first.start(FIRST_PUBLISH_POLL, now=False).addErrback(
            lambda f: self.log.failure("first-publish loop stopped", failure=f)
        )

    def _first_tick(self) -> None:
        self._first_tries += 1
        if any(r.accepted for r in self.last_results) or self._first_tries > FIRST_PUBLISH_TRIES:
            if self._first is not None and self._first.running:
                self._first.stop()
            return
        if not self.pool.up_urls():
            return
        self._tick()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._first is not None and self._first.running:
            self._first.stop()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self.keys is None or (not self.published_ids and not self.delisted):
            return succeed(None)
        d = self.delist()

        def done(result: object) -> None:
            if isinstance(result, Failure):
                self.log.failure("delisting on stop failed", failure=result)

        return d.addBoth(done)

    # -- one round ---------------------------------------------------------------------------------

    def _tick(self) -> None:
        if self._in_flight is not None:
            return  # previous round still waiting for relays
        try:
            listing = self.listing_source()
        except Exception:
            self.log.failure("listing source failed")
            return
        if listing is None:
            return
        full = listing.max_clients > 0 and listing.client_count >= listing.max_clients
        if full:
            if not self.delisted:
                self.log.info(
                    "delisting from Nostr ({clients} clients, cap is {cap})",
                    clients=listing.client_count,
                    cap=listing.max_clients,
                )
                self.delisted = True
                self._track(self.delist())
            return
        if self.delisted:
            self.log.info(
                "re-publishing to Nostr ({clients} clients, cap is {cap})",
                clients=listing.client_count,
                cap=listing.max_clients,
            )
            self.delisted = False
        self._track(self.publish_now(listing))

    def _track(self, d: Deferred[Any]) -> None:
        self._in_flight = d

        def clear(result: object) -> None:
            self._in_flight = None
            if isinstance(result, Failure):
                self.log.failure("Nostr publish round failed", failure=result)

        d.addBoth(clear)

    def publish_now(self, listing: MeshListing) -> Deferred[list[PublishResult]]:
        assert self.keys is not None
        event = build_listing_event(self.keys, listing, now=int(self.reactor.seconds()), ttl=self.ttl)
        self._remember(event.id)

        def report(results: list[PublishResult]) -> list[PublishResult]:
            self.last_results = results
            accepted = [r.url for r in results if r.accepted]
            for r in results:
                if not r.accepted:
                    self.log.info("relay {url} did not take our listing: {msg}", url=r.url, msg=r.message)
            self.log.debug("listing {id} accepted by {n} relays", id=event.id, n=len(accepted))
            return results

        return self.pool.publish(event).addCallback(report)

    def _remember(self, event_id: str) -> None:
        self.published_ids.append(event_id)
        del self.published_ids[:-_MAX_REMEMBERED_IDS]

    def delist(self) -> Deferred[list[PublishResult]]:
        """Fetch our own listing ids from the relays, then send one NIP-09 deletion for all of them."""
        keys = self.keys
        assert keys is not None
        own_filter = {"kinds": [MESH_SERVICE_KIND], "authors": [keys.pubkey], "limit": 10}

        def delete(fetched: Any) -> Deferred[list[PublishResult]]:
            ids = list(self.published_ids)
            for raw in fetched.events:
                try:
                    ev = validate_event(raw)
                except Exception:
                    continue
                if ev.pubkey == keys.pubkey and ev.kind == MESH_SERVICE_KIND and ev.id not in ids:
                    ids.append(ev.id)
            deletion = build_deletion_event(keys, ids, now=int(self.reactor.seconds()))
            self.published_ids.clear()
            return self.pool.publish(deletion)

        fetched = fetch_events(self.pool, self.reactor, [own_filter], window=self.fetch_window)
        return fetched.addCallback(delete)
