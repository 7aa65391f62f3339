"""A readable summary of any certificate, as ``mesh-ca inspect`` prints it."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID

from ca.lint import Finding, extensions_readable, lint, role_of
from ca.parsing import format_duration, format_serial
from mesh.identity.certs import thumbprint

_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
}


def serial_of(cert: x509.Certificate) -> int:
    """The serial, without cryptography's warning about non-positive ones (lint names them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return cert.serial_number


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Certificates from PEM (any number) or a single DER certificate; [] if neither."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        if b"-----BEGIN" in data:
            try:
                return x509.load_pem_x509_certificates(data)
            except (ValueError, x509.InvalidVersion):
                return []
        try:
            return [x509.load_der_x509_certificate(data)]
        except (ValueError, x509.InvalidVersion):
            return []


_CORE: tuple[tuple[str, Callable[[x509.Certificate], object]], ...] = (
    ("subject", lambda c: c.subject.rfc4514_string()),
    ("issuer", lambda c: c.issuer.rfc4514_string()),
    ("serial number", serial_of),
    ("validity", lambda c: (c.not_valid_before_utc, c.not_valid_after_utc)),
    ("signature algorithm", lambda c: c.signature_algorithm_oid),
)


def unreadable_part(cert: x509.Certificate) -> str | None:
    """The name of the first core field that cannot be parsed, or None when all can.

    cryptography parses lazily, so a corrupt field only fails when read; finding it here
    turns a crash deep in the summary into one clear sentence. Malformed *extensions* are
    left to the lint, which reports them as a violation.
    """
    for label, read in _CORE:
        try:
            read(cert)
        except Exception:  # ValueError, TypeError, ...: whatever the parser raises
            return label
    return None


def key_description(cert: x509.Certificate) -> str:
    try:
        key = cert.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return "unreadable or unsupported key"
    if isinstance(key, ec.EllipticCurvePublicKey):
        names = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        return f"ECDSA {names.get(key.curve.name, key.curve.name)}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    return type(key).__name__


def _time(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%SZ")


def _ext_text(cert: x509.Certificate) -> dict[str, str]:
    out: dict[str, str] = {}
    for ext in cert.extensions:
        crit = " (critical)" if ext.critical else ""
        value = ext.value
        if isinstance(value, x509.BasicConstraints):
            pl = "" if value.path_length is None else f", pathlen {value.path_length}"
            out["CA"] = f"{str(value.ca).lower()}{pl}{crit}"
        elif isinstance(value, x509.KeyUsage):
            names = [
                n
                for n, flag in (
                    ("digitalSignature", value.digital_signature),
                    ("keyEncipherment", value.key_encipherment),
                    ("keyAgreement", value.key_agreement),
                    ("keyCertSign", value.key_cert_sign),
                    ("cRLSign", value.crl_sign),
                )
                if flag
            ]
            out["key usage"] = (", ".join(names) or "none") + crit
        elif isinstance(value, x509.ExtendedKeyUsage):
            out["ext key usage"] = ", ".join(_EKU_NAMES.get(o, o.dotted_string) for o in value)
    return out


def summary(cert: x509.Certificate, now: datetime | None = None) -> dict[str, Any]:
    """The facts ``inspect`` prints, as a JSON-ready mapping."""
    now = now or datetime.now(UTC)
    uris: list[str] = []
    dns: list[str] = []
    ips: list[str] = []
    readable = extensions_readable(cert)
    if readable:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = san.get_values_for_type(x509.UniformResourceIdentifier)
            dns = san.get_values_for_type(x509.DNSName)
            ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
        except x509.ExtensionNotFound:
            pass
    findings = lint(cert, now)
    return {
        "role": role_of(cert),
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format_serial(serial_of(cert)),
        "uris": uris,
        "dns": dns,
        "ips": ips,
        "not_before": _time(cert.not_valid_before_utc),
        "not_after": _time(cert.not_valid_after_utc),
        "key": key_description(cert),
        "extensions": _ext_text(cert) if readable else {"extensions": "unreadable"},
        "thumbprint": thumbprint(cert),
        "findings": [
            {"rule": f.rule, "severity": f.severity, "message": f.message} for f in findings
        ],
        "conforms": not any(f.severity == "violation" for f in findings),
    }


def render(cert: x509.Certificate, index: int, total: int, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    info = summary(cert, now)
    left = cert.not_valid_after_utc - now
    if left.total_seconds() > 0:
        until = f"expires in {format_duration(left, units=2)}"
    else:
        until = "EXPIRED"
    role = "X.509-SVID (leaf)" if info["role"] == "leaf" else "signing certificate (CA)"
    rows = [
        ("subject", info["subject"] or "(empty)"),
        ("issuer", info["issuer"] or "(empty)"),
        ("serial", info["serial"]),
        ("SPIFFE ID", ", ".join(info["uris"]) or "-"),
        ("DNS names", ", ".join(info["dns"]) or "-"),
        ("IP addresses", ", ".join(info["ips"]) or "-"),
        ("valid", f"{info['not_before']} .. {info['not_after']} ({until})"),
        ("key", info["key"]),
        *info["extensions"].items(),
        ("x5t#S256", info["thumbprint"]),
    ]
    lines = [f"certificate {index} of {total}: {role}"]
    lines += [f"  {label + ':':<15}{value}" for label, value in rows]
    findings: list[dict[str, str]] = info["findings"]
    bad = [f for f in findings if f["severity"] == "violation"]
    if bad:
        lines.append(f"  lint: {len(bad)} violation(s) of the X.509-SVID rules")
    else:
        lines.append("  lint: conforms to the X.509-SVID rules")
    lines += [f"    {f['severity']} [{f['rule']}]: {f['message']}" for f in findings]
    return "\n".join(lines)


def conforms(findings: list[Finding]) -> bool:
    return not any(f.severity == "violation" for f in findings)
