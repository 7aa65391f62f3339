"""Revocation reasons and the CRL the issuing CA signs.

The CRL lists every revoked certificate, carries a CRL number that grows with each
publication and a next-update time; it is re-signed on every change (and by ``mesh-ca crl``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ca.errors import InvalidRevocationReason
from ca.registry import CertRecord
from ca.templates import authority_key_id

CRL_LIFETIME = timedelta(days=7)

# RFC 5280 5.3.1 names; certificateHold and removeFromCRL are left out on purpose:
# this CA never suspends a certificate, a revocation is final.
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
}
_BY_FOLDED = {k.lower(): k for k in REASONS}


def parse_reason(text: str) -> str:
    """Canonical RFC 5280 name of a reason given as ``keyCompromise``, ``key-compromise``
    or ``key_compromise`` (any case)."""
    folded = text.replace("-", "").replace("_", "").lower() if isinstance(text, str) else ""
    try:
        return _BY_FOLDED[folded]
    except KeyError:
        raise InvalidRevocationReason(
            f"revocation reason {text!r} is unknown: use one of {', '.join(REASONS)}"
        ) from None


def build_crl(
    issuer_cert: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    revoked: Iterable[CertRecord],
    *,
    number: int,
    now: datetime,
    lifetime: timedelta = CRL_LIFETIME,
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(now)
        .next_update(now + lifetime)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(authority_key_id(issuer_cert), critical=False)
    )
    for rec in revoked:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(rec.serial)
            .revocation_date(datetime.fromtimestamp(rec.revoked_at or 0, UTC))
        )
        reason = REASONS.get(rec.reason or "unspecified", x509.ReasonFlags.unspecified)
        # RFC 5280 5.3.1: the reason code "unspecified" SHOULD be absent.
        if reason is not x509.ReasonFlags.unspecified:
            entry = entry.add_extension(x509.CRLReason(reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(issuer_key, hashes.SHA256())
