"""Slow clients and connection floods on the HTTP ports (#6), with a Clock and in-memory transports.

Before: the 30 s header timeout was an idle timeout, so a header line every 10 s kept a connection
forever, and nothing bounded how many connections a port (or one address) held.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource

from meshd.limits import DESCRIPTOR_RESERVE, MAX_CONNECTIONS_PER_PORT, connection_limit
from meshd.web.http import BODY_DEADLINE, HEADER_DEADLINE, HEADER_READ_TIMEOUT, LimitedSite


class Hello(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        return b"hello"


def make_site(**kw: Any) -> tuple[LimitedSite, Clock]:
    site = LimitedSite(Hello(), lambda status, message, code: f'{{"error":"{code}"}}'.encode(), **kw)
    clock = Clock()
    site.reactor = clock  # type: ignore[attr-defined]
    return site, clock


class Conn:
    def __init__(self, site: LimitedSite, host: str = "10.0.0.5") -> None:
        addr = IPv4Address("TCP", host, 40000)
        self.proto = site.buildProtocol(addr)
        self.transport = StringTransport(peerAddress=addr, hostAddress=IPv4Address("TCP", "127.0.0.1", 9337))
        self.proto.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    @property
    def answer(self) -> bytes:
        return self.transport.value()

    @property
    def closing(self) -> bool:
        return bool(self.transport.disconnecting)

    def lose(self) -> None:
        self.proto.connectionLost(None)


def test_a_header_line_every_few_seconds_is_cut_at_the_total_deadline() -> None:
    site, clock = make_site()
    conn = Conn(site)
    conn.send(b"GET /health HTTP/1.1\r\n")
    for i in range(4):
        clock.advance(2.0)
        conn.send(b"x-slow-%d: y\r\n" % i)  # always well within the 30 s idle timeout
    assert conn.answer == b"" and not conn.closing
    clock.advance(HEADER_DEADLINE - 8.0)
    assert conn.answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b'"request_timeout"' in conn.answer
    assert conn.closing
    clock.advance(10)  # a client that does not read its 408 is cut off
    assert conn.transport.disconnected or conn.transport.disconnecting


def test_a_silent_connection_is_cut_at_the_header_deadline_too() -> None:
    site, clock = make_site()
    conn = Conn(site)
    clock.advance(HEADER_DEADLINE - 0.1)
    assert not conn.closing
    clock.advance(0.2)
    assert conn.answer.startswith(b"HTTP/1.1 408 ")


def test_a_prompt_request_is_answered_and_a_kept_alive_connection_waits_for_its_next_request() -> None:
    site, clock = make_site()
    conn = Conn(site)
    conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"200 OK" in conn.answer and b"hello" in conn.answer
    conn.transport.clear()
    clock.advance(HEADER_DEADLINE + 5)  # idle between requests: only the idle timeout applies
    assert conn.answer == b"" and not conn.closing
    conn.send(b"GET / HTTP/1.1\r\n")  # the next request starts: its own header deadline
    clock.advance(HEADER_DEADLINE - 1)
    conn.send(b"Host: x\r\n\r\n")
    assert b"200 OK" in conn.answer
    conn.transport.clear()
    conn.send(b"GET / HTTP/1.1\r\n")
    clock.advance(HEADER_DEADLINE)
    assert conn.answer.startswith(b"HTTP/1.1 408 ")


def test_an_idle_kept_alive_connection_is_closed_by_the_idle_timeout() -> None:
    site, clock = make_site()
    conn = Conn(site)
    conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    clock.advance(HEADER_READ_TIMEOUT + 1)
    assert conn.closing


def test_a_trickled_body_is_cut_at_the_body_deadline() -> None:
    site, clock = make_site()
    conn = Conn(site)
    conn.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    for _ in range(int(BODY_DEADLINE // 5) - 1):
        clock.advance(5.0)
        conn.send(b"a")
    assert conn.answer == b""
    clock.advance(5.0)
    assert conn.answer.startswith(b"HTTP/1.1 408 ")
    assert b"request_timeout" in conn.answer


def test_connections_per_address_are_capped() -> None:
    site, _ = make_site(per_address=3)
    held = [Conn(site, "10.0.0.9") for _ in range(3)]
    extra = Conn(site, "10.0.0.9")
    assert extra.answer.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert b"too_many_connections" in extra.answer and extra.closing
    other = Conn(site, "10.0.0.10")
    other.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"200 OK" in other.answer
    held[0].lose()
    again = Conn(site, "10.0.0.9")
    again.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"200 OK" in again.answer
    assert site.by_address["10.0.0.9"] == 3
    assert site.refused_connections == 1


def test_connections_per_port_are_capped() -> None:
    site, _ = make_site(max_connections=4, per_address=0)
    conns = [Conn(site, f"10.0.1.{i}") for i in range(4)]
    late = Conn(site, "10.0.2.1")
    assert late.answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    for c in conns:
        c.lose()
    assert site.open_connections == 0 and not site.by_address
    fine = Conn(site, "10.0.2.1")
    fine.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"200 OK" in fine.answer


def test_the_api_port_has_no_per_address_cap_behind_a_trusted_proxy() -> None:
    from meshd.web.api import APIApp
    from tests.unit.test_web import make_node

    assert APIApp(make_node()).site().per_address > 0
    assert APIApp(make_node(trust_proxy=True)).site().per_address == 0


def test_connection_limit_follows_the_descriptor_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    expected = max(64, min(MAX_CONNECTIONS_PER_PORT, (soft - DESCRIPTOR_RESERVE) // 2))
    assert connection_limit() == expected


def test_meshd_raises_its_open_files_limit_to_the_hard_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 8192)
    code = (
        "import resource; from meshd.limits import raise_nofile_limit, connection_limit;"
        "print(*raise_nofile_limit(), connection_limit())"
    )

    def systemd_default() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, wanted))

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=systemd_default, check=True
    ).stdout
    before, after, per_port = (int(x) for x in out.split())
    assert (before, after) == (1024, wanted)
    assert per_port == max(64, min(MAX_CONNECTIONS_PER_PORT, (wanted - DESCRIPTOR_RESERVE) // 2))
