"""Ordinary disconnects log nothing critical (#11), without sockets.

A caller that leaves before the response head (or a head that times out, or a silent host) makes the
proxy reset its tunnel stream; the stream then tells its receiver, ``Upstream``, which used to fail
``done``, a Deferred nobody waits on before the body is read: ``Unhandled error in Deferred:
StreamReset`` when it was collected.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from meshd.quic.errors import CloseReason, ConnectionClosed, StreamReset
from meshd.tunnel.client import HostSilent, Upstream


class FakeStream:
    def reset(self, code: int = 0) -> None:
        pass


def unhandled_after(ending: Any) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if "Unhandled error in Deferred" in str(event.get("log_format", "")) or event.get("log_failure"):
            seen.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        ending()
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(observer)
    return seen


@pytest.mark.parametrize("why", ["caller-left", "head-timeout", "host-silent"])
def test_a_stream_ending_after_the_head_was_given_up_fails_nothing_unhandled(why: str, logged_errors: Any) -> None:
    def scenario() -> None:
        upstream = Upstream(FakeStream(), b"POST")  # type: ignore[arg-type]
        gave_up: list[Failure] = []
        upstream.head.addErrback(gave_up.append)  # the proxy awaits the head and handles its failure
        if why == "host-silent":
            upstream.head.errback(HostSilent("host sent nothing for 3.0s"))
        else:
            upstream.head.cancel()  # Klein cancels the handler when the caller leaves; addTimeout cancels too
        assert gave_up
        # the proxy resets the stream; the stream reports the reset to its receiver
        upstream.connectionLost(Failure(StreamReset(0, by_peer=False)))

    seen = unhandled_after(scenario)
    logged_errors.flush()
    assert seen == []


def test_a_broken_body_still_fails_done_for_its_reader(logged_errors: Any) -> None:
    upstream = Upstream(FakeStream(), b"POST")  # type: ignore[arg-type]
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
    got: list[bytes] = []
    upstream.start_sink(got.append)
    failures: list[Failure] = []
    upstream.done.addErrback(failures.append)
    upstream.connectionLost(Failure(ConnectionClosed(CloseReason(0, "host died"))))
    assert got == [b"abc"]
    assert failures and failures[0].check(ConnectionClosed)
