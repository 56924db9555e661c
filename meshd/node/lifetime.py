"""What the node's parts share about its life: the clock, the work in flight, the periodic duties, whether the
node is stopping, and who is told when something visible changed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure


class Lifetime:
    """One per node. ``track`` work that :meth:`stop` cancels, ``every`` for periodic duties, ``later`` for
    one-off timers (all cancelled at stop), ``on_change`` listeners called by :meth:`changed`."""

    _log = Logger()

    def __init__(self, clock: Any) -> None:
        #: Provides ``seconds()`` and ``callLater`` (the reactor, or a ``Clock`` in tests).
        self.clock = clock
        self.stopping = False
        #: Called with no arguments whenever something ``/api/status`` shows changed.
        self.on_change: list[Callable[[], None]] = []
        self._pending: set[Deferred[Any]] = set()
        self._loops: list[LoopingCall] = []
        self._timers: set[IDelayedCall] = set()

    def now(self) -> float:
        return float(self.clock.seconds())

    def now_ms(self) -> int:
        return int(self.now() * 1000)

    def changed(self) -> None:
        for cb in list(self.on_change):
            cb()

    def track(self, d: Deferred[Any]) -> Deferred[Any]:
        """Cancel ``d`` when the node stops (unless it fired before)."""
        self._pending.add(d)

        def done(result: Any) -> Any:
            self._pending.discard(d)
            return result

        d.addBoth(done)
        return d

    def every(self, interval: float, fn: Callable[[], Any]) -> None:
        """Run ``fn`` every ``interval`` seconds (the first time after one interval) until the node stops."""
        loop = LoopingCall(fn)
        loop.clock = self.clock
        loop.start(interval, now=False).addErrback(self._loop_failed)
        self._loops.append(loop)

    def later(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` once after ``delay`` seconds, unless the node stops first."""
        call: IDelayedCall

        def run() -> None:
            self._timers.discard(call)
            fn(*args)

        call = self.clock.callLater(delay, run)
        self._timers.add(call)

    def stop(self) -> None:
        """The node is stopping: end the loops, cancel the timers and the work in flight."""
        self.stopping = True
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        for call in list(self._timers):
            if call.active():
                call.cancel()
        self._timers.clear()
        for d in list(self._pending):
            d.cancel()

    def _loop_failed(self, failure: Failure) -> None:
        self._log.failure("periodic task failed", failure=failure, event="loop_error")
