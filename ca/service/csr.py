"""The strict CSR parser of the CA service: only a proven P-256 public key comes out.

Agents send PKCS#10 requests for keys they made and keep (spec 8: private keys never travel).
Of a CSR the CA uses its public key and nothing else: subject, requested SANs and extensions are
ignored, because the identity comes from the registry, never from the requester. To be used,
the request must be exactly one PEM ``CERTIFICATE REQUEST`` block of at most 16 KiB, signed with
ECDSA over SHA-256/384/512 (an allowlist), with a signature that verifies under the key it
carries (proof of possession), and that key must be P-256 and none of the CA's own keys.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import SignatureAlgorithmOID

from ca.service.errors import Refused
from mesh.errors import Reason

MAX_CSR_BYTES = 16 * 1024
_PEM = re.compile(
    rb"-----BEGIN CERTIFICATE REQUEST-----\r?\n[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE REQUEST-----"
)
_ALGORITHMS = frozenset(
    {
        SignatureAlgorithmOID.ECDSA_WITH_SHA256,
        SignatureAlgorithmOID.ECDSA_WITH_SHA384,
        SignatureAlgorithmOID.ECDSA_WITH_SHA512,
    }
)
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class CsrInvalid(Refused):
    def __init__(self, message: str) -> None:
        super().__init__(Reason.CSR_INVALID, message)


def spki(key: ec.EllipticCurvePublicKey) -> bytes:
    """The key's DER SubjectPublicKeyInfo: what two keys are compared by."""
    return key.public_bytes(*_SPKI)


def parse_csr(
    pem: bytes, *, refused_keys: Sequence[tuple[ec.EllipticCurvePublicKey, str]] = ()
) -> ec.EllipticCurvePublicKey:
    """The proven P-256 key of ``pem``, or :class:`CsrInvalid` naming the rule it breaks.

    ``refused_keys``: (key, sentence) pairs; a CSR for one of these keys is refused with its
    sentence (the CA's own keys; an agent's current key when it renews).
    """
    if not isinstance(pem, bytes):
        raise CsrInvalid("the CSR must be PEM bytes")
    if len(pem) > MAX_CSR_BYTES:
        raise CsrInvalid(f"the CSR is larger than {MAX_CSR_BYTES} bytes; a P-256 CSR is ~0.5 KB")
    text = pem.strip()
    if _PEM.fullmatch(text) is None:
        raise CsrInvalid(
            "the CSR must be exactly one PEM 'CERTIFICATE REQUEST' block and nothing else"
        )
    try:
        csr = x509.load_pem_x509_csr(text)
    except (ValueError, x509.InvalidVersion) as err:  # InvalidVersion is no ValueError
        raise CsrInvalid("the CSR is not a readable PKCS#10 certificate signing request") from err
    try:
        algorithm = csr.signature_algorithm_oid
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as err:
        raise CsrInvalid("the CSR's key or signature algorithm cannot be read") from err
    if algorithm not in _ALGORITHMS:
        raise CsrInvalid(
            "the CSR is not signed with ECDSA over SHA-256, SHA-384 or SHA-512, the only "
            "signature algorithms this CA accepts"
        )
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise CsrInvalid(
            "the CSR's key is not ECDSA P-256; this CA signs only P-256 keys (gRPC's TLS stack "
            "rejects others)"
        )
    try:
        signed = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as err:
        raise CsrInvalid("the CSR's signature cannot be checked") from err
    if not signed:
        raise CsrInvalid(
            "the CSR's signature does not verify with the key it carries: it proves no "
            "possession of that key"
        )
    own = spki(public_key)
    for key, why in refused_keys:
        if spki(key) == own:
            raise CsrInvalid(why)
    return public_key
