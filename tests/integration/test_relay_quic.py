"""QUIC over meshd's relay: meshd <-> iroh wheel and meshd <-> meshd, with the relay as a QUIC path."""

from __future__ import annotations

import hashlib
import os

import pytest
import pytest_twisted
from twisted.internet import defer

from meshd.iroh_relay.paths import is_relay_address
from tests.integration.relay_peers import (
    MeshdRelayed,
    as_deferred,
    iroh_addr_via_relay,
    iroh_echo,
    iroh_endpoint,
    iroh_send,
    relay_url,
    start_relay,
)

iroh = pytest.importorskip("iroh")

pytestmark = pytest.mark.integration

#: Set by test_relay_netns.py, which reruns this file where loopback UDP is dropped: direct addresses are then
#: offered too, and the relay must win the race.
RELAY_ONLY_NETNS = os.environ.get("MESHD_RELAY_ONLY_NETNS") == "1"

PAYLOAD = hashlib.sha256(b"relay").digest() * (256 * 1024 // 32)


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_meshd_dials_iroh_through_relay():  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    relay = start_relay(reactor)
    url = relay_url(relay)
    meshd = MeshdRelayed(reactor, url)
    ep = None
    try:
        ep = yield as_deferred(iroh_endpoint(url))
        iroh_id = bytes(ep.id().to_bytes())
        served = as_deferred(iroh_echo(ep))
        direct = [("127.0.0.1", int(a.rsplit(":", 1)[1])) for a in ep.bound_sockets() if a.startswith("127.0.0.1:")]
        conn = yield meshd.dial_via_relay(iroh_id, url, direct=direct if RELAY_ONLY_NETNS else None)
        assert conn.remote_id == iroh_id
        assert is_relay_address(conn.peer_address)
        echoed = yield meshd.round_trip(conn, PAYLOAD)
        assert echoed == PAYLOAD
        conn.close(0, "done")
        seen = yield served
        assert seen == [meshd.endpoint_id]
        link = meshd.client.links[meshd.client.home_url]  # type: ignore[index]
        assert link.counters.datagrams_in > 0 and link.counters.datagrams_out > 0
    finally:
        yield meshd.stop()
        if ep is not None:
            yield as_deferred(ep.close())
        yield defer.maybeDeferred(relay.stopService)


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_iroh_dials_meshd_through_its_home_relay():  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    relay = start_relay(reactor)
    url = relay_url(relay)
    meshd = MeshdRelayed(reactor, url)
    ep = None
    try:
        yield meshd.home_up()
        ep = yield as_deferred(iroh_endpoint(url))
        echoed = yield as_deferred(iroh_send(ep, iroh_addr_via_relay(meshd.endpoint_id, url), PAYLOAD))
        assert echoed == PAYLOAD
        assert meshd.inbound and meshd.inbound[0].remote_id == bytes(ep.id().to_bytes())
        assert is_relay_address(meshd.inbound[0].peer_address)
    finally:
        yield meshd.stop()
        if ep is not None:
            yield as_deferred(ep.close())
        yield defer.maybeDeferred(relay.stopService)


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_meshd_to_meshd_through_relay_and_direct_race():  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    relay = start_relay(reactor)
    url = relay_url(relay)
    a = MeshdRelayed(reactor, url)
    b = MeshdRelayed(reactor, url)
    try:
        yield b.home_up()
        conn = yield a.dial_via_relay(b.endpoint_id, url)
        assert is_relay_address(conn.peer_address)
        echoed = yield a.round_trip(conn, PAYLOAD)
        assert echoed == PAYLOAD
        assert relay.server.status()["metrics"]["datagrams_forwarded"] > 0
        conn.close(0, "done")
        # both paths offered: one wins, the other attempt is closed; either way the bytes arrive intact
        port = b.endpoint.getHost().port  # type: ignore[attr-defined]
        conn2 = yield a.dial_via_relay(b.endpoint_id, url, direct=[("127.0.0.1", port)])
        echoed = yield a.round_trip(conn2, PAYLOAD)
        assert echoed == PAYLOAD
        conn2.close(0, "done")
    finally:
        yield a.stop()
        yield b.stop()
        yield defer.maybeDeferred(relay.stopService)
