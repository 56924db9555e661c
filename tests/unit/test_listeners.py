"""meshd.listeners.Listeners: order, removal while notifying, and a failing listener."""

from __future__ import annotations

from twisted.logger import Logger

from meshd.listeners import Listeners


def test_listeners_are_called_in_order_and_one_failure_is_logged_not_spread() -> None:
    logged: list[dict] = []
    log = Logger(observer=logged.append)
    listeners: Listeners = Listeners(log, "relay state listener")
    calls: list[tuple[str, object]] = []

    def broken(value: object) -> None:
        raise RuntimeError("bug")

    remove_a = listeners.add(lambda value: calls.append(("a", value)))
    listeners.add(broken)
    listeners.add(lambda value: calls.append(("c", value)))
    listeners.notify(1)
    assert calls == [("a", 1), ("c", 1)]
    assert len(logged) == 1 and logged[0]["log_format"] == "{what} failed"
    assert logged[0]["what"] == "relay state listener" and logged[0]["log_failure"].check(RuntimeError)
    remove_a()
    remove_a()  # twice is harmless
    listeners.notify(2)
    assert calls[2:] == [("c", 2)]


def test_a_listener_may_remove_itself_while_being_called() -> None:
    listeners: Listeners = Listeners(Logger(), "x")
    seen: list[str] = []
    remove_first = None

    def first() -> None:
        seen.append("first")
        assert remove_first is not None
        remove_first()

    remove_first = listeners.add(first)
    listeners.add(lambda: seen.append("second"))
    listeners.notify()
    listeners.notify()
    assert seen == ["first", "second", "second"]
