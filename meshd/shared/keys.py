"""API keys held in Redis (``--redis-keys``): a hashed key set every machine re-reads within half a second.

Redis keeps ``P:keys`` (SHA-256 hex of each key -> its id, label and creation time; never the key) and
``P:keys:version``, a random token replaced at every change. Each machine keeps a copy of the set and asks
every ``poll`` seconds, in one script call, "has the version changed?": the whole set comes back only when
it has. So a key check never waits on Redis, and a revoked key is refused everywhere within ``poll``
seconds plus one round trip.

When the copy is older than ``max_age`` (Redis down or slow), ``check`` answers :data:`UNAVAILABLE`
(fail-closed, the default: the gate answers 503) or keeps using the last set read (fail-open). It never
lets an unknown key in. Keys from ``--api-key``/``--api-keys-file`` are checked before, without Redis.

The admin operations (``add_key``, ``revoke``, ``list_keys``) take a synchronous redis-py client: they are
what ``meshd keys`` runs (:mod:`meshd.shared.keyscli`).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from typing import Any, Final

from twisted.logger import Logger

from meshd.shared import scripts
from meshd.shared.link import RedisLink, SharedUnavailable
from meshd.shared.scripts import KeyEntry, Namespace

#: Seconds between two reads of the key set's version.
DEFAULT_POLL = 0.5
#: Seconds after the last good read past which the copy is stale (fail-open keeps using it, fail-closed not).
DEFAULT_MAX_AGE = 2.0


class Unavailable:
    def __repr__(self) -> str:
        return "UNAVAILABLE"


#: What a check answers when only Redis could tell (and the policy is fail-closed).
UNAVAILABLE: Final = Unavailable()


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class SharedKeys:
    """The key set from Redis, as a local copy re-read every ``poll`` seconds (``start``/``stop``)."""

    _log = Logger()

    def __init__(
        self,
        link: RedisLink,
        clock: Any,
        *,
        poll: float = DEFAULT_POLL,
        max_age: float = DEFAULT_MAX_AGE,
        fail_open: bool = False,
        max_keys: int = scripts.MAX_KEYS,
    ) -> None:
        self.link = link
        self.clock = clock
        self.poll = poll
        self.max_age = max_age
        self.fail_open = fail_open
        self.max_keys = max_keys
        self.version = scripts.NO_VERSION
        self.entries: dict[str, KeyEntry] | None = None
        self.synced_at: float | None = None
        self.refused_version: str | None = None
        self._script: Any = None
        self._timer: Any = None
        self._running = False
        self.syncs = 0

    @property
    def count(self) -> int:
        return len(self.entries) if self.entries is not None else 0

    def fresh(self, now: float) -> bool:
        return self.synced_at is not None and now - self.synced_at <= self.max_age

    def check(self, presented: str | None) -> str | Unavailable | None:
        """The key id of ``presented`` if the set holds it, None if not, UNAVAILABLE if only Redis could tell."""
        if presented is None:
            return None
        if not self.fresh(float(self.clock.seconds())) and not self.fail_open:
            return UNAVAILABLE
        if self.entries is None:
            return None
        entry = self.entries.get(digest(presented))
        return entry.key_id if entry is not None else None

    # -- the poll ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._running = True
        self._schedule(0.0)

    def stop(self) -> None:
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _schedule(self, delay: float) -> None:
        if self._running and (self._timer is None or not self._timer.active()):
            self._timer = self.clock.callLater(delay, self.sync)

    def sync(self) -> Any:
        """Read the set if its version changed (one call); schedules the next read."""
        self._timer = None
        ns = self.link.ns
        args = [self.version, str(self.max_keys)]

        async def op(client: Any) -> Any:
            if self._script is None:
                self._script = client.register_script(scripts.KEYS_SYNC_SCRIPT)
            return await self._script(keys=[ns.keys(), ns.keys_version()], args=args)

        d = self.link.run(op)
        d.addCallback(self._apply)
        d.addErrback(lambda f: f.trap(SharedUnavailable))
        d.addErrback(lambda f: self._log.failure("reading the key set", failure=f, event="redis_keys_error"))
        d.addBoth(lambda _: self._schedule(self.poll))
        return d

    def _apply(self, reply: Any) -> None:
        try:
            got = scripts.parse_keys_reply(reply, self.max_keys)
        except ValueError as e:
            self._log.warn("ignored an answer of the key sync: {err}", err=str(e), event="redis_keys_bad_reply")
            return
        now = float(self.clock.seconds())
        if got.too_many is not None:
            if self.refused_version != got.version:
                self.refused_version = got.version
                self._log.error(
                    "the key set in Redis holds {n} keys, more than {limit}: keeping the last set read",
                    n=got.too_many,
                    limit=self.max_keys,
                    event="redis_keys_too_many",
                )
            return
        self.syncs += 1
        self.synced_at = now
        if got.entries is None:
            return
        old = set(self.entries or ())
        self.entries = got.entries
        self.version = got.version
        new = set(got.entries)
        if got.bad:
            self._log.warn(
                "skipped {bad} malformed entries of the key set in Redis", bad=got.bad, event="redis_keys_bad_entries"
            )
        self._log.info(
            "API keys from Redis: {n} key(s) ({added} added, {removed} removed)",
            n=len(new),
            added=len(new - old),
            removed=len(old - new),
            event="redis_keys_synced",
        )

    def status(self) -> dict[str, Any]:
        now = float(self.clock.seconds())
        return {
            "keys": self.count if self.entries is not None else None,
            "fresh": self.fresh(now),
            "synced_ago": None if self.synced_at is None else round(now - self.synced_at, 3),
            "poll": self.poll,
            "max_age": self.max_age,
            "fail": "open" if self.fail_open else "closed",
        }


# -- admin (synchronous: meshd keys) ----------------------------------------------------------------


class KeyAdminError(Exception):
    pass


def new_key() -> str:
    return "sk-mesh-" + secrets.token_urlsafe(32)


def add_key(client: Any, ns: Namespace, *, label: str = "", key: str | None = None, now: float) -> tuple[str, KeyEntry]:
    """Store ``key`` (a fresh one when None) hashed; returns (key, its entry). The key itself is never stored."""
    key = key if key is not None else new_key()
    if not key or any(c.isspace() for c in key) or not key.isprintable() or len(key) > 512:
        raise KeyAdminError("a key is 1-512 printable characters without spaces")
    label = "".join(c for c in label if c.isprintable())[: scripts.MAX_LABEL]
    d = digest(key)
    entry = KeyEntry(digest=d, key_id=d[:8], label=label, created=now)
    added = client.eval(
        scripts.KEY_ADD_SCRIPT,
        2,
        ns.keys(),
        ns.keys_version(),
        d,
        scripts.entry_json(entry.key_id, label, now),
        uuid.uuid4().hex,
    )
    if added != 1:
        raise KeyAdminError(f"key {entry.key_id} is in the set already")
    return key, entry


def list_keys(client: Any, ns: Namespace) -> list[KeyEntry]:
    raw = client.hgetall(ns.keys())
    entries = [scripts.parse_entry(f, v) for f, v in raw.items()]
    return sorted((e for e in entries if e is not None), key=lambda e: (e.created or 0.0, e.key_id))


def revoke(client: Any, ns: Namespace, what: str) -> list[KeyEntry]:
    """Remove the key named by ``what``: its id (8 hex), its SHA-256 (64 hex) or the key itself."""
    entries = list_keys(client, ns)
    text = what.strip()
    if scripts.is_key_id(text):
        hits = [e for e in entries if e.key_id == text]
        if len(hits) > 1:
            raise KeyAdminError(f"{len(hits)} keys have id {text}: name the key, or its SHA-256")
    else:
        d = text if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else digest(text)
        hits = [e for e in entries if e.digest == d]
    if not hits:
        raise KeyAdminError("no such key in the set")
    removed = client.eval(
        scripts.KEY_REVOKE_SCRIPT, 2, ns.keys(), ns.keys_version(), uuid.uuid4().hex, *(e.digest for e in hits)
    )
    return hits if removed else []
