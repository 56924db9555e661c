"""The relay as a node uses it: a RelayClient + RelayPaths on the node's QuicEndpoint, and the home relay.

``NodeRelay(reactor, private_key, urls)``; ``attach(endpoint)``; ``start()`` connects to the first relay at once
and probes all of them (``GET /ping``), moving home to the fastest that answered (``on_home_changed`` fires);
``dial_targets(relay_urls, endpoint_id)`` gives the pseudo-addresses to race next to the direct ones;
``path_of(conn)`` tells ``("relay", url)`` from ``("direct", None)``; ``status()`` for ``/api/status``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger

from meshd.iroh_relay.client import RelayClient, RelayClientConfig, canonical_relay_url
from meshd.iroh_relay.home import choose_home_relay
from meshd.iroh_relay.paths import RelayPaths, is_relay_address
from meshd.quic import MeshConnection, QuicEndpoint

__all__ = ["NodeRelay"]

_log = Logger()

Address = tuple[str, int]


class NodeRelay:
    def __init__(
        self,
        reactor: Any,
        private_key: ed25519.Ed25519PrivateKey,
        urls: Sequence[str],
        *,
        config: RelayClientConfig = RelayClientConfig(),
        probe_timeout: float = 3.0,
        on_home_changed: Callable[[str | None], object] | None = None,
    ) -> None:
        if not urls:
            raise ValueError("NodeRelay needs at least one relay URL")
        self.reactor = reactor
        self.urls = [canonical_relay_url(u) for u in urls]
        self.paths = RelayPaths()
        self.client = RelayClient(reactor, private_key, self.paths.datagram_from_relay, config=config)
        self.probe_timeout = probe_timeout
        self.on_home_changed = on_home_changed
        self._probe: Deferred[Any] | None = None

    @property
    def home_url(self) -> str | None:
        return self.client.home_url

    @property
    def advertised_url(self) -> str | None:
        """The home relay, once we are registered there: a token never names a relay we could not reach
        (a peer given one waits on it before dialling us directly)."""
        home = self.client.home_url
        if home is None:
            return None
        link = self.client.links.get(home)
        return home if link is not None and link.is_up else None

    def _watch_home(self) -> None:
        """Tell the node when the home relay comes up (the token may name it from then on)."""
        home = self.client.home_url
        if home is None:
            return

        def up(link: Any) -> None:
            if link.url == self.client.home_url and self.on_home_changed is not None:
                self.on_home_changed(link.url)

        # It fails only when the link is stopped before coming up: nothing to advertise then.
        self.client.link(home).when_up().addCallbacks(up, lambda _: None)

    def attach(self, endpoint: QuicEndpoint) -> None:
        self.paths.attach(endpoint, self.client)

    def start(self) -> None:
        self.client.set_home(self.urls[0])
        self.client.startService()
        self._watch_home()
        if len(self.urls) > 1:
            self._probe = choose_home_relay(self.reactor, self.urls, self.probe_timeout).addCallback(self._chosen)
            self._probe.addErrback(lambda f: _log.failure("home relay probe failed", failure=f))

    def _chosen(self, url: str | None) -> None:
        self._probe = None
        if url is None or url == self.client.home_url:
            return
        self.client.set_home(url)  # the old home idles out like any peer relay
        if self.on_home_changed is not None:
            self.on_home_changed(url)
        self._watch_home()

    def stop(self) -> Deferred[Any]:
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        if not self.client.running:
            return succeed(None)
        return maybeDeferred(self.client.stopService)

    def dial_targets(self, relay_urls: Sequence[str], endpoint_id: bytes) -> list[Address]:
        return [self.paths.address_for(url, endpoint_id) for url in relay_urls]

    def path_of(self, conn: MeshConnection) -> tuple[str, str | None]:
        if is_relay_address(conn.peer_address):
            target = self.paths.lookup(conn.peer_address)
            return "relay", target[0] if target else None
        return "direct", None

    def status(self) -> dict[str, Any]:
        return {"home": self.client.home_url, "relays": list(self.urls), "links": self.client.status()}
