"""Stream type bytes and protocol constants of mesh-llm/1 (MESH_PROTOCOL.md §4.1, §5.1-§5.3;
MESH_PROTOCOL_076.md §2.1, §3.1).

The values come from mesh-llm's code (``protocol/mod.rs``), not from its ``message_protocol.md``,
which numbers the plugin streams differently. Every byte mesh-llm 0.76 defines is a
:class:`StreamType`, so an inbound stream of a type meshd does not serve is recognised and reset
cleanly rather than reported as garbage. :data:`NEVER_SENT` lists the types meshd must not open.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "ALPN_V1",
    "MAX_CONTROL_FRAME_BYTES",
    "NEVER_SENT",
    "PRE_ADMISSION_STREAM_TYPES",
    "PROTOCOL_GENERATION",
    "SERVED_STREAM_TYPES",
    "StreamType",
    "TrustPolicy",
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
    #: 0.76: opened by mesh-llm plugins; meshd refuses it.
    PLUGIN_MESH_STREAM = 0x0A
    #: Retired in 0.76 (config moved to the ``mesh-llm-control/1`` ALPN); mesh-llm drops it.
    CONFIG_SUBSCRIBE = 0x0B
    #: Retired in 0.76, like CONFIG_SUBSCRIBE.
    CONFIG_PUSH = 0x0C
    #: 0.76: ``MeshSubprotocolOpen`` then subsystem bytes (skippy); only sent to peers that
    #: advertise the subprotocol, and meshd advertises none.
    SUBPROTOCOL = 0x0D
    #: 0.76, legacy and receive-only in mesh-llm: ``DirectPathRequest``.
    DIRECT_PATH_REQUEST = 0x0E


#: Stream types meshd handles when a peer opens them; any other type is reset.
SERVED_STREAM_TYPES: Final = frozenset(
    {
        StreamType.GOSSIP,
        StreamType.TUNNEL_MAP,
        StreamType.TUNNEL_HTTP,
        StreamType.ROUTE_REQUEST,
        StreamType.PEER_DOWN,
        StreamType.PEER_LEAVING,
    }
)

#: Types meshd never opens. ``0x02``: a 0.76 node has dropped the receiver of the legacy llama RPC
#: tunnel, so an inbound 0x02 ends its stream-accept loop for the whole connection (§3.1).
#: ``0x0b``/``0x0c`` are retired and ``0x0e`` is receive-only; the plugin and subprotocol streams
#: belong to subsystems meshd does not have.
NEVER_SENT: Final = frozenset(
    {
        StreamType.TUNNEL_RPC,
        StreamType.PLUGIN_CHANNEL,
        StreamType.PLUGIN_BULK_TRANSFER,
        StreamType.PLUGIN_MESH_STREAM,
        StreamType.CONFIG_SUBSCRIBE,
        StreamType.CONFIG_PUSH,
        StreamType.SUBPROTOCOL,
        StreamType.DIRECT_PATH_REQUEST,
    }
)


class TrustPolicy(enum.Enum):
    """mesh-llm's ``--trust-policy`` (how much a node lets unadmitted peers do)."""

    OFF = "off"
    PREFER_OWNED = "prefer-owned"
    REQUIRE_OWNED = "require-owned"
    ALLOWLIST = "allowlist"


#: Stream types a node serves to a remote that is not (yet) in its peer table (0.65, §5.4).
PRE_ADMISSION_STREAM_TYPES: Final = frozenset({StreamType.GOSSIP, StreamType.ROUTE_REQUEST})

_PRE_ADMISSION_076: Final = {
    TrustPolicy.OFF: frozenset({StreamType.GOSSIP, StreamType.TUNNEL_HTTP, StreamType.ROUTE_REQUEST}),
    TrustPolicy.PREFER_OWNED: frozenset({StreamType.GOSSIP, StreamType.TUNNEL_HTTP, StreamType.ROUTE_REQUEST}),
    TrustPolicy.REQUIRE_OWNED: frozenset({StreamType.GOSSIP}),
    TrustPolicy.ALLOWLIST: frozenset({StreamType.GOSSIP}),
}


def allowed_before_admission(stream_type: StreamType, trust: TrustPolicy | None = None) -> bool:
    """Whether a stream of this type is served before the remote has gossiped directly.

    Without ``trust`` this is the 0.65 rule (GOSSIP and ROUTE_REQUEST). With a trust policy it is
    0.76's ``stream_allowed_before_admission``: under ``off``/``prefer-owned`` also TUNNEL_HTTP
    (the "passive SDK inference path": mesh-llm's SDK client opens 0x04 without gossiping) and
    ROUTE_REQUEST (whose handler still answers only admitted peers); under ``require-owned`` and
    ``allowlist`` GOSSIP only.
    """
    if trust is None:
        return stream_type in PRE_ADMISSION_STREAM_TYPES
    return stream_type in _PRE_ADMISSION_076[trust]
