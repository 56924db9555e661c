"""API keys (sans-IO): the accepted keys as SHA-256 digests, what a caller presents, and the console's
credential names (see ``meshd.web.gate``)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path

from twisted.logger import Logger

_log = Logger()

#: Request header carrying the console's credential (see ``meshd.web.gate``).
CONSOLE_CREDENTIAL_HEADER = b"x-meshd-console"
#: The only route the console's credential opens (and its sub-paths).
CONSOLE_ROUTE = "/v1/chat/completions"
#: What the access log and rate limiter call the console's proxy.
CONSOLE_KEY_ID = "console"


def key_id(key: str) -> str:
    """What logs say about a key: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]


def parse_keys(text: str) -> tuple[list[str], list[int]]:
    """Keys from a keys file (one a line, ``#`` comment lines); also the numbers of unusable lines."""
    keys: list[str] = []
    bad: list[int] = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if any(c.isspace() for c in s) or not s.isprintable():
            bad.append(n)
            continue
        keys.append(s)
    return keys, bad


def bearer_token(header: bytes | None) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (scheme case-insensitive), else None."""
    if not header:
        return None
    try:
        text = header.decode("latin-1").strip()
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        return None
    scheme, _, token = text.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def presented_key(authorization: bytes | None, x_api_key: bytes | None) -> str | None:
    """The key a caller presents: ``Authorization: Bearer KEY`` (OpenAI's SDKs), else ``x-api-key: KEY``
    (Anthropic's SDK and Claude Code)."""
    token = bearer_token(authorization)
    if token is not None:
        return token
    if x_api_key:
        text = x_api_key.decode("latin-1").strip()
        return text or None
    return None


class APIKeys:
    """The accepted keys, kept only as SHA-256 digests; checked in constant time against all of them.

    Keys come from ``--api-key`` (fixed) and ``--api-keys-file`` (re-read by ``reload``). With neither
    configured the API is open. With a keys file configured the API stays closed even if the file
    ends up empty (it never opens by accident).
    """

    def __init__(self, keys: Iterable[str] = (), path: Path | None = None) -> None:
        self._static = [k for k in keys if k]
        self.path = path
        self._file_keys: list[str] = []
        self._entries: list[tuple[bytes, str]] = []
        if path is not None:
            self._file_keys = self._read(path)
        self._rebuild()

    @property
    def required(self) -> bool:
        return bool(self._static) or self.path is not None

    @property
    def count(self) -> int:
        return len(self._entries)

    def ids(self) -> list[str]:
        return sorted({kid for _, kid in self._entries})

    @staticmethod
    def _read(path: Path) -> list[str]:
        keys, bad = parse_keys(path.read_text(encoding="utf-8"))
        if bad:
            _log.warn(
                "ignored {n} malformed line(s) in {path}: line(s) {lines}",
                n=len(bad),
                path=str(path),
                lines=bad,
                event="api_keys_bad_lines",
            )
        return keys

    def _rebuild(self) -> None:
        seen: dict[bytes, str] = {}
        for key in [*self._static, *self._file_keys]:
            seen[hashlib.sha256(key.encode("utf-8")).digest()] = key_id(key)
        self._entries = list(seen.items())

    def reload(self) -> bool:
        """Re-read the keys file. On a read error the previous keys stay in force."""
        if self.path is None:
            return False
        try:
            keys = self._read(self.path)
        except (OSError, UnicodeDecodeError) as e:
            _log.warn(
                "could not reload API keys from {path}: {err}; keeping {n} key(s)",
                path=str(self.path),
                err=str(e),
                n=self.count,
                event="api_keys_reload_failed",
            )
            return False
        old = set(self.ids())
        self._file_keys = keys
        self._rebuild()
        new = set(self.ids())
        _log.info(
            "API keys reloaded from {path}: {n} key(s) ({added} added, {removed} removed)",
            path=str(self.path),
            n=self.count,
            added=len(new - old),
            removed=len(old - new),
            event="api_keys_reloaded",
        )
        return True

    def check(self, presented: str | None) -> str | None:
        """The key id of ``presented`` if it is an accepted key, else None (constant time over all keys)."""
        digest = hashlib.sha256((presented or "").encode("utf-8")).digest()
        found: str | None = None
        for entry, kid in self._entries:
            if hmac.compare_digest(entry, digest) and presented is not None:
                found = kid
        return found
