"""Decode and validate mesh-llm/1 control messages (MESH_PROTOCOL.md §5.3, MESH_PROTOCOL_076.md §4.3).

Each ``decode_*`` function takes one frame body (what :class:`~meshd.protocol.framing.FrameDecoder`
returned) and gives back the protobuf message, or raises a subclass of
:class:`~meshd.protocol.errors.InvalidFrame`. The receiver then drops the stream without a reply,
as mesh-llm does. Checks that need the connection's TLS identity take it as ``remote_id``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from meshd.protocol import node_pb2
from meshd.protocol.errors import (
    BadGeneration,
    ForgedSender,
    InvalidFrame,
    InvalidIdLength,
    InvalidSubprotocol,
    MalformedMessage,
    MissingHttpPort,
)
from meshd.protocol.keys import ENDPOINT_ID_BYTES, is_valid_ed25519_point
from meshd.protocol.semver import rust_trim
from meshd.protocol.streams import PROTOCOL_GENERATION

__all__ = [
    "check_gossip_sender",
    "decode_direct_path_request",
    "decode_gossip_frame",
    "decode_peer_down",
    "decode_peer_leaving",
    "decode_route_table",
    "decode_route_table_request",
    "decode_subprotocol_open",
    "decode_tunnel_map",
    "parse_message",
    "valid_point_announcements",
    "validate_gossip_frame",
    "validate_peer_announcement",
]

_M = TypeVar("_M", bound=Message)


def parse_message(cls: type[_M], body: bytes) -> _M:
    """Parse protobuf bytes into ``cls``; raise :class:`MalformedMessage` on bad encoding."""
    message = cls()
    try:
        message.ParseFromString(body)
    except (DecodeError, ValueError) as exc:
        raise MalformedMessage(cls.__name__, str(exc) or type(exc).__name__) from None
    return message


def _check_gen(message_type: str, gen: int) -> None:
    if gen != PROTOCOL_GENERATION:
        raise BadGeneration(message_type, gen, PROTOCOL_GENERATION)


def _check_id(field: str, value: bytes) -> None:
    if len(value) != ENDPOINT_ID_BYTES:
        raise InvalidIdLength(field, len(value))


def _check_remote(field: str, claimed: bytes, remote_id: bytes) -> None:
    if claimed != remote_id:
        raise ForgedSender(field, claimed, remote_id)


def _check_subprotocol(name: str, major: int) -> None:
    if not rust_trim(name) or major == 0:
        raise InvalidSubprotocol(name, major)


def validate_peer_announcement(ann: node_pb2.PeerAnnouncement) -> None:
    """32-byte ``endpoint_id``; a HOST must carry ``http_port``; every ``subprotocols`` entry needs
    a non-blank name and a non-zero major (0.76)."""
    _check_id("endpoint_id", ann.endpoint_id)
    if ann.role == node_pb2.HOST and not ann.HasField("http_port"):
        raise MissingHttpPort(ann.endpoint_id)
    for sub in ann.subprotocols:
        _check_subprotocol(sub.name, sub.major)


def validate_gossip_frame(frame: node_pb2.GossipFrame) -> None:
    _check_gen("GossipFrame", frame.gen)
    _check_id("sender_id", frame.sender_id)
    for ann in frame.peers:
        validate_peer_announcement(ann)


def decode_gossip_frame(body: bytes, remote_id: bytes | None = None) -> node_pb2.GossipFrame:
    """Decode a GossipFrame and apply every §5.3 check.

    With ``remote_id`` the frame's ``sender_id`` must also equal the connection's TLS identity
    (see :func:`check_gossip_sender`).
    """
    frame = parse_message(node_pb2.GossipFrame, body)
    validate_gossip_frame(frame)
    if remote_id is not None:
        check_gossip_sender(frame, remote_id)
    return frame


def check_gossip_sender(frame: node_pb2.GossipFrame, remote_id: bytes) -> None:
    """Raise :class:`ForgedSender` unless ``sender_id`` is the TLS remote id."""
    _check_remote("sender_id", frame.sender_id, remote_id)


def valid_point_announcements(
    peers: Iterable[node_pb2.PeerAnnouncement],
) -> list[node_pb2.PeerAnnouncement]:
    """The announcements whose ``endpoint_id`` is a valid Ed25519 point; the others are dropped
    silently, as mesh-llm does (see :mod:`meshd.protocol.keys` for the exact rule)."""
    return [ann for ann in peers if is_valid_ed25519_point(ann.endpoint_id)]


def decode_route_table_request(body: bytes) -> node_pb2.RouteTableRequest:
    """``gen == 1``; ``requester_id`` empty or 32 bytes."""
    request = parse_message(node_pb2.RouteTableRequest, body)
    _check_gen("RouteTableRequest", request.gen)
    if request.requester_id:
        _check_id("requester_id", request.requester_id)
    return request


def decode_route_table(body: bytes) -> node_pb2.RouteTable:
    """``gen == 1``; every entry's ``endpoint_id`` 32 bytes."""
    table = parse_message(node_pb2.RouteTable, body)
    _check_gen("RouteTable", table.gen)
    for entry in table.entries:
        _check_id("endpoint_id", entry.endpoint_id)
    return table


def decode_peer_down(body: bytes) -> node_pb2.PeerDown:
    """``gen == 1``; ``peer_id`` 32 bytes (it names a third peer, not the sender)."""
    message = parse_message(node_pb2.PeerDown, body)
    _check_gen("PeerDown", message.gen)
    _check_id("peer_id", message.peer_id)
    return message


def decode_peer_leaving(body: bytes, remote_id: bytes) -> node_pb2.PeerLeaving:
    """``gen == 1``; ``peer_id`` 32 bytes and equal to the sender's TLS identity."""
    message = parse_message(node_pb2.PeerLeaving, body)
    _check_gen("PeerLeaving", message.gen)
    _check_id("peer_id", message.peer_id)
    _check_remote("peer_id", message.peer_id, remote_id)
    return message


def decode_direct_path_request(body: bytes, remote_id: bytes) -> node_pb2.DirectPathRequest:
    """Stream 0x0e: ``gen == 1``, ``requester_id`` 32 bytes and equal to the remote id, and a
    non-empty ``serialized_addr`` (whose id the receiver must also check)."""
    message = parse_message(node_pb2.DirectPathRequest, body)
    _check_gen("DirectPathRequest", message.gen)
    _check_id("requester_id", message.requester_id)
    if not message.serialized_addr:
        raise InvalidFrame("DirectPathRequest: empty serialized_addr")
    _check_remote("requester_id", message.requester_id, remote_id)
    return message


def decode_subprotocol_open(body: bytes) -> node_pb2.MeshSubprotocolOpen:
    """Stream 0x0d's first frame: ``gen == 1``, a non-blank name and a non-zero major."""
    message = parse_message(node_pb2.MeshSubprotocolOpen, body)
    _check_gen("MeshSubprotocolOpen", message.gen)
    _check_subprotocol(message.name, message.major)
    return message


def decode_tunnel_map(body: bytes, remote_id: bytes) -> node_pb2.TunnelMap:
    """``owner_peer_id`` 32 bytes and equal to the remote id; targets 32 bytes; ports ≤ 65535."""
    message = parse_message(node_pb2.TunnelMap, body)
    _check_id("owner_peer_id", message.owner_peer_id)
    for entry in message.entries:
        _check_id("target_peer_id", entry.target_peer_id)
        if entry.tunnel_port > 0xFFFF:
            raise InvalidFrame(f"TunnelMap: tunnel_port {entry.tunnel_port} exceeds 65535")
    _check_remote("owner_peer_id", message.owner_peer_id, remote_id)
    return message
