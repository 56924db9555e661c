"""Host role: watch the OpenAI-compatible backend and hand TUNNEL_HTTP streams to it.

A model counts as hosted only while the backend answers ``GET /v1/models``; the names are the
backend's, or the ``--model`` names when given.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from meshd.node import Node
from meshd.quic import MeshConnection, QuicStream
from meshd.tunnel import Backend, HostTunnel

POLL_INTERVAL = 10.0
POLL_TIMEOUT = 5.0
MAX_MODELS_BODY = 1024 * 1024


class BackendWatch(Service):
    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        node: Node,
        backend: Backend,
        models: tuple[str, ...] = (),
        interval: float = POLL_INTERVAL,
        http: Any = None,
    ) -> None:
        self._reactor = reactor
        self.node = node
        self.backend = backend
        self.fixed_models = models
        self.interval = interval
        self._http = http or treq
        self.healthy = False
        self.last_error: str | None = None
        self.backend_models: tuple[str, ...] = ()
        self._loop: LoopingCall | None = None
        self._inflight_poll: Deferred[Any] | None = None
        node.tunnel_handler = self.tunnel_for

    def tunnel_for(self, conn: MeshConnection | None, stream: QuicStream) -> HostTunnel:
        peer = conn.remote_id.hex()[:10] if conn is not None and conn.remote_id else "local"
        return HostTunnel(stream, self.backend, peer=peer)

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.poll)
        self._loop.clock = self._reactor
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: self._log.failure("backend poll loop failed", failure=f)
        )

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._inflight_poll is not None:
            self._inflight_poll.cancel()
        return None

    def poll(self) -> Deferred[None] | None:
        if self._inflight_poll is not None:
            return None
        url = self.backend.url.rstrip("/") + "/v1/models"

        async def run() -> None:
            resp = await self._http.get(url, timeout=POLL_TIMEOUT, reactor=self._reactor)
            body = await resp.content()
            if resp.code != 200:
                raise ValueError(f"GET /v1/models answered {resp.code}")
            if len(body) > MAX_MODELS_BODY:
                raise ValueError("model list too large")
            data = json.loads(body)
            names = tuple(str(m["id"]) for m in data.get("data", []) if isinstance(m, dict) and m.get("id"))
            self._update(True, names, None)

        d = Deferred.fromCoroutine(run())
        self._inflight_poll = d

        def failed(f: Failure) -> None:
            self._update(False, (), f.getErrorMessage() or type(f.value).__name__)

        def done(_: Any) -> None:
            self._inflight_poll = None

        d.addErrback(failed)
        d.addBoth(done)
        return d

    def _update(self, healthy: bool, names: tuple[str, ...], error: str | None) -> None:
        was = (self.healthy, self.node.hosted_models)
        self.healthy = healthy
        self.last_error = error
        self.backend_models = names
        hosted = (self.fixed_models or names) if healthy else ()
        self.node.hosted_models = tuple(hosted)
        if (healthy, self.node.hosted_models) != was:
            self._log.info(
                "backend {url} {state}; hosting {models}",
                url=self.backend.url,
                state="up" if healthy else f"down ({error})",
                models=list(self.node.hosted_models),
                event="backend_state",
            )
            self.node.notify_changed()
            self.node.regossip()

    def status(self) -> dict[str, Any]:
        stats = self.backend.stats
        return {
            "url": self.backend.url,
            "healthy": self.healthy,
            "last_error": self.last_error,
            "models": list(self.backend_models),
            "hosted_models": list(self.node.hosted_models),
            "inflight": stats.inflight,
            "max_inflight": self.backend.max_inflight,
            "requests": stats.requests,
            "rejected_busy": stats.rejected_busy,
            "failed": stats.failed,
            "served": dict(stats.served),
        }
