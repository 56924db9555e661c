"""bech32 npub/nsec against rust-nostr, and the persisted publisher key file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import nostr_sdk
import pytest

from meshd.discovery.errors import KeyFileError
from meshd.discovery.keys import (
    NostrKeys,
    load_or_create_keys,
    npub_decode,
    npub_encode,
    nsec_decode,
    nsec_encode,
    throwaway_keys,
)


@pytest.mark.parametrize("_round", range(5))
def test_bech32_matches_nostr_sdk(_round: int) -> None:
    sdk = nostr_sdk.Keys.generate()
    secret = bytes.fromhex(sdk.secret_key().to_hex())
    ours = NostrKeys.from_secret(secret)
    assert ours.pubkey == sdk.public_key().to_hex()
    assert ours.npub == sdk.public_key().to_bech32()
    assert ours.nsec == sdk.secret_key().to_bech32()
    assert npub_decode(sdk.public_key().to_bech32()) == sdk.public_key().to_hex()
    assert nsec_decode(sdk.secret_key().to_bech32()) == secret
    # and the other direction: nostr_sdk parses what we encode
    mine = NostrKeys.generate()
    assert nostr_sdk.PublicKey.parse(mine.npub).to_hex() == mine.pubkey
    assert nostr_sdk.Keys.parse(mine.nsec).public_key().to_hex() == mine.pubkey


def test_bech32_rejects_wrong_hrp_and_checksum() -> None:
    k = NostrKeys.generate()
    with pytest.raises(ValueError):
        npub_decode(k.nsec)
    with pytest.raises(ValueError):
        nsec_decode(k.npub)
    broken = k.npub[:-1] + ("q" if k.npub[-1] != "q" else "p")
    with pytest.raises(ValueError):
        npub_decode(broken)
    with pytest.raises(ValueError):
        npub_encode("ab" * 31)
    with pytest.raises(ValueError):
        nsec_encode(b"\x01" * 31)
    with pytest.raises(ValueError):
        NostrKeys.from_secret(b"\x00" * 32)


def test_throwaway_keys_differ() -> None:
    assert throwaway_keys().pubkey != throwaway_keys().pubkey
    k = throwaway_keys()
    assert k.secret.hex() not in repr(k) and repr(k.secret) not in repr(k)


def test_load_or_create_creates_private_files(tmp_path: Path) -> None:
    state = tmp_path / "state" / "nested"
    keys = load_or_create_keys(state)
    path = state / "nostr.nsec"
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text() == keys.nsec
    assert load_or_create_keys(state) == keys  # stable across runs
    assert list(state.iterdir()) == [path]  # no temp files left behind


def test_loads_key_written_by_nostr_sdk_with_newline(tmp_path: Path) -> None:
    sdk = nostr_sdk.Keys.generate()
    tmp_path.chmod(0o700)
    path = tmp_path / "nostr.nsec"
    path.write_text(sdk.secret_key().to_bech32() + "\n")
    path.chmod(0o600)
    assert load_or_create_keys(tmp_path).pubkey == sdk.public_key().to_hex()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_refuses_group_or_world_readable_key(tmp_path: Path, mode: int) -> None:
    keys = load_or_create_keys(tmp_path)
    path = tmp_path / "nostr.nsec"
    path.chmod(mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_or_create_keys(tmp_path)
    assert path.read_text() == keys.nsec  # untouched


def test_refuses_garbage_and_non_regular(tmp_path: Path) -> None:
    path = tmp_path / "nostr.nsec"
    path.write_text("nsec1notreally")
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="valid nsec"):
        load_or_create_keys(tmp_path)
    path.unlink()
    path.mkdir()
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_or_create_keys(tmp_path)


def test_loose_state_dir_is_tightened(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    load_or_create_keys(state)
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
