"""The gate's twisted.web adapter: ``GateResource`` wraps the API app's resource and applies the
``Gate``'s policy to each request in the order of ``meshd.web.gate``'s docstring; it builds the
request's one record (``meshd.apirequest.ApiRequest``) and hands it to the app as the request's
``IApiRequest`` component; it writes one access log line and one metrics observation per request.
``GateService`` announces the key set and reloads the keys file on SIGHUP.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.components import Componentized
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import Interface

from meshd import apirequest
from meshd.apirequest import ApiRequest
from meshd.concurrency import Admission
from meshd.shared.keys import UNAVAILABLE, Unavailable
from meshd.web.errors import openai_error
from meshd.web.gate.keys import CONSOLE_CREDENTIAL_HEADER, CONSOLE_KEY_ID, presented_key
from meshd.web.gate.limits import RateDecision
from meshd.web.gate.policy import BUSY_RETRY_AFTER, BYPASS_PATHS, LOCAL_PATHS, Gate, client_ip, route_label

if TYPE_CHECKING:
    from meshd.metrics import Metrics
    from meshd.shared.policy import Lease

_log = Logger()

#: Status recorded for a request whose caller went away before the response ended (nginx's).
CLIENT_CLOSED = 499


class IApiRequest(Interface):
    """The component of a twisted.web request that is its ``meshd.apirequest.ApiRequest``."""


def record_of(request: IRequest) -> ApiRequest:
    """The record the gate made for ``request`` (one is made here for a request that passed no gate)."""
    record = request.getComponent(IApiRequest) if isinstance(request, Componentized) else None
    if record is not None:
        return record  # type: ignore[no-any-return]
    return make_record(request)


def make_record(
    request: IRequest, *, id: str | None = None, caller: str = "", key_id: str | None = None, client: str = ""
) -> ApiRequest:
    """The record of ``request``: its body is read (and decoded) here."""
    content = request.content
    body = b""
    if content is not None:
        body = content.read()
        content.seek(0)
    return apirequest.build(
        id=id,
        method=request.method,
        uri=request.uri,
        path=request.path,
        http11=request.clientproto == b"HTTP/1.1",  # type: ignore[attr-defined]
        headers=[(k, v) for k, vs in request.requestHeaders.getAllRawHeaders() for v in vs],
        body=body,
        request_id_header=request.getHeader(b"x-request-id"),
        content_type=request.getHeader(b"content-type"),
        caller=caller,
        key_id=key_id,
        client=client,
    )


@attrs.define
class _Exchange:
    """What the gate knows about one request while it runs."""

    start: float
    request_id: str
    route: str
    client: str
    key_id: str | None = None
    caller: str = ""
    model: str | None = None
    model_label: str = "other"
    stream: bool = False
    holds_slot: bool = False
    holds_stream: bool = False
    stream_lease: Lease | None = None
    global_lease: Lease | None = None
    queued_token: int | None = None
    queue_timer: Any = None
    done: bool = False


class GateResource(Resource):
    """Wraps the API app's resource with the gate (the root resource of the API site)."""

    isLeaf = True

    def __init__(self, wrapped: Any, gate: Gate, metrics: Metrics | None = None) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.gate = gate
        self.metrics = metrics
        self._waiting: dict[int, tuple[IRequest, _Exchange]] = {}

    def render(self, request: IRequest) -> Any:
        gate = self.gate
        path = request.path.decode("latin-1", "replace")
        peer = getattr(request.getClientAddress(), "host", None) or "unknown"
        # The console's credential never goes further than this line (not to the app, not to a host).
        console_credential = request.getHeader(CONSOLE_CREDENTIAL_HEADER)
        request.requestHeaders.removeHeader(CONSOLE_CREDENTIAL_HEADER)
        ip = client_ip(
            str(peer), request.getHeader(b"fly-client-ip"), request.getHeader(b"x-forwarded-for"), gate.trust_proxy
        )
        request_id = apirequest.request_id(request.getHeader(b"x-request-id"))
        ex = _Exchange(start=gate.now(), request_id=request_id, route=route_label(path), client=ip)
        request.setHeader(b"x-request-id", request_id.encode())
        request.notifyFinish().addBoth(self._finished, request, ex)  # type: ignore[attr-defined]
        origin = request.getHeader(b"origin")

        if request.method == b"OPTIONS" and origin is not None:
            acrm = request.getHeader(b"access-control-request-method")
            if acrm is not None:
                for name, value in gate.cors.preflight(
                    origin, acrm, request.getHeader(b"access-control-request-headers")
                ).items():
                    request.setHeader(name, value)
                request.setResponseCode(204)
                return b""
        for name, value in gate.cors.headers(origin).items():
            request.setHeader(name, value)
        if path in BYPASS_PATHS:
            return self.wrapped.render(request)

        keys_required = gate.keys_required
        if keys_required and gate.is_console(console_credential, str(peer), path):
            ex.key_id = CONSOLE_KEY_ID
            ex.caller = CONSOLE_KEY_ID
            request.requestHeaders.removeHeader(b"authorization")
        elif keys_required:
            kid = gate.check_key(presented_key(request.getHeader(b"authorization"), request.getHeader(b"x-api-key")))
            if kid is UNAVAILABLE:
                return self._unavailable(request)
            if kid is None:
                # Failed attempts spend the client address's bucket: guessing keys is rate limited too.
                if gate.shared is not None and gate.shared.requests is not None:
                    return self._run_async(request, self._shared_denied(request, ex, "ip:" + ip))
                if gate.requests is not None:
                    decision = gate.requests.check("ip:" + ip, gate.now())
                    if not decision.allowed:
                        return self._rate_limited(request, decision)
                    self._rate_headers(request, decision)
                return self._denied(request)
            ex.key_id = kid
            ex.caller = "key:" + kid
            # The key is for this gate: never forward it through the tunnel to a mesh host.
            request.requestHeaders.removeHeader(b"authorization")
            request.requestHeaders.removeHeader(b"x-api-key")
        else:
            ex.caller = "ip:" + ip

        record = make_record(request, id=ex.request_id, caller=ex.caller, key_id=ex.key_id, client=ex.client)
        if isinstance(request, Componentized):  # twisted.web's requests are (test doubles may not be)
            request.setComponent(IApiRequest, record)
        ex.model, ex.stream = record.model, record.stream
        ex.model_label = self.metrics.model_label(ex.model) if self.metrics is not None else "other"

        if gate.shared is not None:
            return self._run_async(request, self._shared_admit(request, ex, path))
        now = gate.now()
        if gate.requests is not None:
            decision = gate.requests.check(ex.caller, now)
            if not decision.allowed:
                return self._rate_limited(request, decision)
            self._rate_headers(request, decision)
        if ex.stream and gate.streams is not None:
            if not gate.streams.acquire(ex.caller):
                return self._streams_limited(request, gate.streams.max_streams)
            ex.holds_stream = True
        return self._admit_local(request, ex, path, now)

    def _admit_local(self, request: IRequest, ex: _Exchange, path: str, now: float) -> Any:
        """This process's in-flight cap (with its queue), then the app."""
        gate = self.gate
        if path in LOCAL_PATHS:
            return self.wrapped.render(request)
        token = gate.token()
        admission, deadline = gate.concurrency.admit(token, now)
        if admission is Admission.ADMIT:
            ex.holds_slot = True
            return self.wrapped.render(request)
        if admission is Admission.REJECT:
            self._reject("busy")
            return self._busy(request)
        ex.queued_token = token
        self._waiting[token] = (request, ex)
        ex.queue_timer = gate.clock.callLater(max(0.0, deadline - now), self._expire)
        return NOT_DONE_YET

    # -- shared limits (--redis) -----------------------------------------------------------------

    def _run_async(self, request: IRequest, coro: Any) -> Any:
        """Finish a request's checks in ``coro`` (it sends the answer itself); the gate answers later."""
        d: Deferred[None] = Deferred.fromCoroutine(coro)
        d.addErrback(self._async_failed, request)
        return NOT_DONE_YET

    def _async_failed(self, failure: Failure, request: IRequest) -> None:
        _log.failure("API gate failed", failure=failure, event="api_error")
        if not getattr(request, "startedWriting", False):
            _send(request, openai_error(request, 500, "internal error", "server_error", code="internal_error"))

    async def _shared_denied(self, request: IRequest, ex: _Exchange, caller: str) -> None:
        shared = self.gate.shared
        assert shared is not None
        decision = await shared.check_rate(caller)
        if ex.done:
            return
        if not isinstance(decision, RateDecision):
            _send(request, self._unavailable(request))
            return
        if not decision.allowed:
            _send(request, self._rate_limited(request, decision))
            return
        self._rate_headers(request, decision)
        _send(request, self._denied(request))

    async def _shared_admit(self, request: IRequest, ex: _Exchange, path: str) -> None:
        """The shared checks in one Redis call (rate, a stream slot, a cluster-wide slot), then this process's cap."""
        shared = self.gate.shared
        assert shared is not None
        got = await shared.admit(ex.caller, stream=ex.stream, inflight=path not in LOCAL_PATHS)
        if ex.done:  # the caller left while Redis answered: give back what it got
            for lease in got.leases():
                shared.release(lease)
            return
        rate, stream, inflight = got.rate, got.stream, got.inflight
        if isinstance(rate, Unavailable):
            _send(request, self._unavailable(request))
            return
        if rate is not None:
            if not rate.allowed:
                _send(request, self._rate_limited(request, rate))
                return
            self._rate_headers(request, rate)
        if isinstance(stream, Unavailable) or isinstance(inflight, Unavailable):
            for lease in got.leases():
                shared.release(lease)
            _send(request, self._unavailable(request))
            return
        if stream is None:
            _send(request, self._streams_limited(request, shared.max_streams))
            return
        if inflight is None:
            if stream.kind != "none":
                shared.release(stream)
            self._reject("busy")
            _send(request, self._busy(request, shared.max_inflight_global, "across the cluster"))
            return
        ex.stream_lease = stream if stream.kind != "none" else None
        ex.global_lease = inflight if inflight.kind != "none" else None
        result = self._admit_local(request, ex, path, self.gate.now())
        if result is not NOT_DONE_YET:
            _send(request, result)

    def _unavailable(self, request: IRequest) -> bytes:
        self._reject("redis_unavailable")
        return openai_error(
            request,
            503,
            "server busy: the shared limits store does not answer; retry shortly",
            "server_error",
            code="server_busy",
            headers={"Retry-After": str(BUSY_RETRY_AFTER)},
        )

    # -- answers --------------------------------------------------------------------------------

    def _denied(self, request: IRequest) -> bytes:
        self._reject("auth")
        return openai_error(
            request,
            401,
            "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.",
            "invalid_request_error",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )

    def _streams_limited(self, request: IRequest, limit: int) -> bytes:
        self._reject("rate_limit_streams")
        return openai_error(
            request,
            429,
            f"Rate limit reached on concurrent streams: limit {limit}. "
            "Please try again when one of your streams has finished.",
            "requests",
            code="rate_limit_exceeded",
            headers={"Retry-After": "1"},
        )

    def _rate_headers(self, request: IRequest, decision: RateDecision) -> None:
        for header, text in decision.headers().items():
            request.setHeader(header.encode(), text.encode())

    def _rate_limited(self, request: IRequest, decision: RateDecision) -> bytes:
        self._rate_headers(request, decision)
        self._reject("rate_limit_requests")
        return openai_error(
            request,
            429,
            f"Rate limit reached on requests per minute (RPM): limit {decision.limit}. "
            f"Please try again in {decision.retry_after}s.",
            "requests",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(decision.retry_after)},
        )

    # -- queue ----------------------------------------------------------------------------------

    def _busy(self, request: IRequest, limit: int | None = None, where: str = "") -> bytes:
        n = self.gate.concurrency.max_inflight if limit is None else limit
        return openai_error(
            request,
            503,
            f"server busy: {n} requests in flight{' ' + where if where else ''}; retry shortly",
            "server_error",
            code="server_busy",
            headers={"Retry-After": str(BUSY_RETRY_AFTER)},
        )

    def _expire(self) -> None:
        for token in self.gate.concurrency.expired(self.gate.now()):
            waiting = self._waiting.pop(token, None)
            if waiting is None:
                continue
            request, ex = waiting
            ex.queued_token = None
            ex.queue_timer = None
            self._reject("busy")
            _send(request, self._busy(request))

    def _hand_slot(self, token: int) -> None:
        waiting = self._waiting.pop(token, None)
        if waiting is None:  # pragma: no cover - tokens in the queue always have a waiter
            self._release_slot()
            return
        request, ex = waiting
        if ex.queue_timer is not None and ex.queue_timer.active():
            ex.queue_timer.cancel()
        ex.queue_timer = None
        ex.queued_token = None
        ex.holds_slot = True
        self._dispatch(request)

    def _release_slot(self) -> None:
        token = self.gate.concurrency.release()
        if token is not None:
            self._hand_slot(token)

    def _dispatch(self, request: IRequest) -> None:
        try:
            result = self.wrapped.render(request)
        except Exception:
            _log.failure("API dispatch failed", event="api_error")
            request.setResponseCode(500)
            result = b""
        if result is not NOT_DONE_YET:
            _send(request, result)

    def _reject(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected(reason)

    def _finished(self, result: Any, request: IRequest, ex: _Exchange) -> None:
        if ex.done:
            return
        ex.done = True
        completed = not isinstance(result, Failure)
        if ex.queued_token is not None:
            self.gate.concurrency.withdraw(ex.queued_token)
            self._waiting.pop(ex.queued_token, None)
            if ex.queue_timer is not None and ex.queue_timer.active():
                ex.queue_timer.cancel()
        if ex.holds_stream and self.gate.streams is not None:
            self.gate.streams.release(ex.caller)
        shared = self.gate.shared
        for lease in (ex.stream_lease, ex.global_lease):
            if lease is not None and shared is not None:
                shared.release(lease)
        ex.stream_lease = ex.global_lease = None
        status = int(getattr(request, "code", 200)) if completed else CLIENT_CLOSED
        end = self.gate.now()
        duration = end - ex.start
        sent = int(getattr(request, "sentLength", 0))
        first_write = getattr(request, "first_write_at", None)
        if first_write is None and sent:
            first_write = end  # a request class that does not note its first write (not meshd's site)
        ttfb = None if first_write is None else max(0.0, first_write - ex.start)
        if self.metrics is not None:
            self.metrics.observe(ex.route, ex.model_label, status, duration, ttfb)
        served_by = request.responseHeaders.getRawHeaders(b"x-mesh-served-by") or request.responseHeaders.getRawHeaders(
            b"x-meshd-host"
        )
        ids = request.responseHeaders.getRawHeaders(b"x-request-id") or [ex.request_id.encode()]
        _log.info(
            "{method} {path} {status} {bytes}B {duration_ms}ms key={key_id} client={client} model={model}",
            event="access",
            request_id=ids[0].decode("latin-1"),
            key_id=ex.key_id,
            client=ex.client,
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1", "replace")[:512],
            route=ex.route,
            model=ex.model[:256] if ex.model else None,
            stream=ex.stream,
            status=status,
            bytes=sent,
            duration_ms=round(duration * 1000, 1),
            ttfb_ms=None if ttfb is None else round(ttfb * 1000, 1),
            served_by=served_by[0].decode("latin-1") if served_by else None,
        )
        if ex.holds_slot:
            ex.holds_slot = False
            self._release_slot()


def _send(request: IRequest, body: bytes) -> None:
    """Write a whole body and end the response (unless the caller already went away)."""
    if getattr(request, "_disconnected", False) or getattr(request, "finished", False):
        return
    if body:
        request.setHeader(b"content-length", str(len(body)).encode())
        request.write(body)
    request.finish()


class GateService(Service):
    """Says at start-up whether the API needs keys, and reloads the keys file on SIGHUP."""

    def __init__(self, reactor: Any, gate: Gate) -> None:
        self._reactor = reactor
        self.gate = gate
        self._previous: Any = None
        self._installed = False

    def startService(self) -> None:
        super().startService()
        _log.info(
            "{description}",
            description=self.gate.describe_keys(),
            event="api_keys",
            required=self.gate.keys.required,
            keys=self.gate.keys.count,
        )
        if self.gate.keys.path is not None:
            try:
                self._previous = signal.signal(signal.SIGHUP, self._on_sighup)
                self._installed = True
            except (ValueError, OSError, AttributeError) as e:  # not the main thread, or no SIGHUP here
                _log.warn("cannot reload API keys on SIGHUP: {err}", err=str(e), event="api_keys_no_sighup")

    def _on_sighup(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self.reload)

    def reload(self) -> bool:
        return self.gate.keys.reload()

    def stopService(self) -> Any:
        if self._installed:
            self._installed = False
            try:
                signal.signal(signal.SIGHUP, self._previous if self._previous is not None else signal.SIG_DFL)
            except (ValueError, OSError):
                pass
        return super().stopService()
