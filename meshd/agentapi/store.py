"""Stored responses, for ``previous_response_id`` and ``GET /v1/responses/{id}``.

A :class:`StoredResponse` keeps the Responses API object as it was returned and the chat messages of its
own turn (the request's input, then the answer), plus the id of the response it continued. A conversation
is re-assembled by walking ``previous_id`` links (:func:`load_history`), so each turn is stored once.

:class:`ResponseStore` is the small interface the web layer uses; its methods are coroutines so that a
shared store (Redis) can implement it. :class:`MemoryResponseStore` is the per-node default: bounded by
entry count and by bytes, entries expire ``ttl`` seconds after they were stored, the clock is passed in.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from meshd.agentapi.errors import NotFound

DEFAULT_MAX_ENTRIES = 1000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_TTL = 3600.0
#: Longest chain of ``previous_response_id`` links followed.
MAX_CHAIN = 1000


@attrs.frozen
class StoredResponse:
    id: str
    created_at: float
    response: dict[str, Any]
    #: Chat messages of this turn: the request's input (not its instructions), then the answer.
    messages: list[dict[str, Any]]
    previous_id: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "id": self.id,
                "created_at": self.created_at,
                "response": self.response,
                "messages": self.messages,
                "previous_id": self.previous_id,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> StoredResponse:
        obj = json.loads(data)
        return cls(
            id=obj["id"],
            created_at=float(obj["created_at"]),
            response=obj["response"],
            messages=obj["messages"],
            previous_id=obj.get("previous_id"),
        )

    def size(self) -> int:
        return len(self.to_json())


class ResponseStore(Protocol):
    """Where a node keeps its recent responses. Implementations bound their size themselves."""

    async def get(self, response_id: str) -> StoredResponse | None: ...

    async def put(self, record: StoredResponse) -> bool:
        """Store ``record``; False when it was not kept (e.g. larger than the whole store)."""
        ...

    async def delete(self, response_id: str) -> bool: ...


class MemoryResponseStore:
    """An in-process store: at most ``max_entries`` records and ``max_bytes`` of JSON, each for ``ttl`` s.

    When full, the oldest records go first. ``clock`` returns seconds (``reactor.seconds``).
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        ttl: float = DEFAULT_TTL,
    ) -> None:
        self._clock = clock
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._items: OrderedDict[str, tuple[float, int, StoredResponse]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def _expire(self, now: float) -> None:
        while self._items:
            key, (stored_at, size, _) = next(iter(self._items.items()))
            if now - stored_at < self.ttl:
                return
            del self._items[key]
            self.bytes -= size

    def _remove(self, response_id: str) -> bool:
        item = self._items.pop(response_id, None)
        if item is None:
            return False
        self.bytes -= item[1]
        return True

    async def get(self, response_id: str) -> StoredResponse | None:
        self._expire(self._clock())
        item = self._items.get(response_id)
        return item[2] if item is not None else None

    async def put(self, record: StoredResponse) -> bool:
        now = self._clock()
        self._expire(now)
        size = record.size()
        self._remove(record.id)
        if size > self.max_bytes or self.max_entries < 1:
            return False
        while self._items and (len(self._items) >= self.max_entries or self.bytes + size > self.max_bytes):
            _, (_, old_size, _) = self._items.popitem(last=False)
            self.bytes -= old_size
        self._items[record.id] = (now, size, record)
        self.bytes += size
        return True

    async def delete(self, response_id: str) -> bool:
        self._expire(self._clock())
        return self._remove(response_id)


def not_found_message(response_id: str, *, what: str = "Response") -> str:
    return (
        f"{what} with id {response_id!r} not found. This node keeps recent responses in memory for a limited "
        "time and number; the id may have expired, been evicted, or been created on another node. Resend the "
        "whole conversation in `input` instead."
    )


async def load_history(store: ResponseStore, response_id: str, *, max_chain: int = MAX_CHAIN) -> list[dict[str, Any]]:
    """The chat messages of the conversation that ends with ``response_id``, oldest first.

    Raises NotFound (param ``previous_response_id``) naming the missing link when any is gone.
    """
    turns: list[list[dict[str, Any]]] = []
    current: str | None = response_id
    seen: set[str] = set()
    while current is not None:
        if len(turns) >= max_chain or current in seen:
            raise NotFound(
                f"the conversation behind previous_response_id {response_id!r} is longer than {max_chain} turns "
                "(or loops); resend it in `input` instead",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        seen.add(current)
        record = await store.get(current)
        if record is None:
            what = (
                "Previous response"
                if current == response_id
                else f"An earlier response in the chain of {response_id!r}, one"
            )
            raise NotFound(
                not_found_message(current, what=what),
                param="previous_response_id",
                code="previous_response_not_found",
            )
        turns.append(record.messages)
        current = record.previous_id
    return [m for turn in reversed(turns) for m in turn]
