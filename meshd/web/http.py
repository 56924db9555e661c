"""twisted.web with meshd's request limits (MESH_PROTOCOL.md §6.5).

Headers: 64 KiB in all (431 beyond), bodies: 8 MiB (413 beyond, refused as soon as the declared
length or the received bytes pass the limit, before the body is buffered), and a header-read
timeout. Refusals carry the port's own error shape and close the connection.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from meshd.httpwire import MAX_BODY_BYTES, MAX_HEADER_BYTES

ErrorBody = Callable[[int, str, str], bytes]
REASONS = {400: b"Bad Request", 413: b"Payload Too Large", 431: b"Request Header Fields Too Large"}
HEADER_READ_TIMEOUT = 30


class LimitedRequest(Request):
    _refused = False
    _body_seen = 0

    def gotLength(self, length: int | None) -> None:
        limit = self.channel.site.max_body  # type: ignore[attr-defined]
        if length is not None and length > limit:
            self._refuse(413, f"request body of {length} bytes exceeds the {limit}-byte limit")
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._body_seen += len(data)
        limit = self.channel.site.max_body  # type: ignore[attr-defined]
        if self._body_seen > limit:
            self._refuse(413, f"request body exceeds the {limit}-byte limit")
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return
        super().requestReceived(command, path, version)

    def _refuse(self, status: int, message: str) -> None:
        self._refused = True
        self.content = io.BytesIO()
        self.channel.refuse(status, message)  # type: ignore[attr-defined]


class LimitedChannel(HTTPChannel):
    totalHeadersSize = MAX_HEADER_BYTES
    MAX_LENGTH = MAX_HEADER_BYTES
    maxHeaders = 100

    def refuse(self, status: int, message: str, code: str | None = None) -> None:
        site: LimitedSite = self.site  # type: ignore[attr-defined]
        default_codes = {400: "invalid_request", 413: "request_too_large", 431: "request_header_fields_too_large"}
        body = site.error_body(status, message, code or default_codes.get(status, "invalid_request"))
        head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        assert self.transport is not None
        self.transport.write(head % (status, REASONS.get(status, b"Error"), len(body)) + body)
        self.loseConnection()

    def _respondToBadRequestAndDisconnect(self) -> None:
        if self._receivedHeaderSize > self.totalHeadersSize:  # type: ignore[attr-defined]
            self.refuse(431, f"request headers exceed {self.totalHeadersSize} bytes")
        elif getattr(self, "_receivedHeaderCount", 0) > self.maxHeaders:
            self.refuse(431, f"more than {self.maxHeaders} request headers")
        else:
            self.refuse(400, "malformed HTTP request")

    def lineLengthExceeded(self, line: bytes) -> Any:
        self.refuse(431, f"a request line or header exceeds {self.MAX_LENGTH} bytes")


class LimitedSite(Site):
    protocol = LimitedChannel  # type: ignore[assignment]
    requestFactory = LimitedRequest
    displayTracebacks = False
    noisy = False

    def log(self, request: Any) -> None:
        """No combined-log line: the API's gate writes one ``access`` event per request instead."""

    def __init__(
        self, resource: Any, error_body: ErrorBody, max_body: int = MAX_BODY_BYTES, timeout: float = HEADER_READ_TIMEOUT
    ) -> None:
        # Bodies are JSON relayed as bytes: no form parsing (it also costs an email-module header parse).
        super().__init__(resource, timeout=timeout, parsePOSTFormSubmission=False)
        self.error_body = error_body
        self.max_body = max_body


def unregister_producer(request: Any) -> None:
    """Unregister a response's producer unless the caller already went away (then there is none)."""
    if getattr(request, "channel", None) is not None:
        try:
            request.unregisterProducer()
        except (AttributeError, RuntimeError):
            pass


def abort_response(request: Any) -> None:
    """Cut the caller's connection: a body that broke halfway must not look complete."""
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None)
    if transport is not None:
        transport.abortConnection()
