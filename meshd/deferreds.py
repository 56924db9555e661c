"""Small Deferred helpers shared by the adapters."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")


def fire_all(waiters: Iterable[Deferred[T]], result: T | Failure) -> None:
    """Give one shared outcome to every waiter that has not fired (nor been cancelled) yet."""
    for w in waiters:
        if w.called:
            continue
        if isinstance(result, Failure):
            w.errback(result)
        else:
            w.callback(result)


def failed(exc: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(exc)
    return d
