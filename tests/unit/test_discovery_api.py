"""GET /api/discover body: filters from query params, score added, clear errors."""

from __future__ import annotations

import pytest

from meshd.discovery.api import discover_api, parse_discover_query
from meshd.discovery.listing import DiscoveredMesh, MeshFilter, MeshListing


def mesh(tag: str, **kw: object) -> DiscoveredMesh:
    fields: dict = {"invite_token": f"t-{tag}", "serving": [], "total_vram_bytes": 0, "node_count": 1}
    fields.update(kw)
    return DiscoveredMesh(listing=MeshListing(**fields), publisher_npub=f"npub-{tag}", published_at=5, expires_at=9)


MESHES = [
    mesh("a", serving=["Qwen3-8B"], total_vram_bytes=48_000_000_000, region="EU", mesh_id="ma"),
    mesh("b", on_disk=["GLM-4"], total_vram_bytes=8_000_000_000, name="bobs"),
]


def test_no_params_returns_all_with_scores() -> None:
    out = discover_api(MESHES, {}, "ma")
    assert [m["publisher_npub"] for m in out] == ["npub-a", "npub-b"]
    assert out[0]["score"] == 100 + 300 + 500 + 5 + 10
    assert out[1]["score"] == 100 + 5
    assert list(out[0]) == ["listing", "publisher_npub", "published_at", "expires_at", "score"]


def test_klein_style_bytes_args() -> None:
    out = discover_api(MESHES, {b"model": [b"glm"], b"min_vram": [b"8"]}, None)
    assert [m["publisher_npub"] for m in out] == ["npub-b"]
    out = discover_api(MESHES, {"region": "eu", "min_vram": "47.9"}, None)
    assert [m["publisher_npub"] for m in out] == ["npub-a"]
    assert discover_api(MESHES, {"min_vram": ["48.1"]}, None) == []


def test_parse_query() -> None:
    assert parse_discover_query({}) == MeshFilter()
    assert parse_discover_query({"model": "  ", "region": ""}) == MeshFilter()
    assert parse_discover_query({"min_vram": "0"}) == MeshFilter(min_vram_gb=0.0)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"min_vram": "lots"}, "min_vram must be a number"),
        ({"min_vram": "-1"}, ">= 0"),
        ({"min_vram": "nan"}, "finite"),
        ({"min_vram": "inf"}, "finite"),
        ({"model": ["a", "b"]}, "more than once"),
        ({"model": "x" * 300}, "longer than"),
        ({b"region": [b"\xff"]}, "UTF-8"),
    ],
)
def test_bad_query_values(args: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        discover_api(MESHES, args, None)
