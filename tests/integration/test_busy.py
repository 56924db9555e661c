"""Busy is not failure: bursts wait for a backend slot instead of failing (real processes, the openai SDK).

One host whose backend (Python's ``http.server``) streams each answer in about 0.3 s, with the host's default
backend limit (4); clients with default flags and with ``--max-inflight 5``.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.integration.local_mesh import Mesh, get_json, sdk, start_odd_backend, until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MODEL = "slow"
MSGS: Any = [{"role": "user", "content": "one two three four five six seven eight"}]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("busy")
    m = Mesh(tmp)
    try:
        # 11 events 0.03 s apart: each stream takes ~0.33 s
        proc, url = start_odd_backend("stdlib", MODEL, tmp / "backend.log", delay=0.03)
        m.backends.append(proc)
        m.direct[MODEL] = url
        m.host("h", url)
        m.client()
        m.wait_models(m.api, [MODEL])
        yield m
    finally:
        m.stop()


def stream_text(base: str) -> str:
    chunks = sdk(base).chat.completions.create(model=MODEL, messages=MSGS, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


EXPECTED = "echo one two three four five six seven eight end"


def burst(base: str, n: int) -> list[str | Exception]:
    def one(_: int) -> str | Exception:
        try:
            return stream_text(base)
        except Exception as e:  # counted, not raised: the test reports every outcome
            return e

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_a_burst_of_20_streams_on_a_4_slot_host_all_complete(mesh: Mesh) -> None:
    outcomes = burst(mesh.api, 20)
    assert outcomes == [EXPECTED] * 20
    backend = get_json(mesh.consoles["h"] + "/api/status")["meshd"]["backend"]
    assert backend["max_inflight"] == 4 and backend["max_inflight_source"] == "default"
    assert backend["waited"] > 0  # the burst really was over the limit: some waited for a slot

    # The SDK stops reading at `data: [DONE]`, a moment before the backend's last chunk reaches the host:
    # wait for the host to see the last response end; then every slot is free and nothing waits.
    def slots() -> tuple[int, int]:
        b = get_json(mesh.consoles["h"] + "/api/status")["meshd"]["backend"]
        return b["inflight"], b["queued"]

    until(lambda: slots() == (0, 0), 10, "every slot free")


def test_50_streams_through_a_client_capped_at_5_are_all_served(mesh: Mesh) -> None:
    capped = mesh.client("--max-inflight", "5")
    outcomes = burst(capped, 50)
    assert outcomes == [EXPECTED] * 50


def test_four_callers_at_the_limit_never_fail(mesh: Mesh) -> None:
    """The adversarial run's pattern: as many callers as slots, each sending its next request as soon as the
    last answer arrived (a slot is free when the response is complete, not when the backend closes)."""

    def caller(_: int) -> list[int]:
        client = sdk(mesh.api)
        codes = []
        for _ in range(150):
            r = client.chat.completions.with_raw_response.create(model=MODEL, messages=MSGS)
            codes.append(r.status_code)
        return codes

    with ThreadPoolExecutor(4) as pool:
        codes = [c for cs in pool.map(caller, range(4)) for c in cs]
    assert codes == [200] * 600
