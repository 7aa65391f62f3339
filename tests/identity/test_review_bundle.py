"""Review: revocation as the bundle source and the verifier apply it (spec 4.1, 4.5)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from mesh.identity.bundle import FileBundleSource
from mesh.tokens.errors import BundleError, CertificateRevoked


def _crl_with_revoked_intermediate(m: Any, tmp_path: Path) -> Path:
    """The CA's own CRL plus a root-signed CRL revoking the intermediate, in one PEM file."""
    path = tmp_path / "crl_all.pem"
    path.write_bytes(m.ca.crl_path.read_bytes() + m.root_crl([m.ca.issuer_cert.serial_number]))
    return path


def test_peer_under_revoked_intermediate_is_refused(mesh_factory: Any, tmp_path: Path) -> None:
    """Regression guard: rule 4.1 walks the whole path, so a revoked issuing CA fails the peer."""
    m = mesh_factory(intermediate=True)
    bundle = FileBundleSource(m.ca.bundle_path, _crl_with_revoked_intermediate(m, tmp_path))
    control = FileBundleSource(m.ca.bundle_path, m.ca.crl_path)
    assert control.verify_chain(list(m.svids["gateway"].chain)) == m.id("gateway")
    with pytest.raises(CertificateRevoked):
        bundle.verify_chain(list(m.svids["gateway"].chain))


def test_edge_refuses_user_token_signed_under_revoked_intermediate(
    mesh_factory: Any, tmp_path: Path
) -> None:
    """spec 4.5 / edge: the signing key's certificate must chain to the anchors and not be
    revoked. ``ChainVerifier._bundle_key`` asks ``is_revoked(key.certificate)`` (the leaf only)
    and FileBundleSource never applies the CRL to a key's intermediates, so once the
    intermediate CA is revoked every token its leaves signed still verifies as a wrapped or
    edge token, while the same certificates are refused as mTLS peers (test above)."""
    m = mesh_factory(intermediate=True)
    token = m.user_token("gateway")
    # negative control: with the CA's own CRL the token verifies
    assert m.verifier("gateway").verify(token, None).user == "alice"
    bundle = FileBundleSource(m.ca.bundle_path, _crl_with_revoked_intermediate(m, tmp_path))
    with pytest.raises(CertificateRevoked):
        m.verifier("gateway", bundle=bundle).verify(token, None)


def test_crl_rollback_does_not_unrevoke(mesh_factory: Any, tmp_path: Path) -> None:
    """Replacing crl.pem with an OLDER CRL validly signed by the CA (lower CRLNumber, earlier
    thisUpdate) silently un-revokes certificates. Deleting or corrupting the file keeps the
    previous snapshot, so an attacker who can write the file (or replay an old copy through a
    sync job) is better served by a rollback. The bundle source should refuse a CRL whose
    CRLNumber is lower than the one it already applies (RFC 5280 5.2.3)."""
    m = mesh_factory()
    old = m.ca.crl_path.read_bytes()
    m.ca.revoke(name="payments")
    crl = tmp_path / "crl.pem"
    crl.write_bytes(m.ca.crl_path.read_bytes())
    bundle = FileBundleSource(m.ca.bundle_path, crl, check_interval=0)
    cert = m.svids["payments"].certificate
    assert bundle.is_revoked(cert)  # negative control: the current CRL revokes it
    crl.write_bytes(old)
    os.utime(crl, ns=(1, 1))  # a different file identity whatever the clock's resolution
    bundle.refresh()
    assert bundle.is_revoked(cert)


def test_crl_with_forged_signature_is_refused(mesh_factory: Any, tmp_path: Path) -> None:
    """Regression guard: a CRL naming the CA as issuer but signed by another key is refused at
    start, and on reload the previous snapshot (with its revocations) stays in force."""
    m = mesh_factory()
    other = mesh_factory()
    m.ca.revoke(name="payments")
    # same issuer NAME in both CAs (same trust domain), different keys
    assert other.ca.issuer_cert.subject == m.ca.issuer_cert.subject
    forged = tmp_path / "forged.pem"
    forged.write_bytes(other.ca.crl_path.read_bytes())
    with pytest.raises(BundleError):
        FileBundleSource(m.ca.bundle_path, forged)
    crl = tmp_path / "crl.pem"
    crl.write_bytes(m.ca.crl_path.read_bytes())
    bundle = FileBundleSource(m.ca.bundle_path, crl, check_interval=0)
    assert bundle.is_revoked(m.svids["payments"].certificate)
    crl.write_bytes(forged.read_bytes())
    os.utime(crl, ns=(1, 1))
    assert bundle.refresh() is False
    assert bundle.is_revoked(m.svids["payments"].certificate)


def test_deleted_crl_keeps_previous_revocations(mesh_factory: Any, tmp_path: Path) -> None:
    """Regression guard: removing crl.pem must not fail open."""
    m = mesh_factory()
    m.ca.revoke(name="payments")
    crl = tmp_path / "crl.pem"
    crl.write_bytes(m.ca.crl_path.read_bytes())
    bundle = FileBundleSource(m.ca.bundle_path, crl, check_interval=0)
    crl.unlink()
    bundle.refresh()
    with pytest.raises(CertificateRevoked):
        bundle.verify_chain(list(m.svids["payments"].chain))


def _add_jwt_entry(m: Any, tmp_path: Path, cert: Any, kid: str) -> Path:
    import base64
    import json

    from cryptography.hazmat.primitives.serialization import Encoding

    doc = json.loads(m.ca.bundle_path.read_text())
    nums = cert.public_key().public_numbers()

    def b64(i: int) -> str:
        return base64.urlsafe_b64encode(i.to_bytes(32, "big")).rstrip(b"=").decode()

    doc["keys"].append({
        "use": "jwt-svid", "kty": "EC", "crv": "P-256", "x": b64(nums.x), "y": b64(nums.y),
        "kid": kid, "x5c": [base64.b64encode(cert.public_bytes(Encoding.DER)).decode()],
    })
    path = tmp_path / "bundle.spiffe.json"
    path.write_text(json.dumps(doc))
    return path


def test_bundle_refuses_a_ca_certificate_as_signing_key(mesh_factory: Any, tmp_path: Path) -> None:
    """Regression guard: the intermediate CA carries the SPIFFE ID spiffe://<td> and chains to
    the root, but as a jwt-svid entry it is refused (an end-entity profile is required)."""
    from mesh.identity.certs import thumbprint

    m = mesh_factory(intermediate=True)
    inter = m.ca.issuer_cert
    kid = thumbprint(inter)
    source = FileBundleSource(_add_jwt_entry(m, tmp_path, inter, kid))
    assert kid not in source.kids()
    assert "basicConstraints" in source.rejected[kid]
    assert m.svids["auth"].thumbprint in source.kids()  # control: the real keys are there


def test_bundle_refuses_kid_naming_another_certificate(mesh_factory: Any, tmp_path: Path) -> None:
    """Regression guard: an entry whose kid is another service's thumbprint (kid/x5c mismatch)
    is refused, so a token naming that kid can never be checked with this entry's key."""
    m = mesh_factory()
    other = mesh_factory()  # an outsider's certificate, same trust domain name
    source = FileBundleSource(
        _add_jwt_entry(m, tmp_path, other.svids["orders"].certificate, "A" * 43))
    assert "A" * 43 not in source.kids() and "thumbprint" in source.rejected["A" * 43]
