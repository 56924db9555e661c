"""Shared test fixtures: logged errors fail the test that caused them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from twisted.logger import LogLevel, globalLogPublisher

# Property tests: in CI a fixed seed and a bounded count (the same examples every run); for a release
# a long run, e.g. ``MESHD_HYPOTHESIS=release scripts/test tests/unit`` (docs/security.md).
settings.register_profile("ci", derandomize=True, database=None, max_examples=100, deadline=None)
settings.register_profile(
    "release",
    derandomize=False,
    max_examples=5000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("MESHD_HYPOTHESIS", "ci"))

# Real parts for integration tests: llama-server with a tiny model, real Nostr relays, the real
# mesh-llm 0.76 client (its Node SDK in a Debian 13 chroot) and mesh-llm 0.76's console (from that package).
pytest_plugins = [
    "tests.integration.backend",
    "tests.integration.relays",
    "tests.integration.mesh_sdk",
    "tests.integration.console076",
]


class LoggedErrors:
    """Collects error/critical log events while a test runs; unexpected ones fail the test."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if level in (LogLevel.error, LogLevel.critical) or event.get("isError") or "log_failure" in event:
            self.events.append(event)

    def flush(self, predicate: Any = None) -> list[dict[str, Any]]:
        """Take (and so allow) the logged errors matching ``predicate`` (all by default)."""
        taken = [e for e in self.events if predicate is None or predicate(e)]
        self.events = [e for e in self.events if e not in taken]
        return taken


@pytest.fixture(autouse=True)
def logged_errors() -> Iterator[LoggedErrors]:
    observer = LoggedErrors()
    globalLogPublisher.addObserver(observer)
    try:
        yield observer
    finally:
        globalLogPublisher.removeObserver(observer)
    if observer.events:
        from twisted.logger import formatEvent

        lines = "\n".join(formatEvent(e) for e in observer.events)
        pytest.fail(f"errors were logged during the test:\n{lines}")
