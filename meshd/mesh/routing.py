"""Which hosts may answer a request, in which order, or why none may (pure; MESH_PROTOCOL.md §6.4).

``route`` takes what the request asks (model, session, the ``x-mesh-exclude`` / ``x-mesh-target``
headers) and a moment's view of the mesh, and returns a ``Route`` (hosts to try in order) or a
``Refusal`` (the error the caller gets). The order: this host itself when its own backend serves the
model, then the model's hosts rotated by session affinity; hosts with a live connection first, a host
whose connection just died of silence last (``route_order``).
"""

from __future__ import annotations

from collections.abc import Collection

import attrs

from meshd.mesh.state import MeshState, route_order, sticky_order

#: Model names are echoed in error messages only this long.
MAX_ECHOED_NAME = 120
#: At most this many served models are listed in a model_not_found message.
MAX_LISTED_MODELS = 20
#: The model value that asks for any host (no model named).
ANY_MODEL = "auto"


@attrs.frozen
class Route:
    """Try these hosts in this order for ``model`` (the served name; None when the request names none)."""

    model: str | None
    hosts: tuple[bytes, ...]


@attrs.frozen
class Refusal:
    """No host may answer: the caller gets this error. ``count``: a refusal by the mesh side (it is
    counted in metrics), not a mistake in the request."""

    status: int
    message: str
    code: str
    param: str | None = None
    retry_after: str | None = None
    type_: str = "server_error"
    count: bool = True


@attrs.frozen
class MeshView:
    """What routing reads of the node at one moment."""

    mesh: MeshState
    now: float
    own_id: bytes
    #: This host's own served models (known to the mesh even when its backend is not wired).
    local_models: Collection[str]
    #: Can requests reach this host's own backend (a host with its tunnel wired)?
    local_backend: bool
    connected: Collection[bytes]
    suspect: Collection[bytes]
    node_state: str

    def serves_locally(self, model: str | None) -> bool:
        local = self.local_models
        if not self.local_backend or not local:
            return False
        return model is None or model in local


def route(
    model: str | None,
    session: str | None,
    view: MeshView,
    *,
    exclude_header: bytes | None = None,
    target_header: bytes | None = None,
) -> Route | Refusal:
    """The hosts for a request, or why there are none (see the module docstring)."""
    try:
        exclude = parse_peer_ids(exclude_header, many=True)
        target = parse_peer_ids(target_header, many=False)
    except ValueError as e:
        return Refusal(400, str(e), "invalid_header", type_="invalid_request_error", count=False)
    mesh = view.mesh
    named = model if model and model != ANY_MODEL else None
    local = [view.own_id] if view.serves_locally(named) else []
    if named is not None:
        hosts = _filter(local + sticky_order(mesh.hosts_for_model(named), session), exclude)
        if target:
            chosen = [h for h in hosts if _matches(h, target[0])]
            if not chosen:
                return Refusal(
                    409,
                    f"x-mesh-target {target[0]} does not serve model {echo(named)} (or was excluded)",
                    "target_not_available",
                    param="x-mesh-target",
                    type_="invalid_request_error",
                    count=False,
                )
            hosts = chosen[:1]
        if not hosts:
            return _no_host_for(named, view)
    else:
        hosts = _filter(local + sticky_order(mesh.any_hosts(), session), exclude)
        if target:
            hosts = [h for h in hosts if _matches(h, target[0])][:1]
        if not hosts:
            return Refusal(
                503, f"no peers serving any model (node state: {view.node_state})", "no_hosts", retry_after="5"
            )
    ordered = route_order(hosts, set(view.connected) | {view.own_id}, set(view.suspect))
    return Route(model, tuple(ordered))


def _no_host_for(model: str, view: MeshView) -> Refusal:
    """A named model no host may serve now: away for a moment (503), or unknown here (404)."""
    mesh = view.mesh
    local = set(view.local_models)
    if model in local or mesh.is_known_model(model, view.now):
        return Refusal(
            503,
            f"model {echo(model)} is not currently available in the mesh; retry later",
            "model_not_available",
            param="model",
            retry_after="5",
        )
    served = sorted(set(mesh.routable_models()) | local)
    listed = ", ".join(echo(m) for m in served[:MAX_LISTED_MODELS])
    more = f" and {len(served) - MAX_LISTED_MODELS} more" if len(served) > MAX_LISTED_MODELS else ""
    return Refusal(
        404,
        f"The model {echo(model)} does not exist in this mesh. "
        + (f"It serves: {listed}{more}." if served else "It serves no model right now."),
        "model_not_found",
        param="model",
        type_="invalid_request_error",
    )


def echo(name: str) -> str:
    """A caller's model name as it appears in our messages: quoted and cut short."""
    return repr(name if len(name) <= MAX_ECHOED_NAME else name[:MAX_ECHOED_NAME] + "...")


def parse_peer_ids(value: bytes | None, *, many: bool) -> list[str]:
    """EndpointIds from a routing header: 64 hex characters, or a 10+ hex prefix (the short id)."""
    if value is None:
        return []
    text = value.decode("latin-1")
    items = [i.strip().lower() for i in (text.split(",") if many else [text]) if i.strip()]
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
