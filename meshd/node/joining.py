"""Joining (MESH_PROTOCOL.md §2.3, 0.76 §6-§7): invite tokens tried in order, signed tokens into gated
meshes, the rejoin loop (every 60 s; every 10 s while alone), and saying once why a token failed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from meshd.deferreds import failed
from meshd.mesh.state import MeshState
from meshd.node.admission import Admission
from meshd.node.connections import Connections
from meshd.node.dispatch import describe
from meshd.node.gossip import Gossip
from meshd.node.lifetime import Lifetime
from meshd.node.membership import JoinError, Membership, NodeState
from meshd.protocol.errors import InvalidToken
from meshd.protocol.token import decode_invite_token
from meshd.quic import MeshConnection

#: Connect plus gossip (mesh-llm 0.76: 30 s).
JOIN_TIMEOUT = 30.0
REJOIN_INTERVAL = 60.0
#: While no peer is connected, tokens are retried this often (a mesh coming back is found fast).
ALONE_REJOIN_INTERVAL = 10.0


class Joiner:
    """The tokens this node joins through: ``tokens`` (shrinks to the one that joined) and ``joined``."""

    _log = Logger()

    def __init__(
        self,
        lifetime: Lifetime,
        mesh: MeshState,
        membership: Membership,
        admission: Admission,
        connections: Connections,
        gossip: Gossip,
        tokens: Sequence[str],
    ) -> None:
        self._lifetime = lifetime
        self._mesh = mesh
        self._membership = membership
        self._admission = admission
        self._connections = connections
        self._gossip = gossip
        self.tokens: list[str] = list(tokens)
        self.joined: str | None = None
        self._errors: dict[str, str] = {}
        self._joining = False
        self._last_rejoin = 0.0

    def join_any(self, tokens: Sequence[str]) -> Deferred[str | None]:
        """Try tokens in order; the first that joins wins (the join list shrinks to it)."""

        async def run() -> str | None:
            if self._membership.state is not NodeState.JOINED:
                self._membership.set(NodeState.JOINING)
            for token in tokens:
                try:
                    await self.join(token)
                except CancelledError:
                    raise  # the node is stopping
                except Exception as e:
                    self._failed(token, describe(e))
                    continue
                self._errors.pop(token, None)
                self.joined = token
                self.tokens = [token]
                return token
            if self._membership.state is not NodeState.JOINED:
                self._membership.set(NodeState.STANDALONE)
            return None

        return Deferred.fromCoroutine(run())

    def join(self, token: str) -> Deferred[MeshConnection]:
        try:
            invite = decode_invite_token(token, now_ms=self._lifetime.now_ms())
        except InvalidToken as e:
            return failed(JoinError(f"bad invite token: {e}"))
        if invite.mesh is not None:
            try:
                self._admission.enter_gated_mesh(invite.mesh)
            except JoinError as e:
                return failed(e)
        addr = invite.addr
        self._mesh.dead.pop(addr.id, None)
        return self._gossip.connect_to_peer(addr, JOIN_TIMEOUT)

    def _failed(self, token: str, error: str) -> None:
        """Say why a token could not be joined once; the retries every few seconds say it again only in
        debug (or when the reason changes)."""
        again = self._errors.get(token) == error
        self._errors[token] = error
        log = self._log.debug if again else self._log.warn
        log(
            "could not join through token {token}: {err}{retry}",
            token=token[:16] + "…",
            err=error,
            retry="" if again else f"; retrying every {ALONE_REJOIN_INTERVAL:g} s while alone",
            event="join_failed",
        )

    def start(self) -> None:
        """The node started: the rejoin clock starts now."""
        self._last_rejoin = self._lifetime.now()

    def rejoin(self) -> None:
        """Every 60 s re-join the token list (a no-op while connected); every 10 s while alone."""
        if not self.tokens or self._lifetime.stopping or self._joining:
            return
        alone = not self._connections.any_connected()
        if not alone and self._lifetime.now() - self._last_rejoin < REJOIN_INTERVAL:
            return
        self._last_rejoin = self._lifetime.now()
        self._joining = True

        def done(_: Any) -> None:
            self._joining = False

        self.join_any(self.tokens).addBoth(done)
