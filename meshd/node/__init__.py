"""The live node: a Twisted service composed of parts (``meshd.node.service`` says which)."""

from meshd.node.admission import MAX_REJECTIONS
from meshd.node.connections import REDIAL_TIMEOUT, SILENT_PEER_SECS, local_addresses
from meshd.node.dispatch import TRUST_POLICY
from meshd.node.gossip import MAX_CONCURRENT_DIALS
from meshd.node.joining import ALONE_REJOIN_INTERVAL, JOIN_TIMEOUT, REJOIN_INTERVAL
from meshd.node.liveness import HEARTBEAT_INTERVAL, STRIKES_DIRECT, STRIKES_RELAY
from meshd.node.membership import JoinError, NodeState
from meshd.node.service import LEAVING_FLUSH, LIVENESS_INTERVAL, SAVE_LAST_MESH_DELAY, Node

__all__ = [
    "ALONE_REJOIN_INTERVAL",
    "HEARTBEAT_INTERVAL",
    "JOIN_TIMEOUT",
    "LEAVING_FLUSH",
    "LIVENESS_INTERVAL",
    "MAX_CONCURRENT_DIALS",
    "MAX_REJECTIONS",
    "REDIAL_TIMEOUT",
    "REJOIN_INTERVAL",
    "SAVE_LAST_MESH_DELAY",
    "SILENT_PEER_SECS",
    "STRIKES_DIRECT",
    "STRIKES_RELAY",
    "TRUST_POLICY",
    "JoinError",
    "Node",
    "NodeState",
    "local_addresses",
]
