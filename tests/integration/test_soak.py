"""Soak (bounded; ``pytest -m soak``, part of ``.ci/run``): a mesh of two hosts per backend kind and one
client takes 5,000 sequential and 500 concurrent mixed requests (plain, streamed, embeddings; some callers
leave mid-stream). Every request completes byte for byte, or (for the callers that left) is cancelled at the
host; nothing unexplained is logged; the processes' memory and open descriptors come back to their baseline.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from tests.integration.backend import LlamaBackend
from tests.integration.local_mesh import Mesh, get_json, open_fds, rss_kib, sdk, start_odd_backend, until
from tests.integration.odd_backends import RAW_STYLES

pytestmark = [pytest.mark.integration, pytest.mark.soak, pytest.mark.timeout(600)]

MSGS: Any = [{"role": "user", "content": "soak test words"}]
SEQUENTIAL = 5_000
CONCURRENT = 500
THREADS = 25
#: Slack for descriptors that come and go on their own (a host's backend poll, a keep-alive in flight).
FD_SLACK = 4
#: Python keeps freed memory in its arenas; what may stay after the load is this much above the baseline.
RSS_SLACK_KIB = 40 * 1024


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, llama_backend: LlamaBackend) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("soak")
    m = Mesh(tmp)
    try:
        backends = {"llama": (llama_backend.url, [llama_backend.model])}
        for style in ("stdlib", "asgi", "raw"):
            proc, url = start_odd_backend(style, f"odd-{style}", tmp / f"{style}.log")
            m.backends.append(proc)
            models = [f"odd-{s}" for s in RAW_STYLES] if style == "raw" else [f"odd-{style}"]
            backends[style] = (url, models)
        for name, (url, models) in backends.items():
            for model in models:
                m.direct[model] = url
            m.host(f"{name}-1", url)
            m.host(f"{name}-2", url)
        m.client()
        m.wait_models(m.api, list(m.direct))
        yield m
    finally:
        m.stop()


KINDS = ("plain", "stream", "embeddings")


_clients = threading.local()


def client_for(base: str) -> openai.OpenAI:
    """One SDK client (one keep-alive connection pool) per thread and base URL, as a real caller keeps."""
    cache = _clients.__dict__.setdefault("by_base", {})
    if base not in cache:
        cache[base] = sdk(base)
    return cache[base]  # type: ignore[no-any-return]


def fetch(base: str, model: str, kind: str, *, keep_alive: bool = True) -> bytes:
    # The raw test backends close after every response without saying so: called directly, each gets a fresh
    # client (reusing the closed connection would fail in the test's own client, not in meshd).
    client = client_for(base) if keep_alive else sdk(base)
    if kind == "plain":
        return bytes(client.chat.completions.with_raw_response.create(model=model, messages=MSGS).content)
    if kind == "embeddings":
        return bytes(client.embeddings.with_raw_response.create(model=model, input="soak").content)
    with client.chat.completions.with_streaming_response.create(model=model, messages=MSGS, stream=True) as r:
        return b"".join(r.iter_bytes())


def leave_mid_stream(base: str, model: str) -> None:
    """Read the first event of a slow stream, then go away."""
    with sdk(base).chat.completions.with_streaming_response.create(model=model, messages=MSGS, stream=True) as r:
        next(r.iter_bytes())


def workload(mesh: Mesh) -> list[tuple[str, str]]:
    """(model, kind) pairs whose answers are byte-deterministic (llama-server's carry ids and times)."""
    models = sorted(m for m in mesh.direct if m.startswith("odd-") and m != "odd-slow")
    return [(model, kind) for model in models for kind in KINDS]


def cancelled_at_hosts(mesh: Mesh) -> int:
    return sum(1 for d in mesh.hosts.values() for r in list(d.records) if r.get("event") == "tunnel_cancelled")


def test_soak(mesh: Mesh) -> None:
    pairs = workload(mesh)
    expected = {(model, kind): fetch(mesh.direct[model], model, kind, keep_alive=False) for model, kind in pairs}
    procs = {name: d.proc.pid for name, d in mesh.hosts.items()} | {"client": mesh.daemons[-1].proc.pid}

    # warm-up, then the baseline
    for model, kind in itertools.islice(itertools.cycle(pairs), 200):
        assert fetch(mesh.api, model, kind) == expected[(model, kind)]
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda p: fetch(mesh.api, *p), itertools.islice(itertools.cycle(pairs), 100)))
    baseline = {name: (rss_kib(pid), open_fds(pid)) for name, pid in procs.items()}

    # 5,000 sequential, mixed
    started = time.monotonic()
    wrong = [
        (m, k)
        for m, k in itertools.islice(itertools.cycle(pairs), SEQUENTIAL)
        if fetch(mesh.api, m, k) != expected[(m, k)]
    ]
    assert wrong == []
    sequential_secs = time.monotonic() - started

    # 500 concurrent, mixed, every tenth caller leaving a slow stream after its first event
    before_cancel = cancelled_at_hosts(mesh)
    jobs = list(itertools.islice(itertools.cycle(pairs), CONCURRENT))
    leavers = set(range(0, CONCURRENT, 10))

    def run(i: int) -> bool:
        if i in leavers:
            leave_mid_stream(mesh.api, "odd-slow")
            return True
        model, kind = jobs[i]
        return fetch(mesh.api, model, kind) == expected[(model, kind)]

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(run, range(CONCURRENT)))
    assert all(results), [jobs[i] for i, ok in enumerate(results) if not ok]
    # every caller that left is cancelled at a host (the host logs it as it aborts the backend request)
    until(lambda: cancelled_at_hosts(mesh) - before_cancel == len(leavers), 30, "cancellations at the hosts")

    # back to the baseline: nothing in flight, descriptors closed, memory not grown
    for name in mesh.hosts:
        until(
            lambda n=name: get_json(mesh.consoles[n] + "/api/status")["meshd"]["backend"]["inflight"] == 0, 30, "idle"
        )
    for name, pid in procs.items():
        rss0, fds0 = baseline[name]
        until(lambda p=pid, f=fds0: open_fds(p) <= f + FD_SLACK, 30, f"{name} descriptors back to {fds0}")
        assert rss_kib(pid) <= rss0 + RSS_SLACK_KIB, (name, rss0, rss_kib(pid))
    for d in mesh.daemons:
        bad = [r for r in d.records if r.get("level") in ("error", "critical") or "Unhandled" in r.get("msg", "")]
        assert bad == [], bad[:3]
    print(f"soak: {SEQUENTIAL} sequential in {sequential_secs:.1f}s; baseline {baseline}")
