"""Prometheus metrics of one node (``--metrics``), on a registry of its own (never the global one).

Label sets are bounded: ``route`` is one of ``meshd.web.gate.ROUTES`` or ``other``; ``model`` is a
model routable in the mesh when the request arrived (at most ``MAX_MODEL_LABELS`` of them), else
``other``; ``status`` is an HTTP status code (499 when the caller went away). Live values (in-flight,
peers, hosts per model, tunnel failures and failovers) are read from the node, the gate and the
proxy when scraped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from meshd import __version__

#: Distinct model label values ever created (beyond this, models are counted as "other").
MAX_MODEL_LABELS = 64
#: Reasons for a request refused by the gate.
REJECTION_REASONS = ("auth", "rate_limit_requests", "rate_limit_streams", "busy", "redis_unavailable")
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Counters and histograms fed by the API gate, plus live gauges read from ``node``.

    ``proxy`` (``MeshProxy``: ``failovers``, ``tunnel_failures``) and ``gate`` (``meshd.web.gate.Gate``)
    are attached after construction because they are built around the same node.
    """

    def __init__(self, node: Any, proxy: Any = None, gate: Any = None) -> None:
        self.node = node
        self.proxy = proxy
        self.gate = gate
        self.registry = CollectorRegistry(auto_describe=True)
        self._models: set[str] = set()
        self.requests = Counter(
            "meshd_requests",
            "API requests by route, model and HTTP status (499: the caller went away).",
            ["route", "model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "meshd_request_duration_seconds",
            "API request duration, from arrival to the end of the response.",
            ["route", "model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttfb = Histogram(
            "meshd_request_ttfb_seconds",
            "Time from a request's arrival to the first response body byte sent.",
            ["route", "model"],
            buckets=TTFB_BUCKETS,
            registry=self.registry,
        )
        self.rejections = Counter(
            "meshd_rejections",
            "Requests refused by the gate: auth (401), rate_limit_requests and rate_limit_streams (429), busy (503), "
            "redis_unavailable (503: shared limits or keys that fail closed).",
            ["reason"],
            registry=self.registry,
        )
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason)
        self.registry.register(_LiveCollector(self))

    # -- fed by the gate ------------------------------------------------------------------------

    def model_label(self, model: str | None) -> str:
        """``model`` if the mesh routes it right now (bounded), else ``other``."""
        if not model:
            return "other"
        if model in self._models:
            return model
        routable = set(self.node.mesh.routable_models()) | set(getattr(self.node, "hosted_models", ()))
        if model in routable and len(self._models) < MAX_MODEL_LABELS:
            self._models.add(model)
            return model
        return "other"

    def observe(self, route: str, model: str, status: int, duration: float, ttfb: float | None) -> None:
        self.requests.labels(route, model, str(status)).inc()
        self.latency.labels(route, model).observe(max(0.0, duration))
        if ttfb is not None:
            self.ttfb.labels(route, model).observe(max(0.0, ttfb))

    def rejected(self, reason: str) -> None:
        self.rejections.labels(reason if reason in REJECTION_REASONS else "other").inc()

    # -- exposition -----------------------------------------------------------------------------

    content_type = CONTENT_TYPE_LATEST

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector:
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Any]:
        node = self.m.node
        info = GaugeMetricFamily("meshd_info", "meshd version and role.", labels=["version", "role"])
        info.add_metric([__version__, node.config.role.value], 1.0)
        yield info
        state = GaugeMetricFamily("meshd_node_state", "1 for the node's current state.", labels=["state"])
        current = node.state.value
        for value in ("discovering", "joining", "joined", "standalone"):
            state.add_metric([value], 1.0 if value == current else 0.0)
        yield state
        gate = self.m.gate
        inflight = GaugeMetricFamily("meshd_inflight_requests", "API requests holding an in-flight slot.")
        inflight.add_metric([], float(gate.concurrency.inflight if gate is not None else node.inflight_requests))
        yield inflight
        queued = GaugeMetricFamily("meshd_queued_requests", "API requests waiting for an in-flight slot.")
        queued.add_metric([], float(gate.concurrency.queued if gate is not None else 0))
        yield queued
        shared = getattr(gate, "shared", None)
        if shared is not None:
            yield from shared.metric_families()
        tunnelled = GaugeMetricFamily("meshd_tunnelled_requests", "Requests being tunnelled to mesh hosts.")
        tunnelled.add_metric([], float(node.inflight_requests))
        yield tunnelled
        proxy = self.m.proxy
        failures = CounterMetricFamily(
            "meshd_tunnel_failures", "Tunnel attempts to a host that failed before the response began."
        )
        failures.add_metric([], float(getattr(proxy, "tunnel_failures", 0)))
        yield failures
        failovers = CounterMetricFamily("meshd_tunnel_failovers", "Requests retried on the next host.")
        failovers.add_metric([], float(getattr(proxy, "failovers", 0)))
        yield failovers
        busy = CounterMetricFamily("meshd_host_busy_replies", "Times a host answered busy (all backend slots taken).")
        busy.add_metric([], float(getattr(proxy, "busy_replies", 0)))
        yield busy
        refusals = CounterMetricFamily(
            "meshd_mesh_refusals",
            "Requests the mesh could not serve, by error code (server_busy, all_hosts_failed, no_hosts, "
            "model_not_available, model_not_found).",
            labels=["code"],
        )
        for code, n in sorted(getattr(proxy, "refusals", {}).items()):
            refusals.add_metric([code], float(n))
        yield refusals
        peers = GaugeMetricFamily("meshd_peers", "Peers in the mesh by role.", labels=["role"])
        counts = {"host": 0, "worker": 0, "client": 0}
        for entry in list(node.mesh.peers.values()):
            role = entry.info.role.value
            counts[role] = counts.get(role, 0) + 1
        for role, n in sorted(counts.items()):
            peers.add_metric([role], float(n))
        yield peers
        hosts = GaugeMetricFamily(
            "meshd_model_hosts", "Hosts serving each model routable in the mesh.", labels=["model"]
        )
        for model, ids in sorted(node.mesh.routable_models().items())[:MAX_MODEL_LABELS]:
            hosts.add_metric([model], float(len(ids)))
        yield hosts
