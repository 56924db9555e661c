"""Choosing the home relay: ``GET <relay>/ping`` latency, bounded timeouts, unreachable relays skipped."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from meshd.iroh_relay.client import canonical_relay_url
from meshd.webclient import read_limited

__all__ = ["DEFAULT_RELAYS", "choose_home_relay", "ping_url", "probe_relay"]

#: mesh-llm 0.76's default relays (MESH_PROTOCOL_076.md §8).
DEFAULT_RELAYS = (
    "https://usw1-2.relay.michaelneale.mesh-llm.iroh.link./",
    "https://aps1-1.relay.michaelneale.mesh-llm.iroh.link./",
    "https://euc1-1.relay.michaelneale.mesh-llm.iroh.link./",
    "https://use1-1.relay.michaelneale.mesh-llm.iroh.link./",
)

_log = Logger()

#: ``/ping`` answers with an empty body; more than this is not a relay.
MAX_PING_BODY = 64 * 1024


def ping_url(url: str) -> str:
    """``<relay>/ping`` with the host's trailing dot removed (TLS names never carry it)."""
    parts = urlsplit(canonical_relay_url(url))
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    host = (parts.hostname or "").rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((scheme, netloc, "/ping", "", ""))


def probe_relay(reactor: Any, url: str, timeout: float = 3.0, http: Any = None) -> Deferred[float | None]:
    """Seconds until ``/ping`` answered 2xx, or None when it failed or timed out."""
    if http is None:
        import treq

        http = treq
    started = reactor.seconds()

    async def run() -> float | None:
        try:
            response = await http.get(ping_url(url), timeout=timeout, reactor=reactor)
            await read_limited(response, MAX_PING_BODY)
        except Exception as e:
            _log.info("relay {url} /ping failed: {err}", url=url, err=e)
            return None
        if not 200 <= response.code < 300:
            _log.info("relay {url} /ping answered {code}", url=url, code=response.code)
            return None
        return float(reactor.seconds() - started)

    return Deferred.fromCoroutine(run())


def choose_home_relay(
    reactor: Any, urls: Sequence[str], timeout: float = 3.0, http: Any = None
) -> Deferred[str | None]:
    """The relay with the lowest ``/ping`` latency (all probed at once), or None if none answered."""
    urls = [canonical_relay_url(u) for u in urls]

    def pick(results: list[tuple[bool, float | None]]) -> str | None:
        timed = [(latency, url) for (ok, latency), url in zip(results, urls, strict=True) if ok and latency is not None]
        if not timed:
            return None
        best = min(timed)
        _log.info("home relay {url} ({ms:.1f} ms)", url=best[1], ms=best[0] * 1000)
        return best[1]

    probes = [probe_relay(reactor, url, timeout, http) for url in urls]
    return DeferredList(probes, consumeErrors=True).addCallback(pick)  # type: ignore[arg-type]
