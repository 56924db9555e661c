"""meshd.metrics: a registry per node, bounded labels, live values read at scrape time."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from meshd.config import Config, Role
from meshd.identity import Identity
from meshd.metrics import MAX_MODEL_LABELS, Metrics
from meshd.node import Node, NodeState
from meshd.protocol.peers import Role as PeerRole
from meshd.protocol.peers import build_self_announcement, peer_info_from_announcement
from meshd.protocol.token import EndpointAddr
from meshd.web.gate import Gate


def make_node() -> Node:
    return Node(Config(role=Role.CLIENT, metrics=True), Identity.generate(), Clock())


def add_peer(node: Node, n: int, role: PeerRole, models: tuple[str, ...] = ()) -> None:
    peer = bytes([n]) * 32
    ann = build_self_announcement(
        addr=EndpointAddr(peer),
        version="0.65.0",
        role=role,
        http_port=9337 if role is PeerRole.HOST else None,
        hosted_models=models,
    )
    node.mesh.ingest_gossip(peer, [peer_info_from_announcement(ann)], 0.0)


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_two_nodes_have_separate_registries() -> None:
    a, b = Metrics(make_node()), Metrics(make_node())
    a.observe("/v1/models", "other", 200, 0.1, 0.05)
    assert samples(a)[("meshd_requests_total", (("model", "other"), ("route", "/v1/models"), ("status", "200")))] == 1
    assert not any(k[0] == "meshd_requests_total" for k in samples(b))


def test_counters_histograms_and_rejections() -> None:
    node = make_node()
    add_peer(node, 1, PeerRole.HOST, ("tiny",))
    m = Metrics(node)
    label = m.model_label("tiny")
    for _ in range(3):
        m.observe("/v1/chat/completions", label, 200, 1.5, 0.2)
    m.observe("/v1/chat/completions", label, 499, 0.3, None)
    m.rejected("busy")
    m.rejected("auth")
    m.rejected("nonsense")
    s = samples(m)
    key = (("model", "tiny"), ("route", "/v1/chat/completions"))
    assert s[("meshd_requests_total", (*key, ("status", "200")))] == 3
    assert s[("meshd_requests_total", (*key, ("status", "499")))] == 1
    assert s[("meshd_request_duration_seconds_count", key)] == 4
    assert s[("meshd_request_duration_seconds_sum", key)] == 1.5 * 3 + 0.3
    assert s[("meshd_request_ttfb_seconds_count", key)] == 3
    assert s[("meshd_rejections_total", (("reason", "busy"),))] == 1
    assert s[("meshd_rejections_total", (("reason", "auth"),))] == 1
    assert s[("meshd_rejections_total", (("reason", "rate_limit_requests"),))] == 0


def test_live_values_peers_hosts_state_inflight_and_tunnel_counts() -> None:
    node = make_node()
    add_peer(node, 1, PeerRole.HOST, ("tiny", "big"))
    add_peer(node, 2, PeerRole.HOST, ("tiny",))
    add_peer(node, 3, PeerRole.CLIENT)
    node.set_state(NodeState.JOINED)

    class Proxy:
        failovers = 4
        tunnel_failures = 7

    gate = Gate(node.clock, max_inflight=2)
    gate.concurrency.admit(1, 0.0)
    m = Metrics(node, Proxy(), gate)
    s = samples(m)
    assert s[("meshd_peers", (("role", "host"),))] == 2
    assert s[("meshd_peers", (("role", "client"),))] == 1
    assert s[("meshd_model_hosts", (("model", "tiny"),))] == 2
    assert s[("meshd_model_hosts", (("model", "big"),))] == 1
    assert s[("meshd_node_state", (("state", "joined"),))] == 1
    assert s[("meshd_node_state", (("state", "joining"),))] == 0
    assert s[("meshd_inflight_requests", ())] == 1
    assert s[("meshd_tunnel_failovers_total", ())] == 4
    assert s[("meshd_tunnel_failures_total", ())] == 7


def test_model_labels_stay_bounded() -> None:
    node = make_node()
    models = tuple(f"m{i}" for i in range(MAX_MODEL_LABELS + 10))
    add_peer(node, 1, PeerRole.HOST, models)
    m = Metrics(node)
    labels = {m.model_label(name) for name in models}
    assert len(labels) == MAX_MODEL_LABELS + 1  # the first MAX_MODEL_LABELS, then "other"
    assert "other" in labels
    for i in range(1000):
        m.observe("other", m.model_label(f"caller-made-{i}"), 404, 0.0, 0.0)
    series: Any = {k for k in samples(m) if k[0] == "meshd_requests_total"}
    assert len(series) == 1
