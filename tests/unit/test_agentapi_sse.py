"""The incremental SSE parser: the standard's rules, segmentation, limits, and the openai SDK's decoder as a referee."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai._streaming import SSEDecoder

from meshd.agentapi.sse import SSEEvent, SSELimitError, SSEParser, encode_event


def parse_all(data: bytes, cuts: list[int] | None = None, **limits: int) -> list[SSEEvent]:
    parser = SSEParser(**limits)
    events: list[SSEEvent] = []
    start = 0
    for cut in sorted(cuts or []):
        events += parser.feed(data[start:cut])
        start = cut
    events += parser.feed(data[start:])
    return events


def test_fields_comments_and_multiline_data() -> None:
    stream = (
        b": a comment\n"
        b"event: first\n"
        b"data: line one\n"
        b"data:line two\n"  # no space after the colon
        b"id: 7\n"
        b"retry: 100\n"
        b"unknown: ignored\n"
        b"\n"
        b"data\n"  # a field name alone: empty value
        b"\n"
        b"event: only-an-event\n"  # no data: not dispatched
        b"\n"
        b"data:  two spaces\n\n"
    )
    assert parse_all(stream) == [
        SSEEvent(data="line one\nline two", event="first", id="7"),
        SSEEvent(data="", event=None, id="7"),
        SSEEvent(data=" two spaces", event=None, id="7"),
    ]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_each_line_ending(eol: bytes) -> None:
    stream = b"data: a" + eol + b"data: b" + eol + eol + b"event: e" + eol + b"data: c" + eol + eol
    assert parse_all(stream) == [SSEEvent("a\nb"), SSEEvent("c", event="e")]


def test_crlf_split_across_feeds_is_one_line_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n\r") == [SSEEvent("a")]  # the LF belongs to the CR; the next CR ends the event
    assert parser.feed(b"\ndata: b\n\n") == [SSEEvent("b")]


def test_bom_is_skipped_only_at_the_start() -> None:
    assert parse_all(b"\xef\xbb\xbfdata: x\n\n") == [SSEEvent("x")]
    assert parse_all(b"\xef\xbb", [1]) == []  # a BOM split across feeds
    assert parse_all(b"\xef\xbb\xbfdata: x\n\n", [1, 2]) == [SSEEvent("x")]
    # later, the same bytes are part of a field name, so the line is an unknown field
    assert parse_all(b"data: x\n\n\xef\xbb\xbfdata: y\n\n") == [SSEEvent("x")]


def test_unfinished_event_is_pending_and_not_dispatched() -> None:
    parser = SSEParser()
    assert parser.feed(b'data: {"partial": ') == []
    assert parser.pending
    assert parser.feed(b"1}\n") == []
    assert parser.pending
    assert parser.feed(b"\n") == [SSEEvent('{"partial": 1}')]
    assert not parser.pending


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert parse_all(b"data: \xff\xfe ok\n\n") == [SSEEvent("\ufffd\ufffd ok")]


def test_line_limit_is_checked_before_buffering() -> None:
    parser = SSEParser(max_line=16, max_event=1024)
    parser.feed(b"data: 0123456789")  # 16 bytes, no newline yet: fine
    with pytest.raises(SSELimitError):
        parser.feed(b"x")
    with pytest.raises(SSELimitError):  # a broken parser stays broken
        parser.feed(b"\n\n")


def test_event_limit_counts_all_data_lines() -> None:
    parser = SSEParser(max_line=100, max_event=20)
    parser.feed(b"data: 0123456789\n")
    with pytest.raises(SSELimitError):
        parser.feed(b"data: 0123456789\n")


def test_limits_hold_for_one_huge_feed() -> None:
    with pytest.raises(SSELimitError):
        SSEParser(max_line=1000).feed(b"data: " + b"x" * 5000 + b"\n\n")


def test_encode_event_round_trips_through_the_parser() -> None:
    payload = {"text": "line\nbreak \u2028 separator \x85 nel \r cr", "n": [1, 2]}
    (event,) = parse_all(encode_event("response.output_text.delta", payload))
    assert event.event == "response.output_text.delta"
    assert json.loads(event.data) == payload
    assert encode_event(None, "[DONE]") == b"data: [DONE]\n\n"


# -- properties ------------------------------------------------------------------------------------

names = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r\n:"), min_size=1, max_size=12)
# Data lines: any text without line breaks (also no characters Python's str.splitlines treats as breaks).
line_text = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"),
    max_size=40,
)
eols = st.sampled_from([b"\n", b"\r\n", b"\r"])


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[SSEEvent]]:
    """An SSE stream and the events the standard says it holds."""
    chunks: list[bytes] = []
    expected: list[SSEEvent] = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            chunks.append(b":" + draw(line_text).encode() + draw(eols))
        event = draw(st.none() | names)
        if event is not None:
            chunks.append(b"event: " + event.encode() + draw(eols))
        data = draw(st.lists(line_text, min_size=1, max_size=4))
        for line in data:
            chunks.append(b"data: " + line.encode() + draw(eols))
        # The blank line: after a CR, an LF would only complete that CRLF, not end the event.
        chunks.append(draw(st.sampled_from([b"\r\n", b"\r"]) if chunks[-1].endswith(b"\r") else eols))
        expected.append(SSEEvent("\n".join(data), event=event))
    return b"".join(chunks), expected


@given(streams(), st.lists(st.integers(0, 4096), max_size=12))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_any_segmentation_gives_the_same_events(case: tuple[bytes, list[SSEEvent]], cuts: list[int]) -> None:
    data, expected = case
    cuts = [c % (len(data) + 1) for c in cuts]
    assert parse_all(data, cuts) == expected
    assert parse_all(data, list(range(len(data)))) == expected  # one byte at a time


@given(streams(), st.lists(st.integers(0, 4096), max_size=6))
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_agrees_with_the_openai_sdk_decoder(case: tuple[bytes, list[SSEEvent]], cuts: list[int]) -> None:
    data, _ = case
    cuts = sorted(c % (len(data) + 1) for c in cuts)
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    theirs = [(e.event, e.data) for e in SSEDecoder().iter_bytes(iter(pieces))]
    ours = [(e.event, e.data) for e in parse_all(data, cuts)]
    assert ours == theirs


@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=8))
@settings(max_examples=300)
def test_arbitrary_bytes_parse_or_hit_a_limit_and_stay_bounded(data: bytes, cuts: list[int]) -> None:
    parser = SSEParser(max_line=64, max_event=128)
    start = 0
    try:
        for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
            for event in parser.feed(data[start:cut]):
                assert len(event.data.encode("utf-8", "surrogatepass")) <= 3 * 128
            start = cut
            assert parser._partial_len <= 64
            assert parser._data_len <= 128
    except SSELimitError:
        pass


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    )
)
def test_any_json_payload_round_trips(payload: object) -> None:
    (event,) = parse_all(encode_event("x", {"p": payload}))
    assert json.loads(event.data) == {"p": payload}
