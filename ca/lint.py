"""Lint any certificate against the X.509-SVID rules (SPIFFE X509-SVID.md) and meshid's profile.

A *violation* breaks a rule a verifier relies on (``mesh-ca inspect`` exits 1); a *note*
points at something unusual that still works (wrong key type for gRPC, expired, no DNS SAN).
A certificate counts as a signing (CA) certificate when it says ``CA:true`` and carries no
SPIFFE ID with a path; a ``CA:true`` certificate naming a workload is judged as a leaf, and fails.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID

from mesh.errors import InvalidSpiffeIdError
from mesh.identity.spiffeid import SpiffeId

Severity = Literal["violation", "note"]
Role = Literal["leaf", "ca"]


@dataclass(frozen=True, slots=True)
class Finding:
    rule: str  # stable code, e.g. "URI_SAN_COUNT"
    severity: Severity
    message: str


E = TypeVar("E", bound=x509.ExtensionType)


def _ext(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E] | None:
    try:
        return cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None


def _uris(cert: x509.Certificate) -> list[str]:
    san = _ext(cert, x509.SubjectAlternativeName)
    return [] if san is None else san.value.get_values_for_type(x509.UniformResourceIdentifier)


def extensions_readable(cert: x509.Certificate) -> bool:
    """False when the extensions cannot be read: malformed, one appearing twice (RFC 5280
    4.2 forbids it) or of a kind cryptography does not support. cryptography parses them
    lazily, so this is where such a certificate shows."""
    try:
        _ = cert.extensions
    except Exception:  # cryptography raises ValueError, TypeError, DuplicateExtension,
        return False  # UnsupportedGeneralNameType...: all mean "cannot be read"
    return True


def role_of(cert: x509.Certificate) -> Role:
    if not extensions_readable(cert):
        return "leaf"
    bc = _ext(cert, x509.BasicConstraints)
    if bc is None or not bc.value.ca:
        return "leaf"
    for uri in _uris(cert):
        try:
            if SpiffeId.parse(uri).path:
                return "leaf"
        except InvalidSpiffeIdError:
            continue
    return "ca"


def lint(cert: x509.Certificate, now: datetime | None = None) -> list[Finding]:
    """All findings for ``cert``, judged as the role :func:`role_of` gives it."""
    now = now or datetime.now(UTC)
    if not extensions_readable(cert):
        return [
            Finding(
                "EXTENSIONS",
                "violation",
                "the certificate's extensions cannot be read (malformed, repeated or of an "
                "unsupported kind); a verifier will refuse it",
            ),
            *_key_and_time_notes(cert, now),
        ]
    findings = _lint_leaf(cert) if role_of(cert) == "leaf" else _lint_ca(cert)
    return findings + _key_and_time_notes(cert, now) + _id_notes(cert)


def _lint_leaf(cert: x509.Certificate) -> list[Finding]:
    out: list[Finding] = []

    def bad(rule: str, message: str) -> None:
        out.append(Finding(rule, "violation", message))

    def note(rule: str, message: str) -> None:
        out.append(Finding(rule, "note", message))

    uris = _uris(cert)
    if len(uris) != 1:
        bad(
            "URI_SAN_COUNT",
            "an X.509-SVID must have exactly one URI SAN (its SPIFFE ID); "
            f"this one has {len(uris)}",
        )
    if len(uris) == 1:
        try:
            sid = SpiffeId.parse(uris[0])
        except InvalidSpiffeIdError as err:
            bad("SPIFFE_ID", f"the URI SAN is not a valid SPIFFE ID: {err}")
        else:
            if not sid.path:
                bad("SPIFFE_ID_PATH", "a leaf SVID's SPIFFE ID must have a path")
    bc = _ext(cert, x509.BasicConstraints)
    if bc is not None and bc.value.ca:
        bad("CA_FLAG", "a leaf SVID must not be a CA (basicConstraints CA:true is set)")
    elif bc is None:
        note("CA_FLAG", "basicConstraints is absent; a leaf SVID should say CA:false, critical")
    elif not bc.critical:
        note("CA_FLAG", "basicConstraints is not marked critical")
    ku = _ext(cert, x509.KeyUsage)
    if ku is None:
        bad("KEY_USAGE", "a leaf SVID must have the keyUsage extension with digitalSignature")
    else:
        if not ku.value.digital_signature:
            bad("KEY_USAGE", "a leaf SVID's keyUsage must include digitalSignature")
        if ku.value.key_cert_sign or ku.value.crl_sign:
            bad("KEY_USAGE", "a leaf SVID's keyUsage must not include keyCertSign or cRLSign")
        if not ku.critical:
            note("KEY_USAGE", "keyUsage is not marked critical")
    eku = _ext(cert, x509.ExtendedKeyUsage)
    if eku is None:
        note("EKU", "extendedKeyUsage is absent; meshid leaves carry serverAuth and clientAuth")
    else:
        missing = [
            label
            for oid, label in (
                (ExtendedKeyUsageOID.SERVER_AUTH, "serverAuth"),
                (ExtendedKeyUsageOID.CLIENT_AUTH, "clientAuth"),
            )
            if oid not in eku.value
        ]
        if missing:
            bad(
                "EKU",
                "extendedKeyUsage lacks " + " and ".join(missing)
                + "; mutual TLS needs both serverAuth and clientAuth",
            )
    san = _ext(cert, x509.SubjectAlternativeName)
    if san is not None and not san.value.get_values_for_type(x509.DNSName):
        note("DNS_SAN", "no DNS SAN: a Python gRPC client cannot pin this server's name")
    return out


def _lint_ca(cert: x509.Certificate) -> list[Finding]:
    out: list[Finding] = []
    uris = _uris(cert)
    if len(uris) > 1:
        out.append(
            Finding(
                "URI_SAN_COUNT",
                "violation",
                f"a signing certificate may have at most one URI SAN; this one has {len(uris)}",
            )
        )
    for uri in uris:
        try:
            SpiffeId.parse(uri)
        except InvalidSpiffeIdError as err:
            out.append(Finding("SPIFFE_ID", "violation", f"the URI SAN is not a SPIFFE ID: {err}"))
    ku = _ext(cert, x509.KeyUsage)
    if ku is None or not ku.value.key_cert_sign:
        out.append(
            Finding(
                "KEY_USAGE",
                "violation",
                "a signing certificate's keyUsage must include keyCertSign",
            )
        )
    elif not ku.value.crl_sign:
        out.append(Finding("KEY_USAGE", "note", "keyUsage lacks cRLSign: it cannot sign CRLs"))
    bc = _ext(cert, x509.BasicConstraints)
    if bc is not None and not bc.critical:
        out.append(Finding("CA_FLAG", "violation", "a CA's basicConstraints must be critical"))
    return out


def _key_and_time_notes(cert: x509.Certificate, now: datetime) -> list[Finding]:
    out: list[Finding] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        serial = cert.serial_number
    if serial <= 0:
        out.append(Finding("SERIAL", "violation", "the serial number must be positive (RFC 5280)"))
    try:
        key: object = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)):
        out.append(
            Finding(
                "KEY_TYPE",
                "note",
                "the key is not ECDSA P-256, the type meshid issues and gRPC accepts everywhere",
            )
        )
    if now < cert.not_valid_before_utc:
        out.append(Finding("VALIDITY", "note", "the certificate is not valid yet"))
    elif now >= cert.not_valid_after_utc:
        out.append(Finding("VALIDITY", "note", "the certificate has expired"))
    return out


def _id_notes(cert: x509.Certificate) -> list[Finding]:
    out: list[Finding] = []
    if _ext(cert, x509.SubjectKeyIdentifier) is None:
        out.append(Finding("SKI", "note", "no subjectKeyIdentifier"))
    if _ext(cert, x509.AuthorityKeyIdentifier) is None and cert.issuer != cert.subject:
        out.append(Finding("AKI", "note", "no authorityKeyIdentifier"))
    return out


def violations(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "violation"]
