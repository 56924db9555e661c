"""Pure body of the console route ``GET /api/discover`` (the lead wires it into Klein).

Query parameters: ``model`` (case-insensitive substring of serving/wanted/on_disk), ``min_vram`` (GB, a
finite float >= 0), ``region`` (case-insensitive). Each element is the §1.4 ``DiscoveredMesh`` JSON plus
``"score"`` (HEAD ``score_mesh`` with the sticky last-mesh id). Order is discovery order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from meshd.discovery.listing import DiscoveredMesh, MeshFilter
from meshd.discovery.scoring import score_mesh

__all__ = ["MAX_QUERY_VALUE_LENGTH", "discover_api", "parse_discover_query"]

MAX_QUERY_VALUE_LENGTH = 256

QueryArgs = Mapping[Any, Any]


def _text(value: object) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError("query parameter is not valid UTF-8") from e
    if isinstance(value, str):
        return value
    raise ValueError(f"unsupported query value {value!r}")


def _single(args: QueryArgs, name: str) -> str | None:
    """One value for ``name`` from ``{str|bytes: str|bytes|list}`` (Klein gives bytes lists)."""
    raw = args.get(name, args.get(name.encode()))
    if raw is None:
        return None
    values = [_text(v) for v in raw] if isinstance(raw, list | tuple) else [_text(raw)]
    if not values:
        return None
    if len(set(values)) > 1:
        raise ValueError(f"query parameter {name!r} given more than once")
    value = values[0].strip()
    if len(value) > MAX_QUERY_VALUE_LENGTH:
        raise ValueError(f"query parameter {name!r} is longer than {MAX_QUERY_VALUE_LENGTH} chars")
    return value or None


def parse_discover_query(args: QueryArgs) -> MeshFilter:
    """Build the filter; raise ``ValueError`` with a clear message on a bad value."""
    model = _single(args, "model")
    region = _single(args, "region")
    min_vram_text = _single(args, "min_vram")
    min_vram: float | None = None
    if min_vram_text is not None:
        try:
            min_vram = float(min_vram_text)
        except ValueError:
            raise ValueError(f"min_vram must be a number of GB, got {min_vram_text!r}") from None
        if not math.isfinite(min_vram) or min_vram < 0:
            raise ValueError(f"min_vram must be a finite number >= 0, got {min_vram_text!r}")
    return MeshFilter(model=model, min_vram_gb=min_vram, region=region)


def discover_api(meshes: Sequence[DiscoveredMesh], args: QueryArgs, last_mesh_id: str | None) -> list[dict[str, Any]]:
    """The JSON list for ``GET /api/discover``."""
    mesh_filter = parse_discover_query(args)
    out: list[dict[str, Any]] = []
    for mesh in meshes:
        if not mesh_filter.matches(mesh.listing):
            continue
        item = mesh.to_json()
        item["score"] = score_mesh(mesh, last_mesh_id)
        out.append(item)
    return out
