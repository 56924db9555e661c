"""Log output: twisted.logger events as text lines or JSON lines (``--log-format``), at ``--log-level``.

JSON: each line is one JSON object: ``ts`` (ISO 8601 UTC), ``level``, ``event`` (the ``event`` field a
call site gave, else ``log``), ``ns`` (the logger namespace), ``msg`` (the formatted text) and every
other field the call site passed. Values JSON cannot hold are written as their ``repr``.

Both formats drop events below the chosen level (default ``info``). Twisted's own chatter that tells a
user nothing (a connection factory starting and stopping for every HTTP request, reconnect schedules)
counts as ``debug``.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogLevel,
    PredicateResult,
    formatEvent,
    textFileLogObserver,
)
from zope.interface import implementer

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}
#: Messages (by the start of their format) that are noise at the default level.
_CHATTER = ("Starting factory", "Stopping factory", "Scheduling retry", "Starting protocol", "Stopping protocol")
_level = LogLevel.info


def set_level(name: str) -> None:
    """The lowest level written (``--log-level``); set before twistd builds its observer."""
    global _level
    _level = LEVELS[name]


def effective_level(event: dict[str, Any]) -> LogLevel:
    level = event.get("log_level", LogLevel.info)
    fmt = event.get("log_format")
    if event.get("log_namespace") == "log_legacy" and "log_text" in event:  # twisted.python.log.msg lines
        fmt = event["log_text"]
    if isinstance(fmt, str) and fmt.startswith(_CHATTER) and level is LogLevel.info:
        return LogLevel.debug
    return level if isinstance(level, type(LogLevel.info)) else LogLevel.info


@implementer(ILogFilterPredicate)
class _Wanted:
    """Events at or above the chosen level (chatter counting as debug)."""

    def __call__(self, event: dict[str, Any]) -> PredicateResult:
        return PredicateResult.yes if effective_level(event) >= _level else PredicateResult.no


wanted = _Wanted()

_SKIP = {"format", "time", "system", "isError", "message", "why", "failure", "printed"}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def event_as_json(event: dict[str, Any]) -> str:
    level = event.get("log_level", LogLevel.info)
    ts = event.get("log_time")
    out: dict[str, Any] = {
        "ts": datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds") if ts else None,
        "level": level.name if isinstance(level, type(LogLevel.info)) else str(level),
        "event": event.get("event") if isinstance(event.get("event"), str) else "log",
        "ns": event.get("log_namespace"),
        "msg": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _SKIP or key in out:
            continue
        out[key] = _jsonable(value)
    failure = event.get("log_failure")
    if failure is not None:
        out["error"] = failure.getErrorMessage()
        out["traceback"] = failure.getTraceback()
    return json.dumps(out, ensure_ascii=False)


@implementer(ILogObserver)
class JSONLinesObserver:
    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: dict[str, Any]) -> None:
        self._out.write(event_as_json(event) + "\n")
        self._out.flush()


def json_observer_factory() -> ILogObserver:
    """For twistd's ``logger`` option: JSON lines on standard output."""
    return FilteringLogObserver(JSONLinesObserver(sys.stdout), [wanted])


def text_observer_factory() -> ILogObserver:
    """For twistd's ``logger`` option: twistd's usual text lines on standard output."""
    return FilteringLogObserver(textFileLogObserver(sys.stdout), [wanted])
