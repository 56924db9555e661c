"""Bounded JSON (meshd.jsonbound) and every parser of outside JSON fed what broke them (#1).

Each entry point gets JSON nested 5,000 deep (which made ``json.loads`` raise ``RecursionError``, an
exception none of them caught), a 100,000-digit number, ``1e999`` and a string of megabytes, and must
answer with its own documented error (or a neutral value), never with another exception.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from meshd import jsonbound
from meshd.apirequest import inspect_body
from meshd.discovery.errors import InvalidListing, MalformedMessage
from meshd.discovery.keys import NostrKeys
from meshd.discovery.listing import MeshListing, build_listing_event, default_token_ok, process_events
from meshd.discovery.nip01 import parse_relay_message
from meshd.httpwire import reshape_upstream_error
from meshd.identity import Identity
from meshd.protocol import node_pb2
from meshd.protocol.errors import InvalidToken
from meshd.protocol.peers import peer_info_from_announcement
from meshd.protocol.requirements import RequirementError, SignedBootstrapToken
from meshd.protocol.token import EndpointAddr, decode_invite_token, decode_token, encode_token
from meshd.tunnel import requested_model

DEEP_ARRAY = "[" * 5000 + "]" * 5000
DEEP_OBJECT = '{"a":' * 5000 + "1" + "}" * 5000
HUGE_INT = "1" * 100_000
HUGE_FLOAT = "0." + "1" * 100_000
OVERFLOW = "1e999"
HOSTILE = [DEEP_ARRAY, DEEP_OBJECT, HUGE_INT, HUGE_FLOAT, OVERFLOW]
NOW = 1_750_000_000


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def good_token() -> str:
    return encode_token(EndpointAddr(Identity.generate().public_bytes, ip_addrs=[("127.0.0.1", 4000)]))


# -- the helper ------------------------------------------------------------------------------------


def reference_depth(raw: bytes) -> int:
    """Deepest nesting a JSON parser could reach, the slow and obvious way: a character loop aware
    of strings and escapes, stopping where any parser must stop (a backslash outside a string, or a
    closer with nothing open)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        char = chr(byte)
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "\\":
            break
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
            if depth < 0:
                break
    return deepest


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=40,
)


@given(json_values)
def test_loads_agrees_with_the_standard_library_on_documents_within_bounds(value: Any) -> None:
    text = json.dumps(value, ensure_ascii=False)
    assert jsonbound.loads(text, max_bytes=1 << 20) == json.loads(text)
    assert jsonbound.loads(text.encode(), max_bytes=1 << 20) == json.loads(text)


@given(st.lists(st.sampled_from(["[", "]", "{", "}", '"', "\\", "a", ",", ":", "1"]), max_size=300))
def test_depth_scan_never_sees_less_than_a_parser_could_reach(chars: list[str]) -> None:
    """Any text, balanced or not, strings and escapes anywhere: the linear scan is never fooled into
    letting a deeper document through to the recursive decoder."""
    raw = "".join(chars).encode()
    for limit in (0, 1, 2, 5):
        if reference_depth(raw) > limit:
            assert jsonbound.depth_exceeds(raw, limit)


@given(json_values, st.integers(min_value=0, max_value=6))
def test_depth_scan_is_exact_on_json(value: Any, limit: int) -> None:
    raw = json.dumps(value).encode()
    assert jsonbound.depth_exceeds(raw, limit) == (reference_depth(raw) > limit)


@given(st.integers(min_value=0, max_value=140), st.sampled_from(["[", '{"k":']), st.text(max_size=20))
def test_nesting_at_the_limit_is_read_and_one_deeper_is_refused(depth: int, opener: str, leaf: str) -> None:
    closer = "]" if opener == "[" else "}"
    doc = opener * depth + json.dumps(leaf) + closer * depth
    if depth <= jsonbound.MAX_DEPTH:
        jsonbound.loads(doc, max_bytes=1 << 20)
    else:
        with pytest.raises(jsonbound.BadJSON, match="nested deeper"):
            jsonbound.loads(doc, max_bytes=1 << 20)


def test_every_bound_has_its_reason() -> None:
    cases = {
        DEEP_ARRAY: "nested deeper than 127",
        DEEP_OBJECT: "nested deeper than 127",
        HUGE_INT: "longer than 100",
        HUGE_FLOAT: "longer than 100",
        OVERFLOW: "out of range",
        "NaN": "NaN is not JSON",
        "[Infinity]": "Infinity is not JSON",
        '"\\ud800"': None,  # a lone surrogate escape is JSON text; decoding it is allowed
        "\ufeff{}": "not JSON",
        "{": "not JSON",
        "[1] x": "not JSON",
    }
    for text, reason in cases.items():
        if reason is None:
            jsonbound.loads(text, max_bytes=100)
            continue
        with pytest.raises(jsonbound.BadJSON) as err:
            jsonbound.loads(text, max_bytes=200_000)
        assert reason in err.value.reason, (text[:20], err.value.reason)
        assert isinstance(err.value, ValueError)
    with pytest.raises(jsonbound.BadJSON, match="larger than 10 bytes"):
        jsonbound.loads(b'"' + b"x" * 20 + b'"', max_bytes=10)
    with pytest.raises(jsonbound.BadJSON, match="not UTF-8"):
        jsonbound.loads(b'"\xff"', max_bytes=10)
    with pytest.raises(jsonbound.BadJSON, match="lone surrogate"):
        jsonbound.loads('"\ud800"', max_bytes=10)
    assert jsonbound.loads("9" * 100, max_bytes=200) == int("9" * 100)
    assert jsonbound.loads('"[[[[\\"]]"', max_bytes=100) == '[[[["]]'


def test_hostile_documents_cost_little_time() -> None:
    """8 MiB bodies of the worst shapes are refused (or read) in well under a second each."""
    worst = [
        b"[" * (8 << 20),
        b'{"a":' * (1 << 20),
        b"[" + b"1" * (8 << 20) + b"]",
        b'["' + b'\\"' * (4 << 20),
    ]
    for doc in worst:
        started = time.process_time()
        with pytest.raises(jsonbound.BadJSON):
            jsonbound.loads(doc, max_bytes=16 << 20)
        assert time.process_time() - started < 1.0, doc[:10]


# -- every parser of outside JSON -------------------------------------------------------------------


def test_nostr_relay_messages() -> None:
    for bad in HOSTILE:
        with pytest.raises(MalformedMessage):
            parse_relay_message(f'["EVENT","s",{{"content":"x","tags":{bad}}}]'.encode())
        with pytest.raises(MalformedMessage):
            parse_relay_message(bad)
    big = json.dumps(["NOTICE", "x" * (2 << 20)])
    with pytest.raises(MalformedMessage, match="larger than"):
        parse_relay_message(big)


def test_listing_contents() -> None:
    for bad in HOSTILE:
        with pytest.raises(InvalidListing):
            MeshListing.from_json(bad)
        content = f'{{"invite_token":"t","serving":[],"total_vram_bytes":{bad},"node_count":1}}'
        with pytest.raises(InvalidListing):
            MeshListing.from_json(content)


def test_a_poisoned_listing_does_not_end_the_round() -> None:
    """The #1 attack: a signed listing nested 5,000 deep next to a good one. The good one is found."""
    good_keys, evil_keys = NostrKeys.generate(), NostrKeys.generate()
    token = good_token()
    listing = MeshListing(invite_token=token, serving=["m"], total_vram_bytes=0, node_count=1)
    good = build_listing_event(good_keys, listing, now=NOW)
    events: list[Any] = []
    for i, bad in enumerate(HOSTILE):
        poisoned = evil_keys.sign(
            kind=31990,
            tags=[["d", "mesh-llm"], ["k", "mesh-llm"]],
            content=bad if i % 2 else f'{{"invite_token":{bad}}}',
            created_at=NOW + i,
        )
        events.append(poisoned.to_dict())
        other = NostrKeys.generate()
        events.append(
            other.sign(
                kind=31990,
                tags=[["d", "mesh-llm"], ["k", "mesh-llm"]],
                content=json.dumps({"invite_token": b64(bad), "serving": [], "total_vram_bytes": 0, "node_count": 1}),
                created_at=NOW,
            ).to_dict()
        )
    events.append({"id": DEEP_ARRAY})  # not even an event
    events.append(good.to_dict())
    from meshd.discovery.listing import default_token_ok as token_ok

    meshes = process_events(events, now=NOW, token_ok=token_ok)
    assert [m.listing.invite_token for m in meshes] == [token]


def test_a_token_check_that_raises_costs_only_its_listing() -> None:
    keys = [NostrKeys.generate() for _ in range(3)]
    events = [
        build_listing_event(k, MeshListing(invite_token=f"t{i}", serving=[], total_vram_bytes=0, node_count=1), now=NOW)
        for i, k in enumerate(keys)
    ]

    def token_ok(token: str) -> bool:
        if token == "t1":
            raise RecursionError("a bug somewhere below")
        return True

    assert sorted(m.listing.invite_token for m in process_events(events, now=NOW, token_ok=token_ok)) == ["t0", "t2"]


def test_invite_tokens() -> None:
    for bad in HOSTILE:
        token = b64(bad)
        assert default_token_ok(token) is False
        with pytest.raises(InvalidToken):
            decode_token(token)
        with pytest.raises(InvalidToken):
            decode_invite_token(token, now_ms=NOW * 1000)
        with pytest.raises(InvalidToken):
            EndpointAddr.from_json(bad)
        with pytest.raises(InvalidToken):
            decode_token(b64(f'{{"id":"{"ab" * 32}","addrs":{bad}}}'))
        with pytest.raises(RequirementError):
            SignedBootstrapToken.from_json(bad.encode())
        signed_shape = f'{{"version":1,"serialized_addrs":{bad},"mesh_id":"m"}}'
        with pytest.raises(InvalidToken):
            decode_invite_token(b64(signed_shape), now_ms=NOW * 1000)


def test_gossiped_addresses() -> None:
    """A nested ``serialized_addr`` in gossip: the entry keeps its bare id instead of raising."""
    me = Identity.generate().public_bytes
    for bad in HOSTILE:
        ann = node_pb2.PeerAnnouncement(endpoint_id=me, role=node_pb2.CLIENT, serialized_addr=bad.encode())
        info = peer_info_from_announcement(ann)
        assert info.addr == EndpointAddr(me)


def test_api_and_tunnel_body_readers() -> None:
    for bad in HOSTILE:
        for body in (bad.encode(), f'{{"model":"m","x":{bad}}}'.encode()):
            assert inspect_body(body) == (None, False)
            assert requested_model(body) is None
    assert inspect_body(b'{"model":"m","stream":true}') == ("m", True)
    assert requested_model(b'{"model":"m"}') == "m"


def test_upstream_error_bodies_are_reshaped_not_raised() -> None:
    for bad in HOSTILE:
        body = json.loads(reshape_upstream_error(400, f'{{"error":{bad}}}'.encode()))
        assert body["error"]["type"] == "invalid_request_error"


def test_relay_link_keeps_its_connection_after_a_nested_message() -> None:
    """A nested relay message used to escape ``message_received`` and drop the relay's connection."""
    from tests.unit.test_discovery_nostr_pool import URL_A, make_pool, state

    clock = Clock()
    pool, eps = make_pool(clock, [URL_A])
    eps[URL_A].outcomes = ["accept"]
    got: list[Any] = []
    pool.subscribe("s", [{}], lambda url, event: got.append(event), lambda url: got.append("EOSE"))
    pool.startService()
    eps[URL_A].flush()
    server = eps[URL_A].server
    assert server is not None
    for bad in HOSTILE:
        server.sendMessage(f'["EVENT","s",{bad}]'.encode())
        server.sendMessage(bad.encode())
    server.send_json(["EVENT", "s", {"id": "after"}])
    server.send_json(["EOSE", "s"])
    eps[URL_A].flush()
    assert got == [{"id": "after"}, "EOSE"]
    assert state(pool, URL_A)["state"] == "up"
    pool.stopService()
