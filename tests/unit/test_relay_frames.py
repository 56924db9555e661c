"""The relay codec against hand-built bytes from IROH_RELAY.md §1.2-§1.3."""

from __future__ import annotations

import blake3
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from meshd.iroh_relay import frames as f

A = bytes(range(32))
B = bytes(range(32, 64))


def test_blake3_known_answers() -> None:
    """The blake3 wheel, called the way frames.py calls it, against the BLAKE3 reference vectors."""
    assert blake3.blake3(b"").hexdigest() == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    assert blake3.blake3(b"abc").hexdigest() == "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
    # official test vector: derive_key, input_len 0, context "BLAKE3 2019-12-27 16:29:52 test vectors context"
    assert (
        blake3.blake3(b"", derive_key_context="BLAKE3 2019-12-27 16:29:52 test vectors context").hexdigest()
        == "2cc39783c223154fea8dfb7c1b1660f2ac2dcbd1c1de8277b0b0dd39b7e50d7d"
    )


def test_challenge_message_golden_values() -> None:
    """derive_key("iroh-relay handshake v1 challenge signature", challenge): values from meshd's former
    pure-Python BLAKE3, which iroh's own relay client accepted (tests/integration/test_relay_iroh.py)."""
    assert f.challenge_message(bytes(range(16))).hex() == (
        "b7b16e505d2cb5dbaf494800092c3b05a6c45d8d3fd4f1b888c6a77240b876c0"
    )
    assert f.challenge_message(b"\xff" * 16).hex() == (
        "4a7d1cdee21ad5903903e39bea963bca561616997b1fa448c256d1cdd244b6e4"
    )


@pytest.mark.parametrize(
    ("frame", "wire"),
    [
        (f.ServerChallenge(b"\x11" * 16), b"\x00" + b"\x11" * 16),
        (f.ClientAuth(A, b"\x22" * 64), b"\x01" + A + b"\x40" + b"\x22" * 64),
        (f.ServerConfirmsAuth(), b"\x02"),
        (f.ServerDeniesAuth("signature invalid"), b"\x03\x11signature invalid"),
        (f.ClientToRelayDatagram(A, b"quic"), b"\x04" + A + b"\x00quic"),
        (f.ClientToRelayDatagramBatch(A, 3, b"abcdefg", ecn=2), b"\x05" + A + b"\x02\x00\x03abcdefg"),
        (f.RelayToClientDatagram(B, b"quic", ecn=3), b"\x06" + B + b"\x03quic"),
        (f.RelayToClientDatagramBatch(B, 1200, b"x" * 2000), b"\x07" + B + b"\x00\x04\xb0" + b"x" * 2000),
        (f.EndpointGone(A), b"\x08" + A),
        (f.Ping(b"12345678"), b"\x0912345678"),
        (f.Pong(b"12345678"), b"\x0a12345678"),
        (f.Restarting(1000, 2), b"\x0c\x00\x00\x03\xe8\x00\x00\x00\x02"),
        (f.Status(1), b"\x0d\x01"),
    ],
)
def test_exact_bytes_both_ways(frame: f.Frame, wire: bytes) -> None:
    assert f.encode(frame) == wire
    assert f.decode(wire) == frame


def test_client_auth_is_97_bytes_after_the_type() -> None:
    assert len(f.encode(f.ClientAuth(A, b"\0" * 64))) == 1 + 97


def test_version_rules() -> None:
    assert f.decode(b"\x0bdisk full", f.PROTOCOL_V1) == f.Health("disk full")
    with pytest.raises(f.FrameError):
        f.decode(b"\x0bdisk full", f.PROTOCOL_V2)
    with pytest.raises(f.FrameError):
        f.decode(b"\x0d\x00", f.PROTOCOL_V1)
    assert f.decode(b"\x0d\x07") == f.Status(7)  # unknown status codes are kept


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"\x0e",  # unknown type
        b"\x40",  # truncated varint
        b"\x7f\xff",  # 2-byte varint, unknown type
        b"\x00" + b"\x11" * 15,  # short challenge
        b"\x01" + A + b"\x41" + b"\0" * 64,  # signature length 65
        b"\x01" + A + b"\x40" + b"\0" * 63,
        b"\x02\x00",
        b"\x03\x05abc",  # reason length mismatch
        b"\x03\x02\xff\xfe",  # not UTF-8
        b"\x04" + A + b"\x00",  # empty datagram
        b"\x04" + A[:10],
        b"\x04" + A + b"\x04x",  # ECN 4
        b"\x05" + A + b"\x00\x00\x00x",  # segment size 0
        b"\x08" + A[:31],
        b"\x09" + b"1234567",
        b"\x0c\x00",
        b"\x04" + A + b"\x00" + b"x" * (64 * 1024),  # payload over 64 KiB
    ],
)
def test_malformed_frames_raise_frame_error(wire: bytes) -> None:
    with pytest.raises(f.FrameError):
        f.decode(wire)


def test_encode_refuses_oversize_and_bad_fields() -> None:
    with pytest.raises(f.FrameError):
        f.encode(f.ClientToRelayDatagram(A, b"x" * (64 * 1024)))
    with pytest.raises(f.FrameError):
        f.encode(f.ClientToRelayDatagram(A[:31], b"x"))
    with pytest.raises(f.FrameError):
        f.encode(f.Ping(b"short"))


def test_split_segments() -> None:
    assert f.split_segments(3, b"abcdefg") == [b"abc", b"def", b"g"]
    assert f.split_segments(4, b"abcdefgh") == [b"abcd", b"efgh"]


def test_varints_and_leb128() -> None:
    for value in (0, 63, 64, 16383, 16384, 2**30 - 1, 2**30, 2**62 - 1):
        assert f.decode_varint(f.encode_varint(value)) == (value, len(f.encode_varint(value)))
    assert f.encode_leb128(64) == b"\x40"
    assert f.encode_leb128(300) == b"\xac\x02"
    assert f.decode_leb128(b"\xac\x02", 0) == (300, 2)


def test_handshake_signs_the_derived_key_not_the_challenge() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    challenge = bytes(range(16))
    auth = f.make_client_auth(key, challenge)
    message = blake3.blake3(challenge, derive_key_context="iroh-relay handshake v1 challenge signature").digest()
    assert f.challenge_message(challenge) == message
    key.public_key().verify(auth.signature, message)  # raises if wrong
    assert f.verify_client_auth(auth, challenge)
    assert not f.verify_client_auth(auth, bytes(16))
    other = ed25519.Ed25519PrivateKey.generate()
    assert not f.verify_client_auth(f.ClientAuth(auth.public_key, other.sign(message)), challenge)
    assert not f.verify_client_auth(f.ClientAuth(b"\xff" * 32, auth.signature), challenge)
