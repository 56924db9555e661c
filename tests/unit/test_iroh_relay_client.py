"""The iroh relay client (RelayLink, RelayClient) on a Clock against a scripted in-memory iroh relay.

The relay side here is a test double that speaks the frames of meshd.iroh_relay.frames; the client is also run
against meshd's relay server and iroh's own relay in tests/integration/test_relay_*.py.
"""

from __future__ import annotations

import os
from typing import Any

from autobahn.websocket.types import ConnectionRequest
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.application.internet import backoffPolicy
from twisted.internet.task import Clock

from meshd.iroh_relay import frames as f
from meshd.iroh_relay.client import RelayClient, RelayClientConfig, RelayLink, canonical_relay_url
from meshd.wslink import LinkState
from tests.unit.ws_memory import MemoryEndpoint, ServerProto

URL = canonical_relay_url("https://relay.test")
PEER = bytes(range(32))
# no jitter: reconnects at exact moments (0.5 s doubling: 1, 2, 4 ... for levels 1, 2, 3 ...)
POLICY = backoffPolicy(initialDelay=0.5, maxDelay=30.0, factor=2.0, jitter=lambda: 0)
CONFIG = RelayClientConfig(initial_backoff=0.5, max_backoff=30.0, ping_interval=15.0, pong_timeout=5.0, max_queue=4)


class IrohRelayProto(ServerProto):
    """Challenge, then confirm (or deny with ``owner.deny``); records every client frame after that."""

    def onConnect(self, request: ConnectionRequest) -> str | None:
        self.owner.requests.append(request)
        return f.PROTOCOL_V2 if f.PROTOCOL_V2 in request.protocols else None

    def onOpen(self) -> None:
        self.owner.server = self
        self.challenge = os.urandom(16)
        self.authed = False
        self.send_frame(f.ServerChallenge(self.challenge))

    def send_frame(self, frame: f.Frame) -> None:
        self.sendMessage(f.encode(frame), isBinary=True)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        frame = f.decode(payload)
        if not self.authed:
            assert isinstance(frame, f.ClientAuth)
            self.owner.auth_ok.append(f.verify_client_auth(frame, self.challenge))
            if self.owner.deny is not None:
                self.send_frame(f.ServerDeniesAuth(self.owner.deny))
            else:
                self.authed = True
                self.send_frame(f.ServerConfirmsAuth())
            return
        self.owner.frames.append(frame)
        if isinstance(frame, f.Ping) and self.owner.answer_pings:
            self.send_frame(f.Pong(frame.data))


class IrohRelay(MemoryEndpoint):
    protocol = IrohRelayProto

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.auth_ok: list[bool] = []
        self.frames: list[f.Frame] = []
        self.deny: str | None = None
        self.answer_pings = True

    def send(self, frame: f.Frame) -> None:
        assert self.server is not None
        self.server.send_frame(frame)
        self.flush()

    def datagrams(self) -> list[tuple[bytes, bytes]]:
        return [(fr.dst, fr.data) for fr in self.frames if isinstance(fr, f.ClientToRelayDatagram)]


def make_link(
    clock: Clock, config: RelayClientConfig = CONFIG, **kw: Any
) -> tuple[RelayLink, IrohRelay, list[tuple[str, bytes, bytes]]]:
    relay = IrohRelay(clock)
    got: list[tuple[str, bytes, bytes]] = []
    key = ed25519.Ed25519PrivateKey.generate()
    link = RelayLink(
        clock, URL, key, lambda u, s, d: got.append((u, s, d)),
        config=config, endpoint=relay, retry_policy=POLICY, **kw,
    )  # fmt: skip
    return link, relay, got


def test_handshake_brings_the_link_up_and_queued_datagrams_follow_in_order() -> None:
    clock = Clock()
    link, relay, _ = make_link(clock)
    relay.outcomes = ["accept"]
    for i in range(6):
        link.send(PEER, b"d%d" % i)
    assert link.queued == 4 and link.counters.queue_drops == 2
    up = link.when_up()
    link.startService()
    clock.advance(0.125)
    relay.flush()
    assert relay.auth_ok == [True]  # signed with the node key over the derived challenge message
    assert up.result is link and link.is_up and link.state is LinkState.UP
    status = link.status()
    assert status["state"] == "up" and status["protocol"] == f.PROTOCOL_V2 and status["handshake_ms"] == 125.0
    assert status["connects"] == 1 and status["queued"] == 0 and status["datagrams_out"] == 6
    assert relay.datagrams() == [(PEER, b"d2"), (PEER, b"d3"), (PEER, b"d4"), (PEER, b"d5")]
    assert isinstance(relay.frames[-1], f.Ping)  # keepalive starts once up
    link.send(PEER, b"now")
    relay.flush()
    assert relay.datagrams()[-1] == (PEER, b"now")
    link.stopService()


def test_datagrams_in_single_and_batched_and_relay_frames() -> None:
    clock = Clock()
    gone: list[bytes] = []
    link, relay, got = make_link(clock, on_gone=lambda u, eid: gone.append(eid))
    relay.outcomes = ["accept"]
    link.startService()
    relay.flush()
    relay.send(f.RelayToClientDatagram(PEER, b"one"))
    relay.send(f.RelayToClientDatagramBatch(PEER, 3, b"abcdefg"))
    assert got == [(URL, PEER, b"one"), (URL, PEER, b"abc"), (URL, PEER, b"def"), (URL, PEER, b"g")]
    assert (link.counters.datagrams_in, link.counters.batches_in, link.counters.bytes_in) == (4, 1, 10)
    relay.send(f.Ping(b"12345678"))
    assert relay.frames[-1] == f.Pong(b"12345678")
    relay.send(f.EndpointGone(PEER))
    assert gone == [PEER] and link.counters.endpoint_gone == 1
    relay.send(f.Status(f.StatusCode.RATE_LIMITED))
    assert link.last_status == f.StatusCode.RATE_LIMITED and link.counters.rate_limited == 1
    assert link.is_up
    link.stopService()


def test_a_missed_pong_drops_the_connection_and_the_link_reconnects() -> None:
    clock = Clock()
    link, relay, _ = make_link(clock)
    relay.outcomes = ["accept", "accept"]
    link.startService()
    relay.flush()
    clock.advance(CONFIG.ping_interval)  # answered pings keep it up
    relay.flush()
    assert link.is_up and sum(isinstance(fr, f.Ping) for fr in relay.frames) == 2
    relay.answer_pings = False
    clock.advance(CONFIG.ping_interval)
    relay.flush()
    clock.advance(CONFIG.pong_timeout - 0.001)
    assert link.is_up
    clock.advance(0.001)
    relay.flush()
    assert link.counters.pong_timeouts == 1 and link.state is LinkState.FAILING
    assert link.counters.disconnects == 1
    clock.advance(1.0)  # backoff level 1: 0.5 * 2
    relay.flush()
    assert link.is_up and link.counters.connects == 2
    link.stopService()


def test_a_bad_frame_costs_only_that_connection() -> None:
    clock = Clock()
    link, relay, _ = make_link(clock)
    relay.outcomes = ["accept", "accept"]
    link.startService()
    relay.flush()
    assert relay.server is not None
    relay.server.sendMessage(b"\xff\xff", isBinary=True)
    relay.flush()
    assert link.counters.bad_frames == 1 and link.state is LinkState.FAILING
    clock.advance(1.0)
    relay.flush()
    assert link.is_up
    link.stopService()


def test_denied_links_back_off_and_log_once() -> None:
    clock = Clock()
    link, relay, _ = make_link(clock)
    relay.outcomes = ["accept"] * 3
    relay.deny = "access token required"
    link.startService()
    relay.flush()
    assert link.state is LinkState.DENIED and link.counters.denied == 1
    assert link.last_error == "denied: access token required" and not link.is_up
    # retries at 1.0, then 2.0 later (initial 0.5 doubling per failure), not every second
    clock.advance(1.0)
    relay.flush()
    assert len(relay.connects) == 2 and link.counters.denied == 2
    clock.advance(1.999)
    assert len(relay.connects) == 2
    clock.advance(0.001)
    relay.flush()
    assert len(relay.connects) == 3 and link.state is LinkState.DENIED
    link.stopService()


def test_bearer_token_only_for_its_relay() -> None:
    clock = Clock()
    config = RelayClientConfig(auth={"https://RELAY.test": "s3cret", "https://other.test": "nope"})
    link, relay, _ = make_link(clock, config)
    relay.outcomes = ["accept"]
    link.startService()
    relay.flush()
    assert relay.requests[0].headers["authorization"] == "Bearer s3cret"
    link.stopService()
    plain, relay2, _ = make_link(clock, RelayClientConfig(auth={"https://other.test": "nope"}))
    relay2.outcomes = ["accept"]
    plain.startService()
    relay2.flush()
    assert "authorization" not in relay2.requests[0].headers
    plain.stopService()


def test_oversize_and_empty_datagrams_are_dropped_and_counted() -> None:
    clock = Clock()
    link, _, _ = make_link(clock)
    link.send(PEER, b"")
    link.send(PEER, b"x" * (f.MAX_PACKET_SIZE + 1))
    assert link.counters.oversize_drops == 2 and link.queued == 0


def test_client_sweeps_idle_peer_links_and_keeps_home() -> None:
    clock = Clock()
    relays: dict[str, IrohRelay] = {}

    def endpoint(url: str) -> IrohRelay:
        relays[url] = IrohRelay(clock)
        relays[url].outcomes = ["accept"] * 5
        return relays[url]

    # sweeps every 15 s (idle_timeout / 4) +-10 %: by 45 s nothing is idle, by 100 s a sweep saw 60 s idle
    config = RelayClientConfig(idle_timeout=60.0)
    client = RelayClient(
        clock, ed25519.Ed25519PrivateKey.generate(), lambda *a: None, home_url=URL, config=config,
        endpoint_factory=endpoint,
    )  # fmt: skip
    client.startService()
    peer = canonical_relay_url("https://peer.test")
    client.send(peer, PEER, b"hello")
    for r in relays.values():
        r.flush()
    assert relays[peer].datagrams() == [(PEER, b"hello")]
    assert set(client.links) == {URL, peer}
    peer_link = client.links[peer]
    clock.advance(45)
    assert set(client.links) == {URL, peer}
    clock.advance(55)
    assert set(client.links) == {URL}  # idle for more than 60 s: closed; the home link stays
    assert not peer_link.running and peer_link.state is LinkState.STOPPED
    relays[peer].flush()
    assert relays[peer].server.state == relays[peer].server.STATE_CLOSED  # the relay saw us go
    # a new home: the old one idles out from now on
    new_home = canonical_relay_url("https://home2.test")
    client.set_home(new_home)
    assert set(client.links) == {URL, new_home}
    clock.advance(45)
    assert set(client.links) == {URL, new_home}
    clock.advance(55)
    assert set(client.links) == {new_home}
    client.stopService()
