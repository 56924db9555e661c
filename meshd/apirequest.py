"""One API request as meshd sees it, decided once at the gate (pure; no I/O).

The gate (``meshd.web.gate``) builds an :class:`ApiRequest` from the HTTP request as soon as it knows
who the caller is: the request id, the caller and key, the body bytes and their JSON (decoded here,
once, bounded by ``meshd.jsonbound``), the model, the stream flag, the session, the routing headers,
and the headers that may travel on to a host. Everything later (limits, the access log, routing, the
tunnel, the agent APIs) reads this record and never parses the body again.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from typing import Any, Final

import attrs

from meshd import jsonbound
from meshd.httpwire import MAX_BODY_BYTES
from meshd.jsonbound import json_type

#: A caller's ``x-request-id`` is kept when it looks like an id (safe in logs and headers), else a new one.
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: Caller credentials never leave this node (mesh-llm 0.76 strips the same four; 076 §9.3); callers may
#: not speak meshd's host-to-host headers (``x-meshd-*``) either.
NEVER_FORWARDED: Final = frozenset({b"authorization", b"proxy-authorization", b"x-api-key", b"api-key"})


class _NotJSON:
    """The body is not JSON (or not JSON meshd accepts: too deep, too large, a bad number...)."""

    def __repr__(self) -> str:
        return "NOT_JSON"


NOT_JSON: Final = _NotJSON()


@attrs.frozen
class Problem:
    """Why a request cannot go on as it is: the 400 the caller gets."""

    message: str
    code: str
    param: str | None = None


@attrs.frozen
class ApiRequest:
    """What the gate decided about one request; immutable."""

    id: str
    method: bytes
    #: The path (no query) and the whole target as the caller sent them.
    path: bytes
    uri: bytes
    #: Did the caller speak HTTP/1.1 (chunked framing may pass through as the host sent it)?
    http11: bool
    #: The caller's headers that may go on to a host (credentials and ``x-meshd-*`` removed).
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    #: The decoded body: None when empty, NOT_JSON when it is not (acceptable) JSON.
    json: Any
    #: Who is asking (``key:<id>``, ``ip:<address>`` or the console), and with which key.
    caller: str = ""
    key_id: str | None = None
    client: str = ""
    #: The body's ``content-type`` says JSON (or says nothing).
    declares_json: bool = True

    @property
    def model(self) -> str | None:
        """The body's ``model`` when it is a string."""
        data = self.json
        if isinstance(data, dict) and isinstance(data.get("model"), str):
            return str(data["model"])
        return None

    @property
    def stream(self) -> bool:
        """Does the body ask for a streamed answer (``"stream": true``)?"""
        data = self.json
        return isinstance(data, dict) and data.get("stream") is True

    @property
    def session(self) -> str | None:
        """The ``user`` (else ``session_id``) the body names, for session affinity."""
        return session_of(self.json)

    def problem(self) -> Problem | None:
        """What is wrong with the body for a tunnelled request, if anything (checked before routing)."""
        data = self.json
        if data is NOT_JSON:
            if self.declares_json:
                return Problem("We could not parse the JSON body of your request.", "invalid_json")
            return None
        if data is None:
            return None
        if not isinstance(data, dict):
            return Problem(f"the request body must be a JSON object, not {json_type(data)}", "invalid_value")
        if "model" in data and not isinstance(data["model"], str):
            return Problem(f"'model' must be a string, not {json_type(data['model'])}", "invalid_value", "model")
        return None


def session_of(data: Any) -> str | None:
    """The ``user`` (else ``session_id``) a decoded body names, for session affinity."""
    if isinstance(data, dict):
        for key in ("user", "session_id"):
            if isinstance(data.get(key), str) and data[key]:
                return str(data[key])
    return None


def request_id(given: bytes | None) -> str:
    """The caller's ``x-request-id`` when it is sane, else a new one."""
    if given:
        text = given.decode("latin-1")
        if REQUEST_ID.match(text):
            return text
    return uuid.uuid4().hex


def decode_body(body: bytes) -> Any:
    """The decoded body (bounded), None when empty, or NOT_JSON."""
    if not body:
        return None
    try:
        return jsonbound.loads(body, max_bytes=MAX_BODY_BYTES)
    except jsonbound.BadJSON:
        return NOT_JSON


def forwardable(headers: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    """The headers that may leave this node with a request."""
    out = []
    for name, value in headers:
        lower = name.lower()
        if lower in NEVER_FORWARDED or lower.startswith(b"x-meshd-"):
            continue
        out.append((name, value))
    return tuple(out)


def build(
    *,
    method: bytes,
    uri: bytes,
    path: bytes,
    http11: bool,
    headers: Iterable[tuple[bytes, bytes]],
    body: bytes,
    request_id_header: bytes | None = None,
    content_type: bytes | None = None,
    caller: str = "",
    key_id: str | None = None,
    client: str = "",
    id: str | None = None,
) -> ApiRequest:
    """The record of one request; the body is decoded here, once."""
    return ApiRequest(
        id=id if id is not None else request_id(request_id_header),
        method=method,
        path=path,
        uri=uri,
        http11=http11,
        headers=forwardable(headers),
        body=body,
        json=decode_body(body),
        caller=caller,
        key_id=key_id,
        client=client,
        declares_json=content_type is None or b"json" in content_type.lower(),
    )


def inspect_body(body: bytes) -> tuple[str | None, bool]:
    """(model, stream) a request body asks for; (None, False) when it is not a JSON object."""
    record = ApiRequest(
        id="", method=b"POST", path=b"", uri=b"", http11=True, headers=(), body=body, json=decode_body(body)
    )
    return record.model, record.stream
