"""Raw-public-key TLS 1.3 (RFC 7250) for aioquic, as iroh speaks it.

iroh authenticates both ends of a QUIC connection with bare Ed25519 keys: the
EndpointId *is* the TLS key.  Stock aioquic only knows X.509, so this module
adds the few pieces RFC 7250 needs, by subclassing (aioquic's modules are never
patched):

* ``client_certificate_type`` (19) and ``server_certificate_type`` (20) are
  offered in the ClientHello with the single value RawPublicKey (2) and echoed
  in EncryptedExtensions; both sides require both.
* The Certificate message holds exactly one entry, the 44-byte Ed25519
  SubjectPublicKeyInfo ``302a300506032b6570032100 || key``; no chain.
* CertificateVerify uses ed25519 (0x0807) only; TLS 1.3 only (aioquic only
  speaks 1.3 anyway).
* The client compares the server's key byte-for-byte with the EndpointId it
  dialled (``bad_certificate`` otherwise).  The server always requests a client
  certificate, refuses an empty one (``certificate_required``) and exposes the
  32-byte client key as the remote EndpointId.
* The client sends SNI ``<base32-dnssec(id)>.iroh.invalid`` (iroh/src/tls/name.rs).
  This is required: measured against the ``iroh`` 1.2.0 wheel (iroh 1.4.1), an
  iroh endpoint does not answer a ClientHello without SNI, or with an SNI
  naming another key (or "localhost"); it answers only its own name.  So a
  dial under a wrong EndpointId gets no reply from iroh at all (the dial times
  out), while a meshd listener answers and the client refuses its key.

The X.509 object aioquic expects in ``Context.certificate`` is replaced by
:class:`RawPublicKeyCertificate`, which offers the two methods aioquic calls on
it (``public_bytes`` for the Certificate message and ``public_key`` when it
checks CertificateVerify).

The whole layer is pinned to aioquic 1.7.2 (see pyproject.toml): it overrides
private hooks of ``aioquic.tls.Context`` whose names are checked by the tests.
"""

from __future__ import annotations

import base64
import ssl
from typing import Any

from aioquic import tls
from aioquic.buffer import Buffer
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "CERT_TYPE_RAW_PUBLIC_KEY",
    "ED25519_SPKI_PREFIX",
    "EXT_CLIENT_CERTIFICATE_TYPE",
    "EXT_SERVER_CERTIFICATE_TYPE",
    "AlertCertificateRequired",
    "RawPublicKeyCertificate",
    "RawPublicKeyContext",
    "endpoint_id_from_spki",
    "public_key_bytes",
    "server_name_for",
    "spki_for",
]

EXT_CLIENT_CERTIFICATE_TYPE = 19
EXT_SERVER_CERTIFICATE_TYPE = 20
CERT_TYPE_RAW_PUBLIC_KEY = 2
#: DER header of an Ed25519 SubjectPublicKeyInfo; the 32 key bytes follow.
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")

# ClientHello carries a list (1-byte length + values); EncryptedExtensions one value.
_OFFER = bytes([1, CERT_TYPE_RAW_PUBLIC_KEY])
_CHOSEN = bytes([CERT_TYPE_RAW_PUBLIC_KEY])


class AlertCertificateRequired(tls.Alert):
    """The client sent an empty Certificate although we asked for one."""

    description = tls.AlertDescription.certificate_required


def spki_for(endpoint_id: bytes) -> bytes:
    """The 44-byte SubjectPublicKeyInfo of a 32-byte Ed25519 public key."""
    if len(endpoint_id) != 32:
        raise ValueError("an EndpointId is 32 bytes")
    return ED25519_SPKI_PREFIX + endpoint_id


def endpoint_id_from_spki(spki: bytes) -> bytes:
    """Check that *spki* is a well-formed Ed25519 key and return its 32 bytes."""
    if len(spki) != len(ED25519_SPKI_PREFIX) + 32 or not spki.startswith(ED25519_SPKI_PREFIX):
        raise tls.AlertBadCertificate("raw public key is not an Ed25519 SubjectPublicKeyInfo")
    key = spki[len(ED25519_SPKI_PREFIX) :]
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(key)
    except ValueError as exc:
        raise tls.AlertBadCertificate("raw public key is not a valid Ed25519 key") from exc
    return key


def public_key_bytes(private_key: ed25519.Ed25519PrivateKey) -> bytes:
    """The 32-byte EndpointId of *private_key*."""
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def server_name_for(endpoint_id: bytes) -> str:
    """iroh's TLS server name: ``BASE32_DNSSEC(id) + ".iroh.invalid"``.

    BASE32_DNSSEC is RFC 4648 "base32hex", lowercase, without padding.
    """
    label = base64.b32hexencode(endpoint_id).decode("ascii").rstrip("=").lower()
    return f"{label}.iroh.invalid"


class RawPublicKeyCertificate:
    """Stands in for the ``x509.Certificate`` aioquic puts on the wire.

    aioquic only calls ``public_bytes(Encoding.DER)`` (to fill the Certificate
    message) and ``public_key()`` (to check CertificateVerify).
    """

    def __init__(self, endpoint_id: bytes) -> None:
        self.endpoint_id = endpoint_id
        self._key = ed25519.Ed25519PublicKey.from_public_bytes(endpoint_id)

    def public_bytes(self, encoding: Any = Encoding.DER) -> bytes:
        return spki_for(self.endpoint_id)

    def public_key(self) -> ed25519.Ed25519PublicKey:
        return self._key


class RawPublicKeyContext(tls.Context):
    """A TLS context speaking RFC 7250 raw Ed25519 public keys only.

    :param expected_peer_id: client side: the EndpointId being dialled; the
        handshake fails with ``bad_certificate`` if the server shows another key.
    :attr peer_endpoint_id: the authenticated 32-byte key of the peer, set once
        its Certificate message has been parsed (before CertificateVerify), and
        trustworthy once the handshake completed.
    """

    def __init__(
        self,
        *,
        is_client: bool,
        private_key: ed25519.Ed25519PrivateKey,
        alpn_protocols: list[str] | None = None,
        expected_peer_id: bytes | None = None,
        logger: Any = None,
    ) -> None:
        if is_client and (expected_peer_id is None or len(expected_peer_id) != 32):
            raise ValueError("a client must know the 32-byte EndpointId it dials")
        super().__init__(
            is_client=is_client,
            alpn_protocols=alpn_protocols,
            logger=logger,
            server_name=server_name_for(expected_peer_id) if expected_peer_id else None,
            # The peer key is checked against the dialled id, not against a CA.
            verify_mode=ssl.CERT_NONE,
        )
        self.certificate = RawPublicKeyCertificate(public_key_bytes(private_key))  # type: ignore[assignment]
        self.certificate_chain = []
        self.certificate_private_key = private_key
        self.expected_peer_id = expected_peer_id
        self.peer_endpoint_id: bytes | None = None
        self._signature_algorithms = [tls.SignatureAlgorithm.ED25519]
        # X25519 only: one key share, no HelloRetryRequest (aioquic has none).
        self._supported_groups = [tls.Group.X25519]
        self._request_client_certificate = not is_client

    # Extensions (set by the QuicConnection, which also adds transport parameters).

    def add_certificate_type_extensions(self) -> None:
        value = _OFFER if self._is_client else _CHOSEN
        self.handshake_extensions = [
            *self.handshake_extensions,
            (EXT_CLIENT_CERTIFICATE_TYPE, value),
            (EXT_SERVER_CERTIFICATE_TYPE, value),
        ]

    @staticmethod
    def _check_cert_types(extensions: list[tls.Extension], *, offered: bool) -> None:
        wanted = _OFFER if offered else _CHOSEN
        found = {ext_type: value for ext_type, value in extensions}
        for ext_type in (EXT_CLIENT_CERTIFICATE_TYPE, EXT_SERVER_CERTIFICATE_TYPE):
            value = found.get(ext_type)
            if value is None:
                raise tls.AlertUnsupportedCertificate(f"peer did not negotiate certificate type {ext_type}")
            if offered:
                # A list of types: accept it if RawPublicKey is among them.
                if len(value) < 2 or value[0] != len(value) - 1 or CERT_TYPE_RAW_PUBLIC_KEY not in value[1:]:
                    raise tls.AlertUnsupportedCertificate("peer does not offer raw public keys")
            elif value != wanted:
                raise tls.AlertUnsupportedCertificate("peer did not choose raw public keys")

    # Server side.

    def _server_handle_hello(self, input_buf: Buffer, initial_buf: Buffer, handshake_buf: Buffer) -> None:
        hello = tls.pull_client_hello(Buffer(data=input_buf.data_slice(0, input_buf.capacity)))
        self._check_cert_types(hello.other_extensions, offered=True)
        super()._server_handle_hello(input_buf, initial_buf, handshake_buf)

    def _server_handle_certificate(self, input_buf: Buffer) -> None:
        peek = tls.pull_certificate(Buffer(data=input_buf.data_slice(0, input_buf.capacity)))
        if not peek.certificates:
            raise AlertCertificateRequired("peer sent no certificate")
        super()._server_handle_certificate(input_buf)

    # Client side.

    def _client_handle_encrypted_extensions(self, input_buf: Buffer) -> None:
        super()._client_handle_encrypted_extensions(input_buf)
        self._check_cert_types(self.received_extensions or [], offered=False)

    # Both sides: the peer's Certificate message.

    def _set_peer_certificate(self, certificate: tls.Certificate) -> None:
        if len(certificate.certificates) != 1:
            raise tls.AlertBadCertificate("expected exactly one raw public key")
        peer_id = endpoint_id_from_spki(certificate.certificates[0][0])
        if self._is_client and peer_id != self.expected_peer_id:
            raise tls.AlertBadCertificate("server key does not match the dialled EndpointId")
        self._peer_certificate = RawPublicKeyCertificate(peer_id)  # type: ignore[assignment]
        self._peer_certificate_chain = []
        self.peer_endpoint_id = peer_id
