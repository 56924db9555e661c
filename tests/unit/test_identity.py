"""Node identity: key generation, the persisted key file, its permissions and refusals."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from meshd.identity import Identity, IdentityError, load_or_create_key


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_endpoint_id_is_the_public_key_in_hex_and_short_form() -> None:
    ident = Identity.generate()
    assert len(ident.public_bytes) == 32
    assert ident.endpoint_id == ident.public_bytes.hex()
    assert ident.short_id == ident.endpoint_id[:10]
    sig = ident.private_key.sign(b"hello")
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(ident.endpoint_id)).verify(sig, b"hello")


def test_fresh_keys_differ() -> None:
    assert Identity.generate().public_bytes != Identity.generate().public_bytes


def test_key_file_created_0600_in_0700_folder_and_reloaded(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first, created = load_or_create_key(state)
    assert created
    assert mode(state) == 0o700
    key = state / "key"
    assert mode(key) == 0o600
    text = key.read_text()
    assert len(text.strip()) == 64 and text.strip() == text.strip().lower()
    assert Identity.from_seed(bytes.fromhex(text)).public_bytes == first.public_bytes
    second, created_again = load_or_create_key(state)
    assert not created_again
    assert second.public_bytes == first.public_bytes


def test_existing_open_folder_is_tightened(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    load_or_create_key(state)
    assert mode(state) == 0o700


@pytest.mark.parametrize("bad_mode", [0o644, 0o640, 0o604])
def test_group_or_world_readable_key_is_refused(tmp_path: Path, bad_mode: int) -> None:
    ident, _ = load_or_create_key(tmp_path)
    os.chmod(tmp_path / "key", bad_mode)
    with pytest.raises(IdentityError, match="readable by group or others"):
        load_or_create_key(tmp_path)
    assert ident is not None


@pytest.mark.parametrize("content", ["abc", "zz" * 32, "00" * 31])
def test_malformed_key_file_is_refused(tmp_path: Path, content: str) -> None:
    key = tmp_path / "key"
    key.write_text(content)
    os.chmod(key, 0o600)
    with pytest.raises(IdentityError, match="key file"):
        load_or_create_key(tmp_path)


def test_key_with_trailing_newline_loads(tmp_path: Path) -> None:
    seed = bytes(range(32))
    key = tmp_path / "key"
    key.write_text(seed.hex() + "\n")
    os.chmod(key, 0o600)
    ident, created = load_or_create_key(tmp_path)
    assert not created
    assert ident.seed == seed
