"""Per-user state in Redis with a TTL: stored Responses (``previous_response_id``) seen by every machine.

:class:`RedisResponseStore` has the shape of the agent APIs' ``ResponseStore`` protocol
(``meshd/agentapi/store.py``: coroutines ``get(id)``, ``put(record) -> bool``, ``delete(id) -> bool``) without
importing it: records are anything with an ``id`` and ``to_json() -> bytes``, and ``decode`` turns stored bytes
back into one (``StoredResponse.from_json``). Wiring it in (for the lead)::

    store = RedisResponseStore(shared.link, decode=StoredResponse.from_json, ttl=config_ttl)

Its coroutines await Deferreds only, so they run under ``Deferred.fromCoroutine`` (Klein's handlers) on the
asyncio reactor. Each record is one key ``P:resp:<id>`` written with ``SET ... EX ttl``: nothing outlives its
TTL, records larger than ``max_record_bytes`` are not kept (``put`` answers False), and ids that are not
1-128 of ``[A-Za-z0-9_.:-]`` are never looked up (``get`` answers None). Bound Redis's own memory with
``maxmemory`` and ``maxmemory-policy volatile-ttl`` on a self-run Redis (Upstash bounds it by plan).

When Redis does not answer, ``get`` raises ``SharedUnavailable`` (the caller answers 503: a conversation is
not silently cut), ``put`` answers False (the response was served; only its storage failed) and
``delete`` raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from meshd.shared.link import RedisLink, SharedUnavailable
from meshd.shared.scripts import valid_id

DEFAULT_TTL = 3600.0
#: Largest record kept (JSON bytes).
DEFAULT_MAX_RECORD_BYTES = 4 * 1024 * 1024


class Record(Protocol):
    @property
    def id(self) -> str: ...

    def to_json(self) -> bytes: ...


R = TypeVar("R", bound=Record)


class RedisResponseStore(Generic[R]):
    """Records by id in Redis, each for ``ttl`` seconds."""

    def __init__(
        self,
        link: RedisLink,
        *,
        decode: Callable[[bytes], R],
        ttl: float = DEFAULT_TTL,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        if ttl <= 0:
            raise ValueError("the TTL must be positive")
        self.link = link
        self.decode = decode
        self.ttl = ttl
        self.max_record_bytes = max_record_bytes

    async def get(self, response_id: str) -> R | None:
        if not valid_id(response_id):
            return None
        key = self.link.ns.response(response_id)

        async def op(client: Any) -> Any:
            return await client.get(key)

        data = await self.link.run(op)
        if data is None:
            return None
        try:
            return self.decode(bytes(data))
        except (ValueError, KeyError, TypeError):
            return None  # not one of ours (or from an older format): as good as gone

    async def put(self, record: R) -> bool:
        if not valid_id(record.id):
            return False
        data = record.to_json()
        if len(data) > self.max_record_bytes:
            return False
        key = self.link.ns.response(record.id)
        ttl_ms = max(1, int(self.ttl * 1000))

        async def op(client: Any) -> Any:
            return await client.set(key, data, px=ttl_ms)

        try:
            return bool(await self.link.run(op))
        except SharedUnavailable:
            return False

    async def delete(self, response_id: str) -> bool:
        if not valid_id(response_id):
            return False
        key = self.link.ns.response(response_id)

        async def op(client: Any) -> Any:
            return await client.delete(key)

        return bool(await self.link.run(op))
