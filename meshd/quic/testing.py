"""Test helpers: an in-memory datagram network driven by a Clock, and a recording receiver.

Used by meshd's own tests and by other rooms that want two QUIC endpoints
without sockets::

    clock = Clock()
    net = MemoryNetwork(clock)
    a = QuicEndpoint(clock, key_a, on_connection=...)
    net.attach(a, ("10.0.0.1", 4433))
    ...
    net.pump()
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from meshd.quic.stream import QuicStream

__all__ = ["MemoryNetwork", "RecordingReceiver"]

Address = tuple[str, int]


class _MemoryTransport:
    def __init__(self, network: MemoryNetwork, address: Address) -> None:
        self.network = network
        self.address = address

    def write(self, data: bytes, addr: Address) -> None:
        self.network.queue.append((self.address, (addr[0], addr[1]), bytes(data)))

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.address[0], self.address[1])

    def stopListening(self) -> None:
        self.network.detach(self.address)


class MemoryNetwork:
    """Datagrams between DatagramProtocols, delivered when :meth:`pump` runs.

    ``filter`` may be set to a callable ``(src, dst, data) -> bytes | None``
    to drop (None) or alter datagrams.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.queue: deque[tuple[Address, Address, bytes]] = deque()
        self.protocols: dict[Address, DatagramProtocol] = {}
        self.filter: Callable[[Address, Address, bytes], bytes | None] | None = None
        self.delivered = 0

    def attach(self, protocol: DatagramProtocol, address: Address) -> None:
        self.protocols[address] = protocol
        protocol.makeConnection(_MemoryTransport(self, address))  # type: ignore[arg-type]

    def detach(self, address: Address) -> None:
        protocol = self.protocols.pop(address, None)
        if protocol is not None:
            protocol.doStop()

    def inject(self, src: Address, dst: Address, data: bytes) -> None:
        self.queue.append((src, dst, data))

    def pump(self, max_steps: int = 1_000_000, horizon: float = 0.03) -> int:
        """Deliver datagrams and run timers until quiet; returns datagrams delivered.

        Timers due within *horizon* seconds (pacing, ACK delay) are run by
        advancing the clock to them; later ones (keep-alive, idle) are left.
        """
        count = 0
        for _ in range(max_steps):
            self.clock.advance(0)
            if not self.queue:
                now = self.clock.seconds()
                due = [c.getTime() for c in self.clock.getDelayedCalls() if c.getTime() <= now + horizon]
                if not due:
                    return count
                self.clock.advance(max(0.0, min(due) - now))
                continue
            src, dst, data = self.queue.popleft()
            if self.filter is not None:
                altered = self.filter(src, dst, data)
                if altered is None:
                    continue
                data = altered
            protocol = self.protocols.get(dst)
            if protocol is not None:
                protocol.datagramReceived(data, src)
                count += 1
                self.delivered += 1
        raise AssertionError(f"network did not settle within {max_steps} steps")

    def advance(self, seconds: float, step: float = 0.05) -> None:
        """Advance the clock by *seconds* in small steps, pumping in between."""
        remaining = seconds
        while remaining > 1e-9:
            dt = min(step, remaining)
            self.clock.advance(dt)
            remaining -= dt
            self.pump()


class RecordingReceiver:
    """A stream receiver that records everything; optionally echoes."""

    def __init__(self, stream: QuicStream | None = None, *, echo: bool = False) -> None:
        self.stream = stream
        self.echo = echo
        self.chunks: list[bytes] = []
        self.eof = False
        self.lost: Failure | None = None
        self.on_data: Callable[[RecordingReceiver, bytes], Any] | None = None
        self._done: Deferred[bytes] | None = None

    @property
    def done(self) -> Deferred[bytes]:
        """Fires with all the data once the stream ended cleanly, or fails with why it did not.
        (Made on first use, so a stream nobody waits on leaves no unhandled failure behind.)"""
        if self._done is None:
            self._done = Deferred()
            if self.lost is not None:
                self._fire()
        return self._done

    def _fire(self) -> None:
        assert self._done is not None and self.lost is not None
        if self._done.called:
            return
        if self.lost.check(ConnectionDone):
            self._done.callback(self.data)
        else:
            self._done.errback(self.lost)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)
        if self.echo and self.stream is not None:
            self.stream.write(data)
        if self.on_data is not None:
            self.on_data(self, data)

    def eofReceived(self) -> None:
        self.eof = True
        if self.echo and self.stream is not None:
            self.stream.loseWriteConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.lost = reason
        if self._done is not None:
            self._fire()
