"""The bounded, expiring store of responses and the ``previous_response_id`` chain."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from meshd.agentapi.errors import NotFound
from meshd.agentapi.store import MemoryResponseStore, ResponseStore, StoredResponse, load_history
from tests.unit.agentapi_support import run


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def record(rid: str, text: str = "x", previous: str | None = None, size: int = 0) -> StoredResponse:
    return StoredResponse(
        id=rid,
        created_at=1.0,
        response={"id": rid, "object": "response", "pad": "p" * size},
        messages=[{"role": "user", "content": f"q-{rid}"}, {"role": "assistant", "content": text}],
        previous_id=previous,
    )


def test_memory_store_provides_the_protocol() -> None:
    store: ResponseStore = MemoryResponseStore(Clock())
    assert run(store.put(record("a")))
    assert run(store.get("a")) == record("a")
    assert run(store.get("b")) is None


def test_entries_expire_after_ttl() -> None:
    clock = Clock()
    store = MemoryResponseStore(clock, ttl=10)
    run(store.put(record("a")))
    clock.now += 9.9
    assert run(store.get("a")) is not None
    clock.now += 0.1
    assert run(store.get("a")) is None
    assert len(store) == 0 and store.bytes == 0


def test_count_bound_evicts_the_oldest() -> None:
    store = MemoryResponseStore(Clock(), max_entries=3)
    for rid in "abcd":
        run(store.put(record(rid)))
    assert [run(store.get(r)) is not None for r in "abcd"] == [False, True, True, True]


def test_byte_bound_evicts_the_oldest_and_refuses_a_giant() -> None:
    one = record("a", size=400).size()
    store = MemoryResponseStore(Clock(), max_bytes=one * 2 + 10)
    for rid in "abc":
        assert run(store.put(record(rid, size=400)))
    assert run(store.get("a")) is None and run(store.get("c")) is not None
    assert store.bytes <= store.max_bytes
    assert not run(store.put(record("huge", size=one * 3)))
    assert run(store.get("huge")) is None and run(store.get("c")) is not None


def test_put_again_replaces_and_keeps_the_byte_count_right() -> None:
    store = MemoryResponseStore(Clock())
    run(store.put(record("a", size=100)))
    run(store.put(record("a", size=10)))
    assert len(store) == 1 and store.bytes == record("a", size=10).size()


def test_delete() -> None:
    store = MemoryResponseStore(Clock())
    run(store.put(record("a")))
    assert run(store.delete("a")) and not run(store.delete("a"))
    assert store.bytes == 0


def test_json_round_trip_for_a_shared_store() -> None:
    r = record("a", "é \u2028", previous="p")
    assert StoredResponse.from_json(r.to_json()) == r


def test_history_follows_the_chain_oldest_first() -> None:
    store = MemoryResponseStore(Clock())
    run(store.put(record("r1", "one")))
    run(store.put(record("r2", "two", previous="r1")))
    run(store.put(record("r3", "three", previous="r2")))
    history = run(load_history(store, "r3"))
    assert [m["content"] for m in history] == ["q-r1", "one", "q-r2", "two", "q-r3", "three"]


def test_unknown_previous_response_is_a_clear_404() -> None:
    store = MemoryResponseStore(Clock())
    with pytest.raises(NotFound) as info:
        run(load_history(store, "resp_gone"))
    assert info.value.param == "previous_response_id" and info.value.status == 404
    assert "resp_gone" in info.value.message and "expired" in info.value.message


def test_a_missing_link_names_itself() -> None:
    store = MemoryResponseStore(Clock())
    run(store.put(record("r2", previous="r1")))
    with pytest.raises(NotFound) as info:
        run(load_history(store, "r2"))
    assert "'r1'" in info.value.message and "'r2'" in info.value.message


def test_loops_and_long_chains_are_refused() -> None:
    store = MemoryResponseStore(Clock())
    run(store.put(record("a", previous="b")))
    run(store.put(record("b", previous="a")))
    with pytest.raises(NotFound):
        run(load_history(store, "a"))
    for i in range(1, 6):
        run(store.put(record(f"c{i}", previous=f"c{i - 1}" if i > 1 else None)))
    assert len(run(load_history(store, "c5", max_chain=5))) == 10
    with pytest.raises(NotFound):
        run(load_history(store, "c5", max_chain=4))


class StoreMachine(RuleBasedStateMachine):
    """Random puts, gets, deletes and clock steps: the bounds always hold and nothing is lost early."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.store = MemoryResponseStore(self.clock, max_entries=5, max_bytes=2500, ttl=30)
        self.model: dict[str, tuple[float, StoredResponse]] = {}

    @rule(rid=st.sampled_from("abcdefgh"), size=st.integers(0, 900))
    def put(self, rid: str, size: int) -> None:
        r = record(rid, size=size)
        live = [k for k in self.store._items if self.clock.now - self.model[k][0] < 30]
        self.model.pop(rid, None)
        stored = run(self.store.put(r))
        evicted = [k for k in live if k not in self.store._items and k != rid]
        assert evicted == [k for k in live if k != rid][: len(evicted)], "evictions are not oldest-first"
        for k in evicted:
            self.model.pop(k)
        if stored:
            self.model[rid] = (self.clock.now, r)
        else:
            assert r.size() > 2500

    @rule(rid=st.sampled_from("abcdefgh"))
    def get(self, rid: str) -> None:
        got = run(self.store.get(rid))
        if got is not None:
            stored_at, r = self.model[rid]
            assert got == r and self.clock.now - stored_at < 30
        elif rid in self.model:  # evictions left the model at put time: only expiry remains
            stored_at, _ = self.model.pop(rid)
            assert self.clock.now - stored_at >= 30

    @precondition(lambda self: bool(self.model))
    @rule(rid=st.sampled_from("abcdefgh"))
    def delete(self, rid: str) -> None:
        existed = run(self.store.delete(rid))
        if existed:
            self.model.pop(rid)

    @rule(step=st.floats(0, 20))
    def tick(self, step: float) -> None:
        self.clock.now += step

    @invariant()
    def bounded(self) -> None:
        assert len(self.store) <= 5
        assert self.store.bytes <= 2500
        assert self.store.bytes == sum(size for _, size, _ in self.store._items.values())


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 300)), max_size=30))
@settings(max_examples=100)
def test_most_recent_put_wins(ops: list[tuple[str, int]]) -> None:
    store = MemoryResponseStore(Clock(), max_entries=10, max_bytes=1 << 20)
    last: dict[str, int] = {}
    for rid, size in ops:
        run(store.put(record(rid, size=size)))
        last[rid] = size
    for rid, size in last.items():
        assert run(store.get(rid)) == record(rid, size=size)
