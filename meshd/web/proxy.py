"""The API's tunnelled requests, as twisted.web sees them (MESH_PROTOCOL.md §6.4-§6.7).

A request arrives with the record the gate made (``meshd.apirequest.ApiRequest``: parsed once). An
agent-API request (OpenAI's Responses, Anthropic's Messages) is translated to chat completions first
(``meshd.agentapi``). Then ``meshd.mesh.routing.route`` picks the hosts (or says why none), the tunnel's
client half (``meshd.tunnel.client.TunnelClient``) tries them in order, and this module writes what comes
back: an error re-shaped into OpenAI's envelope, or the response streamed through chunk by chunk with
backpressure (the QUIC stream is registered as the producer of the HTTP response). A caller that goes
away resets the stream, which stops the host's backend request. After bytes went out there is no
failover: an event stream gets a final error event, anything else is cut off.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from meshd.agentapi.adapter import AgentApi, Answer
from meshd.agentapi.adapter import Endpoint as AgentEndpoint
from meshd.agentapi.adapter import match as agent_endpoint
from meshd.agentapi.errors import AgentApiError
from meshd.agentapi.store import MemoryResponseStore, ResponseStore, load_history
from meshd.agentapi.translate import Output, Translator
from meshd.apirequest import ApiRequest, session_of
from meshd.httpwire import LAST_CHUNK, encode_chunk, openai_error_body, reshape_upstream_error
from meshd.mesh.models import request_model
from meshd.mesh.routing import MeshView, Refusal, echo, route
from meshd.node import Node
from meshd.tunnel.client import (
    DEFAULT_BUSY_WAIT,
    FIRST_BYTE_TIMEOUT,
    Exhausted,
    Outbound,
    Reply,
    TunnelClient,
    describe,
)
from meshd.web.errors import openai_error
from meshd.web.gate import record_of
from meshd.web.http import abort_response, pass_chunks_through, unregister_producer

_HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"date", b"server"}
#: The codes a request refused by the mesh side can end with (kept distinct in bodies and metrics).
REFUSAL_CODES = ("server_busy", "all_hosts_failed", "no_hosts", "model_not_available", "model_not_found")


@attrs.define
class _Job:
    """One request on its way to the mesh (as the caller sent it, or translated for an agent API)."""

    request: Any  # the twisted.web Request (IRequest lacks the producer and framing attributes used here)
    id: str
    method: bytes
    uri: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    #: ``body`` decoded (the record's JSON, or the agent API's own request).
    data: Any
    #: For an agent API: a fresh translator per attempt, and the response store.
    translate: Any = None
    store: ResponseStore | None = None

    @property
    def model(self) -> str | None:
        data = self.data
        return data["model"] if isinstance(data, dict) and isinstance(data.get("model"), str) else None

    @property
    def session(self) -> str | None:
        """The ``user`` (else ``session_id``) the body names, for session affinity."""
        return session_of(self.data)


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
        #: The client half of the tunnel: tries the hosts, fails over, waits at busy ones.
        self.tunnels = TunnelClient(
            node, node.identity.public_bytes, reactor, first_byte_timeout=first_byte_timeout, busy_wait=busy_wait
        )
        #: Requests the mesh side refused, by code (REFUSAL_CODES).
        self.refusals: Counter[str] = Counter({code: 0 for code in REFUSAL_CODES})
        #: OpenAI's Responses API and Anthropic's Messages API, translated here (meshd.agentapi).
        self.agent = agent or AgentApi()
        #: Stored Responses for previous_response_id (per node, or shared through Redis).
        self.store: ResponseStore = store or MemoryResponseStore(clock=reactor.seconds)

    @property
    def failovers(self) -> int:
        return self.tunnels.counts.failovers

    @property
    def tunnel_failures(self) -> int:
        return self.tunnels.counts.tunnel_failures

    @property
    def busy_replies(self) -> int:
        return self.tunnels.counts.busy_replies

    async def handle(self, request: IRequest) -> bytes:
        record = record_of(request)
        request.setHeader(b"x-request-id", record.id.encode())
        endpoint = agent_endpoint(request.method, request.path)
        if endpoint is not None:
            return await self._handle_agent(request, record, endpoint)
        problem = record.problem()
        if problem is not None:
            return openai_error(
                request, 400, problem.message, "invalid_request_error", code=problem.code, param=problem.param
            )
        job = _Job(request, record.id, record.method, record.uri, record.headers, record.body, record.json)
        return await self._route(job)

    async def _handle_agent(self, request: IRequest, record: ApiRequest, endpoint: AgentEndpoint) -> bytes:
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
            prepared = agent.prepare(endpoint, record.body, record.json)
            previous = prepared.previous_response_id
            history = await load_history(self.store, previous) if previous else []
            forward = prepared.plan(now=self._reactor.seconds(), history=history)
        except AgentApiError as e:
            return _send_answer(request, agent.error(endpoint.api, e))
        except Exception as e:  # the response store (Redis) is away: say so, never hang or 500
            self._log.warn("response store unavailable: {err}", err=describe(e), event="store_unavailable")
            return openai_error(
                request,
                503,
                "stored responses are unavailable right now; retry shortly, or resend the conversation in `input`",
                "server_error",
                code="store_unavailable",
                headers={"Retry-After": "2"},
            )
        headers = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in forward.headers)
        job = _Job(
            request,
            record.id,
            b"POST",
            forward.path.encode("latin-1"),
            headers,
            forward.body,
            forward.payload,
            translate=forward.translator,
            store=self.store,
        )
        return await self._route(job)

    def _view(self) -> MeshView:
        node = self.node
        return MeshView(
            mesh=node.mesh,
            now=node.now(),
            own_id=node.identity.public_bytes,
            local_models=node.hosted_models,
            local_backend=node.serves_locally(None),
            connected=node.connected_ids(),
            suspect=node.suspect_ids(),
            node_state=node.state.value,
        )

    async def _route(self, job: _Job) -> bytes:
        """Which hosts may answer the job, in order (or why none); then try them."""
        request = job.request
        node = self.node
        # A public model id (or the virtual "mesh") names the served model it stands for (0.76 §9.1).
        model, job.body = request_model(job.model, job.data, job.body, node.mesh, node.hosted_models)
        view = self._view()
        node.mesh.record_request(model, view.now)
        decision = route(
            model,
            job.session,
            view,
            exclude_header=request.getHeader(b"x-mesh-exclude"),
            target_header=request.getHeader(b"x-mesh-target"),
        )
        if isinstance(decision, Refusal):
            return self._refuse(job, decision)
        if model:
            request.setHeader(b"x-mesh-model", model.encode("utf-8", "replace")[:512])
        outbound = Outbound(
            job.method,
            job.uri,
            job.headers,
            job.body,
            # A translated answer needs the body decoded; a relayed one keeps the host's chunks as they are.
            raw_chunked=request.clientproto == b"HTTP/1.1" and job.translate is None,
        )
        node.mesh.request_started()
        node.notify_changed()
        try:
            result = await self.tunnels.send(outbound, list(decision.hosts), job.id)
            if isinstance(result, Exhausted):
                return self._refuse(job, _exhausted(result, model, self.tunnels.busy_wait))
            return await self._relay(job, result)
        finally:
            node.mesh.request_finished()
            node.notify_changed()

    def _refuse(self, job: _Job, refusal: Refusal) -> bytes:
        if refusal.count:
            self.refusals[refusal.code] += 1
        headers = {"Retry-After": refusal.retry_after} if refusal.retry_after is not None else None
        # (on /v1/messages paths openai_error answers in Anthropic's shape)
        return openai_error(
            job.request,
            refusal.status,
            refusal.message,
            refusal.type_,
            code=refusal.code,
            param=refusal.param,
            headers=headers,
        )

    async def _relay(self, job: _Job, reply: Reply) -> bytes:
        """Write a host's answer to the caller."""
        request = job.request
        head = reply.head
        request.setHeader(b"x-mesh-served-by", reply.host.hex().encode())
        if reply.error_body is not None:
            if job.translate is not None:
                translator = job.translate()
                _emit(request, translator.start(head.status, head.headers))
                _emit(request, translator.feed(reply.error_body))
                _emit(request, translator.finish())
                return b""
            request.setResponseCode(head.status)
            request.setHeader(b"content-type", b"application/json")
            retry = head.header(b"retry-after")
            if retry is not None:
                request.setHeader(b"retry-after", retry)
            return reshape_upstream_error(head.status, reply.error_body, reply.truncated)
        if job.translate is not None:
            return await self._relay_translated(job, reply)
        request.setResponseCode(head.status, head.reason or None)
        chunked = any(k == b"transfer-encoding" for k, _ in head.headers)
        for name, value in head.headers:
            if name in _HOP_BY_HOP and not (name == b"content-length" and not chunked):
                continue
            if name.startswith(b"access-control-"):
                continue  # CORS is the gate's answer (a backend's own would make two, which browsers refuse)
            request.responseHeaders.addRawHeader(name, value)
        upstream = reply.upstream
        if upstream.scanner is not None:
            # Relay the host's chunked body as it is; the host's own last chunk ends it.
            pass_chunks_through(request)
        request.registerProducer(reply.stream, True)
        upstream.start_sink(request.write)
        try:
            await upstream.done
        except CancelledError:
            reply.abort()
            raise
        except Exception as e:
            # Bytes already went out: no failover. An event stream gets a final error event and ends;
            # anything else is cut off so the caller cannot take it for a complete body.
            self._log_broken(job, reply, e)
            reply.abort()
            unregister_producer(request)
            content_type = head.header(b"content-type") or b""
            scanner = upstream.scanner
            # Relaying raw chunks, an event can only be added between two of the host's chunks.
            if content_type.startswith(b"text/event-stream") and (scanner is None or scanner.at_boundary):
                error = openai_error_body(
                    f"the host serving this stream failed: {describe(e)}", "server_error", "upstream_stream_broken"
                )
                event = b"data: " + error + b"\n\n"
                return event if scanner is None else encode_chunk(event) + LAST_CHUNK
            abort_response(request)
            return b""
        unregister_producer(request)
        reply.close()
        return b""

    async def _relay_translated(self, job: _Job, reply: Reply) -> bytes:
        """Stream the host's chat-completions answer through the job's translator to the caller."""
        request = job.request
        translator: Translator = job.translate()
        _emit(request, translator.start(reply.head.status, reply.head.headers))
        request.registerProducer(reply.stream, True)
        reply.upstream.start_sink(lambda data: _emit(request, translator.feed(data)))
        try:
            await reply.upstream.done
        except CancelledError:
            reply.abort()
            raise
        except Exception as e:
            self._log_broken(job, reply, e)
            reply.abort()
            unregister_producer(request)
            _emit(request, translator.fail(f"the host serving this answer failed: {describe(e)}"))
            return b""
        unregister_producer(request)
        reply.close()
        _emit(request, translator.finish())
        if translator.stored is not None and job.store is not None:
            try:
                await job.store.put(translator.stored)
            except Exception as e:  # a store that is away loses a conversation link, not the answer
                self._log.warn("could not store response {id}: {err}", id=translator.stored.id, err=describe(e))
        return b""

    def _log_broken(self, job: _Job, reply: Reply, e: Exception) -> None:
        self._log.info(
            "[{request_id}] tunnel from {host} broke mid-response: {err}",
            request_id=job.id,
            host=reply.host.hex()[:10],
            err=describe(e),
            event="tunnel_broken",
        )


def _exhausted(result: Exhausted, model: str | None, busy_wait: float) -> Refusal:
    """The caller's answer when no host answered: all busy, or all failed."""
    if result.busy:
        return Refusal(
            503,
            f"every host serving {echo(model) if model else 'a model'} stayed busy for {busy_wait:g}s; retry shortly",
            "server_busy",
            retry_after="2",
        )
    return Refusal(
        503,
        f"all {result.hosts} tunnel(s) to hosts for {echo(model) if model else None} failed: "
        + "; ".join(result.errors),
        "all_hosts_failed",
        retry_after="5",
    )


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
