"""Error bodies: OpenAI's envelope on the API port, mesh-llm's ``{"error": msg}`` on the console."""

from __future__ import annotations

import json
from typing import Any

from twisted.web.iweb import IRequest

from meshd.agentapi.messages import anthropic_type


def json_body(request: IRequest, status: int, payload: Any, headers: dict[str, str] | None = None) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    for name, value in (headers or {}).items():
        request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
    return json.dumps(payload).encode("utf-8")


def openai_error(
    request: IRequest,
    status: int,
    message: str,
    type_: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI's API returns it; on Anthropic's
    Messages API paths (``/v1/messages...``) Anthropic's ``{"type": "error", "error": {"type", "message"}}``,
    so Claude Code reads every error meshd makes (keys, limits, busy, no model) in its own shape."""
    body: dict[str, Any] = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    if request.path.startswith(b"/v1/messages"):
        body = {"type": "error", "error": {"type": anthropic_type(status), "message": message}}
    return json_body(request, status, body, headers)


def console_error(request: IRequest, status: int, message: str) -> bytes:
    return json_body(request, status, {"error": message})
