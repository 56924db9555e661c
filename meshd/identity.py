"""Node identity: an Ed25519 key whose public half is the iroh EndpointId (MESH_PROTOCOL.md §3).

Clients use a fresh key every run. Hosts keep theirs in ``<state-dir>/key`` as 64 lowercase hex
characters (the 32-byte seed), in a 0700 folder, in a 0600 file; a key file that group or others
can read is refused rather than used.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KEY_FILE_NAME = "key"


class IdentityError(Exception):
    """The node key could not be loaded or created."""


@attrs.frozen
class Identity:
    private_key: Ed25519PrivateKey = attrs.field(eq=False)
    public_bytes: bytes

    @classmethod
    def from_private_key(cls, key: Ed25519PrivateKey) -> Identity:
        pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(private_key=key, public_bytes=pub)

    @classmethod
    def generate(cls) -> Identity:
        return cls.from_private_key(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        return cls.from_private_key(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def seed(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    @property
    def endpoint_id(self) -> str:
        """The EndpointId as 64 lowercase hex characters."""
        return self.public_bytes.hex()

    @property
    def short_id(self) -> str:
        """iroh's ``fmt_short``: the first 5 bytes as 10 lowercase hex characters."""
        return short_id(self.public_bytes)

    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()


def short_id(endpoint_id: bytes) -> str:
    return endpoint_id[:5].hex()


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` as a 0700 folder, or tighten an existing one to 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, 0o700)


def load_or_create_key(state_dir: Path) -> tuple[Identity, bool]:
    """Load ``<state_dir>/key``, creating it if absent. Returns (identity, created)."""
    try:
        ensure_private_dir(state_dir)
    except OSError as e:
        raise IdentityError(f"cannot use state folder {state_dir}: {e.strerror or e}") from e
    path = state_dir / KEY_FILE_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path), False
    except OSError as e:
        raise IdentityError(f"cannot create key file {path}: {e.strerror or e}") from e
    identity = Identity.generate()
    with os.fdopen(fd, "w") as f:
        f.write(identity.seed.hex())
    return identity, True


def _read_key(path: Path) -> Identity:
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise IdentityError(
            f"key file {path} is readable by group or others (mode {mode:04o}); "
            f"refusing to use it: run 'chmod 600 {path}' if you trust it"
        )
    if not stat.S_ISREG(st.st_mode):
        raise IdentityError(f"key file {path} is not a regular file")
    text = path.read_text(encoding="ascii", errors="replace").strip()
    if len(text) != 64:
        raise IdentityError(f"key file {path} must hold 64 hex characters, found {len(text)}")
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        raise IdentityError(f"key file {path} is not hex") from None
    return Identity.from_seed(seed)
