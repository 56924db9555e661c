"""Host role: watch the OpenAI-compatible backend and hand TUNNEL_HTTP streams to it.

A model counts as hosted only while the backend answers ``GET /v1/models``; the names are the
backend's, or the ``--model`` names when given. What the backend says about its models is kept too
(bounded, for ``/v1/models`` and ``/api/status``): llama-server's ``/v1/models`` entries carry ``meta``
(``n_ctx``, ``n_ctx_train``, ``n_embd``, ``n_params``) and ``architecture.input_modalities``; its ``/props``
(read when the backend comes up or its models change) has ``modalities`` and
``chat_template_caps.supports_tools``. Other backends' answers without these fields just leave them unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import treq
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from meshd import jsonbound
from meshd.ingress import HostIngress
from meshd.mesh.models import LocalModel
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
#: Models taken from one ``/v1/models`` answer, and the longest name kept.
MAX_BACKEND_MODELS = 256
MAX_MODEL_NAME = 512
#: Numbers a backend reports are believed only within these bounds (else unknown).
MAX_CONTEXT = 1 << 32
MAX_PARAMS = 10**15


def _count(value: Any, limit: int) -> int | None:
    """A positive integer up to ``limit`` (JSON booleans and floats are not counts)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= limit:
        return value
    return None


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


@attrs.frozen
class ModelFacts:
    """What one ``/v1/models`` entry says about a model (None: not said)."""

    context_length: int | None = None
    native_context_length: int | None = None
    embedding_size: int | None = None
    parameter_count_b: float | None = None
    vision: bool | None = None
    audio: bool | None = None


@attrs.frozen
class PropsFacts:
    """What llama-server's ``/props`` says about the model it serves (None: not said)."""

    vision: bool | None = None
    audio: bool | None = None
    tools: bool | None = None


def parse_model_list(data: Any) -> tuple[tuple[str, ...], dict[str, ModelFacts]]:
    """The model names of a ``GET /v1/models`` answer (at most 256, names cut to 512 characters) and
    what each entry says about its model. Raises nothing: entries of any other shape are skipped."""
    entries = data.get("data", []) if isinstance(data, dict) else []
    if not isinstance(entries, list):
        entries = []
    names: list[str] = []
    facts: dict[str, ModelFacts] = {}
    for entry in entries[:MAX_BACKEND_MODELS]:
        if not isinstance(entry, dict) or not entry.get("id"):
            continue
        name = str(entry["id"])[:MAX_MODEL_NAME]
        names.append(name)
        meta = entry.get("meta")
        meta = meta if isinstance(meta, dict) else {}
        arch = entry.get("architecture")
        inputs = arch.get("input_modalities") if isinstance(arch, dict) else None
        modalities = {m for m in inputs if isinstance(m, str)} if isinstance(inputs, list) else None
        params = _count(meta.get("n_params"), MAX_PARAMS)
        facts.setdefault(
            name,
            ModelFacts(
                context_length=_count(meta.get("n_ctx"), MAX_CONTEXT),
                native_context_length=_count(meta.get("n_ctx_train"), MAX_CONTEXT),
                embedding_size=_count(meta.get("n_embd"), MAX_CONTEXT),
                parameter_count_b=None if params is None else round(params / 1e9, 6),
                vision=None if modalities is None else "image" in modalities,
                audio=None if modalities is None else "audio" in modalities,
            ),
        )
    return tuple(names), facts


def _slots(data: Any) -> int | None:
    """Requests a llama-server serves at once: ``/props`` ``total_slots``, or the length of ``/slots``."""
    slots = data.get("total_slots") if isinstance(data, dict) else len(data) if isinstance(data, list) else None
    return _count(slots, MAX_LEARNED_SLOTS)


def parse_props(data: Any) -> PropsFacts:
    """The capabilities llama-server's ``/props`` reports (anything else: nothing known)."""
    if not isinstance(data, dict):
        return PropsFacts()
    modalities = data.get("modalities")
    modalities = modalities if isinstance(modalities, dict) else {}
    caps = data.get("chat_template_caps")
    caps = caps if isinstance(caps, dict) else {}
    return PropsFacts(
        vision=_flag(modalities.get("vision")),
        audio=_flag(modalities.get("audio")),
        tools=_flag(caps.get("supports_tools")),
    )


def local_models(
    hosted: tuple[str, ...], backend_names: tuple[str, ...], facts: Mapping[str, ModelFacts], props: PropsFacts
) -> list[LocalModel]:
    """What this host knows about each model it hosts. A hosted name that the backend does not list
    (``--model`` renames) takes the facts of the backend's only model, if it has one; ``/props`` speaks
    for a backend that serves one model only."""
    single = backend_names[0] if len(backend_names) == 1 else None
    out = []
    for name in hosted:
        f = facts.get(name) or (facts.get(single) if single is not None else None) or ModelFacts()
        p = props if single is not None else PropsFacts()
        out.append(
            LocalModel(
                name=name,
                context_length=f.context_length,
                native_context_length=f.native_context_length,
                embedding_size=f.embedding_size,
                parameter_count_b=f.parameter_count_b,
                vision=p.vision if p.vision is not None else f.vision,
                audio=p.audio if p.audio is not None else f.audio,
                tools=p.tools,
            )
        )
    return out


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
        #: What the backend's ``/v1/models`` entries and ``/props`` say (see the module docstring).
        self.model_facts: dict[str, ModelFacts] = {}
        self.props = PropsFacts()
        self._loop: LoopingCall | None = None
        self._inflight_poll: Deferred[Any] | None = None
        #: What this host answers itself on inbound tunnels (0.76 host ingress).
        self.ingress = HostIngress(self.local_models, node.mesh)

    @property
    def polled(self) -> bool:
        """Has the backend answered (or failed) a poll yet?"""
        return self._known is not None

    def tunnel_for(self, conn: MeshConnection | None, stream: QuicStream) -> HostTunnel:
        """Serve a TUNNEL_HTTP stream (registered in the node's stream table where the daemon is wired,
        ``meshd.tap.build_service``; no ``conn``: our own API through an in-memory pipe)."""
        peer = conn.remote_id.hex()[:10] if conn is not None and conn.remote_id else "local"
        return HostTunnel(stream, self.backend, peer=peer, ingress=self.ingress)

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
            names, facts = parse_model_list(jsonbound.loads(body, max_bytes=MAX_MODELS_BODY))
            came_up = not self.healthy
            changed = names != self.backend_models
            self.model_facts = facts
            self._update(True, names, None)
            if came_up or changed:
                await self._read_props(learn_limit=came_up and self.backend.limit_source != "flag")

        d = Deferred.fromCoroutine(run())
        self._inflight_poll = d

        def failed(f: Failure) -> None:
            self._update(False, (), f.getErrorMessage() or type(f.value).__name__)

        def done(_: Any) -> None:
            self._inflight_poll = None

        d.addErrback(failed)
        d.addBoth(done)
        return d

    async def _get_json(self, path: str) -> Any:
        """``path`` of the backend as JSON, or None (not there, too large, not JSON, no answer)."""
        try:
            url = self.backend.url.rstrip("/") + path
            resp = await self._http.get(url, timeout=POLL_TIMEOUT, reactor=self._reactor)
            body = await read_limited(resp, MAX_PROPS_BODY)
            if resp.code != 200:
                return None
            return jsonbound.loads(body, max_bytes=MAX_PROPS_BODY)
        except CancelledError:
            raise  # the watch is stopping
        except Exception:  # not llama-server, or it did not answer
            return None

    async def _read_props(self, learn_limit: bool) -> None:
        """llama-server's ``/props``: the model's capabilities, and (``learn_limit``) how many requests the
        backend serves at once (``total_slots``, else the length of ``/slots``); nothing changes when the
        backend does not say."""
        props = await self._get_json("/props")
        was, self.props = self.props, parse_props(props)
        if self.props != was:
            self.node.notify_changed()
        if not learn_limit:
            return
        slots, source = _slots(props), "llama-server /props"
        if slots is None:
            slots, source = _slots(await self._get_json("/slots")), "llama-server /slots"
        if slots is not None:
            self.backend.learned_limit(slots, source)

    def local_models(self) -> list[LocalModel]:
        """What the backend says about each model this host serves now (none while it is down)."""
        return local_models(self.node.hosted_models, self.backend_models, self.model_facts, self.props)

    def _update(self, healthy: bool, names: tuple[str, ...], error: str | None) -> None:
        hosted = tuple((self.fixed_models or names) if healthy else ())
        was = self._known
        self._known = (healthy, hosted)
        self.healthy = healthy
        self.last_error = error
        self.backend_models = names
        if not healthy:
            self.model_facts, self.props = {}, PropsFacts()
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
