"""``meshd.web.origin``: the header checks that keep other sites' pages off the console's POST routes."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from meshd.web.origin import (
    MAX_VALUE,
    Provenance,
    is_json,
    is_loopback,
    names_loopback,
    parse_host,
    parse_origin,
    provenance,
    same_origin,
)

label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
dns_name = st.lists(label, min_size=1, max_size=4).map(".".join).filter(lambda n: not n.isdigit())
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a}]")
hosts = st.one_of(dns_name, ipv4, ipv6)
ports = st.integers(min_value=1, max_value=65535)
header_bytes = st.one_of(st.none(), st.binary(max_size=300), st.binary(min_size=MAX_VALUE, max_size=MAX_VALUE + 50))


def _bare(host: str) -> str:
    return host.strip("[]")


@given(header_bytes, header_bytes, header_bytes)
def test_no_header_value_raises(origin: bytes | None, fetch_site: bytes | None, host: bytes | None) -> None:
    assert provenance(origin, fetch_site, host) in Provenance
    assert isinstance(same_origin(origin, host), bool)
    assert isinstance(names_loopback(host), bool)
    assert isinstance(is_json(origin), bool)
    parse_origin(origin)
    parse_host(host)


@given(hosts, ports, st.sampled_from(["http", "https"]))
def test_an_origin_is_same_origin_with_its_own_host_only(host: str, port: int, scheme: str) -> None:
    origin = f"{scheme}://{host}:{port}".encode()
    assert same_origin(origin, f"{host}:{port}".encode())
    assert same_origin(origin.upper() if host.isascii() else origin, f"{host}:{port}".encode())
    assert not same_origin(origin, f"{host}:{port % 65535 + 1}".encode())
    assert not same_origin(origin, f"other-{_bare(host).replace(':', '-')}.example:{port}".encode())
    assert provenance(origin, None, f"{host}:{port}".encode()) is Provenance.SAME_ORIGIN
    assert provenance(origin, b"cross-site", f"{host}:{port}".encode()) is Provenance.CROSS_SITE


@given(hosts, ports, st.sampled_from(["/", "/x", "?a", "#f", "/@evil.example"]))
def test_an_origin_with_anything_after_the_authority_is_refused(host: str, port: int, tail: str) -> None:
    assert parse_origin(f"http://{host}:{port}{tail}".encode()) is None
    assert not same_origin(f"http://{host}:{port}{tail}".encode(), f"{host}:{port}".encode())


@given(hosts, ports)
def test_userinfo_tricks_never_match(host: str, port: int) -> None:
    assert not same_origin(f"http://{host}:{port}@evil.example".encode(), f"{host}:{port}".encode())
    assert not same_origin(f"http://evil.example@{host}:{port}".encode(), f"{host}:{port}".encode())
    assert parse_host(f"evil.example@{host}:{port}".encode()) is None


def test_default_ports_and_the_scheme() -> None:
    assert same_origin(b"https://console.example", b"console.example")  # TLS proxy passing Host through
    assert same_origin(b"http://console.example", b"console.example:80")
    assert not same_origin(b"https://console.example", b"console.example:80")
    assert same_origin(b"http://[::1]:3131", b"[::1]:3131")
    for bad in (b"null", b"", b"file://", b"ftp://127.0.0.1:3131", b"127.0.0.1:3131", b"http://", b"http://:80"):
        assert not same_origin(bad, b"127.0.0.1:3131"), bad
    assert not same_origin(b"http://127.0.0.1:99999", b"127.0.0.1:99999")


def test_provenance_without_browser_headers_is_unknown() -> None:
    assert provenance(None, None, b"127.0.0.1:3131") is Provenance.UNKNOWN
    assert provenance(None, b"same-origin", None) is Provenance.SAME_ORIGIN
    assert provenance(None, b" None ", None) is Provenance.SAME_ORIGIN
    assert provenance(None, b"same-site", None) is Provenance.CROSS_SITE
    assert provenance(b"null", b"same-origin", b"127.0.0.1:3131") is Provenance.CROSS_SITE


@given(st.ip_addresses(v=4), ports)
def test_names_loopback_is_exactly_the_loopback_addresses(addr: ipaddress.IPv4Address, port: int) -> None:
    assert names_loopback(f"{addr}:{port}".encode()) == addr.is_loopback
    assert names_loopback(f"{addr}".encode()) == addr.is_loopback


@given(dns_name, ports)
def test_names_loopback_refuses_every_name_but_localhost(name: str, port: int) -> None:
    expected = name == "localhost" or name.endswith(".localhost")
    assert names_loopback(f"{name}:{port}".encode()) == expected
    assert names_loopback(f"{name}.localhost:{port}".encode())
    if not expected:
        assert not names_loopback(f"localhost.{name}:{port}".encode())


def test_names_loopback_examples() -> None:
    for yes in (b"localhost", b"LOCALHOST:3131", b"localhost.:3131", b"[::1]:3131", b"127.9.9.9"):
        assert names_loopback(yes), yes
    for no in (b"", None, b"[::]:3131", b"0.0.0.0:3131", b"127.0.0.1.nip.io", b"evil.example", b"[::1"):
        assert not names_loopback(no), no


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60))
def test_is_json_is_the_media_type_whatever_the_parameters(params: str) -> None:
    assert is_json(b"application/json;" + params.encode())
    assert is_json(b"  APPLICATION/JSON ")
    for other in (b"text/plain", b"application/x-www-form-urlencoded", b"multipart/form-data", b"application/jsonp"):
        assert not is_json(other + b";" + params.encode())


def test_is_loopback() -> None:
    for host in ("127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"):
        assert is_loopback(host), host
    for host in ("10.0.0.1", "0.0.0.0", "::", "::ffff:10.0.0.1", "", None, "localhost", "garbage"):
        assert not is_loopback(host), host
