"""JSON log lines: one object per line, with event name, level, timestamp and fields."""

from __future__ import annotations

import io
import json

from twisted.logger import Logger, LogPublisher

from meshd.logs import JSONLinesObserver


def emit_through(observer: JSONLinesObserver) -> Logger:
    publisher = LogPublisher(observer)
    return Logger(namespace="meshd.test", observer=publisher)


def test_each_event_is_one_parseable_json_line() -> None:
    out = io.StringIO()
    log = emit_through(JSONLinesObserver(out))
    log.info("ready: API {api_url}", event="ready", api_url="http://127.0.0.1:1", port=1)
    log.warn("odd {thing}", thing=object())
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    ready, odd = (json.loads(line) for line in lines)
    assert ready["event"] == "ready"
    assert ready["level"] == "info"
    assert ready["api_url"] == "http://127.0.0.1:1"
    assert ready["port"] == 1
    assert ready["msg"] == "ready: API http://127.0.0.1:1"
    assert ready["ns"] == "meshd.test"
    assert ready["ts"].endswith("+00:00")
    assert odd["event"] == "log"
    assert odd["level"] == "warn"
    assert odd["thing"].startswith("<object object")


def test_failures_carry_error_and_traceback() -> None:
    out = io.StringIO()
    log = emit_through(JSONLinesObserver(out))
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.failure("boom {n}", n=3, event="crash")
    rec = json.loads(out.getvalue())
    assert rec["event"] == "crash"
    assert rec["level"] == "critical"
    assert "division by zero" in rec["error"]
    assert "ZeroDivisionError" in rec["traceback"]
    assert rec["n"] == 3


def test_newlines_in_messages_stay_on_one_line() -> None:
    out = io.StringIO()
    log = emit_through(JSONLinesObserver(out))
    log.info("two\nlines {x}", x="a\nb")
    assert out.getvalue().count("\n") == 1
    assert json.loads(out.getvalue())["msg"] == "two\nlines a\nb"
