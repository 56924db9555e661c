"""Host role: watch the OpenAI-compatible backend and hand TUNNEL_HTTP streams to it.

A model counts as hosted only while the backend answers ``GET /v1/models``; the names are the
backend's, or the ``--model`` names when given.
"""

from __future__ import annotations

from typing import Any

import treq
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from meshd import jsonbound
from meshd.node import Node
from meshd.quic import MeshConnection, QuicStream
from meshd.tunnel import Backend, HostTunnel
from meshd.webclient import read_limited

POLL_INTERVAL = 10.0
POLL_TIMEOUT = 5.0
MAX_MODELS_BODY = 1024 * 1024
#: llama-server's /props carries the prompt template and more; it is read only for ``total_slots``.
MAX_PROPS_BODY = 4 * 1024 * 1024
#: A backend limit learned from the backend is kept within this.
MAX_LEARNED_SLOTS = 256


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
        #: None until the first poll has answered (so the first state is always logged).
        self._known: tuple[bool, tuple[str, ...]] | None = None
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
            body = await read_limited(resp, MAX_MODELS_BODY)
            if resp.code != 200:
                raise ValueError(f"GET /v1/models answered {resp.code}")
            data = jsonbound.loads(body, max_bytes=MAX_MODELS_BODY)
            entries = data.get("data", []) if isinstance(data, dict) else []
            names = tuple(str(m["id"])[:512] for m in entries[:256] if isinstance(m, dict) and m.get("id"))
            came_up = not self.healthy
            self._update(True, names, None)
            if came_up and self.backend.limit_source != "flag":
                await self._learn_limit()

        d = Deferred.fromCoroutine(run())
        self._inflight_poll = d

        def failed(f: Failure) -> None:
            self._update(False, (), f.getErrorMessage() or type(f.value).__name__)

        def done(_: Any) -> None:
            self._inflight_poll = None

        d.addErrback(failed)
        d.addBoth(done)
        return d

    async def _learn_limit(self) -> None:
        """How many requests the backend serves at once, where it says (llama-server: ``/props``
        ``total_slots``, else the length of ``/slots``); nothing changes when it does not."""
        base = self.backend.url.rstrip("/")
        for path, source in (("/props", "llama-server /props"), ("/slots", "llama-server /slots")):
            try:
                resp = await self._http.get(base + path, timeout=POLL_TIMEOUT, reactor=self._reactor)
                body = await read_limited(resp, MAX_PROPS_BODY)
                if resp.code != 200:
                    continue
                data = jsonbound.loads(body, max_bytes=MAX_PROPS_BODY)
            except Exception:  # not llama-server, or it did not answer: keep the default
                continue
            slots = data.get("total_slots") if isinstance(data, dict) else len(data) if isinstance(data, list) else None
            if isinstance(slots, int) and not isinstance(slots, bool) and 1 <= slots <= MAX_LEARNED_SLOTS:
                self.backend.learned_limit(slots, source)
                return

    def _update(self, healthy: bool, names: tuple[str, ...], error: str | None) -> None:
        hosted = tuple((self.fixed_models or names) if healthy else ())
        was = self._known
        self._known = (healthy, hosted)
        self.healthy = healthy
        self.last_error = error
        self.backend_models = names
        self.node.set_hosted_models(hosted)
        if was == self._known:
            return
        if not healthy:
            self._log.warn(
                "backend {url} is down ({error}); this host serves nothing until it answers",
                url=self.backend.url,
                error=error,
                event="backend_state",
                state="down",
            )
        elif was is None or not was[0]:
            self._log.info(
                "backend {url} is up; hosting {models}",
                url=self.backend.url,
                models=list(hosted),
                event="backend_state",
                state="up",
            )
        else:
            self._log.info(
                "backend {url} now hosts {models}",
                url=self.backend.url,
                models=list(hosted),
                event="backend_state",
                state="models",
            )
        if was is not None or healthy:
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
            "inflight": self.backend.inflight,
            "queued": self.backend.slots.queued,
            "max_inflight": self.backend.max_inflight,
            "max_inflight_source": self.backend.limit_source,
            "requests": stats.requests,
            "served": dict(stats.served),
            "served_total": sum(stats.served.values()),
            "waited": stats.queued,
            "rejected_busy": stats.rejected_busy,
            "failed": stats.failed,
            "timeouts": stats.timeouts,
        }
