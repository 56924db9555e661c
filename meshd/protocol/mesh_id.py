"""Mesh ids as mesh-llm 0.76 originators derive them (MESH_PROTOCOL_076.md §7).

=======================  ==========================================================================
named mesh, ungated      ``hex(sha256("mesh-llm:" ‖ name ‖ ":" ‖ nostr_pubkey_hex_or_empty))``
unnamed mesh, ungated    32 random lowercase hex characters (two random u64 as ``{:016x}``)
gated mesh (any name)    the genesis policy hash (:meth:`MeshGenesisPolicy.policy_hash`)
=======================  ==========================================================================

The Nostr public key (64 hex) is part of a named id only when the mesh is published on Nostr;
otherwise the second ``:`` is still there with nothing after it. 0.65 derived named ids with
Rust's ``DefaultHasher`` (16 hex), so old and new nodes give the same name different ids. Joiners
never derive an id: they adopt the first one they learn from a peer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from meshd.protocol.requirements import MeshGenesisPolicy

__all__ = ["gated_mesh_id", "named_mesh_id", "random_mesh_id"]

_HEX = frozenset("0123456789abcdefABCDEF")


def named_mesh_id(name: str, nostr_pubkey_hex: str | None = None) -> str:
    """The id of a named, ungated mesh; pass the publisher's Nostr key only if it publishes."""
    if nostr_pubkey_hex is not None and (len(nostr_pubkey_hex) != 64 or not set(nostr_pubkey_hex) <= _HEX):
        raise ValueError("the Nostr public key must be 64 hex characters")
    key = (nostr_pubkey_hex or "").lower()
    return hashlib.sha256(b"mesh-llm:" + name.encode("utf-8") + b":" + key.encode("ascii")).hexdigest()


def random_mesh_id(random_bytes: Callable[[int], bytes]) -> str:
    """A fresh id for an unnamed mesh (the caller persists and reuses it), from 16 random bytes,
    e.g. ``random_mesh_id(os.urandom)``."""
    raw = random_bytes(16)
    if len(raw) != 16:
        raise ValueError("random_bytes(16) must return 16 bytes")
    return raw.hex()


def gated_mesh_id(policy: MeshGenesisPolicy) -> str:
    """The id of a gated mesh: its genesis policy hash."""
    return policy.policy_hash()
