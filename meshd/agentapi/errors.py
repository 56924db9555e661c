"""Errors of the agent-API layer.

One base class, :class:`AgentApiError`, carries the HTTP status, a message, and OpenAI's ``param``/``code``.
Each error renders itself in both error shapes the layer speaks:

* OpenAI (``/v1/responses``): ``{"error": {"message", "type", "param", "code"}}``;
* Anthropic (``/v1/messages``): ``{"type": "error", "error": {"type", "message"}}``, with Anthropic's
  error types chosen from the status (``invalid_request_error``, ``not_found_error``, ``overloaded_error``...).

Only these classes leave the layer's request parsers; anything else escaping them is a bug.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

#: Anthropic's error ``type`` for an HTTP status (https://docs.anthropic.com/en/api/errors).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}

#: OpenAI's error ``type`` for an HTTP status, for errors that do not name one.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def anthropic_type(status: int) -> str:
    if status in _ANTHROPIC_TYPES:
        return _ANTHROPIC_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def openai_type(status: int) -> str:
    return _OPENAI_TYPES.get(status, "invalid_request_error" if 400 <= status < 500 else "server_error")


class AgentApiError(Exception):
    """A request the layer cannot serve, with what the caller should be told."""

    status: ClassVar[int] = 400
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        type_: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.status = status if status is not None else type(self).status  # type: ignore[misc]
        self.type_ = type_

    def openai_json(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type_ or openai_type(self.status),
                "param": self.param,
                "code": self.code,
            }
        }

    def anthropic_json(self) -> dict[str, Any]:
        return {"type": "error", "error": {"type": anthropic_type(self.status), "message": self.message}}

    def openai_body(self) -> bytes:
        return json.dumps(self.openai_json()).encode()

    def anthropic_body(self) -> bytes:
        return json.dumps(self.anthropic_json()).encode()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.message!r}, param={self.param!r}, code={self.code!r})"


class InvalidRequest(AgentApiError):
    """400: the request body is not what the API accepts (names the field in ``param`` and the message)."""

    status = 400


class Unsupported(InvalidRequest):
    """400: a valid request using a feature this gateway cannot provide (e.g. ``background: true``)."""

    default_code = "unsupported_parameter"


class NotFound(AgentApiError):
    """404: an unknown stored response, or a path under an agent API that does not exist."""

    status = 404
    default_code = "not_found"


class MethodNotAllowed(AgentApiError):
    status = 405
    default_code = "method_not_allowed"


class TooLarge(AgentApiError):
    """413: the request, or a nesting/count limit of the layer, is exceeded."""

    status = 413
    default_code = "request_too_large"


class UpstreamError(AgentApiError):
    """An error the host (or the mesh) reported, re-shaped for the caller's API. Status as given."""

    status = 502
    default_code = "upstream_error"
