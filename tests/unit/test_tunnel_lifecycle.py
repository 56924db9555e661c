"""The tunnel's two lifecycles (host tunnel, client upstream): the move tables are the truth, the
diagrams in docs/lifecycles.md are drawn from them, and no code path makes a move outside them (#18)."""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from meshd.httpwire import render_request
from meshd.quic.errors import StreamReset
from meshd.tunnel import Backend, HostTunnel, TunnelState
from meshd.tunnel.client import UPSTREAM_MOVES, Upstream, UpstreamState
from meshd.tunnel.host import TUNNEL_MOVES
from tests.unit.test_tunnel_host import RecordingStream

DOC = Path(__file__).resolve().parents[2] / "docs" / "lifecycles.md"


def diagram(title: str) -> set[tuple[str, str]]:
    """The moves a section's mermaid diagram draws (without the [*] start and end)."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    chart = section.split("```mermaid", 1)[1].split("```", 1)[0]
    moves = set()
    for line in chart.splitlines():
        m = re.match(r"\s*(\w+|\[\*\])\s*-->\s*(\w+|\[\*\])", line)
        if m and "[*]" not in m.groups():
            moves.add((m.group(1), m.group(2)))
    return moves


def table(moves: dict[Any, frozenset[Any]]) -> set[tuple[str, str]]:
    return {(a.name, b.name) for a, nexts in moves.items() for b in nexts}


@pytest.mark.parametrize(
    ("title", "moves", "states"),
    [
        ("Host tunnel", TUNNEL_MOVES, TunnelState),
        ("Client upstream", UPSTREAM_MOVES, UpstreamState),
    ],
)
def test_the_diagram_is_the_table(title: str, moves: dict[Any, frozenset[Any]], states: type[enum.Enum]) -> None:
    assert set(moves) == set(states)
    assert diagram(title) == table(moves)


def watch(obj: Any) -> list[str]:
    """The states an object passes through (its ``_enter`` calls)."""
    seen: list[str] = [obj.state.name]
    enter = obj._enter

    def recording(state: Any) -> None:
        enter(state)
        seen.append(state.name)

    obj._enter = recording
    return seen


REQUEST = render_request(b"POST", b"/v1/chat/completions", [(b"host", b"h")], b'{"model":"m"}')


def host_tunnel(slots: int = 1, url: str = "http://127.0.0.1:9") -> tuple[HostTunnel, RecordingStream, Clock, Backend]:
    clock = Clock()
    stream = RecordingStream()
    backend = Backend(clock, url, max_inflight=slots)
    return HostTunnel(stream, backend, clock=clock), stream, clock, backend


def test_a_bad_request_goes_from_reading_to_done() -> None:
    tunnel, stream, _, _ = host_tunnel()
    seen = watch(tunnel)
    tunnel.dataReceived(b"NOT HTTP\r\n\r\n")
    assert seen == ["READING", "DONE"] and stream.written.startswith(b"HTTP/1.1 400 ")


def test_a_request_waits_in_queued_and_leaves_by_the_deadline() -> None:
    tunnel, _, clock, backend = host_tunnel(slots=1)
    backend.request_slot(lambda: None, lambda: None, 0)  # the only slot is taken
    seen = watch(tunnel)
    tunnel.dataReceived(render_request(b"POST", b"/x", [(b"host", b"h"), (b"x-meshd-wait", b"2")], b"{}"))
    clock.advance(2.5)
    assert seen == ["READING", "QUEUED", "DONE"] and backend.slots.queued == 0


def test_the_stream_going_away_in_any_state_ends_in_done_once() -> None:
    for feed in (b"", REQUEST):
        tunnel, _, _, backend = host_tunnel(slots=4)
        seen = watch(tunnel)
        if feed:
            tunnel.dataReceived(feed)
        tunnel.connectionLost(Failure(StreamReset(0, by_peer=True)))
        tunnel.connectionLost(Failure(StreamReset(0, by_peer=True)))
        assert seen[-1] == "DONE" and seen.count("DONE") == 1 and backend.inflight == 0


def test_a_move_outside_the_table_is_refused() -> None:
    tunnel, *_ = host_tunnel()
    tunnel.connectionLost(Failure(StreamReset(0, by_peer=True)))
    with pytest.raises(AssertionError):
        tunnel._enter(TunnelState.RELAYING)
    upstream = Upstream(RecordingStream(), b"POST")
    with pytest.raises(AssertionError):
        upstream._enter(UpstreamState.DONE)


@pytest.mark.parametrize(
    ("chunks", "ending", "path"),
    [
        ([b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"], None, ["AWAITING_HEAD", "BODY", "DONE"]),
        ([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"], None, ["AWAITING_HEAD", "BODY", "DONE"]),
        ([b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nok"], "reset", ["AWAITING_HEAD", "BODY", "FAILED"]),
        ([b"HTTP/1.1 200 OK\r\ncontent-le"], "reset", ["AWAITING_HEAD", "FAILED"]),
        ([b"garbage\r\n\r\n"], None, ["AWAITING_HEAD", "FAILED"]),
    ],
)
def test_upstream_paths(chunks: list[bytes], ending: str | None, path: list[str]) -> None:
    for raw in (False, True):
        upstream = Upstream(RecordingStream(), b"POST", raw_chunked=raw)
        upstream.head.addErrback(lambda _: None)
        upstream.start_sink(lambda _: None)
        seen = watch(upstream)
        for chunk in chunks:
            upstream.dataReceived(chunk)
        if ending == "reset":
            upstream.connectionLost(Failure(StreamReset(0, by_peer=True)))
        upstream.done.addErrback(lambda _: None)
        assert seen == path, raw
