"""The client half of TUNNEL_HTTP (MESH_PROTOCOL.md §6.4-§6.7): one request tried on hosts in order.

``TunnelClient.send`` opens a tunnel to each host in turn and hands back the first usable ``Reply``
(a response head, with the body still flowing through its ``Upstream``), or ``Exhausted`` when no host
answered. Failover happens only before anything could reach the caller: the tunnel did not open, the
host was silent, sent no head in time or broke before it, answered busy (``x-meshd-busy``: then, while
the request's wait remains, the busy hosts are asked again and queue it), or overflowed its context
while another host remains. Error answers (status >= 400) arrive with their body read (bounded).

What the caller's HTTP side does with a ``Reply`` (headers, relaying the body, translating it) is
``meshd.web.proxy``'s business; this module knows streams and bytes, not twisted.web.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Protocol

import attrs
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.error import ConnectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from meshd.httpwire import (
    MAX_ERROR_BODY_BYTES,
    MAX_HEADER_BYTES,
    ChunkedScanner,
    EarlyEOF,
    HTTPWireError,
    ResponseHead,
    ResponseParser,
    is_context_overflow,
    render_request,
)
from meshd.tunnel.host import BUSY_HEADER, WAIT_HEADER

FIRST_BYTE_TIMEOUT = 300.0
#: With no packet at all from the host for this long after the request went out, try the next one.
SILENT_HOST_SECS = 3.0
TUNNEL_OPEN_TIMEOUT = 10.0
#: Opening tunnels (dials included) for one request may take this long in all, across failovers.
TUNNEL_OPEN_BUDGET = 30.0
#: How long a request waits for a busy host to free a slot (``--queue-timeout`` sets it).
DEFAULT_BUSY_WAIT = 30.0


class TryNextHost(Exception):
    """This host failed before anything reached the caller."""


class HostBusy(TryNextHost):
    """The host answered busy (every backend slot taken): not a failure; wait or try another host."""


class HostSilent(Exception):
    """The host's QUIC connection has been silent since the request went out."""


class Tunnels(Protocol):
    """What the client half needs of the node: tunnels to hosts, and one to itself when it hosts."""

    def open_tunnel(self, host: bytes, timeout: float) -> Deferred[Any]: ...
    def open_local_tunnel(self) -> Any: ...


class UpstreamState(enum.Enum):
    """The life of one tunnel's response on the client (docs/lifecycles.md draws it)."""

    AWAITING_HEAD = "awaiting_head"  # the request went out; no response head yet
    BODY = "body"  # the head arrived; body bytes flow (held until a sink is set)
    DONE = "done"  # the response ended where its framing says (or the reader stopped taking it)
    FAILED = "failed"  # the tunnel broke or its bytes were not HTTP


#: The only moves an upstream makes (``Upstream._enter`` refuses any other).
UPSTREAM_MOVES: dict[UpstreamState, frozenset[UpstreamState]] = {
    UpstreamState.AWAITING_HEAD: frozenset({UpstreamState.BODY, UpstreamState.FAILED}),
    UpstreamState.BODY: frozenset({UpstreamState.DONE, UpstreamState.FAILED}),
    UpstreamState.DONE: frozenset(),
    UpstreamState.FAILED: frozenset(),
}


class Upstream:
    """Receiver of one tunnel stream: parses the host's response as it arrives.

    ``head`` fires with the response head (or fails: nobody waits on ``done`` before the head);
    ``done`` fires when the body is complete (or fails when the stream breaks after the head, if a
    sink is reading it). With ``raw_chunked``, a chunked 2xx body is not decoded: ``scanner`` finds
    its end and the chunks reach the sink as the host framed them.
    """

    def __init__(self, stream: Any, method: bytes, *, raw_chunked: bool = False) -> None:
        self.stream = stream
        self.parser = ResponseParser(method)
        self.head: Deferred[ResponseHead] = Deferred()
        self.done: Deferred[None] = Deferred()
        self.state = UpstreamState.AWAITING_HEAD
        self.sink: Callable[[bytes], None] | None = None
        self._pending: list[bytes] = []
        self._raw_allowed = raw_chunked and method != b"HEAD"
        self._head_buf = b""
        self.scanner: ChunkedScanner | None = None

    @property
    def finished(self) -> bool:
        """Has the response ended, complete or not?"""
        return self.state in (UpstreamState.DONE, UpstreamState.FAILED)

    def dataReceived(self, data: bytes) -> None:
        if self.finished:
            return
        try:
            if self.scanner is not None:
                self._raw(data)
            elif self._raw_allowed and self.state is UpstreamState.AWAITING_HEAD:
                self._before_head(data)
            else:
                self._handle(self.parser.feed(data))
        except HTTPWireError as e:
            self._fail(Failure(e))

    def _before_head(self, data: bytes) -> None:
        self._head_buf += data
        while self.state is UpstreamState.AWAITING_HEAD:
            end = self._head_buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head_buf) > MAX_HEADER_BYTES:
                    raise EarlyEOF("response headers too large", before_headers=True)
                return
            head_part, rest = self._head_buf[: end + 4], self._head_buf[end + 4 :]
            self._head_buf = b""
            events = self.parser.feed(head_part)
            head = next((e for e in events if isinstance(e, ResponseHead)), None)
            if head is None:  # an informational 1xx: the real head follows
                self._head_buf = rest
                continue
            if head.status < 400 and b"chunked" in (head.header(b"transfer-encoding") or b"").lower():
                self.scanner = ChunkedScanner()
                self._got_head(head)
                if rest:
                    self._raw(rest)
                return
            # Not a chunked success (an error to re-shape, a length-delimited body...): decode it.
            self._handle(events + self.parser.feed(rest))
            return

    def _raw(self, data: bytes) -> None:
        assert self.scanner is not None
        used = self.scanner.feed(data)
        self._body([data if used == len(data) else data[:used]])
        if self.scanner.done:
            self._complete()

    def eofReceived(self) -> None:
        if self.finished:
            return
        try:
            if self.scanner is not None:
                raise EarlyEOF("host closed the tunnel before a complete response", before_headers=False)
            events = self.parser.feed(self._head_buf) if self._head_buf else []
            self._head_buf = b""
            events += self.parser.feed_eof()
        except HTTPWireError as e:
            self._fail(Failure(e))
            return
        self._handle(events)

    def connectionLost(self, reason: Failure) -> None:
        if not self.finished:
            if reason.check(ConnectionDone):
                self.eofReceived()
                if self.finished:
                    return
            self._fail(reason)

    def _handle(self, events: list[ResponseHead | bytes | None]) -> None:
        body: list[bytes] = []  # the body bytes of one delivery leave in one write, not one per chunk
        for ev in events:
            if isinstance(ev, bytes):
                body.append(ev)
                continue
            self._body(body)
            body = []
            if isinstance(ev, ResponseHead):
                self._got_head(ev)
            else:
                self._complete()
        self._body(body)

    def _enter(self, state: UpstreamState) -> None:
        if state not in UPSTREAM_MOVES[self.state]:
            raise AssertionError(f"upstream cannot go from {self.state.value} to {state.value}")
        self.state = state

    def _got_head(self, head: ResponseHead) -> None:
        self._enter(UpstreamState.BODY)
        self.head.callback(head)

    def _complete(self) -> None:
        if self.finished:  # (a reader that stopped taking the body ended it already)
            return
        self._enter(UpstreamState.DONE)
        if not self.done.called:
            self.done.callback(None)

    def _body(self, parts: list[bytes]) -> None:
        if not parts:
            return
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if self.sink is not None:
            self.sink(data)
        else:
            self._pending.append(data)

    def _fail(self, failure: Failure) -> None:
        if self.finished:
            return
        had_head = self.state is not UpstreamState.AWAITING_HEAD
        self._enter(UpstreamState.FAILED)
        if not had_head:
            # Nobody waits on ``done`` before the head arrived: fail only ``head`` (unless the waiter
            # already gave up on it: cancelled, timed out, silent).
            if not self.head.called:
                self.head.errback(failure)
        elif not self.done.called and self.sink is not None:
            # ``done`` is awaited only once the body is read (start_sink): a stream that ends after the
            # caller gave up on the head has nobody waiting on it.
            self.done.errback(failure)

    def start_sink(self, sink: Callable[[bytes], None]) -> None:
        pending, self._pending = self._pending, []
        for chunk in pending:
            sink(chunk)
        self.sink = sink

    async def collect(self, limit: int) -> tuple[bytes, bool]:
        """The rest of the body up to ``limit`` bytes; (body, truncated)."""
        parts: list[bytes] = []
        size = 0
        truncated = False

        def take(chunk: bytes) -> None:
            nonlocal size, truncated
            if truncated:
                return
            if size + len(chunk) > limit:
                truncated = True
                self.stream.reset(0)
                self._complete()
                return
            parts.append(chunk)
            size += len(chunk)

        self.start_sink(take)
        try:
            await self.done
        except Exception:
            pass
        return b"".join(parts), truncated


@attrs.frozen
class Outbound:
    """A request as it leaves for hosts: the caller's method, target, forwardable headers and body."""

    method: bytes
    uri: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    #: May a chunked success be relayed as the host framed it (the caller speaks HTTP/1.1 and the body is
    #: not translated)? Else it is decoded.
    raw_chunked: bool = False

    def render(self, wait: float) -> bytes:
        """The request bytes, with the time the host may queue it for a slot (``x-meshd-wait``)."""
        value = b"0" if wait <= 0 else b"%.3f" % wait
        return render_request(self.method, self.uri, [*self.headers, (WAIT_HEADER, value)], self.body)


@attrs.define
class Reply:
    """A host's answer: its head, and the stream its body still arrives on."""

    host: bytes
    head: ResponseHead
    stream: Any
    upstream: Upstream
    #: For an error (status >= 400): its body, read here (at most MAX_ERROR_BODY_BYTES), and whether it
    #: was cut there. None for a success, whose body flows through ``upstream``.
    error_body: bytes | None = None
    truncated: bool = False

    def close(self) -> None:
        """The response was taken in full: end our side of the stream."""
        self.stream.loseWriteConnection()

    def abort(self) -> None:
        """Stop the host's work on this request (the caller went away, or the body broke)."""
        self.stream.reset(0)


@attrs.frozen
class Exhausted:
    """No host answered: every one stayed busy (``busy``), or each failed (``errors`` say how)."""

    hosts: int
    busy: bool
    errors: tuple[str, ...]


@attrs.define
class TunnelCounts:
    """What the client half has seen (``/metrics``, ``/api/status``)."""

    #: Requests moved on to another host.
    failovers: int = 0
    #: Tunnel attempts that failed before the response began.
    tunnel_failures: int = 0
    #: Hosts that answered busy (each answer once).
    busy_replies: int = 0


class TunnelClient:
    """Sends requests through tunnels to hosts, failing over and waiting at busy hosts as above."""

    _log = Logger()

    def __init__(
        self,
        tunnels: Tunnels,
        own_id: bytes,
        clock: Any,
        *,
        first_byte_timeout: float = FIRST_BYTE_TIMEOUT,
        busy_wait: float = DEFAULT_BUSY_WAIT,
    ) -> None:
        self.tunnels = tunnels
        self.own_id = own_id
        self.clock = clock
        self.first_byte_timeout = first_byte_timeout
        self.busy_wait = busy_wait
        self.counts = TunnelCounts()

    async def send(self, outbound: Outbound, hosts: list[bytes], request_id: str) -> Reply | Exhausted:
        """Each host once, asking busy hosts to say so at once; then, while time remains, wait at the
        hosts that were busy (they queue the request and serve it when a slot frees)."""
        now = self.clock.seconds()
        deadline = now + self.busy_wait
        open_deadline = now + TUNNEL_OPEN_BUDGET
        errors: list[str] = []
        busy: list[bytes] = []
        for i, host in enumerate(hosts):
            last = i == len(hosts) - 1
            if self.clock.seconds() >= open_deadline:
                errors.append(f"no time left to try {len(hosts) - i} more host(s) within {TUNNEL_OPEN_BUDGET:g}s")
                break
            if i:
                self.counts.failovers += 1
            try:
                return await self.attempt(outbound, host, outbound.render(0.0), last, open_deadline)
            except HostBusy:
                self.counts.busy_replies += 1
                busy.append(host)
            except TryNextHost as e:
                self._note_failure(request_id, host, e, last and not busy, errors)
        for host in busy:
            remaining = deadline - self.clock.seconds()
            if remaining <= 0:
                break
            try:
                return await self.attempt(outbound, host, outbound.render(remaining), True, deadline)
            except HostBusy:
                self.counts.busy_replies += 1
            except TryNextHost as e:
                self._note_failure(request_id, host, e, host == busy[-1], errors)
        return Exhausted(len(hosts), bool(busy), tuple(errors))

    def _note_failure(self, request_id: str, host: bytes, e: Exception, last: bool, errors: list[str]) -> None:
        self.counts.tunnel_failures += 1
        errors.append(f"{host.hex()[:10]}: {e}")
        self._log.info(
            "[{request_id}] host {host} failed before responding ({err}); {next}",
            request_id=request_id,
            host=host.hex()[:10],
            err=str(e),
            next="giving up" if last else "trying the next host",
            event="tunnel_failover",
        )

    async def attempt(self, outbound: Outbound, host: bytes, raw: bytes, last: bool, open_deadline: float) -> Reply:
        """One try on one host; the tunnel must open before ``open_deadline`` (the request's budget)."""
        stream = await self._open(host, open_deadline)
        upstream = Upstream(stream, outbound.method, raw_chunked=outbound.raw_chunked)
        stream.set_receiver(upstream)
        stream.write(raw)
        head = await self._await_head(stream, upstream)
        if head.status < 400:
            return Reply(host, head, stream, upstream)
        body, truncated = await upstream.collect(MAX_ERROR_BODY_BYTES)
        if upstream.finished and not truncated:
            stream.loseWriteConnection()
        else:
            stream.reset(0)
        if head.status == 503 and head.header(BUSY_HEADER) is not None:
            raise HostBusy("host busy")
        if is_context_overflow(head.status, body) and not last:
            raise TryNextHost(f"context overflow ({head.status})")
        return Reply(host, head, stream, upstream, body, truncated)

    async def _open(self, host: bytes, open_deadline: float) -> Any:
        try:
            if host == self.own_id:
                return self.tunnels.open_local_tunnel()
            budget = min(TUNNEL_OPEN_TIMEOUT, open_deadline - self.clock.seconds())
            if budget <= 0:
                raise TryNextHost("no time left to open a tunnel")
            return await self.tunnels.open_tunnel(host, budget)
        except (CancelledError, TryNextHost):
            raise
        except Exception as e:
            raise TryNextHost(f"tunnel open failed: {describe(e)}") from None

    async def _await_head(self, stream: Any, upstream: Upstream) -> ResponseHead:
        """The host's response head, or TryNextHost (silence, timeout, a broken tunnel)."""
        upstream.head.addTimeout(self.first_byte_timeout, self.clock)
        watchdog = self._watch_silence(stream, upstream)
        try:
            return await upstream.head
        except CancelledError:  # the caller went away
            stream.reset(0)
            raise
        except HostSilent as e:
            stream.reset(0)
            stream.connection.close(0, "peer silent")
            raise TryNextHost(str(e)) from None
        except TimeoutError:
            stream.reset(0)
            raise TryNextHost(f"no response within {self.first_byte_timeout:g}s") from None
        except Exception as e:
            stream.reset(0)
            raise TryNextHost(describe(e)) from None
        finally:
            if watchdog.running:
                watchdog.stop()

    def _watch_silence(self, stream: Any, upstream: Upstream) -> LoopingCall:
        """Fail the attempt early when the host sends nothing at all (not even the QUIC ACK for our
        request) for a few round trips: it is gone, and the next host can answer."""
        conn = stream.connection
        sent_at = self.clock.seconds()

        def check() -> None:
            if conn is None:  # a local pipe: no network to go silent
                loop.stop()
                return
            now = self.clock.seconds()
            limit = max(SILENT_HOST_SECS, 4 * conn.stats().rtt_smoothed)
            if upstream.head.called or conn.last_received >= sent_at:
                loop.stop()
            elif now - sent_at > limit:
                loop.stop()
                upstream.head.errback(HostSilent(f"host sent nothing for {now - sent_at:.1f}s"))

        loop = LoopingCall(check)
        loop.clock = self.clock
        loop.start(0.5, now=False)
        return loop


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
