"""One UDP port for every QUIC connection: listening and dialling.

:class:`QuicEndpoint` is a Twisted ``DatagramProtocol``.  Incoming datagrams are
routed by destination connection ID (every CID a connection issues is added to
the routing table, retired ones removed), never by address.  An Initial packet
with an unknown CID starts a new server-side connection (if the endpoint
accepts connections); anything unparseable or unroutable is logged and
dropped.  It needs only ``IReactorUDP`` (for :meth:`QuicEndpoint.listen`) and
``IReactorTime``, so a ``Clock`` plus an in-memory transport drives it in tests.

Inbound handshakes are bounded (:class:`InboundLimits`): at most
``max_pending_handshakes`` at once and ``max_pending_per_source`` per source
address, each closed after ``handshake_timeout``; once ``retry_threshold`` are
pending, an Initial must carry a Retry token (:mod:`meshd.quic.retry`), so
Initials from spoofed addresses no longer take slots.

Until the node marks it admitted (:meth:`MeshConnection.mark_admitted`), an
inbound connection has the pre-admission receive window of
:class:`~meshd.quic.core.TransportLimits` (256 KiB), and the bytes stream
readers hold for it are charged against ``preadmission_bytes_per_connection``
and ``preadmission_bytes_total`` (:meth:`MeshConnection.charge_preadmission`).
With ``admission`` (:class:`AdmissionLimits`) the endpoint also bounds such
connections: at most ``max_unadmitted`` (the oldest is closed for a newcomer),
each closed after ``admission_timeout``, with the pre-admission stream credit.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
from aioquic.buffer import Buffer
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE
from aioquic.quic.packet import (
    QuicPacketType,
    QuicProtocolVersion,
    encode_quic_retry,
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
from meshd.quic.retry import DEFAULT_LIFETIME, RetryTokens
from meshd.quic.tls import public_key_bytes

__all__ = ["ALPN_MESH_V1", "AdmissionLimits", "InboundLimits", "QuicEndpoint"]

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


@attrs.frozen
class InboundLimits:
    """Bounds on inbound handshakes (always in force)."""

    #: Inbound handshakes in progress at once.
    max_pending_handshakes: int = 256
    #: Inbound handshakes in progress at once from one source address (an IP; a relay path's peer).
    max_pending_per_source: int = 16
    #: From this many pending handshakes on, an Initial without a valid Retry token gets a Retry
    #: packet instead of a handshake (0: always; relay paths are never asked, their sender is
    #: authenticated by the relay).
    retry_threshold: int = 32
    #: Seconds a Retry token is good for.
    retry_token_lifetime: float = DEFAULT_LIFETIME
    #: An inbound handshake not complete after this many seconds is abandoned.
    handshake_timeout: float = 10.0
    #: Bytes that readers may hold for frames of one connection the node has not admitted.
    preadmission_bytes_per_connection: int = 1024 * 1024
    #: The same, over all connections not admitted.
    preadmission_bytes_total: int = 16 * 1024 * 1024


@attrs.frozen
class AdmissionLimits:
    """Bounds on inbound connections past their handshake that the node has not admitted yet."""

    #: Such connections at once; a new one closes the oldest.
    max_unadmitted: int = 128
    #: Seconds a connection has to be admitted (complete a gossip exchange) before it is closed, when it has no
    #: stream open (one with a stream in progress, e.g. an SDK tunnel, is looked at again after as long).
    admission_timeout: float = 10.0


DEFAULT_INBOUND = InboundLimits()


class QuicEndpoint(DatagramProtocol):
    """A QUIC endpoint with an Ed25519 identity, speaking iroh's raw-public-key TLS.

    :param reactor: provides ``IReactorTime`` (and ``IReactorUDP`` for :meth:`listen`).
    :param private_key: our identity; the EndpointId is its public key.
    :param alpns: ALPNs accepted on inbound connections.
    :param on_connection: called with each inbound :class:`MeshConnection` once
        its handshake completed.  ``None`` refuses inbound connections.
    :param limits: transport settings.
    :param inbound: bounds on inbound handshakes and on pre-admission buffering.
    :param admission: also cap inbound connections not yet admitted (:meth:`MeshConnection.mark_admitted`),
        close them after a deadline and give them little stream credit. None (uses without an
        admission step) closes nothing for want of admission; the pre-admission window and byte
        budget still apply to connections never marked admitted.
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
        inbound: InboundLimits = DEFAULT_INBOUND,
        admission: AdmissionLimits | None = None,
    ) -> None:
        self._reactor = reactor
        self._private_key = private_key
        self.endpoint_id = public_key_bytes(private_key)
        self.alpns = list(alpns)
        self.on_connection = on_connection
        self.limits = limits
        self.inbound = inbound
        self.admission = admission
        self._retry_tokens = RetryTokens(lifetime=inbound.retry_token_lifetime)
        self._routes: dict[bytes, MeshConnection] = {}
        self._connections: set[MeshConnection] = set()
        #: Inbound handshakes in progress -> their deadline.
        self._pending_inbound: dict[MeshConnection, IDelayedCall] = {}
        self._pending_by_source: Counter[Any] = Counter()
        #: Inbound connections past the handshake, not admitted yet (oldest first) -> their deadline.
        self._unadmitted: dict[MeshConnection, IDelayedCall] = {}
        #: Bytes held by readers for connections not admitted (see charge_preadmission).
        self.preadmission_bytes = 0
        self.retries_sent = 0
        self.unadmitted_evicted = 0
        self.unadmitted_expired = 0
        self._port: IListeningPort | None = None
        self._dial_timers: set[IDelayedCall] = set()
        self.dropped_datagrams = 0
        #: Relay paths (meshd.iroh_relay.paths): pseudo-addresses routed to a non-UDP path (:meth:`use_pseudo_paths`).
        self.pseudo_paths: PseudoPaths | None = None

    # Public API

    @property
    def connections(self) -> list[MeshConnection]:
        """Connections whose handshake completed and that are still open."""
        return [c for c in self._connections if c.is_connected]

    @property
    def pending_handshakes(self) -> int:
        """Inbound handshakes in progress."""
        return len(self._pending_inbound)

    @property
    def unadmitted(self) -> int:
        """Inbound connections past their handshake that the node has not admitted (with ``admission``)."""
        return len(self._unadmitted)

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
            self.add_route(quic.host_cid, conn)
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
                self.send_datagram(
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
        self._initial(header, data, address)

    def stopProtocol(self) -> None:
        self._close_all("endpoint stopped")

    def use_pseudo_paths(self, paths: PseudoPaths | None) -> None:
        """Send to the addresses *paths* owns through it (the relay) rather than the UDP socket."""
        self.pseudo_paths = paths

    # ConnectionOwner: used by this endpoint's MeshConnections

    @property
    def admission_tracked(self) -> bool:
        return self.admission is not None

    @property
    def preadmission_bytes_per_connection(self) -> int:
        return self.inbound.preadmission_bytes_per_connection

    def reserve_preadmission(self, count: int) -> bool:
        if self.preadmission_bytes + count > self.inbound.preadmission_bytes_total:
            return False
        self.preadmission_bytes += count
        return True

    def release_preadmission(self, count: int) -> None:
        self.preadmission_bytes -= count

    def send_datagram(self, data: bytes, addr: Address) -> None:
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

    def add_route(self, cid: bytes, conn: MeshConnection) -> None:
        self._routes[cid] = conn
        conn.cids.add(cid)

    def remove_route(self, cid: bytes, conn: MeshConnection) -> None:
        if self._routes.get(cid) is conn:
            del self._routes[cid]
        conn.cids.discard(cid)

    def connection_admitted(self, conn: MeshConnection) -> None:
        self._forget_unadmitted(conn)

    def connection_ended(self, conn: MeshConnection) -> None:
        for cid in list(conn.cids):
            self.remove_route(cid, conn)
        self._connections.discard(conn)
        self._handshake_over(conn)
        self._forget_unadmitted(conn)

    # Private

    def _is_pseudo(self, addr: Any) -> bool:
        return self.pseudo_paths is not None and self.pseudo_paths.owns(addr)

    def _source_key(self, address: Address) -> Any:
        return address if self._is_pseudo(address) else address[0]

    def _initial(self, header: Any, data: bytes, address: Address) -> None:
        """An Initial for a connection we do not know: Retry, refuse, or start a handshake."""
        now = self._reactor.seconds()
        odcid = header.destination_cid
        retry_scid: bytes | None = None
        if header.token:
            checked = self._retry_tokens.check(address, header.token, header.destination_cid, now)
            if checked is None:
                # Only Retry tokens are ever issued here (no NEW_TOKEN): the client will not accept
                # another Retry, so an invalid or stale one ends its attempt.
                self._drop("invalid or expired Retry token", address, data)
                return
            odcid, retry_scid = checked, header.destination_cid
        elif len(self._pending_inbound) >= self.inbound.retry_threshold and not self._is_pseudo(address):
            self._send_retry(header, address, now)
            return
        if self._pending_by_source[self._source_key(address)] >= self.inbound.max_pending_per_source:
            self._drop("too many pending handshakes from this source", address, data)
            return
        if len(self._pending_inbound) >= self.inbound.max_pending_handshakes:
            self._drop("too many pending handshakes", address, data)
            return
        self._accept(odcid, header.destination_cid, retry_scid, data, address)

    def _send_retry(self, header: Any, address: Address, now: float) -> None:
        scid = os.urandom(_CID_LENGTH)
        token = self._retry_tokens.issue(address, header.destination_cid, scid, now)
        self.retries_sent += 1
        self.send_datagram(
            encode_quic_retry(
                version=header.version,
                source_cid=scid,
                destination_cid=header.source_cid,
                original_destination_cid=header.destination_cid,
                retry_token=token,
            ),
            address,
        )

    def _accept(self, odcid: bytes, dcid: bytes, retry_scid: bytes | None, data: bytes, address: Address) -> None:
        quic = MeshQuicConnection(
            private_key=self._private_key,
            is_client=False,
            alpn_protocols=self.alpns,
            original_destination_connection_id=odcid,
            retry_source_connection_id=retry_scid,
            limits=self.limits,
            preadmission=True,
            preadmission_streams=self.admission is not None,
        )
        conn = MeshConnection(self, quic, self._reactor, peer_address=address)
        self._connections.add(conn)
        source = self._source_key(address)
        self._pending_by_source[source] += 1
        deadline = self._reactor.callLater(self.inbound.handshake_timeout, self._handshake_expired, conn)
        self._pending_inbound[conn] = deadline
        self.add_route(dcid, conn)
        self.add_route(quic.host_cid, conn)

        def ready(c: MeshConnection) -> None:
            self._handshake_over(c)
            handler = self.on_connection
            if handler is None:
                c.close(0, "not accepting connections")
                return
            if self.admission is not None and not c.admitted:
                self._track_unadmitted(c)
            try:
                handler(c)
            except Exception:
                self._log.failure("on_connection handler raised for {conn}", conn=c)

        def failed(failure: Failure) -> None:
            self._handshake_over(conn)
            self._log.info("inbound handshake from {addr} failed: {reason}", addr=address, reason=conn.close_reason)

        conn.when_handshake_done().addCallbacks(ready, failed)
        conn.datagram_received(data, address)

    def _handshake_over(self, conn: MeshConnection) -> None:
        timer = self._pending_inbound.pop(conn, None)
        if timer is None:
            return
        if timer.active():
            timer.cancel()
        source = self._source_key(conn.peer_address)
        self._pending_by_source[source] -= 1
        if self._pending_by_source[source] <= 0:
            del self._pending_by_source[source]

    def _handshake_expired(self, conn: MeshConnection) -> None:
        if conn in self._pending_inbound:
            self._log.debug("inbound handshake from {addr} timed out", addr=conn.peer_address)
            conn.close(0, "handshake timeout")
            conn.abort(CloseReason(error_code=0, reason="handshake timeout", locally=True))

    def _track_unadmitted(self, conn: MeshConnection) -> None:
        assert self.admission is not None
        while len(self._unadmitted) >= self.admission.max_unadmitted:
            oldest = next(iter(self._unadmitted))
            self.unadmitted_evicted += 1
            if _power_of_two(self.unadmitted_evicted):  # an attack must not flood the log
                self._log.info(
                    "closing unadmitted connection {conn}: {max} connections wait for admission ({n} so far)",
                    conn=oldest,
                    max=self.admission.max_unadmitted,
                    n=self.unadmitted_evicted,
                    event="unadmitted_evicted",
                )
            self._forget_unadmitted(oldest)
            oldest.close(0, "too many connections waiting for admission")
        timeout = self.admission.admission_timeout
        self._unadmitted[conn] = self._reactor.callLater(timeout, self._admission_expired, conn)

    def _admission_expired(self, conn: MeshConnection) -> None:
        if self._unadmitted.pop(conn, None) is None:
            return
        assert self.admission is not None
        if conn.stats().open_streams:
            # Busy, not idle: mesh-llm 0.76's SDK tunnels (0x04) without ever gossiping, one request per
            # connection; its stream has its own deadlines. Look again later (the cap still bounds these).
            self._unadmitted[conn] = self._reactor.callLater(
                self.admission.admission_timeout, self._admission_expired, conn
            )
            return
        self.unadmitted_expired += 1
        if _power_of_two(self.unadmitted_expired):
            self._log.info(
                "closing {conn}: not admitted within {secs:g}s ({n} so far)",
                conn=conn,
                secs=self.admission.admission_timeout if self.admission else 0,
                n=self.unadmitted_expired,
                event="unadmitted_timeout",
            )
        conn.close(0, "not admitted in time")

    def _forget_unadmitted(self, conn: MeshConnection) -> None:
        timer = self._unadmitted.pop(conn, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _close_all(self, reason: str) -> None:
        for timer in list(self._dial_timers):
            if timer.active():
                timer.cancel()
        self._dial_timers.clear()
        for conn in list(self._connections):
            conn.close(0, reason)
            conn.abort(CloseReason(error_code=0, reason=reason, locally=True))
        for timer in [*self._pending_inbound.values(), *self._unadmitted.values()]:
            if timer.active():
                timer.cancel()
        self._connections.clear()
        self._routes.clear()
        self._pending_inbound.clear()
        self._pending_by_source.clear()
        self._unadmitted.clear()

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


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _failed(exc: Exception) -> Deferred[MeshConnection]:
    d: Deferred[MeshConnection] = Deferred()
    d.errback(exc)
    return d
