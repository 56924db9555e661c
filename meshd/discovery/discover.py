"""One-shot mesh discovery over a :class:`~meshd.discovery.nostr_pool.NostrPool` (MESH_PROTOCOL.md §1.4).

One ``REQ`` for ``{"kinds":[31990],"#k":["mesh-llm"],"limit":100}`` goes to every relay at once. The
result is ready when every relay that is up has sent ``EOSE`` (or ``CLOSED``) and no relay is still on its
first connect attempt, or when the window (5 s) ends, whichever is first. Every event goes through
:func:`meshd.discovery.listing.process_events`, which verifies each signature itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger

from meshd.discovery.errors import InvalidEvent, NoRelayAvailable
from meshd.discovery.listing import (
    DiscoveredMesh,
    MeshFilter,
    default_token_ok,
    discovery_filter,
    process_events,
)
from meshd.discovery.nip01 import Event, event_from_dict
from meshd.discovery.nostr_pool import NostrPool
from meshd.wslink import LinkState

__all__ = ["DISCOVERY_WINDOW", "FetchResult", "discover", "fetch_events"]

_log = Logger()

DISCOVERY_WINDOW = 5.0
MAX_EVENTS_PER_DISCOVERY = 10_000
#: Text (contents and tags) kept from the events of one discovery round; relays may send 512 KiB
#: messages, so the event count alone would let a relay park gigabytes here.
MAX_FETCH_TEXT_BYTES = 32 * 1024 * 1024


@attrs.frozen
class FetchResult:
    events: list[dict[str, Any]]
    relays_up: frozenset[str]  # relays that were up at some moment of the fetch


def fetch_events(
    pool: NostrPool,
    reactor: Any,
    filters: Sequence[Mapping[str, Any]],
    *,
    window: float = DISCOVERY_WINDOW,
    max_events: int = MAX_EVENTS_PER_DISCOVERY,
    max_text_bytes: int = MAX_FETCH_TEXT_BYTES,
) -> Deferred[FetchResult]:
    """Send one REQ to every relay of a running pool and collect raw events until every up relay sent
    EOSE/CLOSED and no relay is on its first connect attempt, or until ``window`` seconds passed."""
    result: Deferred[FetchResult] = Deferred()
    sub_id = pool.new_subscription_id("meshd-fetch")
    events: list[dict[str, Any]] = []
    eose: set[str] = set()
    ever_up: set[str] = set(pool.up_urls())
    kept_text = 0

    def on_event(url: str, event: dict[str, Any]) -> None:
        nonlocal kept_text
        if len(events) >= max_events:
            return
        try:
            size = _text_size(event_from_dict(event))  # the shape only; signatures are checked later
        except InvalidEvent as e:
            _log.debug("dropping Nostr event from {url}: {reason}", url=url, reason=e.reason)
            return
        if kept_text + size > max_text_bytes:
            return
        kept_text += size
        events.append(event)

    def on_eose(url: str) -> None:
        eose.add(url)
        check()

    def on_state(url: str, state: str) -> None:
        if state == LinkState.UP:
            ever_up.add(url)
            eose.discard(url)  # a reconnect re-sends the REQ; wait for its EOSE
        check()

    def check() -> None:
        if result.called or pool.settling_urls():
            return
        up = set(pool.up_urls())
        if up <= eose:  # also true when no relay is up any more
            finish()

    def finish() -> None:
        if result.called:
            return
        if timer.active():
            timer.cancel()
        unwatch()
        pool.unsubscribe(sub_id)
        result.callback(FetchResult(events=events, relays_up=frozenset(ever_up)))

    def cancelled(f: Any) -> Any:
        if timer.active():
            timer.cancel()
        unwatch()
        pool.unsubscribe(sub_id)
        return f

    timer = reactor.callLater(window, finish)
    unwatch = pool.watch_state(on_state)
    pool.subscribe(sub_id, filters, on_event, on_eose)
    result.addErrback(cancelled)
    check()
    return result


def discover(
    pool_or_urls: NostrPool | Sequence[str],
    reactor: Any,
    *,
    window: float = DISCOVERY_WINDOW,
    mesh_filter: MeshFilter | None = None,
    now: Callable[[], float] | None = None,
    token_ok: Callable[[str], bool] = default_token_ok,
    pool_options: dict[str, Any] | None = None,
) -> Deferred[list[DiscoveredMesh]]:
    """Discover meshes. Fires with the §1.4 list, or fails with :class:`NoRelayAvailable` if no relay
    was up at any moment of the window (or all of them failed before it ended).

    ``pool_or_urls``: a running pool (reused, left running) or relay URLs (a temporary pool is started
    and stopped). ``now`` gives unix seconds for the expiry check (default ``reactor.seconds``).
    """
    clock = now or reactor.seconds
    if isinstance(pool_or_urls, NostrPool):
        pool, owned = pool_or_urls, False
    else:
        urls = list(pool_or_urls)
        if not urls:
            return fail(NoRelayAvailable(0))
        pool, owned = NostrPool(reactor, urls, **(pool_options or {})), True
        pool.startService()

    def done(fetched: FetchResult) -> list[DiscoveredMesh]:
        if not fetched.relays_up:
            raise NoRelayAvailable(len(pool.urls))
        meshes = process_events(fetched.events, now=int(clock()), mesh_filter=mesh_filter, token_ok=token_ok)
        _log.debug(
            "discovery: {n_events} events from {n_relays} relays -> {n_meshes} meshes",
            n_events=len(fetched.events),
            n_relays=len(fetched.relays_up),
            n_meshes=len(meshes),
        )
        return meshes

    d = fetch_events(pool, reactor, [discovery_filter()], window=window).addCallback(done)
    if owned:

        def stop_pool(outcome: Any) -> Deferred[Any]:
            return pool.stopService().addBoth(lambda _: outcome)

        d.addBoth(stop_pool)
    return d


def _text_size(event: Event) -> int:
    return len(event.content) + sum(len(item) for tag in event.tags for item in tag) + 256
