"""Client side of TUNNEL_HTTP: one API request tried on hosts in order (MESH_PROTOCOL.md §6.4-§6.7).

Failover to the next host happens only before anything was sent downstream: tunnel open failure,
EOF or a bad response before the headers, the first-byte timeout, or a context-overflow 400 while
another host remains. After that the response streams through chunk by chunk with backpressure
(the QUIC stream is registered as the producer of the HTTP response), and a caller that goes away
resets the stream, which stops the host's backend request.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.error import ConnectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from meshd import jsonbound
from meshd.agentapi.adapter import AgentApi, Answer
from meshd.agentapi.adapter import Endpoint as AgentEndpoint
from meshd.agentapi.adapter import match as agent_endpoint
from meshd.agentapi.errors import AgentApiError
from meshd.agentapi.store import MemoryResponseStore, ResponseStore, load_history
from meshd.agentapi.translate import Output, Translator
from meshd.httpwire import (
    LAST_CHUNK,
    MAX_BODY_BYTES,
    MAX_ERROR_BODY_BYTES,
    MAX_HEADER_BYTES,
    ChunkedScanner,
    EarlyEOF,
    HTTPWireError,
    ResponseHead,
    ResponseParser,
    encode_chunk,
    is_context_overflow,
    openai_error_body,
    render_request,
    reshape_upstream_error,
)
from meshd.mesh.models import request_model
from meshd.mesh.state import route_order, sticky_order
from meshd.node import Node
from meshd.quic import QuicStream
from meshd.tunnel import BUSY_HEADER, WAIT_HEADER
from meshd.web.errors import openai_error
from meshd.web.http import abort_response, unregister_producer

FIRST_BYTE_TIMEOUT = 300.0
#: With no packet at all from the host for this long after the request went out, try the next one.
SILENT_HOST_SECS = 3.0
TUNNEL_OPEN_TIMEOUT = 10.0
#: Opening tunnels (dials included) for one request may take this long in all, across failovers.
TUNNEL_OPEN_BUDGET = 30.0
#: How long a request waits for a busy host to free a slot (``--queue-timeout`` sets it).
DEFAULT_BUSY_WAIT = 30.0
_HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"date", b"server"}
#: Caller credentials never leave this node (mesh-llm 0.76 strips the same four; 076 §9.3), and callers
#: may not speak meshd's host-to-host headers.
_NEVER_FORWARDED = frozenset({b"authorization", b"proxy-authorization", b"x-api-key", b"api-key"})
#: Model names are echoed in error messages only this long.
MAX_ECHOED_NAME = 120
#: At most this many served models are listed in a model_not_found message.
MAX_LISTED_MODELS = 20
#: The codes a request refused by the mesh side can end with (kept distinct in bodies and metrics).
REFUSAL_CODES = ("server_busy", "all_hosts_failed", "no_hosts", "model_not_available", "model_not_found")


class TryNextHost(Exception):
    """This host failed before anything reached the caller."""


class HostBusy(TryNextHost):
    """The host answered busy (every backend slot taken): not a failure; wait or try another host."""


class Upstream:
    """Receiver of one tunnel stream: parses the host's response as it arrives."""

    def __init__(self, stream: QuicStream, method: bytes, *, raw_chunked: bool = False) -> None:
        self.stream = stream
        self.parser = ResponseParser(method)
        self.head: Deferred[ResponseHead] = Deferred()
        self.done: Deferred[None] = Deferred()
        self.sink: Callable[[bytes], None] | None = None
        self._pending: list[bytes] = []
        self._pending_len = 0
        self.finished = False
        #: May a chunked 2xx body be relayed as the host sent it (chunk framing kept)? Then the head is
        #: split off here and ``scanner`` finds the end of the body without decoding it.
        self._raw_allowed = raw_chunked and method != b"HEAD"
        self._head_buf = b""
        self.scanner: ChunkedScanner | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.finished:
            return
        try:
            if self.scanner is not None:
                self._raw(data)
            elif self._raw_allowed and not self.head.called:
                self._before_head(data)
            else:
                self._handle(self.parser.feed(data))
        except HTTPWireError as e:
            self._fail(Failure(e))

    def _before_head(self, data: bytes) -> None:
        self._head_buf += data
        while not self.head.called:
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
                self.head.callback(head)
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
            self.finished = True
            if not self.done.called:
                self.done.callback(None)

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
                self.head.callback(ev)
            else:
                self.finished = True
                if not self.done.called:
                    self.done.callback(None)
        self._body(body)

    def _body(self, parts: list[bytes]) -> None:
        if not parts:
            return
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if self.sink is not None:
            self.sink(data)
        else:
            self._pending.append(data)
            self._pending_len += len(data)

    def _fail(self, failure: Failure) -> None:
        self.finished = True
        if not self.head.called:
            # Nobody waits on ``done`` before the head arrived: fail only ``head``.
            self.head.errback(failure)
        elif not self.done.called and self.sink is not None:
            # ``done`` is awaited only once the body is read (start_sink): a stream that ends after the
            # caller gave up on the head (cancelled, timed out, silent host) has nobody waiting on it.
            self.done.errback(failure)

    def start_sink(self, sink: Callable[[bytes], None]) -> None:
        pending, self._pending = self._pending, []
        self._pending_len = 0
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
            if size + len(chunk) > limit:
                truncated = True
                self.stream.reset(0)
                if not self.done.called:
                    self.done.callback(None)
                return
            parts.append(chunk)
            size += len(chunk)

        self.start_sink(take)
        try:
            await self.done
        except Exception:
            pass
        return b"".join(parts), truncated


class MeshProxy:
    _log = Logger()

    def __init__(
        self,
        node: Node,
        reactor: Any,
        first_byte_timeout: float = FIRST_BYTE_TIMEOUT,
        busy_wait: float = DEFAULT_BUSY_WAIT,
        *,
        agent: AgentApi | None = None,
        store: ResponseStore | None = None,
    ) -> None:
        self.node = node
        self._reactor = reactor
        self.first_byte_timeout = first_byte_timeout
        self.busy_wait = busy_wait
        self.failovers = 0
        self.tunnel_failures = 0
        #: Hosts that answered busy (each answer once).
        self.busy_replies = 0
        #: Requests the mesh side refused, by code (REFUSAL_CODES).
        self.refusals: Counter[str] = Counter({code: 0 for code in REFUSAL_CODES})
        #: OpenAI's Responses API and Anthropic's Messages API, translated here (meshd.agentapi).
        self.agent = agent or AgentApi()
        #: Stored Responses for previous_response_id (per node, or shared through Redis).
        self.store: ResponseStore = store or MemoryResponseStore(clock=reactor.seconds)

    def _watch_silence(self, stream: QuicStream, upstream: Upstream) -> LoopingCall:
        """Fail the attempt early when the host sends nothing at all (not even the QUIC ACK for our
        request) for a few round trips: it is gone, and the next host can answer."""
        conn = stream.connection
        sent_at = self._reactor.seconds()

        def check() -> None:
            if conn is None:  # a local pipe: no network to go silent
                loop.stop()
                return
            now = self._reactor.seconds()
            limit = max(SILENT_HOST_SECS, 4 * conn.stats().rtt_smoothed)
            if upstream.head.called or conn.last_received >= sent_at:
                loop.stop()
            elif now - sent_at > limit:
                loop.stop()
                upstream.head.errback(HostSilent(f"host sent nothing for {now - sent_at:.1f}s"))

        loop = LoopingCall(check)
        loop.clock = self._reactor
        loop.start(0.5, now=False)
        return loop

    async def handle(self, request: IRequest) -> bytes:
        request_id = request_id_of(request)
        request.setHeader(b"x-request-id", request_id.encode())
        body = request.content.read() if request.content is not None else b""
        endpoint = agent_endpoint(request.method, request.path)
        if endpoint is not None:
            return await self._handle_agent(request, endpoint, body, request_id)
        parsed = _parse_json(body)
        if body and _declares_json(request) and parsed is _NOT_JSON:
            return openai_error(
                request,
                400,
                "We could not parse the JSON body of your request.",
                "invalid_request_error",
                code="invalid_json",
            )
        if parsed is not None and parsed is not _NOT_JSON:
            shape_error = _shape_error(parsed)
            if shape_error is not None:
                message, param = shape_error
                return openai_error(request, 400, message, "invalid_request_error", "invalid_value", param)
        headers = [
            (k, v)
            for k, vs in request.requestHeaders.getAllRawHeaders()
            for v in vs
            if k.lower() not in _NEVER_FORWARDED and not k.lower().startswith(b"x-meshd-")
        ]
        job = _Job(request, request_id, request.method, request.uri, headers, body, parsed)
        return await self._route(job)

    async def _handle_agent(self, request: IRequest, endpoint: AgentEndpoint, body: bytes, request_id: str) -> bytes:
        """OpenAI's Responses API and Anthropic's Messages API, translated to chat completions here, so any
        host serves them (meshd.agentapi); errors in the caller's API's shape."""
        agent = self.agent
        try:
            if endpoint.action == "retrieve":
                found = await self.store.get(endpoint.response_id or "")
                return _send_answer(request, agent.retrieved(endpoint, found))
            if endpoint.action == "delete":
                existed = await self.store.delete(endpoint.response_id or "")
                return _send_answer(request, agent.deleted(endpoint, existed))
            prepared = agent.prepare(endpoint, body)
            previous = prepared.previous_response_id
            history = await load_history(self.store, previous) if previous else []
            forward = prepared.plan(now=self._reactor.seconds(), history=history)
        except AgentApiError as e:
            return _send_answer(request, agent.error(endpoint.api, e))
        except Exception as e:  # the response store (Redis) is away: say so, never hang or 500
            self._log.warn("response store unavailable: {err}", err=_describe(e), event="store_unavailable")
            return openai_error(
                request,
                503,
                "stored responses are unavailable right now; retry shortly, or resend the conversation in `input`",
                "server_error",
                code="store_unavailable",
                headers={"Retry-After": "2"},
            )
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in forward.headers]
        job = _Job(
            request,
            request_id,
            b"POST",
            forward.path.encode("latin-1"),
            headers,
            forward.body,
            json.loads(forward.body),
            translate=forward.translator,
            store=self.store,
        )
        return await self._route(job)

    async def _route(self, job: _Job) -> bytes:
        """Which hosts may answer the job, in order (or why none); then try them."""
        request, parsed = job.request, job.parsed
        model = model_of(parsed)
        # A public model id (or the virtual "mesh") names the served model it stands for (0.76 §9.1).
        model, job.body = request_model(model, parsed, job.body, self.node.mesh, self.node.hosted_models)
        mesh = self.node.mesh
        now = self.node.now()
        mesh.record_request(model, now)
        try:
            exclude = parse_peer_ids(request.getHeader(b"x-mesh-exclude"), many=True)
            target = parse_peer_ids(request.getHeader(b"x-mesh-target"), many=False)
        except ValueError as e:
            return self._refuse(job, 400, str(e), "invalid_header", type_="invalid_request_error", count=False)
        own = self.node.identity.public_bytes
        local = [own] if self.node.serves_locally(model if model and model != "auto" else None) else []
        if model and model != "auto":
            hosts = _filter(local + sticky_order(mesh.hosts_for_model(model), session_of(parsed)), exclude)
            if target:
                chosen = [h for h in hosts if _matches(h, target[0])]
                if not chosen:
                    return self._refuse(
                        job,
                        409,
                        f"x-mesh-target {target[0]} does not serve model {_echo(model)} (or was excluded)",
                        "target_not_available",
                        param="x-mesh-target",
                        type_="invalid_request_error",
                        count=False,
                    )
                hosts = chosen[:1]
            if not hosts:
                if model in self.node.hosted_models or mesh.is_known_model(model, now):
                    return self._refuse(
                        job,
                        503,
                        f"model {_echo(model)} is not currently available in the mesh; retry later",
                        "model_not_available",
                        param="model",
                        retry_after="5",
                    )
                served = sorted(set(mesh.routable_models()) | set(self.node.hosted_models))
                listed = ", ".join(_echo(m) for m in served[:MAX_LISTED_MODELS])
                more = f" and {len(served) - MAX_LISTED_MODELS} more" if len(served) > MAX_LISTED_MODELS else ""
                return self._refuse(
                    job,
                    404,
                    f"The model {_echo(model)} does not exist in this mesh. "
                    + (f"It serves: {listed}{more}." if served else "It serves no model right now."),
                    "model_not_found",
                    param="model",
                    type_="invalid_request_error",
                )
        else:
            hosts = _filter(local + sticky_order(mesh.any_hosts(), session_of(parsed)), exclude)
            if target:
                hosts = [h for h in hosts if _matches(h, target[0])][:1]
            if not hosts:
                return self._refuse(
                    job,
                    503,
                    f"no peers serving any model (node state: {self.node.state.value})",
                    "no_hosts",
                    retry_after="5",
                )
        if model:
            request.setHeader(b"x-mesh-model", model.encode("utf-8", "replace")[:512])
        hosts = route_order(hosts, self.node.connected_ids() | {own}, self.node.suspect_ids())
        self.node.mesh.request_started()
        self.node.notify_changed()
        try:
            return await self._try_hosts(job, hosts, model)
        finally:
            self.node.mesh.request_finished()
            self.node.notify_changed()

    def _refuse(
        self,
        job: _Job,
        status: int,
        message: str,
        code: str,
        *,
        param: str | None = None,
        retry_after: str | None = None,
        type_: str = "server_error",
        count: bool = True,
    ) -> bytes:
        if count:
            self.refusals[code] += 1
        headers = {"Retry-After": retry_after} if retry_after is not None else None
        # (on /v1/messages paths openai_error answers in Anthropic's shape)
        return openai_error(job.request, status, message, type_, code=code, param=param, headers=headers)

    async def _try_hosts(self, job: _Job, hosts: list[bytes], model: str | None) -> bytes:
        """Each host once, asking busy hosts to say so at once; then, while time remains, wait at the
        hosts that were busy (they queue the request and serve it when a slot frees)."""
        now = self._reactor.seconds()
        deadline = now + self.busy_wait
        open_deadline = now + TUNNEL_OPEN_BUDGET
        errors: list[str] = []
        busy: list[bytes] = []
        for i, host in enumerate(hosts):
            last = i == len(hosts) - 1
            if self._reactor.seconds() >= open_deadline:
                errors.append(f"no time left to try {len(hosts) - i} more host(s) within {TUNNEL_OPEN_BUDGET:g}s")
                break
            if i:
                self.failovers += 1
            try:
                return await self._attempt(job, host, job.render(0.0), last, open_deadline)
            except HostBusy:
                self.busy_replies += 1
                busy.append(host)
            except TryNextHost as e:
                self._note_failure(job.request_id, host, e, last and not busy, errors)
        for host in busy:
            remaining = deadline - self._reactor.seconds()
            if remaining <= 0:
                break
            try:
                return await self._attempt(job, host, job.render(remaining), True, deadline)
            except HostBusy:
                self.busy_replies += 1
            except TryNextHost as e:
                self._note_failure(job.request_id, host, e, host == busy[-1], errors)
        if busy:
            return self._refuse(
                job,
                503,
                f"every host serving {_echo(model) if model else 'a model'} stayed busy for "
                f"{self.busy_wait:g}s; retry shortly",
                "server_busy",
                retry_after="2",
            )
        return self._refuse(
            job,
            503,
            f"all {len(hosts)} tunnel(s) to hosts for {_echo(model) if model else None} failed: " + "; ".join(errors),
            "all_hosts_failed",
            retry_after="5",
        )

    def _note_failure(self, request_id: str, host: bytes, e: Exception, last: bool, errors: list[str]) -> None:
        self.tunnel_failures += 1
        errors.append(f"{host.hex()[:10]}: {e}")
        self._log.info(
            "[{request_id}] host {host} failed before responding ({err}); {next}",
            request_id=request_id,
            host=host.hex()[:10],
            err=str(e),
            next="giving up" if last else "trying the next host",
            event="tunnel_failover",
        )

    async def _attempt(self, job: _Job, host: bytes, raw: bytes, last: bool, open_deadline: float) -> bytes:
        """One try on one host; the tunnel must open before ``open_deadline`` (the request's budget)."""
        request = job.request
        try:
            if host == self.node.identity.public_bytes:
                stream = self.node.open_local_tunnel()
            else:
                budget = min(TUNNEL_OPEN_TIMEOUT, open_deadline - self._reactor.seconds())
                if budget <= 0:
                    raise TryNextHost("no time left to open a tunnel")
                stream = await self.node.open_tunnel(host, budget)
        except CancelledError:
            raise
        except TryNextHost:
            raise
        except Exception as e:
            raise TryNextHost(f"tunnel open failed: {_describe(e)}") from None
        # A translated answer needs the body decoded; a relayed one keeps the host's chunks as they are.
        raw_chunked = request.clientproto == b"HTTP/1.1" and job.translate is None
        upstream = Upstream(stream, job.method, raw_chunked=raw_chunked)
        stream.set_receiver(upstream)
        stream.write(raw)
        head = await self._await_head(stream, upstream)
        short = host.hex()[:10]
        if head.status >= 400:
            err_body, truncated = await upstream.collect(MAX_ERROR_BODY_BYTES)
            if upstream.finished:
                stream.loseWriteConnection()
            else:
                stream.reset(0)
            if head.status == 503 and head.header(BUSY_HEADER) is not None:
                raise HostBusy("host busy")
            if is_context_overflow(head.status, err_body) and not last:
                raise TryNextHost(f"context overflow ({head.status})")
            request.setHeader(b"x-mesh-served-by", host.hex().encode())
            if job.translate is not None:
                translator = job.translate()
                _emit(request, translator.start(head.status, head.headers))
                _emit(request, translator.feed(err_body))
                _emit(request, translator.finish())
                return b""
            request.setResponseCode(head.status)
            request.setHeader(b"content-type", b"application/json")
            retry = head.header(b"retry-after")
            if retry is not None:
                request.setHeader(b"retry-after", retry)
            return reshape_upstream_error(head.status, err_body, truncated)
        request.setHeader(b"x-mesh-served-by", host.hex().encode())
        if job.translate is not None:
            return await self._relay_translated(job, stream, upstream, head, short)
        request.setResponseCode(head.status, head.reason or None)
        chunked = any(k == b"transfer-encoding" for k, _ in head.headers)
        for name, value in head.headers:
            if name in _HOP_BY_HOP and not (name == b"content-length" and not chunked):
                continue
            if name.startswith(b"access-control-"):
                continue  # CORS is the gate's answer (a backend's own would make two, which browsers refuse)
            request.responseHeaders.addRawHeader(name, value)
        if upstream.scanner is not None:
            # Relay the host's chunked body as it is: send our headers (twisted.web announces chunked
            # framing), then stop twisted.web from framing again; the host's own last chunk ends it.
            request.write(b"")
            request.chunked = False
        request.registerProducer(stream, True)
        upstream.start_sink(request.write)
        try:
            await upstream.done
        except CancelledError:
            stream.reset(0)
            raise
        except Exception as e:
            # Bytes already went out: no failover. An event stream gets a final error event and ends;
            # anything else is cut off so the caller cannot take it for a complete body.
            self._log_broken(job, short, e)
            stream.reset(0)
            unregister_producer(request)
            content_type = head.header(b"content-type") or b""
            scanner = upstream.scanner
            # Relaying raw chunks, an event can only be added between two of the host's chunks.
            if content_type.startswith(b"text/event-stream") and (scanner is None or scanner.at_boundary):
                error = openai_error_body(
                    f"the host serving this stream failed: {_describe(e)}", "server_error", "upstream_stream_broken"
                )
                event = b"data: " + error + b"\n\n"
                return event if scanner is None else encode_chunk(event) + LAST_CHUNK
            abort_response(request)
            return b""
        unregister_producer(request)
        stream.loseWriteConnection()
        return b""

    async def _await_head(self, stream: QuicStream, upstream: Upstream) -> ResponseHead:
        """The host's response head, or TryNextHost (silence, timeout, a broken tunnel)."""
        upstream.head.addTimeout(self.first_byte_timeout, self._reactor)
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
            raise TryNextHost(_describe(e)) from None
        finally:
            if watchdog.running:
                watchdog.stop()

    async def _relay_translated(
        self, job: _Job, stream: QuicStream, upstream: Upstream, head: ResponseHead, short: str
    ) -> bytes:
        """Stream the host's chat-completions answer through the job's translator to the caller."""
        assert job.translate is not None
        request = job.request
        translator = job.translate()
        _emit(request, translator.start(head.status, head.headers))
        request.registerProducer(stream, True)
        upstream.start_sink(lambda data: _emit(request, translator.feed(data)))
        try:
            await upstream.done
        except CancelledError:
            stream.reset(0)
            raise
        except Exception as e:
            self._log_broken(job, short, e)
            stream.reset(0)
            unregister_producer(request)
            _emit(request, translator.fail(f"the host serving this answer failed: {_describe(e)}"))
            return b""
        unregister_producer(request)
        stream.loseWriteConnection()
        _emit(request, translator.finish())
        if translator.stored is not None and job.store is not None:
            try:
                await job.store.put(translator.stored)
            except Exception as e:  # a store that is away loses a conversation link, not the answer
                self._log.warn("could not store response {id}: {err}", id=translator.stored.id, err=_describe(e))
        return b""

    def _log_broken(self, job: _Job, short: str, e: Exception) -> None:
        self._log.info(
            "[{request_id}] tunnel from {host} broke mid-response: {err}",
            request_id=job.request_id,
            host=short,
            err=_describe(e),
            event="tunnel_broken",
        )


@attrs.define
class _Job:
    """One request on its way to the mesh (as the caller sent it, or translated for an agent API)."""

    request: Any  # the twisted.web Request (IRequest lacks the producer and framing attributes used here)
    request_id: str
    method: bytes
    uri: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    parsed: Any
    #: For an agent API: a fresh translator per attempt, and the response store.
    translate: Callable[[], Translator] | None = None
    store: ResponseStore | None = None

    def render(self, wait: float) -> bytes:
        """The request as it leaves for a host, with the time the host may queue it for a slot."""
        value = b"0" if wait <= 0 else b"%.3f" % wait
        return render_request(self.method, self.uri, [*self.headers, (WAIT_HEADER, value)], self.body)


def _emit(request: IRequest, out: Output) -> None:
    """Write a translator's output: its head (once, before any body), then its body."""
    if out.head is not None:
        request.setResponseCode(out.head.status)
        for name, value in out.head.headers:
            request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
    if out.body:
        request.write(out.body)


def _send_answer(request: IRequest, answer: Answer) -> bytes:
    """A whole answer made here (an error in the caller's API, a stored Response)."""
    request.setResponseCode(answer.status)
    for name, value in answer.headers:
        request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
    return answer.body


class HostSilent(Exception):
    """The host's QUIC connection has been silent since the request went out."""


def _echo(name: str) -> str:
    """A caller's model name as it appears in our messages: quoted and cut short."""
    return repr(name if len(name) <= MAX_ECHOED_NAME else name[:MAX_ECHOED_NAME] + "...")


def _shape_error(data: Any) -> tuple[str, str | None] | None:
    """What is wrong with the shape of a JSON request body, if anything: (message, param)."""
    if not isinstance(data, dict):
        return f"the request body must be a JSON object, not {_json_type(data)}", None
    if "model" in data and not isinstance(data["model"], str):
        return f"'model' must be a string, not {_json_type(data['model'])}", "model"
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def request_id_of(request: IRequest) -> str:
    """The caller's ``x-request-id`` when it is sane, else a new one."""
    given = request.getHeader(b"x-request-id")
    if given and len(given) <= 128 and all(33 <= b < 127 for b in given):
        return given.decode("ascii")
    return uuid.uuid4().hex


def parse_peer_ids(value: bytes | None, *, many: bool) -> list[str]:
    """EndpointIds from a routing header: 64 hex characters, or a 10+ hex prefix (the short id)."""
    if value is None:
        return []
    items = [v.strip().lower() for v in value.decode("latin-1").split(",")] if many else [value.decode("latin-1")]
    items = [i.strip().lower() for i in items if i.strip()]
    if not many and len(items) != 1:
        raise ValueError("x-mesh-target takes exactly one EndpointId")
    for item in items:
        if not (10 <= len(item) <= 64) or any(c not in "0123456789abcdef" for c in item):
            raise ValueError(f"not an EndpointId (hex, at least 10 characters): {item!r}")
    return items


def _matches(host: bytes, wanted: str) -> bool:
    return host.hex().startswith(wanted)


def _filter(hosts: list[bytes], exclude: list[str]) -> list[bytes]:
    return [h for h in hosts if not any(_matches(h, e) for e in exclude)]


def _declares_json(request: IRequest) -> bool:
    content_type = request.getHeader(b"content-type")
    return content_type is None or b"json" in content_type.lower()


_NOT_JSON = object()


def _parse_json(body: bytes) -> Any:
    """The decoded body (depth and size bounded), None when empty, or ``_NOT_JSON``."""
    if not body:
        return None
    try:
        return jsonbound.loads(body, max_bytes=MAX_BODY_BYTES)
    except jsonbound.BadJSON:
        return _NOT_JSON


def session_of(data: Any) -> str | None:
    """The ``user`` (else ``session_id``) a request body names, for session affinity."""
    if isinstance(data, dict):
        for key in ("user", "session_id"):
            if isinstance(data.get(key), str) and data[key]:
                return str(data[key])
    return None


def model_of(data: Any) -> str | None:
    """The ``model`` of a decoded request body, if it names one."""
    if isinstance(data, dict) and isinstance(data.get("model"), str):
        return str(data["model"])
    return None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
