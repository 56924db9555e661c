"""meshd <-> a real iroh endpoint (PyPI ``iroh`` wheel) over UDP on 127.0.0.1, relays disabled."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
import pytest_twisted
from aioquic import tls as aiotls
from aioquic.quic.packet import QuicErrorCode
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet import defer

from meshd.quic import DialFailed, MeshConnection, QuicEndpoint, QuicStream
from meshd.quic.endpoint import AdmissionLimits, InboundLimits
from meshd.quic.testing import RecordingReceiver as Collect
from meshd.quic.tls import public_key_bytes

iroh = pytest.importorskip("iroh")

pytestmark = pytest.mark.integration

ALPN = b"mesh-llm/1"
LIMIT = 8 * 1024 * 1024


def as_deferred(coro: Coroutine[Any, Any, Any]) -> defer.Deferred[Any]:
    return defer.Deferred.fromFuture(asyncio.ensure_future(coro))


class Setup:
    def __init__(self, inbound: InboundLimits | None = None, admission: AdmissionLimits | None = None) -> None:
        from twisted.internet import reactor

        self.key = ed25519.Ed25519PrivateKey.generate()
        self.inbound: list[MeshConnection] = []
        self.meshd = QuicEndpoint(
            reactor, self.key, on_connection=self._accept, inbound=inbound or InboundLimits(), admission=admission
        )
        self.meshd.listen(0, "127.0.0.1")
        self.meshd_id = public_key_bytes(self.key)
        self.iroh_ep: Any = None

    def _accept(self, conn: MeshConnection) -> None:
        self.inbound.append(conn)

        def on_stream(stream: QuicStream) -> None:
            stream.set_receiver(Collect(stream, echo=True))

        conn.on_stream = on_stream

    async def bind_iroh(self) -> None:
        options = iroh.EndpointOptions(
            preset=iroh.preset_minimal(),
            bind_addr="127.0.0.1:0",
            alpns=[ALPN],
            relay_mode=iroh.RelayMode.disabled(),
        )
        self.iroh_ep = await iroh.Endpoint.bind(options)

    @property
    def iroh_id(self) -> bytes:
        return bytes(self.iroh_ep.id().to_bytes())

    @property
    def iroh_addr(self) -> tuple[str, int]:
        for text in self.iroh_ep.bound_sockets():
            if text.startswith("127.0.0.1:"):
                return ("127.0.0.1", int(text.rsplit(":", 1)[1]))
        raise AssertionError(f"no IPv4 socket in {self.iroh_ep.bound_sockets()}")

    async def iroh_echo_once(self) -> bytes:
        """Accept one connection and echo one bi-stream; returns the dialler's id."""
        incoming = await self.iroh_ep.accept_next()
        accepting = await incoming.accept()
        conn = await accepting.connect()
        assert bytes(conn.alpn()) == ALPN
        bi = await conn.accept_bi()
        data = await bi.recv().read_to_end(LIMIT)
        send = bi.send()
        await send.write_all(data)
        await send.finish()
        await conn.closed()
        return bytes(conn.remote_id().to_bytes())

    async def iroh_dial_and_send(self, payload: bytes) -> tuple[bytes, bytes]:
        addr = iroh.EndpointAddr(
            iroh.EndpointId.from_bytes(self.meshd_id), None, [f"127.0.0.1:{self.meshd.getHost().port}"]
        )
        conn = await self.iroh_ep.connect(addr, ALPN)
        bi = await conn.open_bi()
        send = bi.send()
        await send.write_all(payload)
        await send.finish()
        echoed = await bi.recv().read_to_end(LIMIT)
        remote = bytes(conn.remote_id().to_bytes())
        conn.close(0, b"done")
        return echoed, remote

    @defer.inlineCallbacks
    def stop(self):  # type: ignore[no-untyped-def]
        yield self.meshd.stop()
        if self.iroh_ep is not None:
            yield as_deferred(self.iroh_ep.close())


@pytest.fixture
def setup() -> Iterator[Setup]:
    s = Setup()
    pytest_twisted.blockon(as_deferred(s.bind_iroh()))
    yield s
    pytest_twisted.blockon(s.stop())


@defer.inlineCallbacks
def meshd_round_trip(s: Setup, payload: bytes):  # type: ignore[no-untyped-def]
    served = as_deferred(s.iroh_echo_once())
    conn = yield s.meshd.dial(s.iroh_id, [s.iroh_addr], alpn=ALPN, timeout=10)
    assert conn.remote_id == s.iroh_id
    assert conn.alpn == ALPN
    stream = conn.open_stream()
    receiver = Collect(stream)
    stream.set_receiver(receiver)
    stream.write(payload)
    stream.loseWriteConnection()
    echoed = yield receiver.done
    conn.close(0, "done")
    seen_by_iroh = yield served
    return echoed, seen_by_iroh


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_meshd_dials_iroh_and_echoes(setup: Setup):  # type: ignore[no-untyped-def]
    echoed, seen_by_iroh = yield meshd_round_trip(setup, b"\x01hello iroh")
    assert echoed == b"\x01hello iroh"
    assert seen_by_iroh == setup.meshd_id


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_iroh_dials_meshd_and_echoes(setup: Setup):  # type: ignore[no-untyped-def]
    echoed, remote = yield as_deferred(setup.iroh_dial_and_send(b"\x01hello meshd"))
    assert echoed == b"\x01hello meshd"
    assert remote == setup.meshd_id
    assert setup.inbound and setup.inbound[0].remote_id == setup.iroh_id
    assert setup.inbound[0].alpn == ALPN


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_wrong_endpoint_id_refused_by_meshd(setup: Setup):  # type: ignore[no-untyped-def]
    # iroh 1.4.1 does not answer a ClientHello whose SNI names another key, so the
    # dial fails by timeout; if it ever answers, our TLS must refuse its key.
    other = public_key_bytes(ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(DialFailed) as info:
        yield setup.meshd.dial(other, [setup.iroh_addr], alpn=ALPN, timeout=3)
    codes = [r.error_code for r in info.value.reasons]
    assert codes in ([], [QuicErrorCode.CRYPTO_ERROR + aiotls.AlertDescription.bad_certificate])
    assert setup.meshd.connections == []


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_iroh_refuses_meshd_under_a_wrong_id(setup: Setup):  # type: ignore[no-untyped-def]
    # iroh dials meshd's address but expects another key: iroh must refuse.
    other = iroh.SecretKey.generate().public()
    addr = iroh.EndpointAddr(other, None, [f"127.0.0.1:{setup.meshd.getHost().port}"])
    with pytest.raises(iroh.IrohError):
        yield as_deferred(asyncio.wait_for(setup.iroh_ep.connect(addr, ALPN), 10))
    assert setup.inbound == []


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_one_mebibyte_both_directions(setup: Setup):  # type: ignore[no-untyped-def]
    payload = hashlib.sha256(b"iroh").digest() * (1024 * 1024 // 32)
    echoed, _ = yield meshd_round_trip(setup, payload)
    assert echoed == payload
    echoed, _ = yield as_deferred(setup.iroh_dial_and_send(payload))
    assert echoed == payload


@pytest.fixture
def guarded() -> Iterator[Setup]:
    """meshd asks every Initial for a Retry token and tracks admission (pre-admission window)."""
    s = Setup(inbound=InboundLimits(retry_threshold=0), admission=AdmissionLimits())
    pytest_twisted.blockon(as_deferred(s.bind_iroh()))
    yield s
    pytest_twisted.blockon(s.stop())


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_iroh_dials_meshd_through_retry_and_before_admission(guarded: Setup):  # type: ignore[no-untyped-def]
    """iroh (quinn) answers meshd's Retry and completes the handshake; 1 MiB each way flows through
    the 256 KiB pre-admission window; after mark_admitted the full window applies."""
    payload = hashlib.sha256(b"retry").digest() * (1024 * 1024 // 32)
    echoed, remote = yield as_deferred(guarded.iroh_dial_and_send(payload))
    assert echoed == payload and remote == guarded.meshd_id
    assert guarded.meshd.retries_sent == 1
    assert guarded.inbound[0].remote_id == guarded.iroh_id
    guarded.inbound[0].mark_admitted()
    echoed, _ = yield as_deferred(guarded.iroh_dial_and_send(b"again"))
    assert echoed == b"again"
    assert guarded.meshd.retries_sent == 2
    # meshd dialling iroh is unaffected (iroh does not ask for Retry)
    echoed, seen_by_iroh = yield meshd_round_trip(guarded, b"\x01back")
    assert echoed == b"\x01back" and seen_by_iroh == guarded.meshd_id
