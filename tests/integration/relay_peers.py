"""Helpers for relay tests: a meshd relay server on 127.0.0.1 and iroh wheel endpoints that use it."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from twisted.internet import defer

from meshd.iroh_relay.server import RelayServerConfig, RelayServerService

ALPN = b"mesh-llm/1"
LIMIT = 8 * 1024 * 1024


def as_deferred(coro: Coroutine[Any, Any, Any]) -> defer.Deferred[Any]:
    return defer.Deferred.fromFuture(asyncio.ensure_future(coro))


def start_relay(reactor: Any, config: RelayServerConfig | None = None, port: int = 0) -> RelayServerService:
    service = RelayServerService(reactor, port, "127.0.0.1", config)
    service.startService()
    return service


def relay_url(service: RelayServerService) -> str:
    return f"http://127.0.0.1:{service.bound_port}"


async def iroh_endpoint(url: str, *, online: bool = True) -> Any:
    """An iroh endpoint whose only relay is *url* (no QAD probe); waits for its home relay."""
    import iroh

    relays = iroh.RelayMap.empty()
    relays.insert(iroh.RelayConfig(url=url, quic_port=None))
    options = iroh.EndpointOptions(
        preset=iroh.preset_minimal(),
        bind_addr="127.0.0.1:0",
        alpns=[ALPN],
        relay_mode=iroh.RelayMode.custom(relays),
    )
    ep = await iroh.Endpoint.bind(options)
    if online:
        await asyncio.wait_for(ep.online(), 20)
    return ep


def iroh_addr_via_relay(endpoint_id: bytes, url: str) -> Any:
    import iroh

    return iroh.EndpointAddr(iroh.EndpointId.from_bytes(endpoint_id), url, [])


async def iroh_echo(ep: Any, count: int = 1) -> list[bytes]:
    """Accept *count* connections, echo one bi-stream on each; returns the dialers' ids."""
    seen = []
    for _ in range(count):
        incoming = await ep.accept_next()
        accepting = await incoming.accept()
        conn = await accepting.connect()
        bi = await conn.accept_bi()
        data = await bi.recv().read_to_end(LIMIT)
        send = bi.send()
        await send.write_all(data)
        await send.finish()
        seen.append(bytes(conn.remote_id().to_bytes()))
        await conn.closed()
    return seen


async def iroh_send(ep: Any, addr: Any, payload: bytes) -> bytes:
    conn = await ep.connect(addr, ALPN)
    bi = await conn.open_bi()
    send = bi.send()
    await send.write_all(payload)
    await send.finish()
    echoed = await bi.recv().read_to_end(LIMIT)
    conn.close(0, b"done")
    return bytes(echoed)


class MeshdRelayed:
    """A meshd QUIC endpoint (UDP on 127.0.0.1) plus a relay client whose home is *url*, wired by RelayPaths."""

    def __init__(self, reactor: Any, url: str | None, *, echo: bool = True) -> None:
        from cryptography.hazmat.primitives.asymmetric import ed25519

        from meshd.iroh_relay.client import RelayClient, RelayClientConfig
        from meshd.iroh_relay.paths import RelayPaths
        from meshd.quic import QuicEndpoint

        self.key = ed25519.Ed25519PrivateKey.generate()
        self.inbound: list[Any] = []
        self.endpoint = QuicEndpoint(reactor, self.key, on_connection=self._accept if echo else None)
        self.endpoint.listen(0, "127.0.0.1")
        self.endpoint_id = self.endpoint.endpoint_id
        self.paths = RelayPaths()
        self.client = RelayClient(
            reactor,
            self.key,
            self.paths.datagram_from_relay,
            home_url=url,
            config=RelayClientConfig(initial_backoff=0.2, max_backoff=1.0),
        )
        self.paths.attach(self.endpoint, self.client)
        self.client.startService()

    def _accept(self, conn: Any) -> None:
        from meshd.quic.testing import RecordingReceiver as Collect

        self.inbound.append(conn)

        def on_stream(stream: Any) -> None:
            stream.set_receiver(Collect(stream, echo=True))

        conn.on_stream = on_stream

    def home_up(self) -> defer.Deferred[Any]:
        assert self.client.home_url is not None
        return self.client.link(self.client.home_url).when_up()

    def dial_via_relay(
        self, endpoint_id: bytes, url: str, direct: list[tuple[str, int]] | None = None, timeout: float = 10
    ) -> defer.Deferred[Any]:
        return self.endpoint.dial(
            endpoint_id, [*(direct or []), self.paths.address_for(url, endpoint_id)], ALPN, timeout
        )

    @defer.inlineCallbacks
    def round_trip(self, conn: Any, payload: bytes):  # type: ignore[no-untyped-def]
        from meshd.quic.testing import RecordingReceiver as Collect

        stream = conn.open_stream()
        receiver = Collect(stream)
        stream.set_receiver(receiver)
        stream.write(payload)
        stream.loseWriteConnection()
        echoed = yield receiver.done
        return echoed

    @defer.inlineCallbacks
    def stop(self):  # type: ignore[no-untyped-def]
        yield self.endpoint.stop()
        yield self.client.stopService()
