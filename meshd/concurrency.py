"""A concurrency cap with a bounded FIFO of waiters (pure: it takes ``now`` and returns decisions).

Used twice: the API gate's process-wide in-flight cap (``--max-inflight``), and a host's backend slots
(``--backend-max-inflight``), where a tunnel waits for a slot instead of failing while the backend is busy.
"""

from __future__ import annotations

import enum
from collections import OrderedDict

#: Waiters kept per allowed slot, and at least this many (the queue is always bounded).
QUEUE_PER_SLOT = 16
MIN_QUEUE = 64


def default_max_queue(max_inflight: int) -> int:
    return max(MIN_QUEUE, max_inflight * QUEUE_PER_SLOT)


class Admission(enum.Enum):
    ADMIT = "admit"
    QUEUED = "queued"
    REJECT = "reject"


class ConcurrencyLimiter:
    """At most ``max_inflight`` holders at once (0 = unlimited) and a bounded FIFO of waiters.

    ``admit`` either takes a slot, queues the waiter until its deadline, or rejects; ``release`` frees a
    slot or hands it straight to the oldest waiter (returned; it now holds the slot); ``withdraw`` removes
    a waiter that gave up or went away; ``expired`` removes and returns the waiters whose deadline passed.
    """

    def __init__(self, max_inflight: int, queue_timeout: float, max_queue: int | None = None) -> None:
        self.max_inflight = max_inflight
        self.queue_timeout = queue_timeout
        self._fixed_queue = max_queue
        self.max_queue = max_queue if max_queue is not None else default_max_queue(max_inflight)
        self.inflight = 0
        self._queue: OrderedDict[int, float] = OrderedDict()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def admit(self, token: int, now: float, timeout: float | None = None) -> tuple[Admission, float]:
        """(decision, deadline); the deadline matters only for QUEUED. ``timeout`` overrides
        ``queue_timeout`` for this waiter (0 = take a free slot or reject at once)."""
        if self.max_inflight <= 0 or (self.inflight < self.max_inflight and not self._queue):
            self.inflight += 1
            return Admission.ADMIT, now
        wait = self.queue_timeout if timeout is None else min(timeout, self.queue_timeout)
        if wait <= 0 or len(self._queue) >= self.max_queue:
            return Admission.REJECT, now
        deadline = now + wait
        self._queue[token] = deadline
        return Admission.QUEUED, deadline

    def release(self) -> int | None:
        if self._queue and self.inflight <= self.max_inflight:
            token, _ = self._queue.popitem(last=False)
            return token
        self.inflight = max(0, self.inflight - 1)
        return None

    def set_limit(self, max_inflight: int) -> list[int]:
        """Change the cap; returns the waiters that now hold a slot (oldest first)."""
        self.max_inflight = max_inflight
        if self._fixed_queue is None:
            self.max_queue = default_max_queue(max_inflight)
        granted: list[int] = []
        while self._queue and (max_inflight <= 0 or self.inflight < max_inflight):
            token, _ = self._queue.popitem(last=False)
            self.inflight += 1
            granted.append(token)
        return granted

    def withdraw(self, token: int) -> bool:
        return self._queue.pop(token, None) is not None

    def expired(self, now: float) -> list[int]:
        gone = [t for t, deadline in self._queue.items() if deadline <= now]
        for t in gone:
            del self._queue[t]
        return gone
