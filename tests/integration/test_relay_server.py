"""meshd's relay server and client on 127.0.0.1: handshake, forwarding, bounds, bad input, restart."""

from __future__ import annotations

import os
from typing import Any

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint

from meshd.iroh_relay import frames as f
from meshd.iroh_relay.client import RelayClientConfig, RelayLink
from meshd.iroh_relay.server import RelayServerConfig
from meshd.wslink import LinkState
from tests.integration.relay_peers import relay_url, start_relay

pytestmark = pytest.mark.integration


def key_bytes(key: ed25519.Ed25519PrivateKey) -> bytes:
    return f.make_client_auth(key, bytes(16)).public_key


class RawProtocol(WebSocketClientProtocol):  # type: ignore[misc]
    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.messages.append(payload)
        waiters, self.factory.waiters = self.factory.waiters, []
        for d in waiters:
            d.callback(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.close_code = code
        if not self.factory.closed.called:
            self.factory.closed.callback(code)


class Raw:
    """A hand-driven relay client: send raw bytes, read raw messages."""

    def __init__(self, reactor: Any, port: int, protocols: list[str] | None = None) -> None:
        self.factory = WebSocketClientFactory(
            url=f"ws://127.0.0.1:{port}/relay", protocols=protocols or list(f.SUBPROTOCOLS), reactor=reactor
        )
        self.factory.protocol = RawProtocol
        self.factory.setProtocolOptions(maxMessagePayloadSize=4 * 1024 * 1024, maxFramePayloadSize=4 * 1024 * 1024)
        self.factory.messages = []
        self.factory.waiters = []
        self.factory.opened = defer.Deferred()
        self.factory.closed = defer.Deferred()
        self.factory.close_code = None
        self.reactor = reactor
        self.port = port
        self.proto: Any = None

    @defer.inlineCallbacks
    def connect(self):  # type: ignore[no-untyped-def]
        yield TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port).connect(self.factory)
        self.proto = yield self.factory.opened
        return self

    def next_message(self) -> defer.Deferred[bytes]:
        if self.factory.messages:
            return defer.succeed(self.factory.messages.pop(0))
        d: defer.Deferred[bytes] = defer.Deferred()

        def take(payload: bytes) -> bytes:
            self.factory.messages.remove(payload)
            return payload

        self.factory.waiters.append(d)
        return d.addCallback(take)

    def send(self, data: bytes) -> None:
        self.proto.sendMessage(data, isBinary=True)

    @defer.inlineCallbacks
    def handshake(self, key: ed25519.Ed25519PrivateKey):  # type: ignore[no-untyped-def]
        challenge = f.decode((yield self.next_message()))
        assert isinstance(challenge, f.ServerChallenge)
        self.send(f.encode(f.make_client_auth(key, challenge.challenge)))
        answer = f.decode((yield self.next_message()))
        return answer


@pytest.fixture
def relay():  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    service = start_relay(reactor, RelayServerConfig(max_queue_frames=16, rate_bytes_per_s=None))
    yield service
    pytest_twisted.blockon(defer.maybeDeferred(service.stopService))


def links_up(*links: RelayLink) -> defer.Deferred[Any]:
    return defer.gatherResults([link.when_up() for link in links])


@pytest.mark.timeout(30)
@pytest_twisted.inlineCallbacks
def test_handshake_confirm_and_bad_signature_denied(relay):  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    good = yield Raw(reactor, relay.bound_port).connect()
    answer = yield good.handshake(ed25519.Ed25519PrivateKey.generate())
    assert answer == f.ServerConfirmsAuth()
    assert good.proto.websocket_protocol_in_use == f.PROTOCOL_V2

    bad = yield Raw(reactor, relay.bound_port).connect()
    challenge = f.decode((yield bad.next_message()))
    key = ed25519.Ed25519PrivateKey.generate()
    forged = f.make_client_auth(key, os.urandom(16))  # signed over another challenge
    assert isinstance(challenge, f.ServerChallenge)
    bad.send(f.encode(forged))
    answer = f.decode((yield bad.next_message()))
    assert answer == f.ServerDeniesAuth("signature invalid")
    yield bad.factory.closed
    metrics = relay.server.status()["metrics"]
    assert metrics["handshakes_denied"] == 1 and metrics["handshakes_ok"] == 1
    assert not relay.server.is_connected(forged.public_key)


@pytest.mark.timeout(30)
@pytest_twisted.inlineCallbacks
def test_v1_is_accepted_and_unknown_versions_refused(relay):  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    v1 = yield Raw(reactor, relay.bound_port, [f.PROTOCOL_V1]).connect()
    assert v1.proto.websocket_protocol_in_use == f.PROTOCOL_V1
    assert (yield v1.handshake(ed25519.Ed25519PrivateKey.generate())) == f.ServerConfirmsAuth()
    other = Raw(reactor, relay.bound_port, ["iroh-relay-v9"])
    yield TCP4ClientEndpoint(reactor, "127.0.0.1", relay.bound_port).connect(other.factory)
    yield other.factory.closed
    assert not other.factory.opened.called
    assert relay.server.status()["connections"] == 1


@pytest.mark.timeout(30)
@pytest_twisted.inlineCallbacks
def test_garbage_frames_close_only_that_connection(relay):  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    bystander = RelayLink(reactor, relay_url(relay), ed25519.Ed25519PrivateKey.generate(), lambda *a: None)
    bystander.startService()
    try:
        yield bystander.when_up()
        for garbage in (b"\xff\xff", b"\x04short", os.urandom(200), b"\x09"):
            raw = yield Raw(reactor, relay.bound_port).connect()
            yield raw.handshake(ed25519.Ed25519PrivateKey.generate())
            raw.send(garbage)
            code = yield raw.factory.closed
            assert code == 4002
        # before the handshake, too
        raw = yield Raw(reactor, relay.bound_port).connect()
        yield raw.next_message()
        raw.send(f.encode(f.Ping(b"12345678")))
        assert (yield raw.factory.closed) == 4002
        assert relay.server.status()["metrics"]["bad_frames"] == 5
        assert bystander.state == LinkState.UP
    finally:
        yield bystander.stopService()


@pytest.mark.timeout(30)
@pytest_twisted.inlineCallbacks
def test_oversized_websocket_message_is_refused(relay):  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    raw = yield Raw(reactor, relay.bound_port).connect()
    yield raw.handshake(ed25519.Ed25519PrivateKey.generate())
    raw.send(b"\x04" + os.urandom(32) + b"\x00" + b"x" * (f.MAX_FRAME_SIZE + 10))
    code = yield raw.factory.closed
    assert code in (1009, 1006)  # 1009 "message too big", or a drop while we were still sending
    for _ in range(100):
        if relay.server.status()["connections"] == 0:
            break
        yield task.deferLater(reactor, 0.02, lambda: None)
    assert relay.server.status()["connections"] == 0
    raw = yield Raw(reactor, relay.bound_port).connect()
    yield raw.handshake(ed25519.Ed25519PrivateKey.generate())
    raw.send(b"\x04" + os.urandom(32) + b"\x00" + b"x" * (70 * 1024))  # under 1 MiB, over 64 KiB
    assert (yield raw.factory.closed) == 4002


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_two_hundred_clients_each_gets_only_its_own_datagrams(relay):  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    n = 200
    keys = [ed25519.Ed25519PrivateKey.generate() for _ in range(n)]
    ids = [key_bytes(k) for k in keys]
    received: list[list[tuple[bytes, bytes]]] = [[] for _ in range(n)]
    links = []
    for i, key in enumerate(keys):

        def on_datagram(url: str, src: bytes, data: bytes, i: int = i) -> None:
            received[i].append((src, data))

        link = RelayLink(reactor, relay_url(relay), key, on_datagram)
        link.startService()
        links.append(link)
    try:
        yield links_up(*links)
        assert relay.server.status()["clients"] == n
        for i, link in enumerate(links):
            link.send(ids[(i + 1) % n], b"from %d to %d" % (i, (i + 1) % n))
        for _ in range(200):  # bounded wait for every datagram
            if all(received):
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        for i in range(n):
            sender = (i - 1) % n
            assert received[i] == [(ids[sender], b"from %d to %d" % (sender, i))]
    finally:
        yield defer.gatherResults([link.stopService() for link in links])


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_a_client_that_never_reads_is_bounded(relay):  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    sleeper_key = ed25519.Ed25519PrivateKey.generate()
    sleeper = yield Raw(reactor, relay.bound_port).connect()
    yield sleeper.handshake(sleeper_key)
    sleeper.proto.transport.pauseProducing()  # never read again
    sender = RelayLink(reactor, relay_url(relay), ed25519.Ed25519PrivateKey.generate(), lambda *a: None)
    sender.startService()
    try:
        yield sender.when_up()
        chunk = b"x" * 60_000
        for _ in range(40):  # 40 x 24 datagrams x 60 KB = 57.6 MB offered, paced in rounds
            for _ in range(24):
                sender.send(key_bytes(sleeper_key), chunk)
            yield task.deferLater(reactor, 0.02, lambda: None)
        for _ in range(100):
            if relay.server.metrics.queue_drops:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        metrics = relay.server.status()["metrics"]
        assert metrics["queue_drops"] > 0
        queues = [len(c.queue) for c in relay.server._open]
        assert max(queues) <= 16
        assert sender.state == LinkState.UP
    finally:
        sleeper.proto.transport.resumeProducing()
        yield sender.stopService()


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_endpoint_gone_and_same_id_takeover(relay):  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    a_key, b_key = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    gone: list[bytes] = []
    a = RelayLink(reactor, relay_url(relay), a_key, lambda *x: None)
    b = RelayLink(reactor, relay_url(relay), b_key, lambda *x: None, on_gone=lambda url, eid: gone.append(eid))
    a.startService()
    b.startService()
    try:
        yield links_up(a, b)
        a.send(key_bytes(b_key), b"hello")
        yield task.deferLater(reactor, 0.2, lambda: None)
        twin = yield Raw(reactor, relay.bound_port).connect()
        yield twin.handshake(a_key)  # same id: the old connection becomes inactive
        status = f.decode((yield a_status(a, reactor)))
        assert status == f.Status(f.StatusCode.SAME_ENDPOINT_ID_CONNECTED)
        twin.proto.dropConnection(abort=True)
        yield twin.factory.closed
        yield a.stopService()
        for _ in range(100):
            if gone:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        assert gone == [key_bytes(a_key)]
    finally:
        yield b.stopService()
        if a.running:
            yield a.stopService()


def a_status(link: RelayLink, reactor: Any) -> defer.Deferred[bytes]:
    @defer.inlineCallbacks
    def wait():  # type: ignore[no-untyped-def]
        for _ in range(100):
            if link.last_status is not None:
                return bytes([f.FrameType.STATUS, link.last_status])
            yield task.deferLater(reactor, 0.05, lambda: None)
        raise AssertionError("no Status frame")

    return wait()


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_relay_restart_clients_reconnect():  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    first = start_relay(reactor)
    port = first.bound_port
    url = relay_url(first)
    got: list[bytes] = []
    a_key = ed25519.Ed25519PrivateKey.generate()
    config = RelayClientConfig(initial_backoff=0.1, max_backoff=0.5)
    a = RelayLink(reactor, url, a_key, lambda *x: None, config=config)
    b = RelayLink(reactor, url, ed25519.Ed25519PrivateKey.generate(), lambda u, s, d: got.append(d), config=config)
    second = None
    a.startService()
    b.startService()
    try:
        yield links_up(a, b)
        yield first.stopService()
        for _ in range(100):
            if a.state != LinkState.UP and b.state != LinkState.UP:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        assert a.state != LinkState.UP and b.state != LinkState.UP
        b_id = key_bytes(b.private_key)
        a.send(b_id, b"queued while down")
        second = start_relay(reactor, port=port)
        yield links_up(a, b)
        for _ in range(100):
            if got:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        assert a.counters.connects == 2 and b.counters.connects == 2
        assert got == [b"queued while down"] or got == []  # sent before b re-registered: may be dropped
        a.send(b_id, b"after restart")
        for _ in range(100):
            if b"after restart" in got:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        assert b"after restart" in got
    finally:
        yield a.stopService()
        yield b.stopService()
        if second is not None:
            yield second.stopService()


@pytest.mark.timeout(30)
@pytest_twisted.inlineCallbacks
def test_http_routes(relay):  # type: ignore[no-untyped-def]
    import json

    import treq

    base = relay_url(relay)
    r = yield treq.get(f"{base}/ping")
    assert r.code == 200 and r.headers.getRawHeaders("access-control-allow-origin") == ["*"]
    yield r.content()
    r = yield treq.get(f"{base}/healthz")
    assert r.code == 200
    yield r.content()
    r = yield treq.get(f"{base}/generate_204", headers={"X-Iroh-Challenge": "ts_abc"})
    assert r.code == 204 and r.headers.getRawHeaders("x-iroh-response") == ["response ts_abc"]
    yield r.content()
    r = yield treq.get(f"{base}/status")
    body = json.loads((yield r.content()))
    assert body["clients"] == 0 and "datagrams_forwarded" in body["metrics"]


@pytest.mark.timeout(30)
@pytest_twisted.inlineCallbacks
def test_a_relay_requiring_a_token_admits_only_bearers():  # type: ignore[no-untyped-def]
    """``--relay-token`` on our relay server, ``--relay-auth URL=TOKEN`` on a node (iroh-relay's Bearer)."""
    from twisted.internet import reactor

    service = start_relay(reactor, RelayServerConfig(tokens=frozenset({"s3cret"})))
    url = relay_url(service)
    try:
        with_token = RelayLink(
            reactor, url, ed25519.Ed25519PrivateKey.generate(), lambda *a: None,
            config=RelayClientConfig(auth={url: "s3cret"}),
        )  # fmt: skip
        wrong = RelayLink(
            reactor, url, ed25519.Ed25519PrivateKey.generate(), lambda *a: None,
            config=RelayClientConfig(auth={url: "guess"}),
        )  # fmt: skip
        none = RelayLink(reactor, url, ed25519.Ed25519PrivateKey.generate(), lambda *a: None)
        for link in (with_token, wrong, none):
            link.startService()
        yield with_token.when_up()
        for _ in range(200):  # the two refused links learn it from ServerDeniesAuth
            if wrong.counters.denied and none.counters.denied:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        assert not wrong.is_up and not none.is_up
        assert "access token" in (wrong.last_error or "") and "access token" in (none.last_error or "")
        metrics = service.server.status()["metrics"]
        assert metrics["handshakes_ok"] == 1 and metrics["handshakes_denied"] >= 2
        for link in (with_token, wrong, none):
            yield defer.maybeDeferred(link.stopService)
    finally:
        yield defer.maybeDeferred(service.stopService)
