"""A list of listeners that may come and go while they are being called, each call guarded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.logger import Logger

__all__ = ["Listeners"]

L = TypeVar("L", bound=Callable[..., object])


class Listeners(Generic[L]):
    """Listeners called in the order they were added; one that raises is logged (``what`` names it in
    the line) and the others still run."""

    def __init__(self, log: Logger, what: str) -> None:
        self._log = log
        self._what = what
        self._listeners: list[L] = []

    def add(self, listener: L) -> Callable[[], None]:
        """Add ``listener``; returns the function that removes it (harmless to call twice)."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def notify(self, *args: object) -> None:
        for listener in list(self._listeners):
            try:
                listener(*args)
            except Exception:
                self._log.failure("{what} failed", what=self._what)
