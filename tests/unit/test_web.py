"""The two Klein apps, without sockets (StubTreq)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock

from meshd.config import Config, Role
from meshd.identity import Identity
from meshd.node import Node, NodeState
from meshd.status import StatusView
from meshd.web.api import APIApp
from meshd.web.console import ConsoleApp


def make_node(**kw: Any) -> Node:
    cfg = Config(role=kw.pop("role", Role.CLIENT), **kw)
    node = Node(cfg, Identity.generate(), Clock())
    node.ports_bound(19337, 13131)
    return node


def get(app: Any, path: str, method: str = "GET") -> tuple[int, dict[str, list[str]], bytes]:
    stub = StubTreq(app.resource())
    d = stub.request(method, "http://x" + path)
    resp = _result(d)
    body = _result(resp.content())
    stub.flush()
    headers = {k.decode().lower(): [v.decode() for v in vs] for k, vs in resp.headers.getAllRawHeaders()}
    return resp.code, headers, body


def _result(d: Any) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "deferred did not fire"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


@pytest.mark.parametrize("app_cls", [APIApp, ConsoleApp])
def test_health_on_both_ports(app_cls: Any) -> None:
    code, headers, body = get(app_cls(make_node()), "/health")
    assert code == 200
    assert headers["content-type"] == ["application/json"]
    assert json.loads(body) == {"status": "ok"}


class Relays:
    """Stands in for ``Discovery``: the per-relay states the status shows."""

    def nostr_status(self) -> list[dict[str, Any]]:
        return [{"url": "ws://127.0.0.1:9", "state": "failing", "last_error": "refused"}]


def test_status_reports_the_node() -> None:
    node = make_node(auto=True)
    app = ConsoleApp(node, status=StatusView(node, discovery=Relays()))  # type: ignore[arg-type]
    code, _, body = get(app, "/api/status")
    st = json.loads(body)
    assert code == 200
    assert st["node_id"] == node.identity.short_id
    assert (st["node_state"], st["node_status"], st["nostr_discovery"]) == ("client", "Client", True)
    assert st["is_client"] is True and st["is_host"] is False
    assert st["api_port"] == 19337
    assert st["peers"] == []
    assert "mesh_id" not in st  # 0.76 leaves it out while there is none
    own = st["meshd"]
    assert own["endpoint_id"] == node.identity.endpoint_id
    assert (own["node_state"], own["role"], own["console_port"]) == ("discovering", "client", 13131)
    assert own["nostr_discovery"][0]["state"] == "failing"
    node.set_state(NodeState.STANDALONE)
    assert json.loads(get(app, "/api/status")[2])["meshd"]["node_state"] == "standalone"


def test_join_tokens_start_in_joining_and_host_role_shows() -> None:
    assert make_node(join_tokens=("t",)).state is NodeState.JOINING
    host = make_node(role=Role.HOST, serve_url="http://127.0.0.1:1")
    assert StatusView(host).status()["is_host"] is True


def test_api_says_state_in_openai_envelope_before_joining() -> None:
    code, headers, body = get(APIApp(make_node(auto=True)), "/v1/chat/completions", "POST")
    assert code == 503
    assert headers["retry-after"] == ["5"]
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == "no_hosts"
    assert "discovering" in err["message"]


def test_known_model_without_live_host_is_503_model_not_available() -> None:
    node = make_node()
    node.mesh.note_models(["ghost"], node.now())  # served in this mesh before
    stub = StubTreq(APIApp(node).resource())
    resp = _result(stub.post("http://x/v1/chat/completions", data=b'{"model":"ghost","messages":[]}'))
    body = json.loads(_result(resp.content()))
    assert resp.code == 503
    assert resp.headers.getRawHeaders(b"retry-after") == [b"5"]
    assert body["error"]["code"] == "model_not_available"
    assert body["error"]["param"] == "model"
    assert "ghost" in body["error"]["message"]


def test_model_never_seen_in_the_mesh_is_404_listing_what_it_serves() -> None:
    node = make_node()
    node.set_hosted_models(("tiny", "small"))  # a host: serves_locally needs a tunnel handler, so none here
    stub = StubTreq(APIApp(node).resource())
    name = "tiyn" + "x" * 5000
    resp = _result(stub.post("http://x/v1/chat/completions", data=json.dumps({"model": name}).encode()))
    body = json.loads(_result(resp.content()))
    # a name the node hosts itself is known; the typo is not
    assert resp.code == 404 and not resp.headers.getRawHeaders(b"retry-after")
    err = body["error"]
    assert (err["code"], err["type"], err["param"]) == ("model_not_found", "invalid_request_error", "model")
    assert "small, " in err["message"].replace("'", "") and "tiny" in err["message"]
    assert len(err["message"]) < 400  # the caller's 5 KB name is not echoed back whole
    assert node.mesh.demand == {}  # and it is no demand for a model


def test_bodies_that_are_not_objects_or_name_no_string_model_get_400_before_routing() -> None:
    stub = StubTreq(APIApp(make_node()).resource())
    for data, needle in ((b"[1, 2]", "JSON object"), (b'{"model": 5}', "'model' must be a string")):
        resp = _result(stub.post("http://x/v1/chat/completions", data=data))
        body = json.loads(_result(resp.content()))
        assert resp.code == 400 and needle in body["error"]["message"], body
        assert body["error"]["code"] == "invalid_value"


def test_models_list_is_empty_without_hosts() -> None:
    code, headers, body = get(APIApp(make_node()), "/v1/models")
    assert code == 200
    assert json.loads(body) == {"object": "list", "data": []}
    assert headers["access-control-allow-origin"] == ["*"]


def test_console_unknown_route_is_json_404() -> None:
    code, _, body = get(ConsoleApp(make_node()), "/api/nope")
    assert code == 404
    assert json.loads(body) == {"error": "Not found"}


def test_headless_hides_pages_but_not_api() -> None:
    node = make_node(headless=True)
    assert get(ConsoleApp(node), "/")[0] == 404
    assert get(ConsoleApp(node), "/dashboard")[0] == 404
    assert get(ConsoleApp(node), "/api/status")[0] == 200
    assert get(ConsoleApp(make_node()), "/")[0] == 200
