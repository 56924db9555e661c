"""One UDP port for every QUIC connection: listening and dialling.

:class:`QuicEndpoint` is a Twisted ``DatagramProtocol``.  Incoming datagrams are
routed by destination connection ID (every CID a connection issues is added to
the routing table, retired ones removed), never by address.  An Initial packet
with an unknown CID starts a new server-side connection (if the endpoint
accepts connections); anything unparseable or unroutable is logged and
dropped.  It needs only ``IReactorUDP`` (for :meth:`QuicEndpoint.listen`) and
``IReactorTime``, so a ``Clock`` plus an in-memory transport drives it in tests.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from aioquic.buffer import Buffer
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE
from aioquic.quic.packet import (
    QuicPacketType,
    QuicProtocolVersion,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IListeningPort
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from meshd.quic.connection import Address, MeshConnection
from meshd.quic.core import DEFAULT_LIMITS, MeshQuicConnection, TransportLimits
from meshd.quic.errors import CloseReason, DialFailed, DialTimeout, QuicError
from meshd.quic.tls import public_key_bytes

__all__ = ["ALPN_MESH_V1", "QuicEndpoint"]

ALPN_MESH_V1 = b"mesh-llm/1"
_CID_LENGTH = 8  # aioquic's default local connection ID length
_SUPPORTED_VERSIONS: list[int] = [QuicProtocolVersion.VERSION_1]
_SOCKET_BUFFER = 4 * 1024 * 1024


class PseudoPaths(Protocol):
    """Non-UDP paths (the relay): addresses it ``owns`` are sent through it instead of the UDP socket."""

    def owns(self, addr: Any) -> bool: ...

    def send(self, data: bytes, addr: Address) -> None: ...


def _normalise(addr: Any) -> Address:
    return (str(addr[0]), int(addr[1]))


class QuicEndpoint(DatagramProtocol):
    """A QUIC endpoint with an Ed25519 identity, speaking iroh's raw-public-key TLS.

    :param reactor: provides ``IReactorTime`` (and ``IReactorUDP`` for :meth:`listen`).
    :param private_key: our identity; the EndpointId is its public key.
    :param alpns: ALPNs accepted on inbound connections.
    :param on_connection: called with each inbound :class:`MeshConnection` once
        its handshake completed.  ``None`` refuses inbound connections.
    :param limits: transport settings.
    :param max_pending_handshakes: inbound handshakes allowed at once.
    """

    noisy = False  # no 'Starting protocol' line for every endpoint

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        private_key: ed25519.Ed25519PrivateKey,
        *,
        alpns: Sequence[bytes] = (ALPN_MESH_V1,),
        on_connection: Callable[[MeshConnection], None] | None = None,
        limits: TransportLimits = DEFAULT_LIMITS,
        max_pending_handshakes: int = 256,
    ) -> None:
        self._reactor = reactor
        self._private_key = private_key
        self.endpoint_id = public_key_bytes(private_key)
        self.alpns = list(alpns)
        self.on_connection = on_connection
        self.limits = limits
        self._max_pending = max_pending_handshakes
        self._routes: dict[bytes, MeshConnection] = {}
        self._connections: set[MeshConnection] = set()
        self._pending_inbound: set[MeshConnection] = set()
        self._port: IListeningPort | None = None
        self._dial_timers: set[IDelayedCall] = set()
        self.dropped_datagrams = 0
        # --- relay paths (meshd.relay.paths): pseudo-addresses routed to a non-UDP path ---
        self.pseudo_paths: PseudoPaths | None = None

    # Public API

    @property
    def connections(self) -> list[MeshConnection]:
        """Connections whose handshake completed and that are still open."""
        return [c for c in self._connections if c.is_connected]

    def listen(self, port: int = 0, interface: str = "127.0.0.1") -> IListeningPort:
        """Bind the UDP port used for both accepting and dialling."""
        if self._port is not None:
            raise QuicError("already listening")
        self._port = self._reactor.listenUDP(port, self, interface=interface)
        sock = getattr(self._port, "socket", None)
        if sock is not None:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
                except OSError:
                    pass
        return self._port

    def getHost(self) -> IAddress:
        """The bound address (``.host``, ``.port``)."""
        if self.transport is None:
            raise QuicError("not listening")
        host: IAddress = self.transport.getHost()
        return host

    def dial(
        self,
        endpoint_id: bytes,
        addrs: Sequence[Address],
        alpn: bytes = ALPN_MESH_V1,
        timeout: float = 15.0,
    ) -> Deferred[MeshConnection]:
        """Connect to the endpoint whose key is *endpoint_id* at one of *addrs*.

        Every address is tried at once; the first completed handshake wins and
        the other attempts are closed.  Fails with :class:`DialFailed` (each
        attempt's :class:`CloseReason` in ``.reasons``; a wrong EndpointId shows
        as a TLS ``bad_certificate`` alert) or :class:`DialTimeout`.
        """
        if len(endpoint_id) != 32:
            raise ValueError("an EndpointId is 32 bytes")
        if self.transport is None:
            raise QuicError("endpoint is not listening")
        usable = [_normalise(a) for a in addrs if self._is_pseudo(a) or self._family_ok(a[0])]
        if not usable:
            return _failed(DialFailed(f"no usable address in {list(addrs)!r}"))

        attempts: list[MeshConnection] = []
        reasons: list[CloseReason] = []
        timer: IDelayedCall | None = None

        def cancel(_: Deferred[MeshConnection]) -> None:
            finish()
            for conn in attempts:
                conn.close(0, "dial cancelled")

        result: Deferred[MeshConnection] = Deferred(cancel)

        def finish() -> None:
            if timer is not None:
                self._dial_timers.discard(timer)
                if timer.active():
                    timer.cancel()

        def won(conn: MeshConnection) -> None:
            if result.called:
                conn.close(0, "dial: another address won")
                return
            finish()
            for other in attempts:
                if other is not conn:
                    other.close(0, "dial: another address won")
            result.callback(conn)

        def lost(failure: Failure, conn: MeshConnection) -> None:
            if conn.close_reason is not None:
                reasons.append(conn.close_reason)
            if result.called:
                return
            if all(a.close_reason is not None for a in attempts):
                finish()
                result.errback(DialFailed(f"dial {endpoint_id.hex()[:10]} failed: {reasons}", reasons))

        def timed_out() -> None:
            self._dial_timers.discard(timer)  # type: ignore[arg-type]
            if result.called:
                return
            for conn in attempts:
                conn.close(0, "dial timeout")
            result.errback(DialTimeout(f"dial {endpoint_id.hex()[:10]} timed out after {timeout}s", reasons))

        for addr in usable:
            quic = MeshQuicConnection(
                private_key=self._private_key,
                is_client=True,
                alpn_protocols=[alpn],
                expected_peer_id=endpoint_id,
                limits=self.limits,
            )
            conn = MeshConnection(self, quic, self._reactor, peer_address=addr)
            attempts.append(conn)
            self._connections.add(conn)
            self._add_route(quic.host_cid, conn)
        for conn in attempts:
            conn.when_handshake_done().addCallbacks(won, lost, errbackArgs=(conn,))
        timer = self._reactor.callLater(timeout, timed_out)
        self._dial_timers.add(timer)
        for conn in attempts:
            conn.connect()
        return result

    def stop(self) -> Deferred[None]:
        """Close every connection (CONNECTION_CLOSE is sent) and the UDP port."""
        self._close_all("endpoint stopping")
        port, self._port = self._port, None
        if port is None:
            return succeed(None)
        stopped: Deferred[None] = maybeDeferred(port.stopListening)  # type: ignore[call-overload]
        return stopped

    # DatagramProtocol

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        address = _normalise(addr)
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=_CID_LENGTH)
        except Exception:
            self._drop("unparseable datagram", address, data)
            return
        conn = self._routes.get(header.destination_cid)
        if conn is not None:
            if self._is_pseudo(address) != self._is_pseudo(conn.peer_address):
                # relay <-> UDP is never a migration: aioquic holds one path per connection
                self._drop("datagram on another path kind than its connection", address, data)
                return
            conn.datagram_received(data, address)
            return
        if header.packet_type == QuicPacketType.VERSION_NEGOTIATION:
            self._drop("version negotiation for an unknown connection", address, data)
            return
        if header.version is not None and header.version not in _SUPPORTED_VERSIONS:
            if self.on_connection is not None and len(data) >= SMALLEST_MAX_DATAGRAM_SIZE:
                self._send_datagram(
                    encode_quic_version_negotiation(
                        source_cid=header.destination_cid,
                        destination_cid=header.source_cid,
                        supported_versions=_SUPPORTED_VERSIONS,
                    ),
                    address,
                )
            else:
                self._drop("unsupported version", address, data)
            return
        if (
            header.packet_type != QuicPacketType.INITIAL
            or len(data) < SMALLEST_MAX_DATAGRAM_SIZE
            or self.on_connection is None
        ):
            self._drop("datagram for an unknown connection", address, data)
            return
        if len(self._pending_inbound) >= self._max_pending:
            self._drop("too many pending handshakes", address, data)
            return
        self._accept(header.destination_cid, data, address)

    def stopProtocol(self) -> None:
        self._close_all("endpoint stopped")

    # Internals used by MeshConnection

    def _is_pseudo(self, addr: Any) -> bool:
        return self.pseudo_paths is not None and self.pseudo_paths.owns(addr)

    def _send_datagram(self, data: bytes, addr: Address) -> None:
        if self.pseudo_paths is not None and self.pseudo_paths.owns(addr):
            self.pseudo_paths.send(data, addr)
            return
        if self.transport is None:
            return
        # Straight to the socket when there is one: every address here came from our own routing
        # (a peer's source address or a dial target), so twisted's per-datagram address check is
        # redundant on this hot path.
        sock = getattr(self._port, "socket", None)
        try:
            if sock is not None:
                sock.sendto(data, addr)
            else:
                self.transport.write(data, addr)
        except Exception as exc:  # ENOBUFS, EMSGSIZE, EAGAIN, wrong family...: QUIC recovers from loss
            self._log.debug("send to {addr} failed: {exc}", addr=addr, exc=exc)

    def _add_route(self, cid: bytes, conn: MeshConnection) -> None:
        self._routes[cid] = conn
        conn.cids.add(cid)

    def _remove_route(self, cid: bytes, conn: MeshConnection) -> None:
        if self._routes.get(cid) is conn:
            del self._routes[cid]
        conn.cids.discard(cid)

    def _connection_ended(self, conn: MeshConnection) -> None:
        for cid in list(conn.cids):
            self._remove_route(cid, conn)
        self._connections.discard(conn)
        self._pending_inbound.discard(conn)

    # Private

    def _accept(self, odcid: bytes, data: bytes, address: Address) -> None:
        quic = MeshQuicConnection(
            private_key=self._private_key,
            is_client=False,
            alpn_protocols=self.alpns,
            original_destination_connection_id=odcid,
            limits=self.limits,
        )
        conn = MeshConnection(self, quic, self._reactor, peer_address=address)
        self._connections.add(conn)
        self._pending_inbound.add(conn)
        self._add_route(odcid, conn)
        self._add_route(quic.host_cid, conn)

        def ready(c: MeshConnection) -> None:
            self._pending_inbound.discard(c)
            handler = self.on_connection
            if handler is None:
                c.close(0, "not accepting connections")
                return
            try:
                handler(c)
            except Exception:
                self._log.failure("on_connection handler raised for {conn}", conn=c)

        def failed(failure: Failure) -> None:
            self._pending_inbound.discard(conn)
            self._log.info("inbound handshake from {addr} failed: {reason}", addr=address, reason=conn.close_reason)

        conn.when_handshake_done().addCallbacks(ready, failed)
        conn.datagram_received(data, address)

    def _close_all(self, reason: str) -> None:
        for timer in list(self._dial_timers):
            if timer.active():
                timer.cancel()
        self._dial_timers.clear()
        for conn in list(self._connections):
            conn.close(0, reason)
            conn.abort(CloseReason(error_code=0, reason=reason, locally=True))
        self._connections.clear()
        self._routes.clear()
        self._pending_inbound.clear()

    def _drop(self, why: str, addr: Address, data: bytes) -> None:
        self.dropped_datagrams += 1
        self._log.debug("dropped {n}-byte datagram from {addr}: {why}", n=len(data), addr=addr, why=why)

    def _family_ok(self, host: str) -> bool:
        if self.transport is None:
            return False
        try:
            bound = ipaddress.ip_address(self.transport.getHost().host)
            target = ipaddress.ip_address(host)
        except ValueError:
            return False
        if bound.version == 6 and bound.is_unspecified:
            return True
        return bound.version == target.version


def _failed(exc: Exception) -> Deferred[MeshConnection]:
    d: Deferred[MeshConnection] = Deferred()
    d.errback(exc)
    return d
