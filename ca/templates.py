"""Certificate builders: the root, the intermediate and the X.509-SVID leaf profile.

The leaf profile is spec 1.2, field by field: one URI SAN (the SPIFFE ID), the
service's DNS name plus only the extra names asked for, ``CA:false`` critical, KeyUsage
``digitalSignature`` critical, EKU serverAuth + clientAuth, SKI and AKI, a random positive
128-bit serial, ECDSA P-256 signed with SHA-256.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.identity.spiffeid import SpiffeId, TrustDomain

ROOT_LIFETIME = timedelta(days=3650)
INTERMEDIATE_LIFETIME = timedelta(days=365)
# CA certificates start a little in the past so a verifier whose clock lags still accepts them.
CA_BACKDATE = timedelta(hours=1)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
_LEAF_EKU = x509.ExtendedKeyUsage(
    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def new_serial() -> int:
    """A random positive serial of 128 bits (never 0: RFC 5280 4.1.2.2 wants it positive)."""
    while True:
        serial = secrets.randbits(128)
        if serial:
            return serial


def _ca_name(td: TrustDomain, label: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshid"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, td.name),
            x509.NameAttribute(NameOID.COMMON_NAME, f"meshid {label} CA"),
        ]
    )


def _ca_builder(
    *,
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    td: TrustDomain,
    not_before: datetime,
    not_after: datetime,
    path_length: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(new_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(td.id))]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def build_root(
    key: ec.EllipticCurvePrivateKey,
    td: TrustDomain,
    now: datetime,
    *,
    path_length: int,
    lifetime: timedelta = ROOT_LIFETIME,
) -> x509.Certificate:
    name = _ca_name(td, "root")
    builder = _ca_builder(
        subject=name,
        issuer=name,
        public_key=key.public_key(),
        td=td,
        not_before=now - CA_BACKDATE,
        not_after=now + lifetime,
        path_length=path_length,
    ).add_extension(
        # Optional on a self-signed root (RFC 5280 4.2.1.1), but it lets tools that key
        # chain building on AKI treat the root like any other link.
        x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
        critical=False,
    )
    return builder.sign(key, hashes.SHA256())


def build_intermediate(
    key: ec.EllipticCurvePrivateKey,
    td: TrustDomain,
    root_cert: x509.Certificate,
    root_key: ec.EllipticCurvePrivateKey,
    now: datetime,
    *,
    lifetime: timedelta = INTERMEDIATE_LIFETIME,
) -> x509.Certificate:
    builder = _ca_builder(
        subject=_ca_name(td, "intermediate"),
        issuer=root_cert.subject,
        public_key=key.public_key(),
        td=td,
        not_before=now - CA_BACKDATE,
        not_after=min(now + lifetime, root_cert.not_valid_after_utc),
        path_length=0,
    ).add_extension(authority_key_id(root_cert), critical=False)
    return builder.sign(root_key, hashes.SHA256())


def authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def build_leaf(
    *,
    spiffe_id: SpiffeId,
    name: str,
    dns_names: Sequence[str],
    ips: Sequence[IPAddress],
    public_key: ec.EllipticCurvePublicKey,
    serial: int,
    not_before: datetime,
    not_after: datetime,
    issuer_cert: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer_aki: x509.AuthorityKeyIdentifier | None = None,
) -> x509.Certificate:
    """Build and sign one X.509-SVID. ``issuer_aki`` may be passed precomputed for batches."""
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
    sans += [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ip) for ip in ips]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_LEAF_KEY_USAGE, critical=True)
        .add_extension(_LEAF_EKU, critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(issuer_aki or authority_key_id(issuer_cert), critical=False)
    )
    return builder.sign(issuer_key, hashes.SHA256())
