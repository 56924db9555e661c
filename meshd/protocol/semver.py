"""Semantic versions as Rust's ``semver`` crate (1.0.x) parses, prints and orders them.

mesh-llm 0.76 uses real semver for the node-version bounds of a gated mesh and prints the parsed
bounds into the genesis policy's canonical bytes (MESH_PROTOCOL_076.md §1.2, §5.2), so the rules
must be the crate's, not a lenient parser's:

* ``MAJOR.MINOR.PATCH``, each a decimal ``u64`` without leading zeros (``0`` alone is fine);
* optional ``-PRE`` and then ``+BUILD``: dot-separated, non-empty identifiers of ASCII letters,
  digits and ``-``; an all-digit pre-release identifier may not have a leading zero (build
  identifiers may);
* nothing else: no whitespace, no ``v`` prefix (mesh-llm strips those itself, see
  :func:`parse_node_version`).

Ordering follows the semver spec (a pre-release sorts below its release; numeric identifiers
compare numerically and below alphanumeric ones; a longer identifier list wins ties).
:func:`precedence_key` ignores build metadata, like mesh-llm's ``version_precedence_cmp``.
"""

from __future__ import annotations

import attrs

__all__ = [
    "RUST_WHITESPACE",
    "SemVer",
    "SemVerError",
    "parse_node_version",
    "parse_semver",
    "precedence_key",
    "rust_trim",
]

_U64_MAX = 2**64 - 1
_IDENT_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_DIGITS = frozenset("0123456789")

#: Characters Rust's ``str::trim`` removes: the Unicode ``White_Space`` property. (Python's
#: ``str.strip()`` differs: it also strips U+001C..U+001F.)
RUST_WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


def rust_trim(text: str) -> str:
    """``str::trim`` of Rust: strip leading and trailing Unicode ``White_Space``."""
    start, end = 0, len(text)
    while start < end and text[start] in RUST_WHITESPACE:
        start += 1
    while end > start and text[end - 1] in RUST_WHITESPACE:
        end -= 1
    return text[start:end]


class SemVerError(ValueError):
    """Text that Rust's ``semver::Version::parse`` rejects."""


@attrs.frozen
class SemVer:
    major: int
    minor: int
    patch: int
    pre: tuple[str, ...] = ()
    build: tuple[str, ...] = ()

    def __str__(self) -> str:
        """``Version`` Display: the canonical text, as it goes into canonical policy bytes."""
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.pre:
            text += "-" + ".".join(self.pre)
        if self.build:
            text += "+" + ".".join(self.build)
        return text


def _numeric(text: str, what: str) -> int:
    if not text:
        raise SemVerError(f"empty {what} version number")
    if not set(text) <= _DIGITS:
        raise SemVerError(f"unexpected character in {what} version number")
    if len(text) > 1 and text[0] == "0":
        raise SemVerError(f"invalid leading zero in {what} version number")
    value = int(text)
    if value > _U64_MAX:
        raise SemVerError(f"value of {what} version number exceeds u64")
    return value


def _identifiers(text: str, what: str) -> tuple[str, ...]:
    parts = tuple(text.split("."))
    for part in parts:
        if not part:
            raise SemVerError(f"empty identifier segment in {what}")
        if not set(part) <= _IDENT_CHARS:
            raise SemVerError(f"unexpected character in {what}")
        if what == "pre-release" and len(part) > 1 and part[0] == "0" and set(part) <= _DIGITS:
            raise SemVerError("invalid leading zero in pre-release identifier")
    return parts


def parse_semver(text: str) -> SemVer:
    """Rust's ``semver::Version::parse``; raises :class:`SemVerError` on what the crate rejects."""
    if not text:
        raise SemVerError("empty string, expected a semver version")
    core, plus, build_text = text.partition("+")
    core, dash, pre_text = core.partition("-")
    fields = core.split(".")
    if len(fields) != 3:
        raise SemVerError(f"expected MAJOR.MINOR.PATCH, got {core!r}")
    major = _numeric(fields[0], "major")
    minor = _numeric(fields[1], "minor")
    patch = _numeric(fields[2], "patch")
    pre = _identifiers(pre_text, "pre-release") if dash else ()
    build = _identifiers(build_text, "build metadata") if plus else ()
    return SemVer(major, minor, patch, pre, build)


def parse_node_version(raw: str) -> SemVer:
    """mesh-llm's ``parse_node_version``: trim, strip one leading ``v``/``V``, then semver."""
    text = rust_trim(raw)
    if not text:
        raise SemVerError("empty node version")
    if text[0] in "vV":
        text = text[1:]
    return parse_semver(text)


def _pre_key(pre: tuple[str, ...]) -> tuple[object, ...]:
    # A release (no pre-release) sorts above every pre-release of the same core version.
    if not pre:
        return (1,)
    idents = tuple((0, int(p), "") if set(p) <= _DIGITS else (1, 0, p) for p in pre)
    return (0, idents)


def precedence_key(version: SemVer) -> tuple[object, ...]:
    """Sort key for semver precedence; build metadata is ignored."""
    return (version.major, version.minor, version.patch, _pre_key(version.pre))
