"""Stream type bytes and protocol constants of mesh-llm/1 (MESH_PROTOCOL.md §4.1, §5.1, §5.2, §5.3).

The values come from mesh-llm's code (``protocol/mod.rs``), not from its ``message_protocol.md``,
which numbers the plugin streams differently.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "ALPN_V1",
    "MAX_CONTROL_FRAME_BYTES",
    "PRE_ADMISSION_STREAM_TYPES",
    "PROTOCOL_GENERATION",
    "StreamType",
    "allowed_before_admission",
]

#: The only ALPN a current mesh-llm node offers and accepts.
ALPN_V1: Final = b"mesh-llm/1"

#: ``gen`` value of GossipFrame, RouteTableRequest, RouteTable, PeerDown and PeerLeaving.
PROTOCOL_GENERATION: Final = 1

#: Largest accepted length prefix of a protobuf control frame (8 MiB).
MAX_CONTROL_FRAME_BYTES: Final = 8 * 1024 * 1024


class StreamType(enum.IntEnum):
    """First byte written by the opener of a bidirectional stream."""

    GOSSIP = 0x01
    TUNNEL_RPC = 0x02
    TUNNEL_MAP = 0x03
    TUNNEL_HTTP = 0x04
    ROUTE_REQUEST = 0x05
    PEER_DOWN = 0x06
    PEER_LEAVING = 0x07
    PLUGIN_CHANNEL = 0x08
    PLUGIN_BULK_TRANSFER = 0x09
    CONFIG_SUBSCRIBE = 0x0B
    CONFIG_PUSH = 0x0C


#: Stream types a node serves to a remote that is not (yet) in its peer table (§5.4).
PRE_ADMISSION_STREAM_TYPES: Final = frozenset({StreamType.GOSSIP, StreamType.ROUTE_REQUEST})


def allowed_before_admission(stream_type: StreamType) -> bool:
    """Whether a stream of this type is served before the remote has gossiped."""
    return stream_type in PRE_ADMISSION_STREAM_TYPES
