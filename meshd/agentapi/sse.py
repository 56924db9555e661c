"""Server-sent events: an incremental, bounded parser (bytes in, events out) and an encoder.

The parser follows the WHATWG "event stream interpretation" rules: lines end with CRLF, LF or CR (a CRLF
split across two ``feed`` calls counts once), ``:`` starts a comment, a field's value loses one leading
space, ``data`` lines of one event are joined with ``\\n``, an empty line dispatches the event (an event
without ``data`` is not dispatched), a BOM at the start is skipped, and an unfinished event at the end of
the stream is dropped (:attr:`SSEParser.pending` says whether there was one).

Limits are checked before anything is buffered: a line longer than ``max_line`` bytes or an event whose
data exceeds ``max_event`` bytes raises :class:`SSELimitError`. The parser is then unusable.
"""

from __future__ import annotations

import json
import re
from typing import Any

import attrs

DEFAULT_MAX_LINE = 4 * 1024 * 1024
DEFAULT_MAX_EVENT = 8 * 1024 * 1024

_EOL = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


class SSELimitError(ValueError):
    """A line or an event is larger than the parser accepts."""


@attrs.frozen
class SSEEvent:
    data: str
    event: str | None = None
    id: str | None = None


class SSEParser:
    def __init__(self, max_line: int = DEFAULT_MAX_LINE, max_event: int = DEFAULT_MAX_EVENT) -> None:
        self.max_line = max_line
        self.max_event = max_event
        self._partial: list[bytes] = []  # pieces of the current, unterminated line
        self._partial_len = 0
        self._skip_lf = False  # the previous feed ended with CR: a leading LF belongs to it
        self._first_line = True
        self._event: str | None = None
        self._data: list[str] = []
        self._data_len = 0
        self._last_id: str | None = None
        self._broken = False

    @property
    def pending(self) -> bool:
        """Is an event (or a line) started but not dispatched?"""
        return bool(self._partial_len or self._data or self._event is not None)

    def feed(self, data: bytes) -> list[SSEEvent]:
        if self._broken:
            raise SSELimitError("the event stream already exceeded a limit")
        events: list[SSEEvent] = []
        start = 0
        if self._skip_lf and data:
            self._skip_lf = False
            if data[:1] == b"\n":
                start = 1
        for match in _EOL.finditer(data, start):
            piece = data[start : match.start()]
            self._check_line(len(piece))
            if self._partial:
                self._partial.append(piece)
                line = b"".join(self._partial)
                self._partial = []
                self._partial_len = 0
            else:
                line = piece
            self._line(line, events)
            start = match.end()
            if match.group() == b"\r" and start == len(data):
                self._skip_lf = True
        rest = data[start:]
        if rest:
            self._check_line(len(rest))
            self._partial.append(rest)
            self._partial_len += len(rest)
        return events

    def _check_line(self, extra: int) -> None:
        if self._partial_len + extra > self.max_line:
            self._broken = True
            raise SSELimitError(f"an event-stream line is longer than {self.max_line} bytes")

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        if self._first_line:
            self._first_line = False
            if raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
        if not raw:
            if self._data:
                events.append(SSEEvent(data="\n".join(self._data), event=self._event, id=self._last_id))
            self._data = []
            self._data_len = 0
            self._event = None
            return
        if raw[:1] == b":":
            return
        line = raw.decode("utf-8", "replace")
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data_len += len(raw) + 1  # bytes of the line: at least the value's UTF-8 length
            if self._data_len > self.max_event:
                self._broken = True
                raise SSELimitError(f"an event's data is larger than {self.max_event} bytes")
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id":
            if "\0" not in value:
                self._last_id = value
        # "retry" and unknown fields are ignored, as the standard says.


def encode_event(event: str | None, payload: Any) -> bytes:
    """One SSE event: ``event: NAME`` (when given) and the payload as one ``data:`` line of JSON.

    JSON is written ASCII-only, so no character in it can end a line for any decoder (some split on
    U+2028 or NEL).
    """
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    head = f"event: {event}\n" if event is not None else ""
    return f"{head}data: {data}\n\n".encode()
