"""Property tests for every parser of outside input that had none: each one either returns or raises its
own documented error, never anything else, on arbitrary bytes, on mutations of valid input, on nesting
and huge numbers, and (for parsers that take a stream) in any segmentation.

CI runs them with a fixed seed and 100 examples each (the ``ci`` hypothesis profile in tests/conftest.py);
a release runs ``MESHD_HYPOTHESIS=release`` (5,000 examples, random seeds): docs/security.md.
Parsers with their own property tests elsewhere: jsonbound and the JSON entry points
(test_outside_json), protobuf control frames (test_protocol_validate), tokens and requirements
(test_protocol_token, test_protocol_requirements), tunnel HTTP (test_tunnel_segmentation,
test_chunked_requests), origins (test_console_origin), versions (test_protocol_version).
"""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from meshd.apirequest import inspect_body
from meshd.discovery.errors import InvalidEvent, InvalidListing, MalformedMessage
from meshd.discovery.keys import NostrKeys
from meshd.discovery.listing import MeshListing, build_listing_event, default_token_ok, process_events
from meshd.discovery.nip01 import parse_relay_message, validate_event
from meshd.httpwire import (
    ChunkedScanner,
    HTTPWireError,
    ResponseFramer,
    ResponseParser,
    UpstreamProtocolError,
    reshape_upstream_error,
)
from meshd.identity import Identity
from meshd.iroh_relay import frames
from meshd.protocol import node_pb2
from meshd.protocol.errors import InvalidToken, ProtocolError
from meshd.protocol.framing import FrameDecoder, StreamTypeReader
from meshd.protocol.peers import peer_info_from_announcement
from meshd.protocol.token import EndpointAddr, decode_invite_token, encode_token, parse_socket_addr
from meshd.quic import QuicEndpoint
from meshd.quic.testing import MemoryNetwork
from meshd.tunnel import requested_model, requested_wait
from meshd.web.gate import bearer_token, client_ip, parse_keys

NOW = 1_750_000_000

#: JSON values with the hostile shapes mixed in: deep nesting, huge numbers, long strings.
hostile_json_text = st.one_of(
    st.integers(min_value=1, max_value=3000).map(lambda n: "[" * n + "]" * n),
    st.integers(min_value=1, max_value=3000).map(lambda n: '{"a":' * n + "0" + "}" * n),
    st.integers(min_value=90, max_value=20_000).map(lambda n: "7" * n),
    st.sampled_from(["1e999", "-1e999", "NaN", "Infinity", "1E400", "0." + "1" * 500]),
    st.text(max_size=40).map(json.dumps),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=25,
)


def mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    """Flip, drop or duplicate bytes of a valid input at the drawn positions."""
    out = bytearray(data)
    for pos, op in edits:
        if not out:
            break
        i = pos % len(out)
        if op == 0:
            out[i] ^= 0xFF
        elif op == 1:
            del out[i]
        else:
            out.insert(i, out[i])
    return bytes(out)


edits = st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=2)), max_size=6)
cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=8)


def split(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(marks) if b > a]


# -- Nostr: relay messages, events, listings ------------------------------------------------------------

KEYS = NostrKeys.generate()
TOKEN = encode_token(EndpointAddr(Identity.generate().public_bytes, ip_addrs=[("127.0.0.1", 4000)]))
GOOD_EVENT = build_listing_event(
    KEYS, MeshListing(invite_token=TOKEN, serving=["m"], total_vram_bytes=1, node_count=1), now=NOW
).to_dict()


@given(
    st.one_of(
        st.binary(max_size=300), hostile_json_text.map(str.encode), json_values.map(lambda v: json.dumps(v).encode())
    )
)
def test_relay_messages_are_parsed_or_malformed(data: bytes) -> None:
    try:
        parse_relay_message(data)
    except MalformedMessage:
        pass


@given(edits)
def test_mutated_relay_messages(changes: list[tuple[int, int]]) -> None:
    raw = mutate(json.dumps(["EVENT", "sub", GOOD_EVENT]).encode(), changes)
    try:
        msg = parse_relay_message(raw)
    except MalformedMessage:
        return
    event = getattr(msg, "event", None)
    if event is not None:
        try:
            validate_event(event)
        except InvalidEvent:
            pass


@given(st.dictionaries(st.sampled_from(list(GOOD_EVENT)), json_values, max_size=7))
def test_event_dicts_are_validated_or_refused(fields: dict[str, Any]) -> None:
    event = {**GOOD_EVENT, **fields}
    try:
        validate_event(event)
    except InvalidEvent:
        pass


@given(st.one_of(st.text(max_size=200), hostile_json_text, json_values.map(json.dumps)))
def test_listing_contents_are_listings_or_invalid(text: str) -> None:
    try:
        MeshListing.from_json(text)
    except InvalidListing:
        pass


@given(st.lists(st.one_of(json_values, st.just(GOOD_EVENT)), max_size=6), hostile_json_text)
def test_process_events_never_raises(events: list[Any], content: str) -> None:
    poisoned = KEYS.sign(kind=31990, tags=[["d", "mesh-llm"], ["k", "mesh-llm"]], content=content, created_at=NOW)
    found = process_events([*events, poisoned.to_dict(), GOOD_EVENT], now=NOW)
    assert all(m.listing.invite_token for m in found)


# -- invite tokens and addresses --------------------------------------------------------------------------


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@given(
    st.one_of(st.text(max_size=200), st.binary(max_size=300).map(b64), hostile_json_text.map(lambda t: b64(t.encode())))
)
def test_invite_tokens_decode_or_are_invalid(token: str) -> None:
    try:
        decode_invite_token(token, now_ms=NOW * 1000)
    except InvalidToken:
        pass
    assert default_token_ok(token) in (True, False)


@given(edits)
def test_mutated_tokens(changes: list[tuple[int, int]]) -> None:
    token = mutate(TOKEN.encode(), changes).decode("latin-1")
    try:
        decode_invite_token(token, now_ms=NOW * 1000)
    except InvalidToken:
        pass


@given(
    st.one_of(
        st.binary(max_size=300), hostile_json_text.map(str.encode), json_values.map(lambda v: json.dumps(v).encode())
    )
)
def test_gossiped_addresses_never_raise(serialized: bytes) -> None:
    me = Identity.generate().public_bytes
    ann = node_pb2.PeerAnnouncement(endpoint_id=me, role=node_pb2.CLIENT, serialized_addr=serialized)
    info = peer_info_from_announcement(ann)
    assert info.addr.id == me
    try:
        EndpointAddr.from_json(serialized)
    except InvalidToken:
        pass


@given(st.text(max_size=60))
def test_socket_addresses(text: str) -> None:
    try:
        host, port = parse_socket_addr(text)
    except ValueError:
        return
    assert 0 <= port <= 0xFFFF and host


# -- framing and QUIC ----------------------------------------------------------------------------------------


@given(st.binary(max_size=400), cuts, st.integers(min_value=0, max_value=300))
def test_frame_decoder_in_any_segmentation(data: bytes, points: list[int], limit: int) -> None:
    decoder = FrameDecoder(limit)
    got: list[bytes] = []
    try:
        for piece in split(data, points):
            got.extend(decoder.feed(piece))
        decoder.finish()
    except ProtocolError:
        return
    assert all(len(body) <= limit for body in got)
    reader = StreamTypeReader()
    try:
        reader.feed(data[:1])
    except ProtocolError:
        pass


@given(st.lists(st.binary(min_size=1, max_size=1400), max_size=20))
def test_random_datagrams_never_start_a_connection_or_raise(datagrams: list[bytes]) -> None:
    clock = Clock()
    net = MemoryNetwork(clock)
    endpoint = QuicEndpoint(clock, Identity.generate().private_key, on_connection=lambda c: None)
    net.attach(endpoint, ("10.0.0.2", 2222))
    for i, data in enumerate(datagrams):
        net.inject((f"10.9.0.{i % 250 + 1}", 5000 + i), ("10.0.0.2", 2222), data)
    net.pump()
    assert endpoint.connections == []


# -- the iroh relay protocol ---------------------------------------------------------------------------------

RELAY_FRAMES = [
    frames.encode(frames.Ping(b"12345678")),
    frames.encode(frames.ClientToRelayDatagram(b"k" * 32, b"payload", 0)),
    frames.encode(frames.ServerDeniesAuth("no")),
    frames.encode(frames.EndpointGone(b"g" * 32)),
]


@given(
    st.one_of(st.binary(max_size=200), st.tuples(st.sampled_from(RELAY_FRAMES), edits).map(lambda t: mutate(*t))),
    st.sampled_from([frames.PROTOCOL_V1, frames.PROTOCOL_V2]),
)
def test_relay_frames_decode_or_raise_frame_error(message: bytes, version: str) -> None:
    assume(message)
    try:
        frames.decode(message, version)
    except frames.FrameError:
        pass


# -- HTTP from peers and backends ------------------------------------------------------------------------------

RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
)


@given(st.one_of(st.binary(max_size=300), st.just(RESPONSE).flatmap(lambda r: edits.map(lambda e: mutate(r, e)))), cuts)
def test_responses_from_hosts_and_backends_parse_or_raise_their_error(data: bytes, points: list[int]) -> None:
    parser = ResponseParser()
    framer = ResponseFramer()
    scanner = ChunkedScanner()
    for piece in split(data, points):
        for name, step in (("parser", parser.feed), ("framer", framer.feed), ("scanner", scanner.feed)):
            try:
                step(piece)
            except HTTPWireError as e:
                assert name == "parser" or isinstance(e, UpstreamProtocolError)
                return


@given(
    st.one_of(
        st.binary(max_size=300), hostile_json_text.map(str.encode), json_values.map(lambda v: json.dumps(v).encode())
    )
)
def test_body_readers_never_raise(body: bytes) -> None:
    model, stream = inspect_body(body)
    assert model is None or isinstance(model, str)
    assert stream in (True, False)
    assert requested_model(body) is None or isinstance(requested_model(body), str)
    for status in (400, 404, 429, 500, 503):
        shaped = json.loads(reshape_upstream_error(status, body))
        assert isinstance(shaped["error"]["message"], str)


@given(st.binary(max_size=80), st.binary(max_size=80), st.binary(max_size=80), st.booleans())
def test_header_values_never_raise(a: bytes, b: bytes, c: bytes, trust: bool) -> None:
    assert isinstance(client_ip("10.0.0.1", a or None, b or None, trust), str)
    token = bearer_token(c or None)
    assert token is None or isinstance(token, str)
    wait = requested_wait(a or None)
    assert wait is None or 0 <= wait <= 3600
    keys, bad = parse_keys(c.decode("latin-1"))
    assert all(isinstance(k, str) for k in keys) and all(isinstance(n, int) for n in bad)


@given(st.binary(max_size=600), cuts)
def test_raw_bytes_on_the_http_ports_get_an_answer_not_an_error(data: bytes, points: list[int]) -> None:
    """Whatever a client sends the console port, twisted.web with meshd's limits answers or closes;
    the root fixture fails the test if anything logs an error."""
    from meshd.web.console import ConsoleApp
    from tests.unit.test_web import make_node

    site = ConsoleApp(make_node()).site()
    site.reactor = Clock()  # type: ignore[attr-defined]
    addr = IPv4Address("TCP", "10.0.0.7", 5555)
    proto = site.buildProtocol(addr)
    transport = StringTransport(peerAddress=addr, hostAddress=IPv4Address("TCP", "127.0.0.1", 3131))
    proto.makeConnection(transport)
    for piece in split(data, points):
        proto.dataReceived(piece)
    site.reactor.advance(60)  # type: ignore[attr-defined]
    answer = transport.value()
    assert answer == b"" or answer.startswith(b"HTTP/1.1 ")
    assert b"HTTP/1.1 500" not in answer
