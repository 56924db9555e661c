"""Key names, the Lua scripts, and the parsing of what Redis answers (pure: no I/O).

Every update is one Lua script, so it is atomic however many machines run it at once. Times are the
callers' wall clocks (seconds, passed in ``ARGV``), never the server's: Upstash asks scripts to be
deterministic, and machines on NTP agree to a few milliseconds. A clock that steps back never refills a
bucket twice (the stored time only moves forward).

Key layout (``P`` = ``--redis-prefix``, default ``meshd``); every key expires unless something keeps it:

====================================  ======================================================  =====================
``P:rate:<caller>``                   hash ``t`` (tokens), ``u`` (updated): a token bucket    60 s + 1 s after use
``P:lease:streams:<caller>``          sorted set, member = lease id, score = its expiry       the last lease + 1 s
``P:lease:inflight``                  the same, for ``--max-inflight-global``                the last lease + 1 s
``P:keys``                            hash sha256(key) hex -> ``{"id", "label", "created"}``  never (the key set)
``P:keys:version``                    a random token, new at every change of ``P:keys``       never
``P:resp:<id>``                       a stored response (bytes)                              its TTL
====================================  ======================================================  =====================
"""

from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs

DEFAULT_PREFIX = "meshd"
PREFIX_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: Longest caller name put in a key (callers are ``ip:<address>``, ``key:<8 hex>`` or ``console``).
MAX_CALLER = 128
#: Most keys the key set may hold: a larger set is refused (and logged), never loaded half.
MAX_KEYS = 100_000
#: Longest label of a key, and longest key id read back from Redis.
MAX_LABEL = 200
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID = re.compile(r"^[0-9a-f]{8}$")
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
#: What a cache that never synced says it holds: never equal to a version Redis can answer.
NO_VERSION = "-"


class BadRedisURL(ValueError):
    pass


def check_url(url: str) -> str:
    """``url`` if it is a ``redis://`` or ``rediss://`` URL meshd can use, else BadRedisURL (no secret in it)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise BadRedisURL("not a URL") from None
    if parts.scheme not in ("redis", "rediss"):
        raise BadRedisURL(
            f"the scheme must be redis:// or rediss://, not {parts.scheme + '://' if parts.scheme else 'none'}"
        )
    if not parts.hostname:
        raise BadRedisURL("no host")
    if port is not None and not 1 <= port <= 65535:
        raise BadRedisURL("the port must be between 1 and 65535")
    db = parts.path.strip("/")
    if db and not (db.isdigit() and int(db) < 10_000):
        raise BadRedisURL("the path must be a database number (/0)")
    if parts.fragment:
        raise BadRedisURL("no #fragment allowed")
    return url.strip()


def redact_url(url: str) -> str:
    """The URL with its password (and query string, which may hold TLS secrets) replaced: safe to log and show."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<invalid URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{port}" if port is not None else "")
    if parts.username or parts.password:
        user = parts.username or ""
        netloc = f"{user}:***@{netloc}" if parts.password is not None else f"{user}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", ""))


@attrs.frozen
class Namespace:
    """Names of meshd's keys under one prefix (``--redis-prefix``)."""

    prefix: str = DEFAULT_PREFIX

    def __attrs_post_init__(self) -> None:
        if not PREFIX_RE.match(self.prefix):
            raise ValueError("the prefix must be 1-64 of A-Z a-z 0-9 . _ -")

    def rate(self, caller: str) -> str:
        return f"{self.prefix}:rate:{_caller(caller)}"

    def streams(self, caller: str) -> str:
        return f"{self.prefix}:lease:streams:{_caller(caller)}"

    def inflight(self) -> str:
        return f"{self.prefix}:lease:inflight"

    def keys(self) -> str:
        return f"{self.prefix}:keys"

    def keys_version(self) -> str:
        return f"{self.prefix}:keys:version"

    def response(self, response_id: str) -> str:
        if not valid_id(response_id):
            raise ValueError("a stored id is 1-128 of A-Z a-z 0-9 _ . : -")
        return f"{self.prefix}:resp:{response_id}"


def _caller(caller: str) -> str:
    if len(caller) > MAX_CALLER:
        raise ValueError(f"caller names are at most {MAX_CALLER} characters")
    return caller


def valid_id(response_id: str) -> bool:
    return bool(_ID.match(response_id))


# -- requests per minute ----------------------------------------------------------------------------

#: The token bucket: KEYS[1], ARGV: now (s), rpm, the bucket's TTL (ms); leaves ``allowed`` (0/1) and ``t`` (tokens
#: left, as text). The same arithmetic as meshd.web.gate.RequestRateLimiter, in the same order (same doubles).
_BUCKET = """
local now = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local allowed = 1
local t = ''
if cap > 0 then
  local rate = cap / 60.0
  local b = redis.call('HMGET', KEYS[1], 't', 'u')
  local tokens = tonumber(b[1])
  local updated = tonumber(b[2])
  if tokens == nil or updated == nil then
    tokens = cap
    updated = now
  else
    if now > updated then
      tokens = math.min(cap, tokens + (now - updated) * rate)
      updated = now
    end
    if tokens > cap then tokens = cap end
  end
  allowed = 0
  if tokens >= 1.0 then
    tokens = tokens - 1.0
    allowed = 1
  end
  t = string.format('%.17g', tokens)
  redis.call('HSET', KEYS[1], 't', t, 'u', string.format('%.17g', updated))
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
"""

#: Returns {allowed 0/1, tokens left}.
RATE_SCRIPT = _BUCKET + "return {allowed, t}\n"


def rate_args(now: float, rpm: int) -> list[str]:
    # A bucket left alone for 60 s is full again, the same as no bucket: it may go then.
    return [repr(float(now)), str(int(rpm)), str(61_000)]


def parse_rate_reply(reply: Any) -> tuple[bool, float]:
    """(allowed, tokens left) from the rate script's answer; ValueError for anything else."""
    if not isinstance(reply, list | tuple) or len(reply) != 2:
        raise ValueError("the rate script answered something else than {allowed, tokens}")
    allowed, tokens = reply
    if allowed not in (0, 1) or not isinstance(tokens, bytes | str):
        raise ValueError("the rate script answered something else than {allowed, tokens}")
    value = float(tokens)
    if not math.isfinite(value):
        raise ValueError("the rate script answered a token count that is not a number")
    return allowed == 1, value


# -- leases -----------------------------------------------------------------------------------------

#: KEYS[1] the pool; ARGV: now, limit, this lease's expiry, its id. Expired leases are dropped first.
#: Returns {1, holders} when taken, {0, holders} when the pool is full.
LEASE_ACQUIRE_SCRIPT = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[2]) then return {0, n} end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((tonumber(last[2]) - now) * 1000)) + 1000)
return {1, n + 1}
"""

#: KEYS: pools; ARGV[1] now, ARGV[2] the new expiry, ARGV[2+i] the space-separated lease ids held in KEYS[i].
#: Only leases still there are renewed (XX): one released meanwhile, or dropped after its machine missed two
#: renewals, is not brought back. Returns how many were renewed.
LEASE_RENEW_SCRIPT = """
local now = tonumber(ARGV[1])
local n = 0
for i, key in ipairs(KEYS) do
  for id in string.gmatch(ARGV[2 + i], '%S+') do
    n = n + redis.call('ZADD', key, 'XX', 'CH', ARGV[2], id)
  end
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('PEXPIRE', key, math.max(1, math.ceil((tonumber(last[2]) - now) * 1000)) + 1000)
  end
end
return n
"""

#: Pools renewed by one script call at most.
RENEW_BATCH = 200

#: One request's whole admission in one round trip. KEYS: the rate bucket, the caller's stream pool, the
#: in-flight pool. ARGV: now, rpm (0 = off), the bucket's TTL (ms), the stream limit (0 = not asked), the
#: in-flight limit (0 = not asked), the leases' expiry, the stream lease id, the in-flight lease id.
#: Returns {allowed, tokens, stream, inflight}: stream/inflight 1 = taken, 0 = not asked (or given back
#: because a later check refused), -1 = full. Checks run in the gate's order and stop at the first refusal.
ADMIT_SCRIPT = (
    _BUCKET
    + """
if allowed == 0 then return {0, t, 0, 0} end
local function take(key, limit, id)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[1])
  if redis.call('ZCARD', key) >= limit then return -1 end
  redis.call('ZADD', key, ARGV[6], id)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', key, math.max(1, math.ceil((tonumber(last[2]) - now) * 1000)) + 1000)
  return 1
end
local s = 0
if tonumber(ARGV[4]) > 0 then
  s = take(KEYS[2], tonumber(ARGV[4]), ARGV[7])
  if s == -1 then return {1, t, -1, 0} end
end
local g = 0
if tonumber(ARGV[5]) > 0 then
  g = take(KEYS[3], tonumber(ARGV[5]), ARGV[8])
  if g == -1 and s == 1 then
    redis.call('ZREM', KEYS[2], ARGV[7])
    s = 0
  end
end
return {1, t, s, g}
"""
)


def parse_admit_reply(reply: Any) -> tuple[bool, float | None, int, int]:
    """(allowed, tokens or None when the rate limit is off, stream, in-flight) of the admit script."""
    if not isinstance(reply, list | tuple) or len(reply) != 4:
        raise ValueError("the admit script answered something else than {allowed, tokens, stream, inflight}")
    allowed, tokens, stream, inflight = reply
    if allowed not in (0, 1) or stream not in (-1, 0, 1) or inflight not in (-1, 0, 1):
        raise ValueError("the admit script answered values out of range")
    if not isinstance(tokens, bytes | str):
        raise ValueError("the admit script answered a token count that is not text")
    if not tokens:
        return allowed == 1, None, stream, inflight
    value = float(tokens)
    if not math.isfinite(value):
        raise ValueError("the admit script answered a token count that is not a number")
    return allowed == 1, value, stream, inflight


def parse_lease_reply(reply: Any) -> tuple[bool, int]:
    if (
        not isinstance(reply, list | tuple)
        or len(reply) != 2
        or reply[0] not in (0, 1)
        or not isinstance(reply[1], int)
    ):
        raise ValueError("the lease script answered something else than {taken, holders}")
    return reply[0] == 1, reply[1]


# -- the key set ------------------------------------------------------------------------------------

#: KEYS[1] the key hash, KEYS[2] its version; ARGV[1] the version the caller holds, ARGV[2] the most keys
#: it takes. Returns {version} when unchanged, {version, HLEN} when too many, else {version, HGETALL}.
KEYS_SYNC_SCRIPT = """
local v = redis.call('GET', KEYS[2])
if not v then v = '' end
if v == ARGV[1] then return {v} end
local n = redis.call('HLEN', KEYS[1])
if n > tonumber(ARGV[2]) then return {v, n} end
return {v, redis.call('HGETALL', KEYS[1])}
"""

#: KEYS[1] hash, KEYS[2] version; ARGV: digest, metadata JSON, new version. 0 when the key was there already.
KEY_ADD_SCRIPT = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[3])
return 1
"""

#: KEYS[1] hash, KEYS[2] version; ARGV[1] new version, ARGV[2..] digests. Returns how many were removed.
KEY_REVOKE_SCRIPT = """
local n = 0
for i = 2, #ARGV do n = n + redis.call('HDEL', KEYS[1], ARGV[i]) end
if n > 0 then redis.call('SET', KEYS[2], ARGV[1]) end
return n
"""


@attrs.frozen
class KeyEntry:
    digest: str  # sha256 hex of the key
    key_id: str  # first 8 hex of the digest, what logs say
    label: str = ""
    created: float | None = None


@attrs.frozen
class KeySet:
    """One answer of the sync script: ``entries`` is None when the set did not change since ``version``."""

    version: str
    entries: dict[str, KeyEntry] | None
    bad: int = 0  # entries skipped as malformed
    too_many: int | None = None  # the set's size when it is over the limit (entries is then None)


def _text(v: Any, limit: int) -> str | None:
    if isinstance(v, bytes):
        if len(v) > limit:
            return None
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(v, str) and len(v) <= limit:
        return v
    return None


def parse_entry(field: Any, value: Any) -> KeyEntry | None:
    """One field of ``P:keys``, or None when malformed (so it never counts as a key)."""
    digest = _text(field, 64)
    if digest is None or not _HEX64.match(digest):
        return None
    meta_text = _text(value, 4096)
    label = ""
    created: float | None = None
    if meta_text is not None:
        try:
            meta = json.loads(meta_text)
        except ValueError:
            meta = None
        if isinstance(meta, dict):
            lab = meta.get("label")
            if isinstance(lab, str):
                label = "".join(c for c in lab[:MAX_LABEL] if c.isprintable())
            when = meta.get("created")
            if isinstance(when, int | float) and not isinstance(when, bool) and math.isfinite(when):
                created = float(when)
    return KeyEntry(digest=digest, key_id=digest[:8], label=label, created=created)


def parse_keys_reply(reply: Any, max_keys: int = MAX_KEYS) -> KeySet:
    """The sync script's answer; ValueError when it is not one (the cache then keeps what it had)."""
    if not isinstance(reply, list | tuple) or not 1 <= len(reply) <= 2:
        raise ValueError("the key sync answered something else than {version[, keys]}")
    version = _text(reply[0], 256)
    if version is None:
        raise ValueError("the key set's version is not text")
    if len(reply) == 1:
        return KeySet(version=version, entries=None)
    body = reply[1]
    if isinstance(body, int) and not isinstance(body, bool):
        return KeySet(version=version, entries=None, too_many=body)
    if not isinstance(body, list | tuple) or len(body) % 2 or len(body) > 2 * max_keys:
        raise ValueError("the key set is not a list of field/value pairs within the limit")
    entries: dict[str, KeyEntry] = {}
    bad = 0
    for i in range(0, len(body), 2):
        entry = parse_entry(body[i], body[i + 1])
        if entry is None:
            bad += 1
            continue
        entries[entry.digest] = entry
    return KeySet(version=version, entries=entries, bad=bad)


def entry_json(key_id: str, label: str, created: float) -> str:
    return json.dumps({"id": key_id, "label": label, "created": round(created, 3)}, separators=(",", ":"))


def is_key_id(text: str) -> bool:
    return bool(_KEY_ID.match(text))
