"""meshd.mesh.routing: which hosts answer a request, in which order, or why none (pure)."""

from __future__ import annotations

from collections.abc import Collection

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.mesh.routing import MAX_ECHOED_NAME, MeshView, Refusal, Route, parse_peer_ids, route
from meshd.mesh.state import MeshState, sticky_order
from meshd.protocol.peers import Role, build_self_announcement, peer_info_from_announcement
from meshd.protocol.token import EndpointAddr

OWN = b"\x01" * 32
NOW = 1000.0


def host_id(n: int) -> bytes:
    return bytes([n]) * 32


def mesh_with(hosts: dict[int, tuple[str, ...]]) -> MeshState:
    mesh = MeshState(OWN, Role.CLIENT)
    for n, models in hosts.items():
        peer = host_id(n)
        ann = build_self_announcement(
            addr=EndpointAddr(peer), version="0.76.0", role=Role.HOST, http_port=9337, hosted_models=models
        )
        mesh.ingest_gossip(peer, [peer_info_from_announcement(ann)], NOW)
        mesh.note_models(models, NOW)
    return mesh


def view(
    mesh: MeshState,
    *,
    local: Collection[str] = (),
    backend: bool = False,
    connected: Collection[bytes] = (),
    suspect: Collection[bytes] = (),
) -> MeshView:
    return MeshView(
        mesh=mesh,
        now=NOW,
        own_id=OWN,
        local_models=local,
        local_backend=backend,
        connected=connected,
        suspect=suspect,
        node_state="joined",
    )


def test_a_model_goes_to_its_hosts_only() -> None:
    mesh = mesh_with({2: ("a",), 3: ("b",), 4: ("a", "b")})
    got = route("a", None, view(mesh))
    assert isinstance(got, Route)
    assert set(got.hosts) == {host_id(2), host_id(4)} and got.model == "a"


def test_this_host_comes_first_when_its_own_backend_serves_the_model() -> None:
    mesh = mesh_with({2: ("a",)})
    got = route("a", None, view(mesh, local=("a",), backend=True))
    assert isinstance(got, Route) and got.hosts[0] == OWN and got.hosts[1:] == (host_id(2),)
    # the same names without a wired backend: not served here
    got = route("a", None, view(mesh, local=("a",), backend=False))
    assert isinstance(got, Route) and got.hosts == (host_id(2),)


def test_live_connections_first_and_a_host_gone_silent_only_as_the_last_resort() -> None:
    mesh = mesh_with({2: ("a",), 3: ("a",), 4: ("a",)})
    got = route("a", None, view(mesh, connected={host_id(4)}, suspect={host_id(2)}))
    assert isinstance(got, Route)
    assert got.hosts[0] == host_id(4) and host_id(2) not in got.hosts
    only_suspect = route("a", None, view(mesh_with({2: ("a",)}), suspect={host_id(2)}))
    assert isinstance(only_suspect, Route) and only_suspect.hosts == (host_id(2),)


def test_a_session_sticks_to_one_host() -> None:
    mesh = mesh_with({n: ("a",) for n in range(2, 8)})
    first = route("a", "user-7", view(mesh))
    again = route("a", "user-7", view(mesh))
    assert isinstance(first, Route) and isinstance(again, Route)
    assert first.hosts == again.hosts
    assert list(first.hosts) == sticky_order(mesh.hosts_for_model("a"), "user-7")


def test_exclude_and_target_headers() -> None:
    mesh = mesh_with({2: ("a",), 3: ("a",)})
    got = route("a", None, view(mesh), exclude_header=host_id(2).hex()[:10].encode())
    assert isinstance(got, Route) and got.hosts == (host_id(3),)
    got = route("a", None, view(mesh), target_header=host_id(2).hex().encode())
    assert isinstance(got, Route) and got.hosts == (host_id(2),)
    missing = route("a", None, view(mesh), target_header=host_id(9).hex().encode())
    assert isinstance(missing, Refusal) and (missing.status, missing.code, missing.count) == (
        409,
        "target_not_available",
        False,
    )
    bad = route("a", None, view(mesh), exclude_header=b"not-hex")
    assert isinstance(bad, Refusal) and (bad.status, bad.code, bad.count) == (400, "invalid_header", False)


def test_unknown_model_is_404_naming_what_the_mesh_serves() -> None:
    mesh = mesh_with({2: ("small",), 3: ("tiny",)})
    got = route("tiyn", None, view(mesh))
    assert isinstance(got, Refusal)
    assert (got.status, got.code, got.param, got.type_) == (404, "model_not_found", "model", "invalid_request_error")
    assert "'small', 'tiny'" in got.message


def test_known_model_without_a_host_now_is_503() -> None:
    mesh = mesh_with({})
    mesh.note_models(["ghost"], NOW)
    got = route("ghost", None, view(mesh))
    assert isinstance(got, Refusal) and (got.status, got.code, got.retry_after) == (503, "model_not_available", "5")
    # a model this host names itself counts as known too
    got = route("mine", None, view(mesh, local=("mine",)))
    assert isinstance(got, Refusal) and got.code == "model_not_available"


def test_no_model_goes_to_any_host_or_says_none_serve() -> None:
    mesh = mesh_with({2: ("a",)})
    for model in (None, "auto"):
        got = route(model, None, view(mesh))
        assert isinstance(got, Route) and got.hosts == (host_id(2),)
    empty = route(None, None, view(mesh_with({})))
    assert isinstance(empty, Refusal) and (empty.status, empty.code) == (503, "no_hosts")


def test_a_long_name_is_cut_in_the_message() -> None:
    got = route("x" * 5000, None, view(mesh_with({})))
    assert isinstance(got, Refusal) and len(got.message) < MAX_ECHOED_NAME + 200


@pytest.mark.parametrize(
    ("value", "many", "expected"),
    [
        (None, True, []),
        (b"AbCdEf0123, 0123456789", True, ["abcdef0123", "0123456789"]),
        (b"  ,  ", True, []),
        (b"0123456789", False, ["0123456789"]),
    ],
)
def test_peer_id_headers(value: bytes | None, many: bool, expected: list[str]) -> None:
    assert parse_peer_ids(value, many=many) == expected


@given(st.binary(max_size=300), st.booleans())
def test_peer_id_headers_take_any_bytes(value: bytes, many: bool) -> None:
    try:
        ids = parse_peer_ids(value, many=many)
    except ValueError:
        return
    assert all(10 <= len(i) <= 64 and set(i) <= set("0123456789abcdef") for i in ids)
    assert many or len(ids) == 1


@given(
    st.one_of(st.none(), st.text(max_size=50)),
    st.one_of(st.none(), st.text(max_size=50)),
    st.sets(st.integers(2, 9), max_size=5),
    st.sets(st.integers(2, 9), max_size=5),
)
def test_route_always_decides(model: str | None, session: str | None, connected: set[int], suspect: set[int]) -> None:
    mesh = mesh_with({2: ("a",), 3: ("b",), 4: ("a", "b")})
    got = route(
        model,
        session,
        view(mesh, connected={host_id(n) for n in connected}, suspect={host_id(n) for n in suspect}),
    )
    if isinstance(got, Route):
        assert got.hosts and len(set(got.hosts)) == len(got.hosts)
        served = {host_id(2), host_id(4)} if model == "a" else {host_id(3), host_id(4)} if model == "b" else None
        assert served is None or set(got.hosts) <= served
    else:
        assert got.status in (404, 503)
