"""Errors raised or delivered (as Failures) by :mod:`meshd.quic`."""

from __future__ import annotations

import attrs

__all__ = [
    "CloseReason",
    "ConnectionClosed",
    "DialFailed",
    "DialTimeout",
    "QuicError",
    "SendBufferFull",
    "StreamReset",
    "StreamStopped",
]


class QuicError(Exception):
    """Base class of every meshd.quic error."""


@attrs.frozen
class CloseReason:
    """Why a connection ended.

    :ivar error_code: QUIC transport or application error code (0 = clean close).
    :ivar reason: the reason phrase.
    :ivar frame_type: the offending frame type for transport errors, else None.
    :ivar locally: True if we closed it (or it timed out here).
    """

    error_code: int
    reason: str
    frame_type: int | None = None
    locally: bool = False

    @property
    def is_clean(self) -> bool:
        return self.error_code == 0


class ConnectionClosed(QuicError):
    """The QUIC connection ended; given to open streams' ``connectionLost``."""

    def __init__(self, reason: CloseReason) -> None:
        super().__init__(f"connection closed: code={reason.error_code} reason={reason.reason!r}")
        self.reason = reason


class DialFailed(QuicError):
    """No address led to a completed handshake; ``reasons`` lists each attempt's end."""

    def __init__(self, message: str, reasons: list[CloseReason] | None = None) -> None:
        super().__init__(message)
        self.reasons = reasons or []


class DialTimeout(DialFailed):
    """No handshake completed within the dial timeout."""


class StreamReset(QuicError):
    """The stream was reset (RESET_STREAM), by the peer or by us."""

    def __init__(self, error_code: int, by_peer: bool) -> None:
        who = "peer" if by_peer else "us"
        super().__init__(f"stream reset by {who} with code {error_code}")
        self.error_code = error_code
        self.by_peer = by_peer


class StreamStopped(QuicError):
    """The peer sent STOP_SENDING: it will not read what we write."""

    def __init__(self, error_code: int) -> None:
        super().__init__(f"peer stopped reading with code {error_code}")
        self.error_code = error_code


class SendBufferFull(QuicError):
    """``write`` would exceed the stream's hard send-buffer limit (use a producer)."""
