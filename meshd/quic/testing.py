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
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.logger import ILogObserver
from twisted.python.failure import Failure
from zope.interface import implementer

from meshd.quic.stream import QuicStream

__all__ = ["LoggedErrors", "MemoryNetwork", "RecordingReceiver"]

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


@implementer(ILogObserver)
class LoggedErrors:
    """Collects error-level twisted.logger events (tests assert there are none)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        from twisted.logger import LogLevel

        if event.get("log_level") in (LogLevel.error, LogLevel.critical) or "log_failure" in event:
            self.events.append(event)

    def start(self) -> LoggedErrors:
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(self)
        return self

    def stop(self) -> None:
        from twisted.logger import globalLogPublisher

        globalLogPublisher.removeObserver(self)

    def formatted(self) -> list[str]:
        from twisted.logger import formatEvent

        out = []
        for e in self.events:
            text = formatEvent(e)
            failure = e.get("log_failure")
            if failure is not None:
                text += "\n" + failure.getTraceback()
            out.append(text)
        return out
