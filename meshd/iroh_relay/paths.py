"""Relay paths as QUIC paths: one stable pseudo-address per (relay URL, EndpointId).

aioquic only knows ``(host, port)`` tuples. :class:`RelayPaths` gives each (relay URL, remote EndpointId) a
fixed address ``("relay-<n>.invalid", 0)`` (``.invalid`` can never be a real host, so it never collides with a
UDP peer), hands datagrams the relay delivered to ``QuicEndpoint.datagramReceived`` with that address, and
takes the endpoint's sends to such an address (``QuicEndpoint.pseudo_paths``) to the relay client. A relay
path therefore looks to aioquic like one more UDP 4-tuple that never changes; ``QuicEndpoint`` drops a
datagram whose path kind (relay or UDP) differs from its connection's, so a relay↔UDP switch can never look
like a migration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshd.iroh_relay.client import RelayClient, canonical_relay_url

if TYPE_CHECKING:
    from meshd.quic.endpoint import QuicEndpoint

__all__ = ["PSEUDO_SUFFIX", "RelayPaths", "is_relay_address"]

PSEUDO_SUFFIX = ".invalid"
_PREFIX = "relay-"

Address = tuple[str, int]


def is_relay_address(addr: Any) -> bool:
    host = addr[0] if addr else ""
    return isinstance(host, str) and host.startswith(_PREFIX) and host.endswith(PSEUDO_SUFFIX)


class RelayPaths:
    """The map between pseudo-addresses and (relay URL, EndpointId), wired between an endpoint and a client."""

    def __init__(self, max_paths: int = 65536) -> None:
        self.max_paths = max_paths
        self._by_key: dict[tuple[str, bytes], Address] = {}
        self._by_addr: dict[Address, tuple[str, bytes]] = {}
        self._next = 1
        self.endpoint: QuicEndpoint | None = None
        self.client: RelayClient | None = None

    def attach(self, endpoint: QuicEndpoint, client: RelayClient) -> None:
        """Route *endpoint*'s pseudo-address sends to *client*; datagrams into *endpoint* arrive through
        :meth:`datagram_from_relay`, which is the client's ``on_datagram`` (given when it is built)."""
        self.endpoint = endpoint
        self.client = client
        endpoint.use_pseudo_paths(self)

    def address_for(self, url: str, endpoint_id: bytes) -> Address:
        key = (canonical_relay_url(url), bytes(endpoint_id))
        addr = self._by_key.get(key)
        if addr is None:
            if len(self._by_key) >= self.max_paths:
                old_key = next(iter(self._by_key))
                self._by_addr.pop(self._by_key.pop(old_key), None)
            addr = (f"{_PREFIX}{self._next}{PSEUDO_SUFFIX}", 0)
            self._next += 1
            self._by_key[key] = addr
            self._by_addr[addr] = key
        return addr

    def lookup(self, addr: Address) -> tuple[str, bytes] | None:
        """``(relay URL, EndpointId)`` behind a pseudo-address, or None."""
        return self._by_addr.get((str(addr[0]), int(addr[1])))

    # QuicEndpoint's side
    def owns(self, addr: Any) -> bool:
        return is_relay_address(addr)

    def send(self, data: bytes, addr: Address) -> None:
        target = self.lookup(addr)
        if target is None or self.client is None:
            return
        url, endpoint_id = target
        self.client.send(url, endpoint_id, data)

    # RelayClient's side
    def datagram_from_relay(self, url: str, src: bytes, data: bytes) -> None:
        if self.endpoint is not None:
            self.endpoint.datagramReceived(data, self.address_for(url, src))
