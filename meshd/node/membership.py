"""The node's state (:class:`NodeState`) and its transitions."""

from __future__ import annotations

from enum import Enum

from twisted.logger import Logger

from meshd.mesh.state import MeshState
from meshd.node.lifetime import Lifetime


class NodeState(Enum):
    DISCOVERING = "discovering"  # --auto: looking for meshes on Nostr
    JOINING = "joining"  # dialling tokens
    JOINED = "joined"  # admitted into a mesh
    STANDALONE = "standalone"  # no mesh: nothing to join, or every attempt failed


class JoinError(Exception):
    """A token could not be joined."""


def initial_state(*, auto: bool, has_tokens: bool) -> NodeState:
    if auto:
        return NodeState.DISCOVERING
    if has_tokens:
        return NodeState.JOINING
    return NodeState.STANDALONE


class Membership:
    """Where the node stands: discovering (``--auto``), joining, joined, or on its own. Every change is
    logged and told to the node's listeners. ``auto``: a node that lost its mesh goes back to discovering."""

    _log = Logger()

    def __init__(self, state: NodeState, mesh: MeshState, lifetime: Lifetime, *, auto: bool) -> None:
        self._state = state
        self._mesh = mesh
        self._lifetime = lifetime
        self._auto = auto

    @property
    def state(self) -> NodeState:
        return self._state

    def set(self, state: NodeState) -> None:
        if state is not self._state:
            self._log.info("node state {old} -> {new}", event="node_state", old=self._state.value, new=state.value)
            self._state = state
            self._lifetime.changed()

    def admitted(self) -> None:
        """A gossip exchange admitted a peer: we are in a mesh."""
        self.set(NodeState.JOINED)

    def check_alone(self) -> None:
        """After a peer went away: a joined node with no peer left is on its own again."""
        if self._state is NodeState.JOINED and self._mesh.alone():
            self.set(NodeState.DISCOVERING if self._auto else NodeState.STANDALONE)
