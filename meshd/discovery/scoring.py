"""``--auto`` mesh selection (MESH_PROTOCOL.md §1.5, HEAD rules), re-discovery (§1.6), sticky file (§1.7).

Pure functions plus a sans-IO state machine; the two file helpers touch only ``<state-dir>/last-mesh``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import attrs

from meshd.discovery.listing import DiscoveredMesh, ascii_casefold_equal

__all__ = [
    "COMMUNITY_MESH_NAME",
    "LAST_MESH_FILE",
    "AutoDecision",
    "Rediscovery",
    "is_auto_eligible",
    "rank_for_rediscovery",
    "read_last_mesh_id",
    "score_mesh",
    "smart_auto",
    "write_last_mesh_id",
]

COMMUNITY_MESH_NAME = "mesh-llm"
LAST_MESH_FILE = "last-mesh"


def is_auto_eligible(mesh: DiscoveredMesh) -> bool:
    """Unnamed, or named ``mesh-llm`` (ASCII case-insensitive)."""
    name = mesh.listing.name
    return name is None or ascii_casefold_equal(name, COMMUNITY_MESH_NAME)


def score_mesh(mesh: DiscoveredMesh, last_mesh_id: str | None) -> int:
    """HEAD ``score_mesh``: base 100; +300 community name; +500 sticky; capacity; nodes; models."""
    listing = mesh.listing
    score = 100
    if is_auto_eligible(mesh):
        score += 300
    if last_mesh_id is not None and listing.mesh_id is not None and last_mesh_id == listing.mesh_id:
        score += 500
    if listing.max_clients > 0:
        if listing.client_count >= listing.max_clients:
            score -= 1000
        else:
            score += min(listing.max_clients - listing.client_count, 20)
    score += min(listing.node_count, 10) * 5
    score += len(listing.serving) * 10
    score += len(listing.wanted) * 15
    return score


@attrs.frozen
class AutoDecision:
    """``join`` is the ranked list (best first) of ``(invite_token, mesh)``; empty means StartNew
    (a client retries discovery every 15 s, 20 times)."""

    join: tuple[tuple[str, DiscoveredMesh], ...]

    @property
    def start_new(self) -> bool:
        return not self.join


def smart_auto(
    meshes: Sequence[DiscoveredMesh], target_name: str | None, last_mesh_id: str | None = None
) -> AutoDecision:
    """HEAD ``smart_auto``: candidates = name matches (if ``target_name``) else auto-eligible; stable sort
    by score descending; viable = all candidates if ``target_name`` else only score > 0."""
    if target_name is not None:
        candidates = [
            m for m in meshes if m.listing.name is not None and ascii_casefold_equal(m.listing.name, target_name)
        ]
    else:
        candidates = [m for m in meshes if is_auto_eligible(m)]
    scored = [(m, score_mesh(m, last_mesh_id)) for m in candidates]
    scored.sort(key=lambda pair: pair[1], reverse=True)  # stable: ties keep discover order
    viable = tuple((m.listing.invite_token, m) for m, score in scored if target_name is not None or score > 0)
    return AutoDecision(join=viable)


def rank_for_rediscovery(
    meshes: Sequence[DiscoveredMesh],
    *,
    mesh_name: str | None,
    last_mesh_id: str | None,
    current_mesh_id: str | None,
) -> list[DiscoveredMesh]:
    """§1.6 ranking: optional name filter (no auto-eligibility filter), score with the sticky id,
    stable sort descending, skip listings carrying our current mesh id."""
    if mesh_name is not None:
        meshes = [m for m in meshes if m.listing.name is not None and ascii_casefold_equal(m.listing.name, mesh_name)]
    ranked = sorted(meshes, key=lambda m: score_mesh(m, last_mesh_id), reverse=True)
    return [
        m
        for m in ranked
        if not (current_mesh_id is not None and m.listing.mesh_id is not None and m.listing.mesh_id == current_mesh_id)
    ]


@attrs.define
class Rediscovery:
    """Sans-IO §1.6 timer. Checks start ``initial_delay + check_interval`` after ``started_at`` and
    repeat every ``check_interval``; once the node has had 0 peers for at least ``grace`` seconds a
    check returns True ("run discovery now"). The caller reports the outcome with :meth:`discovery_finished`.

    Drive it with ``deadline()`` (absolute time of the next check) and ``check(now, peer_count)``.
    """

    started_at: float
    initial_delay: float = 30.0
    check_interval: float = 30.0
    grace: float = 90.0
    alone_since: float | None = None
    running: bool = False
    _next_check: float | None = None

    def deadline(self) -> float:
        if self._next_check is None:
            self._next_check = self.started_at + self.initial_delay + self.check_interval
        return self._next_check

    def check(self, now: float, peer_count: int) -> bool:
        """One periodic check. Returns True when discovery should run now."""
        self._next_check = max(self.deadline(), now) + self.check_interval
        if self.running:
            return False
        if peer_count > 0:
            self.alone_since = None
            return False
        if self.alone_since is None:
            self.alone_since = now
        if now - self.alone_since < self.grace:
            return False
        self.running = True
        return True

    def discovery_finished(self, now: float, joined: bool) -> None:
        """Joined → clear the alone timer; failed (error, nothing found, every join failed) → restart it."""
        self.running = False
        self.alone_since = None if joined else now
        self._next_check = now + self.check_interval


def read_last_mesh_id(state_dir: Path | str) -> str | None:
    """Contents of ``<state_dir>/last-mesh`` trimmed; ``None`` if missing, empty or unreadable."""
    try:
        text = (Path(state_dir) / LAST_MESH_FILE).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def write_last_mesh_id(state_dir: Path | str, mesh_id: str) -> None:
    """Atomically replace ``<state_dir>/last-mesh`` with ``mesh_id``."""
    if not mesh_id or "\n" in mesh_id:
        raise ValueError("mesh_id must be a non-empty single line")
    directory = Path(state_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / LAST_MESH_FILE
    tmp = directory / f".{LAST_MESH_FILE}.{os.getpid()}.tmp"
    tmp.write_text(mesh_id, encoding="utf-8")
    os.replace(tmp, path)
