"""Nostr keys: NIP-19 bech32 ``npub``/``nsec``, the persisted publisher key, throw-away reader keys.

``load_or_create_keys`` does file I/O but needs no reactor; call it from ``startService`` (never from a
constructor).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

import attrs
import bech32
from coincurve import PrivateKey

from meshd.discovery.errors import KeyFileError
from meshd.discovery.nip01 import Event, sign_event

__all__ = [
    "NOSTR_KEY_FILE",
    "NostrKeys",
    "load_or_create_keys",
    "npub_decode",
    "npub_encode",
    "nsec_decode",
    "nsec_encode",
    "throwaway_keys",
]

NOSTR_KEY_FILE = "nostr.nsec"
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def _encode(hrp: str, data: bytes) -> str:
    words = bech32.convertbits(data, 8, 5, True)
    if words is None:  # pragma: no cover - convertbits only fails on bad input widths
        raise ValueError("cannot convert key to 5-bit words")
    return bech32.bech32_encode(hrp, words)


def _decode(expected_hrp: str, text: str) -> bytes:
    hrp, words = bech32.bech32_decode(text.strip())
    if hrp is None or words is None:
        raise ValueError(f"not a valid bech32 string: {text[:12]!r}...")
    if hrp != expected_hrp:
        raise ValueError(f"expected a {expected_hrp!r} bech32 string, got {hrp!r}")
    data = bech32.convertbits(words, 5, 8, False)
    if data is None or len(data) != 32:
        raise ValueError(f"{expected_hrp} payload is not 32 bytes")
    return bytes(data)


def npub_encode(pubkey_hex: str) -> str:
    raw = bytes.fromhex(pubkey_hex)
    if len(raw) != 32:
        raise ValueError("x-only public key must be 32 bytes")
    return _encode("npub", raw)


def npub_decode(npub: str) -> str:
    """``npub1…`` → 64 lowercase hex chars."""
    return _decode("npub", npub).hex()


def nsec_encode(secret: bytes) -> str:
    if len(secret) != 32:
        raise ValueError("secret key must be 32 bytes")
    return _encode("nsec", secret)


def nsec_decode(nsec: str) -> bytes:
    return _decode("nsec", nsec)


@attrs.frozen
class NostrKeys:
    """A secp256k1 key pair; ``pubkey`` is the BIP-340 x-only public key as 64 lowercase hex."""

    secret: bytes = attrs.field(repr=False)
    pubkey: str

    @classmethod
    def from_secret(cls, secret: bytes) -> NostrKeys:
        if len(secret) != 32:
            raise ValueError("secret key must be 32 bytes")
        try:
            key = PrivateKey(secret)
        except ValueError as e:  # zero or >= curve order
            raise ValueError(f"invalid secp256k1 secret key: {e}") from e
        return cls(secret=secret, pubkey=key.public_key_xonly.format().hex())

    @classmethod
    def from_nsec(cls, nsec: str) -> NostrKeys:
        return cls.from_secret(nsec_decode(nsec))

    @classmethod
    def generate(cls) -> NostrKeys:
        return cls.from_secret(PrivateKey().secret)

    @property
    def npub(self) -> str:
        return npub_encode(self.pubkey)

    @property
    def nsec(self) -> str:
        return nsec_encode(self.secret)

    def sign(self, *, kind: int, tags: Sequence[Sequence[str]], content: str, created_at: int) -> Event:
        return sign_event(self.secret, kind=kind, tags=tags, content=content, created_at=created_at)


def throwaway_keys() -> NostrKeys:
    """A fresh key pair for read-only relay sessions (mesh-llm generates one per discovery)."""
    return NostrKeys.generate()


def _ensure_private_dir(state_dir: Path) -> None:
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = state_dir.stat()
    except OSError as e:
        raise KeyFileError(f"cannot create state directory {state_dir}: {e}") from e
    if not stat.S_ISDIR(st.st_mode):
        raise KeyFileError(f"state path {state_dir} is not a directory")
    if st.st_mode & 0o077:
        # Same as mesh-llm: tighten a directory we own to 0700.
        try:
            os.chmod(state_dir, 0o700)
        except OSError as e:
            raise KeyFileError(f"state directory {state_dir} is group/world accessible: {e}") from e


def load_or_create_keys(state_dir: Path | str) -> NostrKeys:
    """Load ``<state_dir>/nostr.nsec`` or create it (dir 0700, file 0600, written atomically).

    An existing key file that is group- or world-accessible, not a regular file, or not a valid ``nsec``
    raises :class:`KeyFileError` (the file is left untouched).
    """
    state_dir = Path(state_dir)
    _ensure_private_dir(state_dir)
    path = state_dir / NOSTR_KEY_FILE
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return _create_key_file(path)
    except OSError as e:
        raise KeyFileError(f"cannot stat {path}: {e}") from e
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"Nostr key path {path} is not a regular file")
    if st.st_mode & 0o077:
        raise KeyFileError(
            f"Nostr key file {path} has mode {stat.S_IMODE(st.st_mode):04o}; it must not be readable by "
            f"group or others. Fix with: chmod 600 {path}"
        )
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"cannot read Nostr key file {path}: {e}") from e
    try:
        if _HEX64.fullmatch(text):
            return NostrKeys.from_secret(bytes.fromhex(text))
        return NostrKeys.from_nsec(text)
    except ValueError as e:
        raise KeyFileError(f"Nostr key file {path} does not hold a valid nsec: {e}") from e


def _create_key_file(path: Path) -> NostrKeys:
    keys = NostrKeys.generate()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, keys.nsec.encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o600)  # the umask may have removed bits, never added any
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise KeyFileError(f"cannot write Nostr key file {path}: {e}") from e
    return keys
