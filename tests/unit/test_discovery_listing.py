"""MeshListing JSON (§1.2), listing events (§1.1), MeshFilter and the discovery pipeline (§1.4)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import nostr_sdk
import pytest

from meshd.discovery.errors import InvalidListing
from meshd.discovery.keys import NostrKeys
from meshd.discovery.listing import (
    DiscoveredMesh,
    MeshFilter,
    MeshListing,
    build_listing_event,
    default_token_ok,
    discovery_filter,
    listing_coordinate,
    process_events,
)

NOW = 1_750_000_000


def make_token(node_id: str = "62b57b5ab8416a62690102d22e8bc9f5df8cf1b9cb41845b3599d2d97ef2645c") -> str:
    addr = {"id": node_id, "addrs": [{"Ip": "192.168.1.206:41944"}]}
    raw = json.dumps(addr, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


TOKEN = make_token()


def listing(**kw: Any) -> MeshListing:
    base: dict[str, Any] = {
        "invite_token": TOKEN,
        "serving": ["Qwen3-8B-Q4_K_M"],
        "total_vram_bytes": 0,
        "node_count": 1,
    }
    base.update(kw)
    return MeshListing(**base)


# ---------------------------------------------------------------------------------------------- JSON


def test_listing_json_exact_bytes_all_fields() -> None:
    full = MeshListing(
        invite_token="tok",
        serving=["A"],
        wanted=["B", "C"],
        on_disk=["D"],
        total_vram_bytes=48_000_000_000,
        node_count=3,
        client_count=2,
        max_clients=10,
        name="bob's mesh é",
        region="EU",
        mesh_id="0123456789abcdef",
    )
    assert full.to_json() == (
        '{"invite_token":"tok","serving":["A"],"wanted":["B","C"],"on_disk":["D"],'
        '"total_vram_bytes":48000000000,"node_count":3,"client_count":2,"max_clients":10,'
        '"name":"bob\'s mesh é","region":"EU","mesh_id":"0123456789abcdef"}'
    )
    assert MeshListing.from_json(full.to_json()) == full


def test_listing_json_omits_absent_optionals() -> None:
    assert listing(serving=[]).to_json() == (
        '{"invite_token":"' + TOKEN + '","serving":[],"wanted":[],"on_disk":[],'
        '"total_vram_bytes":0,"node_count":1,"client_count":0,"max_clients":0}'
    )
    assert listing(region="x").to_json().endswith('"max_clients":0,"region":"x"}')


def test_listing_decode_defaults_nulls_and_unknown_keys() -> None:
    decoded = MeshListing.from_json(
        '{"node_count":2,"serving":[],"invite_token":"t","total_vram_bytes":5,"name":null,"future_field":[1]}'
    )
    assert decoded == MeshListing(invite_token="t", serving=[], total_vram_bytes=5, node_count=2)
    assert decoded.wanted == () and decoded.client_count == 0 and decoded.name is None


@pytest.mark.parametrize("missing", ["invite_token", "serving", "total_vram_bytes", "node_count"])
def test_listing_missing_required_field(missing: str) -> None:
    obj = json.loads(listing().to_json())
    del obj[missing]
    with pytest.raises(InvalidListing, match=missing):
        MeshListing.from_dict(obj)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("invite_token", 5),
        ("serving", "A"),
        ("serving", [1]),
        ("wanted", None),
        ("on_disk", {"a": 1}),
        ("total_vram_bytes", -1),
        ("total_vram_bytes", 1.5),
        ("total_vram_bytes", 2**64),
        ("total_vram_bytes", "100"),
        ("node_count", True),
        ("client_count", None),
        ("max_clients", -3),
        ("name", 7),
        ("region", ["EU"]),
        ("mesh_id", 1),
    ],
)
def test_listing_wrong_types_rejected(field: str, value: object) -> None:
    obj = json.loads(listing().to_json())
    obj[field] = value
    with pytest.raises(InvalidListing):
        MeshListing.from_dict(obj)


@pytest.mark.parametrize("text", ["", "[]", "null", "{", '"x"', '{"a":NaN}'])
def test_listing_bad_json(text: str) -> None:
    with pytest.raises(InvalidListing):
        MeshListing.from_json(text)


def test_discovered_mesh_json_shape() -> None:
    m = DiscoveredMesh(listing=listing(name="n"), publisher_npub="npub1x", published_at=10, expires_at=None)
    out = m.to_json()
    assert list(out) == ["listing", "publisher_npub", "published_at", "expires_at"]
    assert out["expires_at"] is None and out["listing"]["name"] == "n"
    assert json.dumps(out)  # serializable


# ---------------------------------------------------------------------------------------------- event


def test_listing_event_shape_and_nostr_sdk_verification() -> None:
    keys = NostrKeys.generate()
    ev = build_listing_event(keys, listing(), now=NOW)
    assert ev.kind == 31990
    assert [list(t) for t in ev.tags] == [
        ["d", "mesh-llm"],
        ["k", "mesh-llm"],
        ["expiration", str(NOW + 120)],
    ]
    assert ev.content == listing().to_json()
    assert ev.created_at == NOW
    sdk = nostr_sdk.Event.from_json(ev.to_json())
    sdk.verify()
    assert sdk.kind().as_u16() == 31990
    assert listing_coordinate(keys.pubkey) == f"31990:{keys.pubkey}:mesh-llm"


def test_discovery_filter() -> None:
    assert json.dumps(discovery_filter(), separators=(",", ":")) == '{"kinds":[31990],"#k":["mesh-llm"],"limit":100}'
    discovery_filter()["kinds"].append(1)
    assert discovery_filter()["kinds"] == [31990]  # fresh copy each time


# ---------------------------------------------------------------------------------------------- token


def test_default_token_ok() -> None:
    assert default_token_ok(TOKEN)
    padded = TOKEN + "=" * (-len(TOKEN) % 4)
    assert padded != TOKEN and not default_token_ok(padded)  # mesh-llm 0.76 refuses padded tokens
    assert not default_token_ok(make_token("ab" * 32))  # not an Ed25519 point: no node has that id
    assert not default_token_ok("")
    assert not default_token_ok("!!!")
    assert not default_token_ok(base64.urlsafe_b64encode(b"not json").decode())
    assert not default_token_ok(base64.urlsafe_b64encode(b"[1]").decode())
    assert not default_token_ok(make_token("ab" * 31))
    no_addrs = base64.urlsafe_b64encode(json.dumps({"id": "ab" * 32}).encode()).decode()
    assert not default_token_ok(no_addrs)
    std_alphabet = base64.b64encode(b'{"id":"' + b"ab" * 32 + b'","addrs":[]}?>').decode()
    assert not default_token_ok(std_alphabet.replace("-", "+"))


def test_listings_with_signed_tokens_are_kept_only_while_they_verify() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from meshd.protocol.requirements import (
        MeshGenesisPolicy,
        SignedBootstrapToken,
        SignedMeshGenesisPolicy,
        owner_id,
    )

    owner = Ed25519PrivateKey.generate()
    policy = SignedMeshGenesisPolicy.sign(MeshGenesisPolicy(owner_id(owner.public_key().public_bytes_raw()), 1), owner)
    addr = base64.urlsafe_b64decode(TOKEN + "==")
    far = int(time.time() * 1000) + 86_400_000
    valid = SignedBootstrapToken.sign([addr], policy, owner, expires_at_unix_ms=far).encode()
    expired = SignedBootstrapToken.sign([addr], policy, owner, expires_at_unix_ms=1_000).encode()
    body = json.loads(base64.urlsafe_b64decode(valid + "=" * (-len(valid) % 4)))
    body["signature"][0] ^= 1  # a listing whose token someone altered
    forged = base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode().rstrip("=")
    assert default_token_ok(valid)
    assert not default_token_ok(expired) and not default_token_ok(forged)


# ---------------------------------------------------------------------------------------------- filter


def test_mesh_filter() -> None:
    lst = listing(
        serving=["Qwen3-8B"],
        wanted=["GLM-4.7"],
        on_disk=["Llama-3"],
        total_vram_bytes=24_000_000_000,
        region="EU",
    )
    assert MeshFilter().matches(lst)
    assert MeshFilter(model="qwen3").matches(lst)
    assert MeshFilter(model="glm").matches(lst)
    assert MeshFilter(model="LLAMA").matches(lst)
    assert not MeshFilter(model="mistral").matches(lst)
    assert MeshFilter(min_vram_gb=24).matches(lst)
    assert not MeshFilter(min_vram_gb=24.001).matches(lst)
    assert MeshFilter(region="eu").matches(lst)
    assert not MeshFilter(region="us").matches(lst)
    assert not MeshFilter(region="eu").matches(listing())  # no region on listing
    assert not MeshFilter(model="qwen", region="us").matches(lst)


# ---------------------------------------------------------------------------------------------- pipeline


def publish(keys: NostrKeys, lst: MeshListing, *, at: int = NOW - 10, ttl: int = 120) -> dict[str, Any]:
    return build_listing_event(keys, lst, now=at, ttl=ttl).to_dict()


def test_pipeline_happy_path_sorted() -> None:
    a, b, c = NostrKeys.generate(), NostrKeys.generate(), NostrKeys.generate()
    events = [
        publish(a, listing(node_count=1, total_vram_bytes=9)),
        publish(b, listing(node_count=3, total_vram_bytes=1)),
        publish(c, listing(node_count=3, total_vram_bytes=5)),
    ]
    out = process_events(events, now=NOW)
    assert [m.publisher_npub for m in out] == [c.npub, b.npub, a.npub]
    assert out[0].published_at == NOW - 10 and out[0].expires_at == NOW + 110


def test_pipeline_sort_is_stable_on_ties() -> None:
    keys = [NostrKeys.generate() for _ in range(4)]
    out = process_events([publish(k, listing()) for k in keys], now=NOW)
    assert [m.publisher_npub for m in out] == [k.npub for k in keys]


def test_pipeline_accepts_nostr_sdk_signed_mesh_llm_listing() -> None:
    sdk = nostr_sdk.Keys.generate()
    content = listing(name="mesh-llm", mesh_id="abc").to_json()
    tags = [["d", "mesh-llm"], ["k", "mesh-llm"], ["expiration", str(NOW + 100)]]
    ev = (
        nostr_sdk.EventBuilder(nostr_sdk.Kind(31990), content)
        .tags([nostr_sdk.Tag.parse(t) for t in tags])
        .custom_created_at(nostr_sdk.Timestamp.from_secs(NOW - 20))
        .finalize(sdk)
    )
    out = process_events([json.loads(ev.as_json())], now=NOW)
    assert len(out) == 1
    assert out[0].publisher_npub == sdk.public_key().to_bech32()
    assert out[0].listing.mesh_id == "abc"


def test_pipeline_drops_forged_signature() -> None:
    good, evil = NostrKeys.generate(), NostrKeys.generate()
    forged = publish(good, listing(name=None))
    forged["sig"] = publish(evil, listing())["sig"]
    assert process_events([forged], now=NOW) == []


def test_pipeline_drops_tampered_content() -> None:
    ev = publish(NostrKeys.generate(), listing(node_count=1))
    ev["content"] = listing(node_count=99).to_json()
    assert process_events([ev], now=NOW) == []


def test_forged_newer_event_does_not_shadow_valid_one() -> None:
    keys = NostrKeys.generate()
    valid = publish(keys, listing(node_count=1), at=NOW - 30)
    forged = publish(keys, listing(node_count=50), at=NOW - 5)
    forged["content"] = listing(node_count=77).to_json()
    out = process_events([forged, valid], now=NOW)
    assert [m.listing.node_count for m in out] == [1]


def test_pipeline_drops_wrong_kind_and_missing_k_tag() -> None:
    keys = NostrKeys.generate()
    wrong_kind = keys.sign(
        kind=30078, tags=[["d", "mesh-llm"], ["k", "mesh-llm"]], content=listing().to_json(), created_at=NOW
    )
    no_k = keys.sign(kind=31990, tags=[["d", "mesh-llm"]], content=listing().to_json(), created_at=NOW)
    other_k = keys.sign(kind=31990, tags=[["k", "other-app"]], content=listing().to_json(), created_at=NOW)
    assert process_events([wrong_kind.to_dict(), no_k.to_dict(), other_k.to_dict()], now=NOW) == []


def test_pipeline_expiry() -> None:
    a, b, c, d = (NostrKeys.generate() for _ in range(4))
    expired = publish(a, listing(), at=NOW - 200, ttl=120)  # expired 80 s ago
    boundary = publish(b, listing(), at=NOW - 120, ttl=120)  # expiration == now: kept (drop only if < now)
    no_exp = c.sign(kind=31990, tags=[["k", "mesh-llm"]], content=listing().to_json(), created_at=NOW - 999)
    junk_exp = d.sign(
        kind=31990,
        tags=[["k", "mesh-llm"], ["expiration", "soon"]],
        content=listing().to_json(),
        created_at=1,
    )
    out = process_events([expired, boundary, no_exp.to_dict(), junk_exp.to_dict()], now=NOW)
    assert sorted(m.publisher_npub for m in out) == sorted([b.npub, c.npub, d.npub])
    assert {m.publisher_npub: m.expires_at for m in out}[c.npub] is None


def test_pipeline_newest_per_pubkey_wins_even_if_stale_arrives_later() -> None:
    keys = NostrKeys.generate()
    newer = publish(keys, listing(node_count=2), at=NOW - 5)
    older = publish(keys, listing(node_count=9), at=NOW - 50)
    out = process_events([newer, older, newer], now=NOW)
    assert [m.listing.node_count for m in out] == [2]


def test_newest_expired_hides_older_live_one() -> None:
    # mesh-llm dedupes before the expiry check: an expired newest listing removes the publisher.
    keys = NostrKeys.generate()
    newest_expired = publish(keys, listing(), at=NOW - 20, ttl=10)
    older_live = publish(keys, listing(), at=NOW - 60, ttl=3600)
    assert process_events([older_live, newest_expired], now=NOW) == []


def test_pipeline_drops_malformed_content_and_missing_fields() -> None:
    keys = [NostrKeys.generate() for _ in range(4)]
    bad_json = keys[0].sign(kind=31990, tags=[["k", "mesh-llm"]], content="{not json", created_at=NOW)
    obj = json.loads(listing().to_json())
    del obj["node_count"]
    missing = keys[1].sign(kind=31990, tags=[["k", "mesh-llm"]], content=json.dumps(obj), created_at=NOW)
    wrong_type = keys[2].sign(
        kind=31990,
        tags=[["k", "mesh-llm"]],
        content=listing().to_json().replace('"node_count":1', '"node_count":"1"'),
        created_at=NOW,
    )
    good = publish(keys[3], listing())
    out = process_events([bad_json.to_dict(), missing.to_dict(), wrong_type.to_dict(), good], now=NOW)
    assert [m.publisher_npub for m in out] == [keys[3].npub]


def test_pipeline_drops_bad_tokens_with_injected_checker() -> None:
    a, b = NostrKeys.generate(), NostrKeys.generate()
    events = [publish(a, listing(invite_token="garbage")), publish(b, listing())]
    assert [m.publisher_npub for m in process_events(events, now=NOW)] == [b.npub]
    seen: list[str] = []

    def reject_all(token: str) -> bool:
        seen.append(token)
        return False

    assert process_events(events, now=NOW, token_ok=reject_all) == []
    assert sorted(seen) == sorted(["garbage", TOKEN])
    assert len(process_events(events, now=NOW, token_ok=lambda t: True)) == 2


def test_pipeline_applies_filter() -> None:
    a, b = NostrKeys.generate(), NostrKeys.generate()
    events = [
        publish(a, listing(serving=["Qwen3"], region="EU")),
        publish(b, listing(serving=["GLM"], region="US")),
    ]
    out = process_events(events, now=NOW, mesh_filter=MeshFilter(model="glm"))
    assert [m.publisher_npub for m in out] == [b.npub]
    out = process_events(events, now=NOW, mesh_filter=MeshFilter(region="eu"))
    assert [m.publisher_npub for m in out] == [a.npub]


def test_pipeline_survives_garbage_items() -> None:
    good = publish(NostrKeys.generate(), listing())
    garbage: list[Any] = [None, 5, "x", [], {}, {"id": 5}, dict(good, kind="31990")]
    assert len(process_events([*garbage, good], now=NOW)) == 1
