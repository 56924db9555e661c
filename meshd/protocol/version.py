"""Node versions on the mesh plane (MESH_PROTOCOL_076.md §1).

Two separate checks read a peer's announced ``version``:

* the **rebroadcast floor** of mesh-llm 0.76 (:func:`passes_version_floor`): peers announcing
  ``major.minor`` below 0.60 are not admitted, not relayed and not dialled. It is deliberately
  lenient: a missing, blank or unparseable version passes;
* the **version bounds** of a gated mesh, which use real semver
  (:func:`meshd.protocol.semver.parse_node_version`, :mod:`meshd.protocol.requirements`).

meshd announces :data:`ANNOUNCED_VERSION`, ``0.76.0+meshd.<meshd version>``: it passes the floor,
parses as semver, and its build metadata is ignored by bounds comparisons (§1.4). A pre-release
suffix such as ``0.76.0-meshd`` would rank *below* 0.76.0 and fail a gated ``min = "0.76.0"``.
"""

from __future__ import annotations

from typing import Final

from meshd import __version__ as MESHD_VERSION
from meshd.protocol.semver import rust_trim

__all__ = [
    "ANNOUNCED_VERSION",
    "MESH_LLM_COMPAT_VERSION",
    "MIN_VERSION_MAJOR",
    "MIN_VERSION_MINOR",
    "announced_version",
    "passes_version_floor",
]

#: mesh-llm release whose wire protocol meshd speaks.
MESH_LLM_COMPAT_VERSION: Final = "0.76.0"
#: ``MIN_REBROADCAST_VERSION_MAJOR`` / ``_MINOR`` of mesh-llm 0.76 (``gossip.rs:39-40``).
MIN_VERSION_MAJOR: Final = 0
MIN_VERSION_MINOR: Final = 60

_U64_MAX = 2**64 - 1
_DIGITS = frozenset("0123456789")


def announced_version(meshd_version: str = MESHD_VERSION) -> str:
    """The ``version`` meshd puts in its gossip self entry and its status: ``0.76.0+meshd.X``.

    Characters that semver does not allow in build metadata (anything but ASCII letters, digits,
    ``-`` and ``.``-separated non-empty parts) are replaced by ``-`` so the result always parses.
    """
    parts = []
    for part in meshd_version.split("."):
        cleaned = "".join(c if c.isascii() and (c.isalnum() or c == "-") else "-" for c in part)
        parts.append(cleaned or "0")
    return f"{MESH_LLM_COMPAT_VERSION}+meshd.{'.'.join(parts)}"


#: What meshd announces, e.g. ``0.76.0+meshd.0.1.0``.
ANNOUNCED_VERSION: Final = announced_version()


def _parse_u64(text: str) -> int | None:
    # Rust's ``str::parse::<u64>``: ASCII digits (an optional leading '+' cannot survive the
    # split on '+' below), no whitespace, no underscores, at most u64::MAX.
    if not text or not set(text) <= _DIGITS:
        return None
    value = int(text)
    return value if value <= _U64_MAX else None


def passes_version_floor(version: str | None) -> bool:
    """mesh-llm 0.76's ``version_allowed_for_rebroadcast`` (``gossip.rs:128-158``), exactly.

    ``None``, blank and unparseable versions pass. Otherwise the text is trimmed, cut at the first
    ``+`` and then at the first ``-``, and ``major.minor`` is compared with 0.60. This is not
    semver: ``"0.59.9"`` fails, ``"0.76.0-rc6"`` and ``"1.0"`` pass, ``"meshd-0.2"`` passes.
    """
    if version is None:
        return True
    trimmed = rust_trim(version)
    if not trimmed:
        return True
    core = trimmed.split("+", 1)[0].split("-", 1)[0]
    parts = core.split(".")
    major = _parse_u64(parts[0])
    if major is None:
        return True
    minor = _parse_u64(parts[1]) if len(parts) > 1 else None
    if minor is None:
        return True
    if major != MIN_VERSION_MAJOR:
        return major > MIN_VERSION_MAJOR
    return minor >= MIN_VERSION_MINOR
