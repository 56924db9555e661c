"""§1.5 score_mesh / smart_auto (HEAD rules), §1.6 re-discovery timer, §1.7 last-mesh file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshd.discovery.listing import DiscoveredMesh, MeshListing
from meshd.discovery.scoring import (
    Rediscovery,
    is_auto_eligible,
    rank_for_rediscovery,
    read_last_mesh_id,
    score_mesh,
    smart_auto,
    write_last_mesh_id,
)


def mesh(tag: str = "m", **kw: Any) -> DiscoveredMesh:
    fields: dict[str, Any] = {
        "invite_token": f"tok-{tag}",
        "serving": [],
        "total_vram_bytes": 0,
        "node_count": 0,
    }
    fields.update(kw)
    return DiscoveredMesh(listing=MeshListing(**fields), publisher_npub=f"npub-{tag}", published_at=1, expires_at=None)


# Reference point: a named (non-community) mesh with nothing else scores exactly the base 100.
BASE = {"name": "other"}


def test_base_score() -> None:
    assert score_mesh(mesh(**BASE), None) == 100


@pytest.mark.parametrize(
    ("name", "bonus"),
    [
        (None, 300),
        ("mesh-llm", 300),
        ("MESH-LLM", 300),
        ("Mesh-Llm", 300),
        ("bobs", 0),
        ("mesh-llm2", 0),
        ("", 0),
    ],
)
def test_name_term(name: str | None, bonus: int) -> None:
    assert score_mesh(mesh(name=name), None) == 100 + bonus


def test_sticky_term() -> None:
    assert score_mesh(mesh(**BASE, mesh_id="abc"), "abc") == 600
    assert score_mesh(mesh(**BASE, mesh_id="abc"), "ABC") == 100  # exact compare
    assert score_mesh(mesh(**BASE, mesh_id=None), "abc") == 100
    assert score_mesh(mesh(**BASE, mesh_id="abc"), None) == 100


@pytest.mark.parametrize(
    ("clients", "max_clients", "delta"),
    [
        (0, 0, 0),
        (50, 0, 0),
        (5, 5, -1000),
        (6, 5, -1000),
        (4, 5, 1),
        (0, 5, 5),
        (0, 20, 20),
        (0, 100, 20),
        (79, 100, 20),
        (85, 100, 15),
    ],
)
def test_capacity_term(clients: int, max_clients: int, delta: int) -> None:
    assert score_mesh(mesh(**BASE, client_count=clients, max_clients=max_clients), None) == 100 + delta


@pytest.mark.parametrize(("nodes", "delta"), [(0, 0), (1, 5), (3, 15), (10, 50), (11, 50), (500, 50)])
def test_node_term(nodes: int, delta: int) -> None:
    assert score_mesh(mesh(**BASE, node_count=nodes), None) == 100 + delta


def test_model_terms() -> None:
    assert score_mesh(mesh(**BASE, serving=["a", "b", "c"]), None) == 130
    assert score_mesh(mesh(**BASE, wanted=["a", "b"]), None) == 130
    assert score_mesh(mesh(**BASE, on_disk=["a", "b"]), None) == 100  # on_disk is not scored
    assert score_mesh(mesh(**BASE, region="EU", total_vram_bytes=10**12), None) == 100  # neither is region/VRAM


def test_all_terms_together() -> None:
    m = mesh(name=None, mesh_id="x", client_count=1, max_clients=4, node_count=3, serving=["a"], wanted=["b"])
    assert score_mesh(m, "x") == 100 + 300 + 500 + 3 + 15 + 10 + 15


def test_auto_eligibility() -> None:
    assert is_auto_eligible(mesh(name=None))
    assert is_auto_eligible(mesh(name="MESH-llm"))
    assert not is_auto_eligible(mesh(name="bobs-cluster"))


def test_smart_auto_only_eligible_without_target() -> None:
    meshes = [
        mesh("a", name="bobs", node_count=10),
        mesh("b", name=None),
        mesh("c", name="mesh-llm", node_count=2),
    ]
    d = smart_auto(meshes, None)
    assert [tok for tok, _ in d.join] == ["tok-c", "tok-b"]
    assert not d.start_new


def test_smart_auto_drops_non_positive_scores_without_target() -> None:
    full = mesh("full", name=None, client_count=5, max_clients=5)  # 100+300-1000 < 0
    d = smart_auto([full], None)
    assert d.join == () and d.start_new


def test_smart_auto_target_name_keeps_all_matches_even_negative() -> None:
    full = mesh("full", name="Team", client_count=5, max_clients=5)
    ok = mesh("ok", name="team", node_count=1)
    other = mesh("other", name=None)
    d = smart_auto([full, ok, other], "TEAM")
    assert [tok for tok, _ in d.join] == ["tok-ok", "tok-full"]


def test_smart_auto_stable_ties_and_sticky() -> None:
    meshes = [mesh(str(i), name=None, mesh_id=f"id{i}") for i in range(4)]
    assert [t for t, _ in smart_auto(meshes, None).join] == ["tok-0", "tok-1", "tok-2", "tok-3"]
    assert [t for t, _ in smart_auto(meshes, None, last_mesh_id="id2").join] == [
        "tok-2",
        "tok-0",
        "tok-1",
        "tok-3",
    ]


def test_rank_for_rediscovery() -> None:
    meshes = [
        mesh("named", name="bobs", node_count=10),  # not auto-eligible, still considered
        mesh("current", name=None, mesh_id="cur"),
        mesh("sticky", name="bobs", mesh_id="old"),
    ]
    ranked = rank_for_rediscovery(meshes, mesh_name=None, last_mesh_id="old", current_mesh_id="cur")
    assert [m.listing.invite_token for m in ranked] == ["tok-sticky", "tok-named"]
    ranked = rank_for_rediscovery(meshes, mesh_name="BOBS", last_mesh_id=None, current_mesh_id=None)
    assert [m.listing.invite_token for m in ranked] == ["tok-named", "tok-sticky"]


# ---------------------------------------------------------------------------------------------- §1.6


def drive(r: Rediscovery, peers_at: dict[float, int], until: float) -> list[float]:
    """Run the machine at each deadline until ``until``; peers_at maps a start time to a peer count."""
    fired: list[float] = []
    for _ in range(1000):
        t = r.deadline()
        if t > until:
            break
        count = 0
        for start in sorted(peers_at):
            if t >= start:
                count = peers_at[start]
        if r.check(t, count):
            fired.append(t)
            r.discovery_finished(t, joined=False)
    return fired


def test_rediscovery_first_check_and_grace() -> None:
    r = Rediscovery(started_at=0.0)
    assert r.deadline() == 60.0
    # alone from the start: checks at 60 (timer starts), 90, 120, 150 -> 90 s alone at 150
    assert drive(r, {0: 0}, until=150) == [150.0]


def test_rediscovery_failure_restarts_the_timer() -> None:
    r = Rediscovery(started_at=0.0)
    fired = drive(r, {0: 0}, until=400)
    # a failure at 150 restarts the timer at 150: checks 180 (30 s), 210 (60 s), 240 (90 s)
    assert fired == [150.0, 240.0, 330.0]


def test_rediscovery_peers_reset_timer() -> None:
    r = Rediscovery(started_at=0.0)
    assert drive(r, {0: 0, 100: 2, 130: 0}, until=300) == [240.0]


def test_rediscovery_success_clears_and_no_double_run() -> None:
    r = Rediscovery(started_at=0.0, initial_delay=0, check_interval=10, grace=20)
    assert not r.check(10, 0)
    assert not r.check(20, 0)
    assert r.check(30, 0)
    assert not r.check(40, 0)  # discovery still running
    r.discovery_finished(41, joined=True)
    assert r.alone_since is None and r.deadline() == 51
    assert not r.check(51, 0)


# ---------------------------------------------------------------------------------------------- §1.7


def test_last_mesh_file(tmp_path: Path) -> None:
    assert read_last_mesh_id(tmp_path) is None
    write_last_mesh_id(tmp_path / "s", "abc123")
    assert (tmp_path / "s" / "last-mesh").read_text() == "abc123"
    assert read_last_mesh_id(tmp_path / "s") == "abc123"
    (tmp_path / "s" / "last-mesh").write_text("  def\n")
    assert read_last_mesh_id(tmp_path / "s") == "def"
    (tmp_path / "s" / "last-mesh").write_text("\n")
    assert read_last_mesh_id(tmp_path / "s") is None
    with pytest.raises(ValueError):
        write_last_mesh_id(tmp_path, "a\nb")
