"""The live node: identity, role, join state and the status every page and route reads."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from meshd import __version__
from meshd.config import Config, Role
from meshd.identity import Identity


class NodeState(Enum):
    DISCOVERING = "discovering"  # --auto: looking for meshes on Nostr
    JOINING = "joining"  # dialling tokens
    JOINED = "joined"  # admitted into a mesh
    STANDALONE = "standalone"  # no mesh: nothing to join, or every attempt failed


RelayStatus = Callable[[], list[dict[str, Any]]]


class Node(Service):
    _log = Logger()

    def __init__(self, config: Config, identity: Identity, reactor: IReactorTime) -> None:
        self.config = config
        self.identity = identity
        self._reactor = reactor
        self.started_at: float | None = None
        self.state = self._initial_state()
        self.mesh_id: str | None = None
        self.mesh_name: str | None = config.mesh_name
        self.api_port: int | None = None
        self.console_port: int | None = None
        self.token: str | None = None
        self.relay_status: RelayStatus = list
        self.inflight_requests = 0

    def _initial_state(self) -> NodeState:
        if self.config.auto:
            return NodeState.DISCOVERING
        if self.config.join_tokens:
            return NodeState.JOINING
        return NodeState.STANDALONE

    def startService(self) -> None:
        super().startService()
        self.started_at = self._reactor.seconds()
        self._log.info(
            "node {node_id} starting as {role} ({state})",
            event="node_start",
            node_id=self.identity.short_id,
            endpoint_id=self.identity.endpoint_id,
            role=self.config.role.value,
            state=self.state.value,
        )

    def set_state(self, state: NodeState) -> None:
        if state is not self.state:
            self._log.info("node state {old} -> {new}", event="node_state", old=self.state.value, new=state.value)
            self.state = state

    @property
    def uptime(self) -> float:
        return 0.0 if self.started_at is None else max(0.0, self._reactor.seconds() - self.started_at)

    def status(self) -> dict[str, Any]:
        """The ``/api/status`` payload; keys follow mesh-llm's StatusPayload where it has them."""
        is_client = self.config.role is Role.CLIENT
        return {
            "version": __version__,
            "node_id": self.identity.short_id,
            "endpoint_id": self.identity.endpoint_id,
            "token": self.token,
            "role": self.config.role.value,
            "node_status": "Client" if is_client else "Serving",
            "node_state": self.state.value,
            "is_client": is_client,
            "is_host": not is_client,
            "api_port": self.api_port,
            "console_port": self.console_port,
            "uptime_secs": round(self.uptime, 3),
            "peers": [],
            "mesh_id": self.mesh_id,
            "mesh_name": self.mesh_name,
            "inflight_requests": self.inflight_requests,
            "headless": self.config.headless,
            "nostr_discovery": self.relay_status(),
        }
