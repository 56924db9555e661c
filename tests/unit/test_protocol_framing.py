"""Framing of mesh-llm/1 streams (MESH_PROTOCOL.md §5.1, §5.2) against hand-computed bytes."""

from __future__ import annotations

import pytest

from meshd.protocol import node_pb2
from meshd.protocol.errors import FrameTooLarge, InvalidFrame, TruncatedFrame, UnknownStreamType
from meshd.protocol.framing import (
    FrameDecoder,
    StreamTypeReader,
    decode_single_frame,
    encode_frame,
    encode_opener,
    encode_stream_type,
    parse_stream_type,
)
from meshd.protocol.streams import (
    ALPN_V1,
    MAX_CONTROL_FRAME_BYTES,
    NEVER_SENT,
    PROTOCOL_GENERATION,
    SERVED_STREAM_TYPES,
    StreamType,
    TrustPolicy,
    allowed_before_admission,
)

PEER_ID = bytes(range(32))
# PeerLeaving{peer_id = 00 01 .. 1f, gen = 1}, written out from the protobuf wire format:
#   field 1, wire type 2 (LEN): tag (1 << 3) | 2 = 0x0a, length 0x20, then the 32 bytes
#   field 2, wire type 0 (VARINT): tag (2 << 3) | 0 = 0x10, value 0x01
PEER_LEAVING_BODY = bytes([0x0A, 0x20]) + PEER_ID + bytes([0x10, 0x01])
# Opener: type byte 0x07, then the body length 36 = 0x24 as u32 little-endian.
PEER_LEAVING_OPENER = bytes([0x07, 0x24, 0x00, 0x00, 0x00]) + PEER_LEAVING_BODY


def test_constants() -> None:
    assert ALPN_V1 == bytes.fromhex("6d6573682d6c6c6d2f31")
    assert PROTOCOL_GENERATION == 1
    assert MAX_CONTROL_FRAME_BYTES == 8_388_608
    assert {t.name: t.value for t in StreamType} == {
        "GOSSIP": 0x01,
        "TUNNEL_RPC": 0x02,
        "TUNNEL_MAP": 0x03,
        "TUNNEL_HTTP": 0x04,
        "ROUTE_REQUEST": 0x05,
        "PEER_DOWN": 0x06,
        "PEER_LEAVING": 0x07,
        "PLUGIN_CHANNEL": 0x08,
        "PLUGIN_BULK_TRANSFER": 0x09,
        "PLUGIN_MESH_STREAM": 0x0A,
        "CONFIG_SUBSCRIBE": 0x0B,
        "CONFIG_PUSH": 0x0C,
        "SUBPROTOCOL": 0x0D,
        "DIRECT_PATH_REQUEST": 0x0E,
    }
    assert [t for t in StreamType if allowed_before_admission(t)] == [
        StreamType.GOSSIP,
        StreamType.ROUTE_REQUEST,
    ]


@pytest.mark.parametrize(
    ("trust", "allowed"),
    [
        (TrustPolicy.OFF, [StreamType.GOSSIP, StreamType.TUNNEL_HTTP, StreamType.ROUTE_REQUEST]),
        (TrustPolicy.PREFER_OWNED, [StreamType.GOSSIP, StreamType.TUNNEL_HTTP, StreamType.ROUTE_REQUEST]),
        (TrustPolicy.REQUIRE_OWNED, [StreamType.GOSSIP]),
        (TrustPolicy.ALLOWLIST, [StreamType.GOSSIP]),
    ],
)
def test_076_pre_admission_rule(trust: TrustPolicy, allowed: list[StreamType]) -> None:
    # MESH_PROTOCOL_076.md §2.1: the SDK's passive 0x04 works before admission unless enforcing.
    assert [t for t in StreamType if allowed_before_admission(t, trust)] == allowed


@pytest.mark.parametrize(
    "stream_type",
    [
        StreamType.TUNNEL_RPC,
        StreamType.CONFIG_SUBSCRIBE,
        StreamType.CONFIG_PUSH,
        StreamType.DIRECT_PATH_REQUEST,
        StreamType.SUBPROTOCOL,
        StreamType.PLUGIN_MESH_STREAM,
    ],
)
def test_never_sent_types_cannot_be_encoded(stream_type: StreamType) -> None:
    # 0x02 above all: an inbound 0x02 ends a 0.76 node's stream-accept loop for the connection.
    with pytest.raises(ValueError, match="never opens"):
        encode_stream_type(stream_type)
    with pytest.raises(ValueError, match="never opens"):
        encode_opener(stream_type, b"")


def test_served_types_are_sendable_and_never_sent_is_disjoint() -> None:
    assert not SERVED_STREAM_TYPES & NEVER_SENT
    for stream_type in SERVED_STREAM_TYPES:
        assert encode_stream_type(stream_type) == bytes([stream_type.value])


def test_peer_leaving_golden_bytes() -> None:
    message = node_pb2.PeerLeaving(peer_id=PEER_ID, gen=1)
    assert message.SerializeToString() == PEER_LEAVING_BODY
    assert encode_opener(StreamType.PEER_LEAVING, message.SerializeToString()) == PEER_LEAVING_OPENER


def test_reply_frame_has_no_type_byte() -> None:
    # RouteTable{gen = 1}: field 3 varint -> tag 0x18, value 0x01; framed as [02 00 00 00][18 01].
    body = node_pb2.RouteTable(gen=1).SerializeToString()
    assert encode_frame(body) == bytes([0x02, 0x00, 0x00, 0x00, 0x18, 0x01])


def test_zero_length_body() -> None:
    assert encode_frame(b"") == b"\x00\x00\x00\x00"
    assert encode_opener(StreamType.GOSSIP, b"") == b"\x01\x00\x00\x00\x00"
    decoder = FrameDecoder()
    assert decoder.feed(b"\x00\x00\x00\x00\x00\x00\x00\x00") == [b"", b""]
    decoder.finish()


def test_tunnel_http_opener_is_one_byte() -> None:
    assert encode_stream_type(StreamType.TUNNEL_HTTP) + b"POST" == b"\x04POST"


def test_length_is_little_endian_and_large_lengths_encode() -> None:
    body = b"x" * 0x0102
    assert encode_frame(body)[:4] == bytes([0x02, 0x01, 0x00, 0x00])


def test_encode_refuses_oversized_body() -> None:
    with pytest.raises(FrameTooLarge) as info:
        encode_frame(b"12345", limit=4)
    assert (info.value.length, info.value.limit) == (5, 4)


def test_decode_opener_one_byte_at_a_time() -> None:
    reader = StreamTypeReader()
    decoder = FrameDecoder()
    frames: list[bytes] = []
    stream_type = None
    for i in range(len(PEER_LEAVING_OPENER)):
        chunk = PEER_LEAVING_OPENER[i : i + 1]
        if stream_type is None:
            got = reader.feed(chunk)
            assert got is not None
            stream_type, rest = got
            frames += decoder.feed(rest)
        else:
            frames += decoder.feed(chunk)
        if i < len(PEER_LEAVING_OPENER) - 1:
            assert frames == []
    assert stream_type is StreamType.PEER_LEAVING
    assert frames == [PEER_LEAVING_BODY]
    decoder.finish()
    assert node_pb2.PeerLeaving.FromString(frames[0]).peer_id == PEER_ID


def test_type_byte_and_body_in_one_chunk() -> None:
    got = StreamTypeReader().feed(PEER_LEAVING_OPENER)
    assert got == (StreamType.PEER_LEAVING, PEER_LEAVING_OPENER[1:])


def test_several_frames_in_one_chunk() -> None:
    data = b"\x01\x00\x00\x00a" + b"\x00\x00\x00\x00" + b"\x02\x00\x00\x00bc" + b"\x03\x00"
    decoder = FrameDecoder()
    assert decoder.feed(data) == [b"a", b"", b"bc"]
    assert decoder.buffered == 2
    assert decoder.feed(b"\x00\x00xyz") == [b"xyz"]


def test_cap_checked_from_the_header_alone() -> None:
    # Type byte plus a length prefix claiming 8 MiB + 1: the error comes with no body bytes sent.
    header = bytes([0x01]) + (MAX_CONTROL_FRAME_BYTES + 1).to_bytes(4, "little")
    assert header == bytes([0x01, 0x01, 0x00, 0x80, 0x00])
    got = StreamTypeReader().feed(header)
    assert got is not None
    decoder = FrameDecoder()
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(got[1])
    assert info.value.length == MAX_CONTROL_FRAME_BYTES + 1
    assert info.value.limit == MAX_CONTROL_FRAME_BYTES
    # The decoder stays dead, and holds nothing.
    assert decoder.buffered == 0
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"more")
    with pytest.raises(FrameTooLarge):
        decoder.finish()


def test_cap_is_inclusive_and_limit_configurable() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(MAX_CONTROL_FRAME_BYTES.to_bytes(4, "little")) == []
    assert decoder.expected_length == MAX_CONTROL_FRAME_BYTES
    small = FrameDecoder(limit=3)
    assert small.feed(b"\x03\x00\x00\x00abc") == [b"abc"]
    with pytest.raises(FrameTooLarge):
        small.feed(b"\x04\x00\x00\x00")


def test_maximum_u32_length_rejected() -> None:
    with pytest.raises(FrameTooLarge) as info:
        FrameDecoder().feed(b"\xff\xff\xff\xff")
    assert info.value.length == 0xFFFFFFFF


@pytest.mark.parametrize(
    ("data", "needed", "received", "what"),
    [
        (b"\x05\x00", 4, 2, "length prefix"),
        (b"\x05\x00\x00\x00ab", 5, 2, "frame body"),
        (b"\x05\x00\x00\x00", 5, 0, "frame body"),
    ],
)
def test_truncated_at_end_of_stream(data: bytes, needed: int, received: int, what: str) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(data) == []
    with pytest.raises(TruncatedFrame) as info:
        decoder.finish()
    assert (info.value.needed, info.value.received, info.value.what) == (needed, received, what)


def test_empty_stream_has_no_type() -> None:
    reader = StreamTypeReader()
    assert reader.feed(b"") is None
    with pytest.raises(TruncatedFrame) as info:
        reader.finish()
    assert info.value.what == "stream type"


@pytest.mark.parametrize("byte", [0x00, 0x0F, 0x10, 0x7F, 0xFF])
def test_unknown_stream_type(byte: int) -> None:
    with pytest.raises(UnknownStreamType) as info:
        StreamTypeReader().feed(bytes([byte, 0, 0, 0, 0]))
    assert info.value.byte == byte
    with pytest.raises(UnknownStreamType):
        parse_stream_type(byte)


def test_every_known_type_parses() -> None:
    # including the 0.76 types 0x0a, 0x0d, 0x0e and the retired 0x0b/0x0c: known, so an adapter
    # can refuse them by name instead of treating them as garbage
    for byte in range(0x01, 0x0F):
        got = StreamTypeReader().feed(bytes([byte]) + b"rest")
        assert got == (StreamType(byte), b"rest")


def test_decode_single_frame() -> None:
    assert decode_single_frame(PEER_LEAVING_OPENER[1:]) == PEER_LEAVING_BODY
    with pytest.raises(InvalidFrame):
        decode_single_frame(b"\x00\x00\x00\x00\x00\x00\x00\x00")
    with pytest.raises(TruncatedFrame):
        decode_single_frame(b"")
    with pytest.raises(TruncatedFrame):
        decode_single_frame(b"\x01\x00\x00\x00a\x01")
