"""meshd's relay server checked by iroh's own relay client (the PyPI ``iroh`` wheel), on 127.0.0.1."""

from __future__ import annotations

import hashlib

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.integration.relay_peers import (
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


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_two_iroh_endpoints_talk_through_meshd_relay():  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    relay = start_relay(reactor)
    url = relay_url(relay)
    a = b = None
    try:
        a = yield as_deferred(iroh_endpoint(url))
        b = yield as_deferred(iroh_endpoint(url))
        b_id = bytes(b.id().to_bytes())
        a_id = bytes(a.id().to_bytes())
        status = relay.server.status()
        assert status["clients"] == 2
        assert relay.server.is_connected(a_id) and relay.server.is_connected(b_id)
        payload = hashlib.sha256(b"relay").digest() * 4096
        served = as_deferred(iroh_echo(b))
        echoed = yield as_deferred(iroh_send(a, iroh_addr_via_relay(b_id, url), payload))
        assert echoed == payload
        seen = yield served
        assert seen == [a_id]
        metrics = relay.server.status()["metrics"]
        assert metrics["handshakes_ok"] >= 2
        assert metrics["handshakes_denied"] == 0
        assert metrics["datagrams_forwarded"] > 0
        assert metrics["bad_frames"] == 0
    finally:
        for ep in (a, b):
            if ep is not None:
                yield as_deferred(ep.close())
        yield defer.maybeDeferred(relay.stopService)
