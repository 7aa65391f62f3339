"""The CA's Python API: issuance profile, publication, revocation, renewal, bad input."""

from __future__ import annotations

import ipaddress
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca import errors
from ca.authority import CertificateAuthority
from mesh.identity.certs import spiffe_id_of, thumbprint
from mesh.identity.spiffeid import SpiffeId


def test_leaf_follows_the_svid_profile(mesh_ca: CertificateAuthority) -> None:
    svid = mesh_ca.issue("orders")
    cert = svid.certificate
    assert spiffe_id_of(cert) == SpiffeId.parse("spiffe://mesh.internal/svc/orders")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["orders.svc.mesh.internal"]
    assert san.get_values_for_type(x509.IPAddress) == []
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    issuer_ski = mesh_ca.root_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki.key_identifier == issuer_ski.value.digest
    assert ski.digest == x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    assert 0 < cert.serial_number < 2**128 and cert.serial_number == svid.serial
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert svid.thumbprint == thumbprint(cert)
    assert svid.chain == (cert,) and svid.bundle == (mesh_ca.root_cert,)
    assert svid.not_after - svid.not_before == timedelta(hours=24, seconds=60)
    cert.verify_directly_issued_by(mesh_ca.root_cert)


def test_extra_sans_only_when_asked(mesh_ca: CertificateAuthority) -> None:
    svid = mesh_ca.issue("gw", dns=["localhost", "gw.example.com"], ips=["127.0.0.1", "::1"])
    san = svid.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [
        "gw.svc.mesh.internal",
        "localhost",
        "gw.example.com",
    ]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert len(san.get_values_for_type(x509.UniformResourceIdentifier)) == 1


def test_ca_certificates(ca_factory) -> None:  # type: ignore[no-untyped-def]
    ca = ca_factory(trust_domain="example.org", intermediate=True)
    root, inter = ca.root_cert, ca.issuer_cert
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 1
    assert inter.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    for cert in (root, inter):
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert bc.critical and bc.value.ca
        assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
        assert spiffe_id_of(cert) == SpiffeId.parse("spiffe://example.org")
    assert (root.not_valid_after_utc - root.not_valid_before_utc).days >= 3650
    assert (inter.not_valid_after_utc - inter.not_valid_before_utc).days >= 365
    inter.verify_directly_issued_by(root)
    for cert, issuer in ((root, root), (inter, root)):
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert aki.key_identifier == ski.digest
    svid = ca.issue("orders")
    assert svid.chain == (svid.certificate, inter)
    assert str(svid.spiffe_id) == "spiffe://example.org/svc/orders"
    svid.certificate.verify_directly_issued_by(inter)
    plain = ca_factory()
    pl = plain.root_cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert pl.value.path_length == 0 and plain.issuer_cert == plain.root_cert


def test_write_to_modes_and_content(mesh_ca: CertificateAuthority, tmp_path: Path) -> None:
    svid = mesh_ca.issue("orders")
    svid.write_to(tmp_path / "orders")
    folder = tmp_path / "orders"
    assert stat.S_IMODE((folder / "svid_key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / "svid.pem").stat().st_mode) == 0o644
    assert stat.S_IMODE((folder / "svid_bundle.pem").stat().st_mode) == 0o644
    assert x509.load_pem_x509_certificates((folder / "svid.pem").read_bytes()) == [svid.certificate]
    assert x509.load_pem_x509_certificates((folder / "svid_bundle.pem").read_bytes()) == [
        mesh_ca.root_cert
    ]
    key = serialization.load_pem_private_key((folder / "svid_key.pem").read_bytes(), None)
    assert b"BEGIN PRIVATE KEY" in (folder / "svid_key.pem").read_bytes()  # PKCS#8
    assert key.public_key() == svid.certificate.public_key()
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_publication_after_issue_and_revoke(ca_factory) -> None:  # type: ignore[no-untyped-def]
    ca = ca_factory(intermediate=True)
    doc0 = json.loads(ca.bundle_path.read_text())
    a, b = ca.issue_many(["auth", "orders"])
    doc1 = json.loads(ca.bundle_path.read_text())
    assert doc1["spiffe_sequence"] == doc0["spiffe_sequence"] + 1
    assert doc1["spiffe_refresh_hint"] > 0
    roots = [k for k in doc1["keys"] if k["use"] == "x509-svid"]
    jwts = {k["kid"]: k for k in doc1["keys"] if k["use"] == "jwt-svid"}
    assert len(roots) == 1 and set(jwts) == {a.thumbprint, b.thumbprint}
    entry = jwts[a.thumbprint]
    assert entry["kty"] == "EC" and entry["crv"] == "P-256"
    import base64

    x5c = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in entry["x5c"]]
    assert x5c == [a.certificate, ca.issuer_cert]
    nums = a.certificate.public_key().public_numbers()  # type: ignore[union-attr]
    pad = "=" * (-len(entry["x"]) % 4)
    assert int.from_bytes(base64.urlsafe_b64decode(entry["x"] + pad), "big") == nums.x
    root_x5c = x509.load_der_x509_certificate(base64.b64decode(roots[0]["x5c"][0]))
    assert root_x5c == ca.root_cert

    assert ca.revoke(serial=a.serial, reason="keyCompromise") == [a.serial]
    doc2 = json.loads(ca.bundle_path.read_text())
    assert doc2["spiffe_sequence"] == doc1["spiffe_sequence"] + 1
    assert {k["kid"] for k in doc2["keys"] if k["use"] == "jwt-svid"} == {b.thumbprint}
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert crl.is_signature_valid(ca.issuer_cert.public_key())  # type: ignore[arg-type]
    entry_r = crl.get_revoked_certificate_by_serial_number(a.serial)
    assert entry_r is not None
    reason = entry_r.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise
    assert crl.get_revoked_certificate_by_serial_number(b.serial) is None
    assert crl.next_update_utc is not None and crl.next_update_utc > datetime.now(UTC)


def test_csr_keeps_the_service_key_and_ignores_what_it_asks(
    mesh_ca: CertificateAuthority,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier("spiffe://mesh.internal/svc/admin")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    svid = mesh_ca.issue("orders", csr_pem=csr.public_bytes(serialization.Encoding.PEM))
    assert svid.private_key is None
    assert svid.certificate.public_key() == key.public_key()
    assert str(spiffe_id_of(svid.certificate)) == "spiffe://mesh.internal/svc/orders"
    bc = svid.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is False
    assert svid.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "orders"


def test_renew_and_revoke_by_name(mesh_ca: CertificateAuthority) -> None:
    first = mesh_ca.issue("orders", dns=["localhost"], ttl=timedelta(hours=2))
    second = mesh_ca.renew("orders")
    assert second.serial != first.serial
    assert second.certificate.public_key() != first.certificate.public_key()
    assert second.not_after - second.not_before == timedelta(hours=2, seconds=60)
    san = second.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert "localhost" in san.value.get_values_for_type(x509.DNSName)
    revoked = mesh_ca.revoke(name="orders", reason="superseded")
    assert sorted(revoked) == sorted([first.serial, second.serial])
    states = {r.serial: (r.status, r.reason) for r in mesh_ca.records()}
    assert states[first.serial] == ("revoked", "superseded")
    # A repeat revokes nothing new, keeps the first reason and time, and still republishes:
    # the way to make sure a revocation is out (the CRL number moves on).
    def crl_number() -> int:
        crl = x509.load_pem_x509_crl(mesh_ca.crl_path.read_bytes())
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number

    before = crl_number()
    assert mesh_ca.revoke(name="orders", reason="keyCompromise") == []
    assert mesh_ca.revoke(serial=first.serial) == []
    assert crl_number() == before + 2
    states_again = {r.serial: (r.status, r.reason, r.revoked_at) for r in mesh_ca.records()}
    assert states_again[first.serial][:2] == ("revoked", "superseded")
    crl = x509.load_pem_x509_crl(mesh_ca.crl_path.read_bytes())
    assert {e.serial_number for e in crl} == {first.serial, second.serial}


def test_open_sees_the_same_registry(mesh_ca: CertificateAuthority) -> None:
    svid = mesh_ca.issue("orders")
    with CertificateAuthority.open(mesh_ca.ca_dir) as again:
        assert again.trust_domain == mesh_ca.trust_domain
        assert [r.serial for r in again.records()] == [svid.serial]
        assert again.root_cert == mesh_ca.root_cert


def test_not_before_in_the_past_makes_an_expired_certificate(
    mesh_ca: CertificateAuthority,
) -> None:
    start = datetime.now(UTC) - timedelta(days=2)
    svid = mesh_ca.issue("old", not_before=start, ttl=timedelta(hours=1))
    assert svid.not_after < datetime.now(UTC)
    assert [r.state(int(datetime.now(UTC).timestamp())) for r in mesh_ca.records()] == ["expired"]
    doc = json.loads(mesh_ca.bundle_path.read_text())
    assert svid.thumbprint not in {k.get("kid") for k in doc["keys"]}


def test_bundle_is_published_before_the_svid_files(mesh_ca, tmp_path, monkeypatch) -> None:
    """A service reloading its new key must find that key's kid in the bundle already."""
    import ca.fsio

    replaced: list[str] = []
    real_replace = ca.fsio.os.replace

    def recording_replace(src, dst):
        replaced.append(Path(dst).name)
        return real_replace(src, dst)

    monkeypatch.setattr(ca.fsio.os, "replace", recording_replace)
    mesh_ca.issue("orders", out_dir=tmp_path)
    assert replaced.index("bundle.spiffe.json") < replaced.index("svid_key.pem")
    assert replaced.index("bundle.spiffe.json") < replaced.index("svid.pem")


@pytest.mark.parametrize(
    "dns",
    ["payments.svc.mesh.internal", "mesh.internal", "x.mesh.internal", "orders.svc.mesh.internal."],
)
def test_dns_names_inside_the_trust_domain_are_reserved(mesh_ca, dns) -> None:
    """A name under the trust domain would let this service's key answer for another one."""
    if dns == "orders.svc.mesh.internal.":
        # control: the service's own name (trailing dot or not) is always allowed
        svid = mesh_ca.issue("orders", dns=[dns])
        san = svid.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert san.value.get_values_for_type(x509.DNSName) == ["orders.svc.mesh.internal"]
        return
    before = mesh_ca.records()
    with pytest.raises(errors.InvalidSAN, match="reserved to the service they name"):
        mesh_ca.issue("orders", dns=[dns])
    assert mesh_ca.records() == before


def test_dns_names_outside_the_trust_domain_are_allowed(mesh_ca) -> None:
    svid = mesh_ca.issue("orders", dns=["orders.example.com", "mesh.internal.example.com"])
    san = svid.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert "orders.example.com" in san.value.get_values_for_type(x509.DNSName)
