"""One-shot mesh discovery over a :class:`~meshd.discovery.relay.RelayPool` (MESH_PROTOCOL.md §1.4).

One ``REQ`` for ``{"kinds":[31990],"#k":["mesh-llm"],"limit":100}`` goes to every relay at once. The
result is ready when every relay that is up has sent ``EOSE`` (or ``CLOSED``) and no relay is still on its
first connect attempt, or when the window (5 s) ends, whichever is first. Every event goes through
:func:`meshd.discovery.listing.process_events`, which verifies each signature itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from meshd.discovery.errors import NoRelayAvailable
from meshd.discovery.listing import (
    DiscoveredMesh,
    MeshFilter,
    default_token_ok,
    discovery_filter,
    process_events,
)
from meshd.discovery.relay import UP, RelayPool

__all__ = ["DISCOVERY_WINDOW", "discover"]

_log = Logger()

DISCOVERY_WINDOW = 5.0
MAX_EVENTS_PER_DISCOVERY = 10_000


def discover(
    pool_or_urls: RelayPool | Sequence[str],
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
    owned = not isinstance(pool_or_urls, RelayPool)
    if isinstance(pool_or_urls, RelayPool):
        pool = pool_or_urls
    else:
        urls = list(pool_or_urls)
        if not urls:
            d_fail: Deferred[list[DiscoveredMesh]] = Deferred()
            d_fail.errback(NoRelayAvailable(0))
            return d_fail
        pool = RelayPool(reactor, urls, **(pool_options or {}))
        pool.startService()

    result: Deferred[list[DiscoveredMesh]] = Deferred()
    sub_id = pool.new_subscription_id("meshd-disc")
    events: list[dict[str, Any]] = []
    eose: set[str] = set()
    ever_up: set[str] = set(pool.up_urls())

    def on_event(url: str, event: dict[str, Any]) -> None:
        if len(events) < MAX_EVENTS_PER_DISCOVERY:
            events.append(event)

    def on_eose(url: str) -> None:
        eose.add(url)
        check()

    def on_state(url: str, state: str) -> None:
        if state == UP:
            ever_up.add(url)
            eose.discard(url)  # a reconnect re-sends the REQ; wait for its EOSE
        check()

    def check() -> None:
        if result.called:
            return
        up = set(pool.up_urls())
        if pool.settling_urls():
            return
        if not up and not ever_up:
            finish()
            return
        if up and up <= eose:
            finish()
        elif not up:
            finish()

    def finish() -> None:
        if result.called:
            return
        if timer.active():
            timer.cancel()
        unwatch()
        pool.unsubscribe(sub_id)
        if not ever_up:
            outcome: Any = NoRelayAvailable(len(pool.urls))
        else:
            outcome = process_events(events, now=int(clock()), mesh_filter=mesh_filter, token_ok=token_ok)
            _log.debug(
                "discovery: {n_events} events from {n_relays} relays -> {n_meshes} meshes",
                n_events=len(events),
                n_relays=len(ever_up),
                n_meshes=len(outcome),
            )

        def deliver(_: object = None) -> None:
            if isinstance(outcome, Exception):
                result.errback(outcome)
            else:
                result.callback(outcome)

        if owned:
            pool.stopService().addBoth(deliver)
        else:
            deliver()

    timer = reactor.callLater(window, finish)
    unwatch = pool.watch_state(on_state)
    pool.subscribe(sub_id, [discovery_filter()], on_event, on_eose)
    check()

    def cancel_cleanup(f: Any) -> Any:
        if timer.active():
            timer.cancel()
        unwatch()
        pool.unsubscribe(sub_id)
        if owned and pool.running:
            pool.stopService()
        return f

    result.addErrback(cancel_cleanup)
    return result
