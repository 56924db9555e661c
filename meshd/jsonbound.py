"""Bounded JSON decoding for everything meshd reads from outside (pure; no I/O).

Python's ``json.loads`` has three failure modes an attacker can reach: nesting deep enough to raise
``RecursionError`` (which ``except ValueError`` does not catch: one signed Nostr listing 5,000 levels
deep used to stop ``--auto`` discovery), integers long enough that ``int()`` refuses them (or, below
the interpreter's 4,300-digit guard, costs quadratic time), and inputs of any size. :func:`loads` puts
a bound on each and raises one error type, :class:`BadJSON` (a ``ValueError``), for every way the
input can be wrong: not UTF-8, too large, too deep, a number too long or out of range, ``NaN`` or
``Infinity``, or not JSON at all.

Bounds:

* ``max_bytes`` — required at every call site: the size of the encoded input.
* ``max_depth`` — arrays and objects nested at most :data:`MAX_DEPTH` (127) deep, serde_json's limit
  (what mesh-llm itself accepts). The depth is measured on the raw bytes before anything is decoded,
  in time linear in the input, so a deep input never reaches the recursive decoder.
* ``max_number_chars`` — one number literal (sign, digits, fraction, exponent) at most
  :data:`MAX_NUMBER_CHARS` (100) characters; a float that overflows to infinity (``1e999``) is refused,
  as serde_json refuses it.

The input is read strictly as UTF-8 (no BOM, no UTF-16 guessing); duplicate object keys keep the
last value unless ``object_pairs_hook`` says otherwise.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from itertools import accumulate
from typing import Any, Final, NoReturn

__all__ = ["MAX_DEPTH", "MAX_NUMBER_CHARS", "BadJSON", "depth_exceeds", "json_type", "loads"]

#: Deepest nesting of arrays/objects accepted (serde_json's default recursion limit is 128 levels).
MAX_DEPTH: Final = 127
#: Longest number literal accepted, in characters (a u64 has 20 digits, an f64 needs at most 24).
MAX_NUMBER_CHARS: Final = 100

_ESCAPE = re.compile(rb"\\.", re.DOTALL)
# Keep only the four bracket bytes, with both kinds of opener mapped to "[" and closers to "]".
_KEEP = b"[]{}"
_DELETE = bytes(b for b in range(256) if b not in _KEEP)
_TO_SQUARE = bytes.maketrans(b"{}", b"[]")
_STEP = tuple(1 if b == ord("[") else -1 for b in range(256))
_SLICE = 64 * 1024
_COLLAPSE_PASSES = 4


class BadJSON(ValueError):
    """Outside JSON that meshd refuses; ``reason`` says why in a few words (safe to log or return)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def depth_exceeds(raw: bytes, limit: int) -> bool:
    """Whether arrays/objects in ``raw`` nest deeper than ``limit`` (linear time, no recursion).

    Brackets inside strings do not count. On malformed input the answer is about the prefix a JSON
    parser would read before failing, which is all that matters: the parser stops there.
    """
    if b"\\" in raw:
        raw = _ESCAPE.sub(b"", raw)  # every escape is two bytes here ("\u" leaves 4 hex digits, harmless)
    outside = b"".join(raw.split(b'"')[::2]) if b'"' in raw else raw
    brackets = outside.translate(_TO_SQUARE, _DELETE)
    # Each pass that removes the innermost "[]" pairs lowers the deepest point by exactly one level
    # (and collapses the flat lists real documents are made of) at C speed.
    for _ in range(_COLLAPSE_PASSES):
        if brackets.count(b"[") <= limit:
            return False
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            break
        brackets, limit = shorter, limit - 1
    if brackets.count(b"[") <= limit:
        return False
    if b"[" * (limit + 1) in brackets:
        return True
    depth = 0
    for start in range(0, len(brackets), _SLICE):  # slices, so a deep prefix is found early
        piece = brackets[start : start + _SLICE]
        if max(accumulate(map(_STEP.__getitem__, piece), initial=depth)) > limit:
            return True
        depth += 2 * piece.count(b"[") - len(piece)
    return False


def json_type(value: Any) -> str:
    """How a decoded JSON value's type is named in error messages ("a string", "an array", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _reject_constant(name: str) -> NoReturn:
    raise BadJSON(f"{name} is not JSON")


def loads(
    data: bytes | bytearray | memoryview | str,
    *,
    max_bytes: int,
    max_depth: int = MAX_DEPTH,
    max_number_chars: int = MAX_NUMBER_CHARS,
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
) -> Any:
    """Decode one JSON document within the bounds above; raises :class:`BadJSON`."""
    if isinstance(data, str):
        if len(data) > max_bytes:  # each character is at least one byte
            raise BadJSON(f"JSON larger than {max_bytes} bytes")
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError:
            raise BadJSON("JSON text is not valid Unicode (lone surrogate)") from None
    else:
        raw = bytes(data)
    if len(raw) > max_bytes:
        raise BadJSON(f"JSON larger than {max_bytes} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadJSON(f"JSON is not UTF-8 (byte {e.start})") from None
    if depth_exceeds(raw, max_depth):
        raise BadJSON(f"JSON nested deeper than {max_depth} levels")

    def parse_int(literal: str) -> int:
        if len(literal) > max_number_chars:
            raise BadJSON(f"a number longer than {max_number_chars} characters")
        return int(literal)

    def parse_float(literal: str) -> float:
        if len(literal) > max_number_chars:
            raise BadJSON(f"a number longer than {max_number_chars} characters")
        value = float(literal)
        if not math.isfinite(value):
            raise BadJSON("a number out of range")
        return value

    try:
        return json.loads(
            text,
            parse_int=parse_int,
            parse_float=parse_float,
            parse_constant=_reject_constant,
            object_pairs_hook=object_pairs_hook,
        )
    except BadJSON:
        raise
    except RecursionError:  # not reachable within MAX_DEPTH; kept so no caller ever sees one
        raise BadJSON(f"JSON nested deeper than {max_depth} levels") from None
    except ValueError as e:
        raise BadJSON(f"not JSON: {e}") from None
