"""Terminal output for the sub-commands: text from outside made safe to print, and human units. Pure."""

from __future__ import annotations

import math
import sys
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from twisted.python import usage

__all__ = [
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "MAX_FIELD_CHARS",
    "CommandOptions",
    "ago",
    "as_dict",
    "as_list",
    "as_number",
    "clean",
    "duration",
    "gigabytes",
    "parse_command_line",
    "port_option",
]

EXIT_FAILURE = 1
EXIT_USAGE = 2


def port_option(value: str, flag: str) -> int:
    """A port flag's value (0-65535); a bad one is a usage error naming ``flag``."""
    try:
        port = int(value)
    except ValueError:
        raise usage.UsageError(f"{flag} must be a port number, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise usage.UsageError(f"{flag} must be between 0 and 65535, got {port}")
    return port


#: Longest value printed from outside input (a Nostr listing, a console's JSON); longer ones end in "…".
MAX_FIELD_CHARS = 300

# Unicode general categories that must never reach a terminal raw: controls (ESC starts terminal escape
# sequences; C1 controls such as CSI act the same on some terminals), format characters (bidi overrides
# reorder what follows), surrogates, private-use and unassigned code points.
_UNSAFE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})


def clean(value: object, limit: int = MAX_FIELD_CHARS) -> str:
    """``value`` as one printable line: unsafe characters become ``\\xNN``/``\\uNNNN``, at most ``limit`` chars."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[: max(limit - 1, 0)] + "…"
    out: list[str] = []
    for ch in text:
        if unicodedata.category(ch) in _UNSAFE:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def as_dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def as_list(value: object) -> Sequence[Any]:
    return value if isinstance(value, list) else []


def as_number(value: object) -> float | None:
    """A finite JSON number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def duration(seconds: object) -> str:
    """``3 s``, ``4 min 2 s``, ``2 h 5 min``, ``3 d 4 h``; ``?`` for anything that is not a number >= 0."""
    value = as_number(seconds)
    if value is None or value < 0:
        return "?"
    s = int(value)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def ago(then: object, now: float) -> str:
    """``12 s ago`` / ``in 40 s`` for a unix time ``then``."""
    value = as_number(then)
    if value is None:
        return "?"
    delta = now - value
    return f"{duration(delta)} ago" if delta >= 0 else f"in {duration(-delta)}"


def gigabytes(n_bytes: object) -> str:
    value = as_number(n_bytes)
    if value is None or value < 0:
        return "?"
    return f"{value / 1e9:.1f} GB"


class CommandOptions(usage.Options):
    """Options of a sub-command: ``--version`` is meshd's (usage.Options' own prints Twisted's)."""

    def opt_version(self) -> None:
        """Print meshd's version and exit."""
        from meshd import __version__

        sys.stdout.write(f"meshd {__version__}\n")
        raise SystemExit(0)


_O = TypeVar("_O", bound=usage.Options)


def parse_command_line(factory: Callable[[], _O], command: str, argv: Sequence[str]) -> _O | int:
    """Parse ``argv`` with ``factory()``. Returns the options, or an exit code: 0 after ``--help`` printed
    the help, 2 after a one-line error (the daemon's own flags behave the same)."""
    options = factory()
    try:
        options.parseOptions(list(argv))
    except usage.UsageError as e:
        sys.stderr.write(f"meshd {command}: error: {e}\n(meshd {command} --help lists the options)\n")
        return EXIT_USAGE
    except SystemExit as e:  # usage.Options' --help prints the help, then exits 0
        return e.code if isinstance(e.code, int) else 0
    return options
