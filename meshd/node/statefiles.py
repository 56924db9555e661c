"""The node's state files in ``--state-dir``: ``mesh-id`` (the random id of a mesh this host started) and
``last-mesh`` (the mesh joined last; ``--auto`` prefers it, ``meshd.discovery.scoring``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from twisted.logger import Logger

from meshd.protocol.mesh_id import named_mesh_id, random_mesh_id


class StateFiles:
    _log = Logger()

    def __init__(self, state_dir: Path | str, *, urandom: Callable[[int], bytes] = os.urandom) -> None:
        self._dir = Path(state_dir)
        self._urandom = urandom

    def originate_mesh_id(self, mesh_name: str | None, nostr_pubkey_hex: str | None) -> str:
        """The id of a mesh this host starts (0.76 §7): a named mesh's id is derived from its name (and the
        publishing Nostr key, when it publishes); an unnamed one's is random, kept in ``mesh-id``."""
        if mesh_name:
            return named_mesh_id(mesh_name, nostr_pubkey_hex)
        path = self._dir / "mesh-id"
        try:
            text = path.read_text().strip()
            if len(text) == 32 and all(c in "0123456789abcdef" for c in text):
                return text
        except OSError:
            pass
        mesh_id = random_mesh_id(self._urandom)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.write_text(mesh_id)
        except OSError as e:
            self._log.warn("cannot save mesh-id: {err}", err=str(e), event="state_write_failed")
        return mesh_id

    def save_last_mesh(self, mesh_id: str) -> None:
        try:
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            (self._dir / "last-mesh").write_text(mesh_id)
        except OSError as e:
            self._log.warn("cannot save last-mesh: {err}", err=str(e), event="state_write_failed")
