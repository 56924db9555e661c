"""Versions: mesh-llm 0.76's rebroadcast floor (MESH_PROTOCOL_076.md §1.2), Rust-semver parsing for
gated-mesh bounds, and the version meshd announces (§1.4)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd import __version__
from meshd.protocol.requirements import MeshRequirements, NodeVersionBounds, RequirementError
from meshd.protocol.semver import SemVer, SemVerError, parse_node_version, parse_semver, precedence_key, rust_trim
from meshd.protocol.version import ANNOUNCED_VERSION, announced_version, passes_version_floor


@pytest.mark.parametrize(
    ("version", "passes"),
    [
        # the examples of §1.2
        ("0.76.0", True),
        ("0.76.0-rc6", True),
        ("0.76.0+meshd.0.2.0", True),
        ("1.0.0", True),
        ("0.59.9", False),
        ("meshd-0.2", True),
        (None, True),
        # more edges of the same rule
        ("", True),
        ("   ", True),
        ("0.60", True),
        ("0.60.0", True),
        ("0.59", False),
        (" 0.59.0 ", False),  # trimmed first
        ("0.59.0+x", False),
        ("0.59-rc.1", False),
        ("0", True),  # no minor: unparseable, accepted
        ("0.", True),
        ("0.x", True),
        ("x.1", True),
        ("00.59", False),  # Rust's u64 parse accepts leading zeros
        ("0.059", False),
        ("0.18446744073709551616", True),  # minor overflows u64: unparseable, accepted
        ("0.18446744073709551615", True),
        ("0.5_9", True),  # Python's int() would accept the underscore; Rust's parse does not
        ("0.\u0665\u0669", True),  # Arabic-Indic digits: int() accepts them, Rust does not
        ("0.59\u00a0", False),  # NBSP is Unicode White_Space: Rust's trim removes it
        ("2.0.0", True),
        ("+0.59", True),  # the core before '+' is empty: unparseable, accepted
        ("-0.59", True),
    ],
)
def test_version_floor(version: str | None, passes: bool) -> None:
    assert passes_version_floor(version) is passes


@settings(max_examples=500)
@given(st.text(max_size=40))
def test_version_floor_never_raises(text: str) -> None:
    assert passes_version_floor(text) in (True, False)


@settings(max_examples=300)
@given(major=st.integers(0, 3), minor=st.integers(0, 200), rest=st.sampled_from(["", ".0", ".9-rc1", "+b.1", ".1.2"]))
def test_version_floor_compares_major_minor_only(major: int, minor: int, rest: str) -> None:
    assert passes_version_floor(f"{major}.{minor}{rest}") is (major > 0 or minor >= 60)


def test_announced_version() -> None:
    assert ANNOUNCED_VERSION == f"0.76.0+meshd.{__version__}"
    assert passes_version_floor(ANNOUNCED_VERSION)
    parsed = parse_node_version(ANNOUNCED_VERSION)
    assert (parsed.major, parsed.minor, parsed.patch, parsed.pre) == (0, 76, 0, ())
    # build metadata does not count: meshd passes a gated mesh's min = max = 0.76.0
    MeshRequirements(NodeVersionBounds("0.76.0", "0.76.0")).evaluate(
        node_version=ANNOUNCED_VERSION, protocol_generation=1
    )
    # ... where a pre-release suffix would not
    with pytest.raises(RequirementError) as info:
        MeshRequirements(NodeVersionBounds("0.76.0")).evaluate(node_version="0.76.0-meshd", protocol_generation=1)
    assert info.value.code == "node_version_below_minimum"


@pytest.mark.parametrize(
    ("meshd_version", "announced"),
    [
        ("0.1.0", "0.76.0+meshd.0.1.0"),
        ("1.2.dev3", "0.76.0+meshd.1.2.dev3"),
        ("1.0+local/x", "0.76.0+meshd.1.0-local-x"),
    ],
)
def test_announced_version_is_always_semver(meshd_version: str, announced: str) -> None:
    assert announced_version(meshd_version) == announced
    parse_semver(announced)


@settings(max_examples=300)
@given(st.text(max_size=20))
def test_announced_version_parses_for_any_meshd_version(text: str) -> None:
    version = announced_version(text)
    assert passes_version_floor(version)
    assert precedence_key(parse_semver(version)) == precedence_key(parse_semver("0.76.0"))


# ---- semver as Rust's `semver` crate ----


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.65.0", SemVer(0, 65, 0)),
        ("1.2.3-rc.1+build.5", SemVer(1, 2, 3, ("rc", "1"), ("build", "5"))),
        ("1.2.3-rc-1", SemVer(1, 2, 3, ("rc-1",))),
        ("1.2.3+001", SemVer(1, 2, 3, (), ("001",))),  # leading zeros are fine in build metadata
        ("1.2.3-0a", SemVer(1, 2, 3, ("0a",))),  # ... and in alphanumeric pre-release identifiers
        ("18446744073709551615.0.0", SemVer(2**64 - 1, 0, 0)),
    ],
)
def test_semver_accepts(text: str, expected: SemVer) -> None:
    assert parse_semver(text) == expected
    assert str(parse_semver(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1",
        "1.2",
        "1.2.3.4",
        "01.2.3",
        "1.02.3",
        "1.2.03",
        "1.2.3-01",
        "1.2.3-",
        "1.2.3+",
        "1.2.3-a..b",
        "1.2.3+a+b",
        "1.2.3-a_b",
        " 1.2.3",
        "v1.2.3",
        "18446744073709551616.0.0",
        "1.2.\u0663",
        "1.2.3-é",
    ],
)
def test_semver_rejects(text: str) -> None:
    with pytest.raises(SemVerError):
        parse_semver(text)


def test_node_version_strips_whitespace_and_one_v() -> None:
    assert parse_node_version("  v0.76.0\n") == SemVer(0, 76, 0)
    assert parse_node_version("V1.0.0") == SemVer(1, 0, 0)
    with pytest.raises(SemVerError):
        parse_node_version("vv1.0.0")
    with pytest.raises(SemVerError):
        parse_node_version(" \u3000 ")


def test_precedence_follows_the_spec() -> None:
    # semver.org §11's example chain
    chain = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1",
        "1.1.0",
        "2.0.0",
    ]
    keys = [precedence_key(parse_semver(v)) for v in chain]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    assert precedence_key(parse_semver("1.0.0+a")) == precedence_key(parse_semver("1.0.0+b"))


def test_rust_trim_is_not_python_strip() -> None:
    assert rust_trim("\x1c a \x1f") == "\x1c a \x1f"  # Python's strip() would remove these
    assert rust_trim("\u2028\u3000a\u0085") == "a"
    assert rust_trim("\u200b a") == "\u200b a"  # zero-width space is not White_Space
