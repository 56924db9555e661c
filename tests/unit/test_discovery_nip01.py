"""NIP-01 events: ids, signatures and escaping checked against rust-nostr (nostr_sdk wheel)."""

from __future__ import annotations

import hashlib
import json

import nostr_sdk
import pytest

from meshd.discovery.errors import InvalidEvent, MalformedMessage
from meshd.discovery.keys import NostrKeys
from meshd.discovery.nip01 import (
    Event,
    RelayClosed,
    RelayEOSE,
    RelayEvent,
    RelayNotice,
    RelayOK,
    RelayUnknown,
    canonical_serialization,
    compute_event_id,
    event_from_dict,
    format_close,
    format_event,
    format_req,
    parse_relay_message,
    validate_event,
    verify_event_signature,
)

TRICKY_CONTENTS = [
    "",
    "plain ascii",
    'quote " backslash \\ slash /',
    "line\nfeed\rcr\ttab\bbackspace\fformfeed",
    "c0 controls \x00 \x01 \x1f and DEL \x7f",
    "unicode é ü 日本語 emoji 😀 and U+2028 \u2028 U+2029 \u2029",
    'json-looking {"a":[1,2]} <script>',
    "astral \U0001f9ea and combining e\u0301",
]


def sdk_sign(keys: nostr_sdk.Keys, kind: int, tags: list[list[str]], content: str, created_at: int) -> dict:
    builder = (
        nostr_sdk.EventBuilder(nostr_sdk.Kind(kind), content)
        .tags([nostr_sdk.Tag.parse(t) for t in tags])
        .custom_created_at(nostr_sdk.Timestamp.from_secs(created_at))
    )
    return json.loads(builder.finalize(keys).as_json())


@pytest.mark.parametrize("content", TRICKY_CONTENTS)
def test_meshd_signed_event_verifies_in_nostr_sdk(content: str) -> None:
    keys = NostrKeys.generate()
    tags = [["d", "mesh-llm"], ["k", "mesh-llm"], ["t", content[:5] or "x"]]
    event = keys.sign(kind=31990, tags=tags, content=content, created_at=1_700_000_000)
    sdk_event = nostr_sdk.Event.from_json(event.to_json())
    sdk_event.verify()  # raises on a bad id or signature
    assert sdk_event.verify_id() and sdk_event.verify_signature()
    assert sdk_event.id().to_hex() == event.id
    assert sdk_event.author().to_hex() == keys.pubkey


@pytest.mark.parametrize("content", TRICKY_CONTENTS)
def test_nostr_sdk_signed_event_verifies_in_meshd(content: str) -> None:
    sdk_keys = nostr_sdk.Keys.generate()
    obj = sdk_sign(sdk_keys, 1, [["p", "x\x02y"], ["e", "é"]], content, 1234)
    event = validate_event(obj)
    assert event.content == content
    assert verify_event_signature(event)
    assert event.pubkey == sdk_keys.public_key().to_hex()


@pytest.mark.parametrize("content", TRICKY_CONTENTS)
def test_canonical_serialization_matches_nostr_sdk_id(content: str) -> None:
    sdk_keys = nostr_sdk.Keys.generate()
    tags = [["d", content], ["k", "mesh-llm"]]
    pk = sdk_keys.public_key()
    sdk_id = nostr_sdk.EventId.compute(
        pk,
        nostr_sdk.Timestamp.from_secs(42),
        nostr_sdk.Kind(31990),
        [nostr_sdk.Tag.parse(t) for t in tags],
        content,
    ).to_hex()
    assert compute_event_id(pk.to_hex(), 42, 31990, tags, content) == sdk_id


def test_escaping_rules_exact_bytes() -> None:
    pk = "ab" * 32
    ser = canonical_serialization(pk, 1, 1, [], 'a\n"\\\r\t\b\f\x01\x7fé😀\u2028/')
    # The seven NIP-01 escapes, other C0 as lowercase \u00XX, everything else raw UTF-8, no "\/".
    expected = '[0,"' + pk + '",1,1,[],"a\\n\\"\\\\\\r\\t\\b\\f\\u0001\x7fé😀\u2028/"]'
    assert ser == expected.encode("utf-8")
    assert hashlib.sha256(ser).hexdigest() == compute_event_id(pk, 1, 1, [], 'a\n"\\\r\t\b\f\x01\x7fé😀\u2028/')


def test_lone_surrogate_is_invalid() -> None:
    with pytest.raises(InvalidEvent):
        canonical_serialization("ab" * 32, 1, 1, [], "bad \ud800")


def _signed() -> dict:
    return NostrKeys.generate().sign(kind=31990, tags=[["k", "mesh-llm"]], content="{}", created_at=100).to_dict()


def test_tampered_content_rejected() -> None:
    obj = _signed()
    obj["content"] = '{"x":1}'
    with pytest.raises(InvalidEvent, match="id does not match"):
        validate_event(obj)


def test_recomputed_id_with_foreign_signature_rejected() -> None:
    obj = _signed()
    obj["content"] = "changed"
    obj["id"] = compute_event_id(obj["pubkey"], obj["created_at"], obj["kind"], obj["tags"], obj["content"])
    with pytest.raises(InvalidEvent, match="signature"):
        validate_event(obj)


def test_signature_by_other_key_rejected() -> None:
    obj = _signed()
    other = NostrKeys.generate().sign(kind=31990, tags=[["k", "mesh-llm"]], content="{}", created_at=100)
    obj["sig"] = other.sig
    with pytest.raises(InvalidEvent, match="signature"):
        validate_event(obj)


def test_pubkey_not_on_curve_rejected_without_crash() -> None:
    obj = _signed()
    obj["pubkey"] = "f" * 64  # x >= p: not a valid x coordinate
    obj["id"] = compute_event_id(obj["pubkey"], obj["created_at"], obj["kind"], obj["tags"], obj["content"])
    with pytest.raises(InvalidEvent, match="signature"):
        validate_event(obj)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", "AB" * 32),
        ("id", "ab" * 31),
        ("pubkey", 5),
        ("sig", "ab" * 63),
        ("kind", "31990"),
        ("kind", True),
        ("kind", 1.0),
        ("kind", 70000),
        ("created_at", -1),
        ("created_at", 100.0),
        ("created_at", None),
        ("tags", [["k", 1]]),
        ("tags", ["k"]),
        ("tags", {}),
        ("content", None),
    ],
)
def test_structural_validation(field: str, value: object) -> None:
    obj = _signed()
    obj[field] = value
    with pytest.raises(InvalidEvent):
        event_from_dict(obj)


def test_missing_field_rejected() -> None:
    for field in ("id", "pubkey", "created_at", "kind", "tags", "content", "sig"):
        obj = _signed()
        del obj[field]
        with pytest.raises(InvalidEvent):
            validate_event(obj)
    with pytest.raises(InvalidEvent):
        validate_event(["not", "an", "object"])


def test_event_roundtrip_and_tags() -> None:
    ev = NostrKeys.generate().sign(
        kind=31990,
        tags=[["d", "mesh-llm"], ["expiration", "5"], ["expiration", "9"], ["x"]],
        content="c",
        created_at=1,
    )
    again = validate_event(json.loads(ev.to_json()))
    assert again == ev
    assert isinstance(again, Event)
    assert ev.tag_value("expiration") == "5"
    assert ev.tag_value("x") is None
    assert ev.tag_value("missing") is None
    assert ev.has_tag("d", "mesh-llm") and not ev.has_tag("d", "other")


# ---------------------------------------------------------------------------------------------- messages


def test_format_client_messages() -> None:
    assert format_req("s1", [{"kinds": [31990], "#k": ["mesh-llm"], "limit": 100}]) == (
        '["REQ","s1",{"kinds":[31990],"#k":["mesh-llm"],"limit":100}]'
    )
    assert format_close("s1") == '["CLOSE","s1"]'
    ev = NostrKeys.generate().sign(kind=1, tags=[], content="é", created_at=1)
    assert json.loads(format_event(ev)) == ["EVENT", ev.to_dict()]
    assert "é" in format_event(ev)
    with pytest.raises(ValueError):
        format_req("", [{}])
    with pytest.raises(ValueError):
        format_req("x" * 65, [{}])
    with pytest.raises(ValueError):
        format_req("s", [])


def test_parse_relay_messages() -> None:
    assert parse_relay_message('["EVENT","s",{"a":1}]') == RelayEvent("s", {"a": 1})
    assert parse_relay_message(b'["EOSE","s"]') == RelayEOSE("s")
    assert parse_relay_message('["OK","ab",true,""]') == RelayOK("ab", True, "")
    assert parse_relay_message('["OK","ab",false,"invalid: bad sig"]') == RelayOK("ab", False, "invalid: bad sig")
    assert parse_relay_message('["OK","ab",false]') == RelayOK("ab", False, "")
    assert parse_relay_message('["NOTICE","hi"]') == RelayNotice("hi")
    assert parse_relay_message('["CLOSED","s","error: x"]') == RelayClosed("s", "error: x")
    assert parse_relay_message('["AUTH","challenge"]') == RelayUnknown("AUTH", ("challenge",))


@pytest.mark.parametrize(
    "data",
    [
        "",
        "not json",
        "{}",
        "[]",
        "[1,2]",
        '["EVENT","s"]',
        '["EVENT","s",[]]',
        '["EVENT",5,{}]',
        '["EVENT","s",{},{}]',
        '["EOSE"]',
        '["OK","ab","true",""]',
        '["NOTICE",3]',
        '["CLOSED"]',
        '["EVENT","s",{"x":NaN}]',
        b'["NOTICE","\xff"]',
    ],
)
def test_malformed_relay_messages(data: str | bytes) -> None:
    with pytest.raises(MalformedMessage):
        parse_relay_message(data)
