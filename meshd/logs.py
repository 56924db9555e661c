"""Log output: twisted.logger events as JSON lines (``--log-format json``).

Each line is one JSON object: ``ts`` (ISO 8601 UTC), ``level``, ``event`` (the ``event`` field a
call site gave, else ``log``), ``ns`` (the logger namespace), ``msg`` (the formatted text) and every
other field the call site passed. Values JSON cannot hold are written as their ``repr``.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import ILogObserver, LogLevel, formatEvent
from zope.interface import implementer

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


def json_observer_factory() -> JSONLinesObserver:
    """For twistd's ``logger`` option: JSON lines on standard output."""
    return JSONLinesObserver(sys.stdout)
