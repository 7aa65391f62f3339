"""Small X.509 helpers shared by verifiers: thumbprints, PEM chains, SPIFFE IDs in SANs."""

from __future__ import annotations

import base64
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mesh.errors import InvalidSpiffeIdError, MeshError
from mesh.spiffeid import SpiffeId


class CertificateFormatError(MeshError, ValueError):
    """PEM or DER data could not be read as certificates."""


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(cert: x509.Certificate) -> str:
    """``x5t#S256``: base64url (no padding) of SHA-256 over the certificate's DER."""
    return b64url(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest())


def load_pem_chain(data: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM blob, in order; raise if there is none or one is corrupt."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as err:
        raise CertificateFormatError("PEM data holds no readable certificate") from err
    return certs


def uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return ext.value.get_values_for_type(x509.UniformResourceIdentifier)


def spiffe_id_of(cert: x509.Certificate) -> SpiffeId:
    """The one SPIFFE ID of an X.509-SVID; raise if there is not exactly one valid URI SAN."""
    uris = uri_sans(cert)
    if len(uris) != 1:
        raise InvalidSpiffeIdError(
            f"an X.509-SVID must have exactly one URI SAN; this certificate has {len(uris)}"
        )
    return SpiffeId.parse(uris[0])
