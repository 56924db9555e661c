"""``/ready``: the pure decision (``readiness``) and its twisted.web answer (``ready_response``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.web.iweb import IRequest

from meshd.web.errors import json_body

if TYPE_CHECKING:
    from meshd.host import BackendWatch
    from meshd.node import Node
    from meshd.shared.policy import SharedGate


def readiness(
    node_state: str,
    models: Iterable[str],
    own_models: Iterable[str] = (),
    backend_problem: str | None = None,
    shared_problem: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """``/ready``: 200 when joined with at least one routable model, or when this host's own backend
    serves a model (a host that started its own mesh is ready alone); else 503 with the reason (a host's
    own backend being down comes first: it is what the operator can fix). A Redis the gate cannot work
    without (``shared_problem``: fail-closed keys or limits) makes it 503 before anything else."""
    if shared_problem is not None:
        return 503, {"status": "not_ready", "reason": shared_problem, "node_state": node_state}
    own = sorted(set(own_models))
    names = sorted(set(models) | set(own))
    if own:
        return 200, {"status": "ready", "node_state": node_state, "models": names}
    if backend_problem is not None and (node_state != "joined" or not names):
        return 503, {"status": "not_ready", "reason": backend_problem, "node_state": node_state}
    if node_state != "joined":
        return 503, {"status": "not_ready", "reason": f"node state is {node_state}", "node_state": node_state}
    if not names:
        return 503, {"status": "not_ready", "reason": "no routable model in the mesh", "node_state": node_state}
    return 200, {"status": "ready", "node_state": node_state, "models": names}


def ready_response(
    request: IRequest, node: Node, backend: BackendWatch | None = None, shared: SharedGate | None = None
) -> bytes:
    """``/ready`` of ``node``; ``backend``: a host's backend watch (its backend being down comes first);
    ``shared``: the Redis-backed gate, whose fail-closed outage makes the node not ready."""
    own = node.hosted_models if node.serves_locally(None) else ()
    problem = None
    if backend is not None and not backend.healthy:
        problem = f"backend {backend.backend.url} is down: {backend.last_error or 'no answer yet'}"
    redis = shared.status() if shared is not None else None
    shared_problem = redis["ready_problem"] if redis is not None else None
    code, payload = readiness(node.state.value, node.mesh.routable_models(), own, problem, shared_problem)
    if redis is not None:
        payload["redis"] = {k: redis[k] for k in ("state", "since", "last_error")}
    request.setHeader(b"cache-control", b"no-cache")
    return json_body(request, code, payload)
