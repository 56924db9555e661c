"""meshd.apirequest: one record per API request, decided once at the gate (#18).

The request id used to be decided twice by different rules (the gate's and the proxy's), so a caller's
id the gate refused (``a/b``) still came back in the response while the gate logged a fresh one; and the
body was decoded twice (the gate for limits, the proxy for routing). Both now happen once.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd import apirequest, jsonbound
from meshd.apirequest import NOT_JSON, build, forwardable, request_id
from meshd.web.api import APIApp
from tests.unit.test_gate_web import Access, call, make_node


def record(body: bytes, **kw: Any) -> apirequest.ApiRequest:
    return build(
        method=b"POST",
        uri=b"/v1/chat/completions",
        path=b"/v1/chat/completions",
        http11=True,
        headers=(),
        body=body,
        **kw,
    )


def test_a_sane_request_id_is_kept_anything_else_replaced() -> None:
    assert request_id(b"abc-1.2:3_x") == "abc-1.2:3_x"
    for bad in (None, b"", b"a/b", b"a b", b"x" * 129, "é".encode(), b"a\r\nb"):
        new = request_id(bad)
        assert len(new) == 32 and all(c in "0123456789abcdef" for c in new)


def test_credentials_and_meshd_headers_never_travel() -> None:
    headers = [
        (b"Authorization", b"Bearer sk"),
        (b"x-api-key", b"sk"),
        (b"Api-Key", b"sk"),
        (b"proxy-authorization", b"Basic x"),
        (b"x-meshd-wait", b"999"),
        (b"X-Meshd-Busy", b"1"),
        (b"content-type", b"application/json"),
        (b"x-request-id", b"r1"),
    ]
    assert forwardable(headers) == ((b"content-type", b"application/json"), (b"x-request-id", b"r1"))


def test_the_record_reads_model_stream_and_session_from_the_one_decoding() -> None:
    r = record(b'{"model":"m","stream":true,"user":"u1","session_id":"s"}')
    assert (r.model, r.stream, r.session) == ("m", True, "u1")
    r = record(b'{"model":"m","session_id":"s","stream":"yes"}')
    assert (r.model, r.stream, r.session) == ("m", False, "s")
    assert record(b"").json is None and record(b"").problem() is None
    assert record(b"{nope").json is NOT_JSON


@pytest.mark.parametrize(
    ("body", "content_type", "code", "param"),
    [
        (b"{nope", None, "invalid_json", None),
        (b"{nope", b"application/json", "invalid_json", None),
        (b"[1,2]", None, "invalid_value", None),
        (b'{"model":5}', None, "invalid_value", "model"),
        (b"[" * 5000 + b"]" * 5000, None, "invalid_json", None),
    ],
)
def test_what_is_wrong_with_a_body(body: bytes, content_type: bytes | None, code: str, param: str | None) -> None:
    problem = record(body, content_type=content_type).problem()
    assert problem is not None and (problem.code, problem.param) == (code, param)


def test_a_body_that_is_not_declared_json_may_be_anything() -> None:
    assert record(b"{nope", content_type=b"text/plain").problem() is None


@given(st.binary(max_size=2000), st.one_of(st.none(), st.binary(max_size=60)))
def test_any_body_and_request_id_make_a_record(body: bytes, rid: bytes | None) -> None:
    r = record(body, request_id_header=rid)
    assert apirequest.REQUEST_ID.match(r.id)
    assert r.model is None or isinstance(r.model, str)
    assert r.stream in (True, False)
    problem = r.problem()
    assert problem is None or problem.code in ("invalid_json", "invalid_value")


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
        max_leaves=30,
    )
)
def test_json_values_round_trip_into_the_record(value: Any) -> None:
    body = {"model": "m", "x": value}
    r = record(json.dumps(body).encode())
    assert r.json == body and r.model == "m" and r.problem() is None


def test_the_body_is_decoded_once_and_the_id_decided_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = jsonbound.loads

    def counting(raw: Any, **kw: Any) -> Any:
        calls.append(len(raw))
        return real(raw, **kw)

    monkeypatch.setattr(jsonbound, "loads", counting)
    app = APIApp(make_node(api_keys=("sk",), rate_limit_streams=5))
    body = {"model": "nowhere", "stream": True, "messages": []}
    with Access() as log:
        r = call(
            app.resource(), "/v1/chat/completions", "POST", {"authorization": "Bearer sk", "x-request-id": "a/b"}, body
        )
    assert r.code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert calls == [len(json.dumps(body))]  # the gate (stream limit, metrics) and the proxy (routing) share it
    rid = r.header("x-request-id")
    assert rid is not None and rid != "a/b" and len(rid) == 32
    assert [e["request_id"] for e in log.events] == [rid]
    assert log.events[0]["model"] == "nowhere" and log.events[0]["stream"] is True
