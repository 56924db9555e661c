"""Nostr glue for the live node: ``--auto`` discovery and joining, re-discovery after 90 s alone,
``/api/discover`` results, and (hosts with ``--publish``) the mesh listing (MESH_PROTOCOL.md §1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from meshd.deferreds import fire_all
from meshd.discovery.discover import discover
from meshd.discovery.listing import DiscoveredMesh, MeshFilter, MeshListing, default_token_ok
from meshd.discovery.nostr_pool import NostrPool
from meshd.discovery.scoring import Rediscovery, rank_for_rediscovery, read_last_mesh_id, smart_auto
from meshd.node import Node, NodeState
from meshd.protocol.peers import Role as PeerRole

#: A client that finds nothing retries discovery this often (mesh-llm: 15 s; it gives up after 20
#: tries, meshd keeps trying so the API stays up and the console says what is happening).
RETRY_INTERVAL = 15.0
#: ``/api/discover`` reuses a discovery result this young.
DISCOVER_CACHE_SECS = 30.0
#: An on-demand Nostr pool (a node that needs Nostr only for the console's discover panel) is closed after
#: this long without a discovery round.
NOSTR_IDLE_SECS = 120.0


class NostrOff(Exception):
    """This node runs without Nostr (``--no-nostr``)."""


class Discovery(Service):
    """Runs discovery for the node and remembers the last result.

    Nostr is used only where a role needs it. With ``pool`` (``--auto``, ``--publish``) the relays are
    always connected and the caller owns the pool's lifecycle. With ``make_pool`` (every other role) a pool
    is made when a discovery round is asked for (the console's discover panel, ``meshd discover``) and
    closed again after ``NOSTR_IDLE_SECS`` without use. With neither (``--no-nostr``) every round fails with
    ``NostrOff`` and no relay is ever contacted.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        node: Node,
        pool: NostrPool | None = None,
        *,
        make_pool: Callable[[], NostrPool] | None = None,
        idle_secs: float = NOSTR_IDLE_SECS,
    ) -> None:
        self._reactor = reactor
        self.node = node
        self.pool = pool
        self._make_pool = make_pool
        self._idle_secs = idle_secs
        self._idle_timer: IDelayedCall | None = None
        self.last: list[DiscoveredMesh] = []
        self.last_at: float | None = None
        self.last_error: str | None = None
        self._running: Deferred[Any] | None = None
        self._waiters: list[Deferred[list[DiscoveredMesh]]] = []
        self._timer: IDelayedCall | None = None
        self._rediscovery: Rediscovery | None = None
        self.attempts = 0

    # -- discovery ------------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self.pool is not None or self._make_pool is not None

    def nostr_status(self) -> list[dict[str, Any]]:
        """Per Nostr relay: ``url``, ``state``, ``last_error``, ``since``, ``attempts`` (empty while no
        pool is open)."""
        return self.pool.status() if self.pool is not None else []

    def _pool(self) -> NostrPool:
        if self.pool is None:
            if self._make_pool is None:
                raise NostrOff("Nostr discovery is off (--no-nostr)")
            self.pool = self._make_pool()
            self.pool.startService()
            self._log.info("connecting to Nostr relays for discovery", event="nostr_on_demand")
        if self._make_pool is not None:
            if self._idle_timer is not None and self._idle_timer.active():
                self._idle_timer.cancel()
            self._idle_timer = self._reactor.callLater(self._idle_secs, self._close_idle_pool)
        return self.pool

    def _close_idle_pool(self) -> None:
        self._idle_timer = None
        if self.pool is None:
            return
        if self._running is not None:  # a round is under way: look again later
            self._idle_timer = self._reactor.callLater(self._idle_secs, self._close_idle_pool)
            return
        pool, self.pool = self.pool, None
        self.node.notify_changed()
        maybeDeferred(pool.stopService).addErrback(lambda f: self._log.failure("closing Nostr pool", failure=f))

    def discover(self, mesh_filter: MeshFilter | None = None) -> Deferred[list[DiscoveredMesh]]:
        """One discovery round across every relay (callers share a round already under way)."""
        try:
            pool = self._pool()
        except NostrOff as e:
            return fail(e)
        if mesh_filter is not None:
            return discover(pool, self._reactor, mesh_filter=mesh_filter, token_ok=default_token_ok)
        mine: Deferred[list[DiscoveredMesh]] = Deferred()
        self._waiters.append(mine)
        if self._running is None:
            running: Deferred[Any] = discover(pool, self._reactor, token_ok=default_token_ok)
            self._running = running
            running.addBoth(self._round_done)
        return mine

    def _round_done(self, result: list[DiscoveredMesh] | Failure) -> None:
        self._running = None
        waiters, self._waiters = self._waiters, []
        if isinstance(result, Failure):
            self.last_error = result.getErrorMessage()
        else:
            self.last, self.last_at, self.last_error = result, self._reactor.seconds(), None
        fire_all(waiters, result)

    def recent(self) -> Deferred[list[DiscoveredMesh]]:
        """The last result if it is fresh, else a new discovery round."""
        now = self._reactor.seconds()
        if self.last_at is not None and now - self.last_at < DISCOVER_CACHE_SECS:
            d: Deferred[list[DiscoveredMesh]] = Deferred()
            d.callback(self.last)
            return d
        return self.discover()

    def last_mesh_id(self) -> str | None:
        return read_last_mesh_id(self.node.config.state_dir)

    # -- --auto ---------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.node.config.auto:
            self._rediscovery = Rediscovery(started_at=self._reactor.seconds())
            self._schedule(0, self._auto_join)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._running is not None:
            self._running.cancel()
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None
        if self._make_pool is not None and self.pool is not None:  # an on-demand pool is ours to close
            pool, self.pool = self.pool, None
            return maybeDeferred(pool.stopService)
        return None

    def _schedule(self, delay: float, fn: Any) -> None:
        if not self.running:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self._reactor.callLater(delay, fn)

    def _auto_join(self) -> None:
        self.attempts += 1
        self.node.set_state(NodeState.DISCOVERING)

        async def run() -> bool:
            meshes = await self.discover()
            decision = smart_auto(meshes, self.node.config.mesh_name, self.last_mesh_id())
            self._log.info(
                "discovery found {n} meshes, {v} viable",
                n=len(meshes),
                v=len(decision.join),
                event="discovery_done",
            )
            if decision.start_new:
                return False
            if self.node.mesh_name is None:
                self.node.set_mesh_name(decision.join[0][1].listing.name)
            joined = await self.node.join_any([token for token, _ in decision.join])
            return joined is not None

        d = Deferred.fromCoroutine(run())
        d.addErrback(self._discovery_failed)
        d.addCallback(self._after_auto_join)

    def _discovery_failed(self, failure: Failure) -> bool:
        self._log.warn("discovery failed: {err}", err=failure.getErrorMessage(), event="discovery_failed")
        return False

    def _after_auto_join(self, joined: bool) -> None:
        if not self.running:
            return
        if joined:
            assert self._rediscovery is not None
            self._rediscovery.discovery_finished(self._reactor.seconds(), True)
            self._schedule_rediscovery_check()
            return
        if self.node.state is not NodeState.JOINED:
            self.node.set_state(NodeState.DISCOVERING)
        self._schedule(RETRY_INTERVAL, self._auto_join)

    def _schedule_rediscovery_check(self) -> None:
        assert self._rediscovery is not None
        delay = max(0.0, self._rediscovery.deadline() - self._reactor.seconds())
        self._schedule(delay, self._rediscovery_check)

    def _rediscovery_check(self) -> None:
        assert self._rediscovery is not None
        peers = sum(1 for e in self.node.mesh.peers.values() if e.info.role is not PeerRole.CLIENT)
        if not self._rediscovery.check(self._reactor.seconds(), peers):
            self._schedule_rediscovery_check()
            return
        self._log.info("no peers for 90 s: re-discovering", event="rediscovery")
        self.node.set_state(NodeState.DISCOVERING)

        async def run() -> bool:
            meshes = await self.discover()
            ranked = rank_for_rediscovery(
                meshes,
                mesh_name=self.node.config.mesh_name,
                last_mesh_id=self.last_mesh_id(),
                current_mesh_id=self.node.mesh_id,
            )
            joined = await self.node.join_any([m.listing.invite_token for m in ranked]) if ranked else None
            return joined is not None

        d = Deferred.fromCoroutine(run())
        d.addErrback(self._discovery_failed)

        def finished(joined: bool) -> None:
            assert self._rediscovery is not None
            self._rediscovery.discovery_finished(self._reactor.seconds(), joined)
            if not joined and self.node.state is not NodeState.JOINED:
                self.node.set_state(NodeState.DISCOVERING)
            self._schedule_rediscovery_check()

        d.addCallback(finished)


def listing_for(node: Node) -> MeshListing | None:
    """This host's listing with its mesh's real numbers, or None until the backend serves a model."""
    if not node.hosted_models or node.token is None:
        return None
    config = node.config
    routes = node.mesh.routable_models()
    serving = sorted(set(routes) | set(node.hosted_models))
    wanted = sorted(d.model_name for d in node.mesh.live_demand(node.now()) if d.model_name not in serving)
    non_clients = [e for e in node.mesh.peers.values() if e.info.role is not PeerRole.CLIENT]
    clients = sum(1 for e in node.mesh.peers.values() if e.info.role is PeerRole.CLIENT)
    return MeshListing(
        invite_token=node.token,
        serving=serving,
        wanted=wanted,
        total_vram_bytes=sum(e.info.vram_bytes for e in non_clients),
        node_count=len(non_clients) + 1,
        client_count=clients,
        max_clients=config.max_clients,
        name=node.mesh_name,
        region=config.region,
        mesh_id=node.mesh_id,
    )
