"""Invite tokens and EndpointAddr JSON (MESH_PROTOCOL.md §2.1)."""

from __future__ import annotations

import base64

import pytest

from meshd.protocol.errors import InvalidToken
from meshd.protocol.keys import endpoint_id_base32, endpoint_id_hex, parse_endpoint_id, short_id
from meshd.protocol.token import (
    EndpointAddr,
    decode_token,
    encode_token,
    format_socket_addr,
    parse_socket_addr,
    relay_host_port,
    relay_tls_hostname,
)

# The real example from the mesh-llm repository history quoted in §2.1.
GOLDEN_JSON = (
    '{"id":"62b57b5ab8416a62690102d22e8bc9f5df8cf1b9cb41845b3599d2d97ef2645c","addrs":[{"Ip":"192.168.1.206:41944"}]}'
)
GOLDEN_ID = bytes.fromhex("62b57b5ab8416a62690102d22e8bc9f5df8cf1b9cb41845b3599d2d97ef2645c")
RELAY = "https://usw1-2.relay.michaelneale.mesh-llm.iroh.link./"


def _addr_json(addrs: str, id_text: str = GOLDEN_ID.hex()) -> str:
    return '{"id":"' + id_text + '","addrs":' + addrs + "}"


def b64url(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_golden_token_round_trips_byte_exactly() -> None:
    token = b64url(GOLDEN_JSON)
    assert "=" not in token
    addr = decode_token(token)
    assert addr == EndpointAddr(GOLDEN_ID, (), (("192.168.1.206", 41944),))
    assert addr.to_json() == GOLDEN_JSON
    assert encode_token(addr) == token
    assert len(token) % 4 != 0  # so the padding rejection below is exercised


def test_whitespace_tolerated_padding_rejected() -> None:
    # mesh-llm decodes with URL_SAFE_NO_PAD, which rejects '=' padding: a padded token that meshd
    # accepted would be refused by every Rust node it is handed to (and by Nostr discovery).
    token = b64url(GOLDEN_JSON)
    assert decode_token(f"\t{token} \r\n").to_json() == GOLDEN_JSON
    padded = token + "=" * (-len(token) % 4)
    with pytest.raises(InvalidToken, match="padded") as info:
        decode_token(f"  {padded}\n")
    assert info.value.code == "bootstrap_token_invalid"


def test_non_zero_trailing_bits_rejected() -> None:
    # The last character of a 2- or 3-char group carries 4 or 2 unused bits; mesh-llm's base64
    # engine requires them to be zero, so each byte string has exactly one token spelling.
    token = b64url(GOLDEN_JSON)
    assert len(token) % 4 in (2, 3)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    spare = alphabet[alphabet.index(token[-1]) | 1]
    with pytest.raises(InvalidToken, match="trailing bits"):
        decode_token(token[:-1] + spare)


def test_json_layout_and_ordering() -> None:
    addr = EndpointAddr(
        GOLDEN_ID,
        relay_urls=(RELAY, "https://aps1-1.relay.michaelneale.mesh-llm.iroh.link./"),
        ip_addrs=(("::1", 5678), ("10.0.0.2", 7), ("10.0.0.10", 1), ("2.2.2.2", 9), ("10.0.0.2", 7)),
    )
    # Relays (by URL text) before IPs; IPv4 before IPv6; IPv4 by numeric value, not text.
    assert addr.to_json() == (
        '{"id":"62b57b5ab8416a62690102d22e8bc9f5df8cf1b9cb41845b3599d2d97ef2645c","addrs":['
        '{"Relay":"https://aps1-1.relay.michaelneale.mesh-llm.iroh.link./"},'
        '{"Relay":"https://usw1-2.relay.michaelneale.mesh-llm.iroh.link./"},'
        '{"Ip":"2.2.2.2:9"},{"Ip":"10.0.0.2:7"},{"Ip":"10.0.0.10:1"},{"Ip":"[::1]:5678"}]}'
    )
    assert EndpointAddr.from_json(addr.to_json()) == addr


def test_trailing_dot_relay_kept_verbatim() -> None:
    addr = EndpointAddr(GOLDEN_ID, relay_urls=(RELAY,))
    assert RELAY in addr.to_json()
    assert decode_token(encode_token(addr)).relay_urls == (RELAY,)
    assert relay_tls_hostname(RELAY) == "usw1-2.relay.michaelneale.mesh-llm.iroh.link"
    assert relay_host_port(RELAY) == ("usw1-2.relay.michaelneale.mesh-llm.iroh.link", 443)
    assert relay_host_port("http://127.0.0.1:3340/") == ("127.0.0.1", 3340)
    assert relay_host_port("http://localhost./") == ("localhost", 80)


def test_unknown_variants_skipped() -> None:
    text = (
        '{"id":"62b57b5ab8416a62690102d22e8bc9f5df8cf1b9cb41845b3599d2d97ef2645c","addrs":['
        '{"Custom":{"id":1,"data":[1,2]}},{"Ip":"192.168.1.206:41944"},{"Bluetooth":"x"}],"extra":1}'
    )
    assert EndpointAddr.from_json(text).to_json() == GOLDEN_JSON


def test_ipv6_forms() -> None:
    text = _addr_json('[{"Ip":"[::1]:5678"},{"Ip":"[fe80::1%2]:7"}]')
    addr = EndpointAddr.from_json(text)
    assert addr.ip_addrs == (("::1", 5678), ("fe80::1%2", 7))
    assert addr.to_json() == text
    assert parse_socket_addr("[2001:DB8:0:0:0:0:0:1]:443") == ("2001:db8::1", 443)
    assert format_socket_addr(("::ffff:1.2.3.4", 80)) == "[::ffff:1.2.3.4]:80"
    assert format_socket_addr(("2001:db8:0:1:0:0:0:1", 80)) == "[2001:db8:0:1::1]:80"


def test_dialable_ip_addrs() -> None:
    addr = EndpointAddr(
        GOLDEN_ID,
        ip_addrs=(("203.0.113.5", 0), ("0.0.0.0", 80), ("192.168.1.2", 41944), ("::", 1), ("::1", 2)),
    )
    assert addr.dialable_ip_addrs() == (("192.168.1.2", 41944), ("::1", 2))
    # Port 0 entries are kept (and re-encoded) even though they are not dialled.
    assert '{"Ip":"203.0.113.5:0"}' in addr.to_json()


def test_base32_id_accepted_output_is_hex() -> None:
    b32 = base64.b32encode(GOLDEN_ID).decode().rstrip("=").lower()
    assert len(b32) == 52
    assert endpoint_id_base32(GOLDEN_ID) == b32
    for spelling in (b32, b32.upper(), b32[:26].upper() + b32[26:]):
        addr = EndpointAddr.from_json(_addr_json("[]", spelling))
        assert addr.id == GOLDEN_ID
        assert addr.to_json() == _addr_json("[]")


def test_base32_id_errors() -> None:
    b32 = endpoint_id_base32(GOLDEN_ID)
    last = "abcdefghijklmnopqrstuvwxyz234567".index(b32[-1])
    # Flip one of the 4 padding bits of the last character: same 32 bytes, illegal spelling.
    flipped = b32[:-1] + "abcdefghijklmnopqrstuvwxyz234567"[last ^ 0x01]
    with pytest.raises(ValueError, match="trailing bits"):
        parse_endpoint_id(flipped)
    for bad in (b32[:-1], b32 + "a", b32[:-1] + "1", b32[:-1] + "="):
        with pytest.raises(ValueError):
            parse_endpoint_id(bad)


def test_hex_id_any_case() -> None:
    assert parse_endpoint_id(GOLDEN_ID.hex().upper()) == GOLDEN_ID
    with pytest.raises(ValueError):
        parse_endpoint_id("g" + GOLDEN_ID.hex()[1:])


def test_id_helpers() -> None:
    assert endpoint_id_hex(GOLDEN_ID) == GOLDEN_ID.hex()
    assert short_id(GOLDEN_ID) == "62b57b5ab8"
    addr = EndpointAddr(GOLDEN_ID)
    assert (addr.id_hex, addr.short_id) == (GOLDEN_ID.hex(), "62b57b5ab8")
    with pytest.raises(ValueError):
        short_id(GOLDEN_ID[:31])


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "empty token"),
        ("   \n", "empty token"),
        ("eyJ!aWQ", "unexpected character '!'"),
        ("eyJ+aWQ", "unexpected character '+'"),
        ("eyJpZ", "impossible length"),
        (b64url("not json"), "not JSON"),
        (b64url("[1,2]"), "not an object"),
        (b64url('{"id":"' + GOLDEN_ID.hex() + '"}'), "no list 'addrs'"),
        (b64url('{"addrs":[]}'), "no string 'id'"),
        (b64url(_addr_json("[]", GOLDEN_ID.hex()[:63])), "bad id"),
        (b64url(_addr_json('[{"Ip":"1.2.3.4"}]')), "bad IP address"),
        (b64url(_addr_json('[{"Ip":"::1:5"}]')), "bad IP address"),
        (b64url(_addr_json('[{"Ip":"1.2.3.4:70000"}]')), "bad IP address"),
        (b64url(_addr_json('[{"Ip":"[1.2.3.4]:5"}]')), "bad IP address"),
        (b64url(_addr_json('[{"Ip":5}]')), "bad IP address"),
        (b64url(_addr_json('[{"Relay":7}]')), "bad relay"),
        (b64url(_addr_json('[{"Relay":"not a url"}]')), "bad relay"),
        (b64url(_addr_json('["Relay"]')), "bad address entry"),
        (b64url(_addr_json('[{"Ip":"1.2.3.4:5","Relay":"https://x/"}]')), "bad address entry"),
        ("__79", "not UTF-8"),
        ("A" * 70_000, "too long"),
    ],
)
def test_bad_tokens(token: str, reason: str) -> None:
    with pytest.raises(InvalidToken) as info:
        decode_token(token)
    assert reason in str(info.value)
    assert reason in info.value.reason


def test_all_zero_id_is_a_valid_key() -> None:
    # y = 0 gives x^2 = -1, a square mod p: iroh's own tests build a PublicKey from 32 zeros.
    addr = EndpointAddr.from_json(_addr_json("[]", "00" * 32))
    assert addr.id == bytes(32)


def test_id_that_is_not_a_curve_point() -> None:
    # y = 2: x^2 = 3 / (4d + 1) is not a square mod p (the RFC 8032 oracle in
    # test_protocol_validate.py agrees), so ed25519-dalek, and so iroh, rejects this key.
    not_a_point = (2).to_bytes(32, "little").hex()
    with pytest.raises(InvalidToken, match="not a valid Ed25519 public key"):
        EndpointAddr.from_json(_addr_json("[]", not_a_point))


def test_constructor_validation() -> None:
    with pytest.raises(ValueError):
        EndpointAddr(GOLDEN_ID[:31])
    with pytest.raises(ValueError):
        EndpointAddr(GOLDEN_ID, ip_addrs=(("not-an-ip", 1),))
    with pytest.raises(ValueError):
        EndpointAddr(GOLDEN_ID, ip_addrs=(("1.2.3.4", 65536),))
    with pytest.raises(ValueError):
        EndpointAddr(GOLDEN_ID, relay_urls=("relay.example",))
