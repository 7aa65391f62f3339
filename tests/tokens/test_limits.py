"""Keys: the curve ES256 needs (a P-256 key), for peers and for signing keys of the bundle.

Each check has its control: the same thing just inside the rule passes.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.tokens import FileBundleSource
from mesh.tokens import errors as E
from mesh.x509util import thumbprint

UNAUTH = "UNAUTHENTICATED"


def _svid_with_key(mesh: Any, name: str, key: Any) -> x509.Certificate:
    """An otherwise valid SVID of our CA for ``name``, carrying ``key`` (another issuer, such
    as SPIRE or cert-manager, might hand out P-384 keys)."""
    now = datetime.now(UTC)
    issuer = mesh.ca.issuer_cert
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.UniformResourceIdentifier(str(mesh.id(name)))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH,
                                              ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer.public_key()), critical=False)
        .sign(mesh.ca._issuer_key, hashes.SHA256())
    )


# --- the curve (review finding 3) ---------------------------------------------------------------


def test_a_peer_with_a_p384_key_is_untrusted(mesh: Any) -> None:
    p256 = _svid_with_key(mesh, "ledger", ec.generate_private_key(ec.SECP256R1()))
    p384 = _svid_with_key(mesh, "ledger", ec.generate_private_key(ec.SECP384R1()))
    v = mesh.verifier("orders")
    assert v.check_peer(p256) == mesh.id("ledger")  # control: the same SVID with P-256
    assert mesh.bundle().verify_chain([p384]) == mesh.id("ledger")  # a valid SVID otherwise
    for attempt in (lambda: v.check_peer(p384), lambda: v.verify("a.b.c", p384)):
        with pytest.raises(E.CertificateUntrusted) as info:
            attempt()
        assert info.value.reason == "CERT_UNTRUSTED" and info.value.status == UNAUTH
        assert info.value.hop is None
        assert "secp384r1" in str(info.value) and "ES256, which needs a P-256 key" in str(
            info.value)


def test_a_bundle_key_on_p384_is_left_out_and_named(mesh: Any, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    cert = _svid_with_key(mesh, "ledger", key)
    doc = json.loads(mesh.ca.bundle_path.read_text())
    nums = key.public_key().public_numbers()

    def b64(i: int) -> str:
        return base64.urlsafe_b64encode(i.to_bytes(48, "big")).rstrip(b"=").decode()

    kid = thumbprint(cert)
    doc["keys"].append({
        "use": "jwt-svid", "kty": "EC", "crv": "P-384", "x": b64(nums.x), "y": b64(nums.y),
        "kid": kid,
        "x5c": [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()],
    })
    path = tmp_path / "bundle.spiffe.json"
    path.write_text(json.dumps(doc))
    bundle = FileBundleSource(path)
    assert mesh.kid("orders") in bundle.kids()  # control
    assert kid not in bundle.kids()
    assert "secp384r1" in bundle.rejected[kid] and "P-256" in bundle.rejected[kid]
