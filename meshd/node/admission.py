"""Who may be in our mesh (0.76 §2.3, §6): a gated mesh's requirement state, the check of a peer's direct
gossip against it, our own entry's admission fields, and the recent refusals (``recent_mesh_rejections``)."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.logger import Logger

from meshd.mesh.state import MeshState
from meshd.node.lifetime import Lifetime
from meshd.node.membership import JoinError
from meshd.protocol import node_pb2
from meshd.protocol.admission import add_gated_self_fields, check_direct_peer
from meshd.protocol.peers import direct_entry
from meshd.protocol.requirements import MeshRequirementState, RequirementError
from meshd.protocol.streams import PROTOCOL_GENERATION
from meshd.protocol.version import ANNOUNCED_VERSION

#: Recent reasons a peer or a mesh was refused (``/api/status`` ``recent_mesh_rejections``), at most.
MAX_REJECTIONS = 16


class Admission:
    """The admission rules of the mesh this node is in. Ungated (no requirement state) until the node joins
    through a signed token (:meth:`enter_gated_mesh`); from then on every frame we send carries our proof
    (:meth:`sign_own_entry`) and every peer's direct gossip is checked (:meth:`direct_entry_problem`)."""

    _log = Logger()

    def __init__(self, lifetime: Lifetime, mesh: MeshState, node_key: Ed25519PrivateKey) -> None:
        self._lifetime = lifetime
        self._mesh = mesh
        self._key = node_key
        self._requirements: MeshRequirementState | None = None
        self._rejections: list[dict[str, Any]] = []

    @property
    def requirements(self) -> MeshRequirementState | None:
        """A gated mesh's requirement state, from the signed token we joined through (0.76 §6)."""
        return self._requirements

    @property
    def rejections(self) -> list[dict[str, Any]]:
        """mesh-llm's ``recent_mesh_rejections``: why a mesh or a peer was refused, newest last."""
        return list(self._rejections)

    def enter_gated_mesh(self, state: MeshRequirementState) -> None:
        """A signed token leads into a gated mesh: its id is ours from now on, and every gossip frame
        carries our admission proof. A mesh that needs a release-signed build is out of reach (JoinError)."""
        if self._requirements is not None and self._requirements.mesh_id != state.mesh_id:
            raise JoinError("this token leads to another gated mesh than the one this node is in")
        try:
            # Our own entry must pass the mesh's bounds (a mesh requiring a release-signed build fails here).
            state.policy.requirements.evaluate(node_version=ANNOUNCED_VERSION, protocol_generation=PROTOCOL_GENERATION)
        except RequirementError as e:
            self.reject("join", e.code, str(e))
            raise JoinError(f"cannot join this gated mesh: {e}") from None
        self._requirements = state
        if self._mesh.set_mesh_id(state.mesh_id):
            self._lifetime.changed()

    def sign_own_entry(self, ann: node_pb2.PeerAnnouncement) -> None:
        """On a gated mesh: our entry's mesh id, policy hash and a fresh admission proof."""
        if self._requirements is not None:
            add_gated_self_fields(ann, self._requirements, self._key, self._lifetime.now_ms())

    def direct_entry_problem(self, remote_id: bytes, frame: node_pb2.GossipFrame) -> str | None:
        """Why a peer's direct gossip is refused, if it is: it must carry the sender's own entry, and on a
        gated mesh that entry must pass the mesh's checks (0.76 §2.3, §6.2)."""
        own = direct_entry(frame, remote_id)
        if own is None:
            return "the frame omits the sender's own entry"
        try:
            check_direct_peer(self._requirements, own, remote_id, self._lifetime.now_ms())
        except RequirementError as e:
            self.reject("gossip", e.code, str(e), remote_id)
            return str(e)
        return None

    def reject(self, source: str, reason: str, message: str, peer: bytes | None = None) -> None:
        """Remember why a mesh or a peer was refused (shown in ``/api/status``; bounded)."""
        entry: dict[str, Any] = {
            "observed_at_unix_ms": self._lifetime.now_ms(),
            "source": source,
            "reason": reason,
            "message": message,
        }
        if peer is not None:
            entry["peer_id"] = peer.hex()
        self._rejections = [*self._rejections, entry][-MAX_REJECTIONS:]
        self._log.warn("refused ({source}): {message}", source=source, message=message, event="mesh_rejection")
