"""Small X.509 helpers: thumbprints, PEM chains, SPIFFE IDs in SANs, the ES256 key type, and the
one way serials are printed."""

from __future__ import annotations

import base64
import hashlib
from typing import TypeGuard

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mesh.errors import InvalidSpiffeIdError
from mesh.identity.errors import CertificateFormatError
from mesh.identity.spiffeid import SpiffeId


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(cert: x509.Certificate) -> str:
    """``x5t#S256``: base64url (no padding) of SHA-256 over the certificate's DER."""
    return b64url(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest())


SERIAL_DIGITS = 32  # a 128-bit serial, as meshid's CA makes them


def format_serial(serial: int) -> str:
    """The one way serials are printed, by every meshid command and message: lowercase hex,
    zero-padded to 32 digits (longer only for a foreign certificate's serial above 128 bits;
    ``-`` before a foreign negative one)."""
    sign = "-" if serial < 0 else ""
    return sign + format(abs(serial), f"0{SERIAL_DIGITS}x")


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


def is_es256_key(key: object) -> TypeGuard[ec.EllipticCurvePublicKey]:
    """Whether ``key`` can verify ES256 signatures: ECDSA on P-256, nothing else."""
    return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)


def not_es256_reason(key: object) -> str:
    """The end of an error sentence saying why ``key`` cannot verify ES256."""
    what = (
        f"an ECDSA {key.curve.name} key"
        if isinstance(key, ec.EllipticCurvePublicKey)
        else "no ECDSA key"
    )
    return f"{what}, but meshid tokens are ES256, which needs a P-256 key (spec 1)"
