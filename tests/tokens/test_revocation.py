"""Revocation as the bundle source applies it: issuing CAs of signing keys, and CRL or bundle
files that go back in time (RFC 5280 5.2.3).

Each test shows the control passing first, then the attack failing for its own reason.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from mesh.tokens import ChainVerifier, FileBundleSource, TokenSigner, VerifyLimits
from mesh.tokens import errors as E
from mesh.tokens.cache import VerifiedTokenCache


def _crl(
    issuer: x509.Certificate, key: Any, serials: list[int], *, number: int | None,
    this_update: datetime | None = None,
) -> bytes:
    """A CRL signed by ``key`` (the CA's own keys: nobody else can revoke)."""
    now = this_update or datetime.now(UTC) - timedelta(minutes=1)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(now)
        .next_update(now + timedelta(days=1))
    )
    if number is not None:
        builder = builder.add_extension(x509.CRLNumber(number), critical=False)
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _replace(path: Path, data: bytes, stamp: int) -> None:
    """Atomically replace ``path``, with an mtime of its own so the change is always seen."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.utime(tmp, ns=(stamp, stamp))
    os.replace(tmp, path)


# --- an intermediate CA revoked (review finding 1) --------------------------------------------


@pytest.fixture
def inter_mesh(ca_factory: Any, tmp_path: Path) -> Any:
    ca = ca_factory(intermediate=True)
    svids = {n: ca.issue(n) for n in ("auth", "gateway", "orders")}
    signers = {n: TokenSigner(s.private_key, s.chain) for n, s in svids.items()}
    crl = tmp_path / "crl.pem"
    crl.write_bytes(ca.crl_path.read_bytes())
    return ca, svids, signers, crl


def test_a_revoked_intermediate_ends_every_key_it_certified(inter_mesh: Any) -> None:
    ca, svids, signers, crl = inter_mesh
    bundle = FileBundleSource(ca.bundle_path, crl, check_interval=0)
    cache = VerifiedTokenCache()
    edge = ChainVerifier(ca.trust_domain.service("gateway"), bundle, cache=cache)
    user = signers["auth"].user_token("alice", [ca.trust_domain.service("gateway")])
    for _ in range(2):  # control, uncached then cached: the token verifies
        assert edge.verify(user, None).user == "alice"
    # a root-signed CRL revoking some other serial changes nothing (control) ...
    _replace(crl, ca.crl_path.read_bytes() + _crl(ca.root_cert, ca._root_key, [12345], number=1),
             1)
    assert bundle.refresh()
    assert edge.verify(user, None).user == "alice"
    # ... one revoking the intermediate ends the key of auth, whose leaf is not revoked itself
    _replace(crl, ca.crl_path.read_bytes()
             + _crl(ca.root_cert, ca._root_key, [ca.issuer_cert.serial_number], number=2), 2)
    assert bundle.refresh()
    assert not bundle.is_revoked(svids["auth"].certificate)
    with pytest.raises(E.CertificateRevoked) as info:
        edge.verify(user, None)
    assert info.value.reason == "CERT_REVOKED" and info.value.hop == 0
    assert "issuing CA certificate" in str(info.value)
    assert f"{ca.issuer_cert.serial_number:x}" in str(info.value)
    # the same for a fresh, uncached verifier
    with pytest.raises(E.CertificateRevoked):
        ChainVerifier(ca.trust_domain.service("gateway"), bundle, cache=None).verify(user, None)


def test_a_revoked_leaf_is_named_as_the_certificate(inter_mesh: Any, tmp_path: Path) -> None:
    ca, _, signers, _ = inter_mesh
    user = signers["auth"].user_token("alice", [ca.trust_domain.service("gateway")])
    old_bundle = tmp_path / "old.json"  # still lists auth's key: the CRL alone revokes it
    old_bundle.write_bytes(ca.bundle_path.read_bytes())
    ca.revoke(name="auth")
    bundle = FileBundleSource(old_bundle, ca.crl_path)
    with pytest.raises(E.CertificateRevoked) as info:
        ChainVerifier(ca.trust_domain.service("gateway"), bundle).verify(user, None)
    assert "whose certificate (serial" in str(info.value)


def test_the_message_for_a_revoked_issuing_ca_of_a_peer(inter_mesh: Any) -> None:
    """(the review's typo: it read "the an issuing CA certificate")"""
    ca, svids, _, crl = inter_mesh
    _replace(crl, ca.crl_path.read_bytes()
             + _crl(ca.root_cert, ca._root_key, [ca.issuer_cert.serial_number], number=2), 1)
    bundle = FileBundleSource(ca.bundle_path, crl)
    with pytest.raises(E.CertificateRevoked) as info:
        bundle.verify_chain(list(svids["orders"].chain))
    text = str(info.value)
    assert text.startswith("the issuing CA certificate of spiffe://"), text
    assert "the an " not in text


# --- CRL rollback (review finding 2) -------------------------------------------------------------


@pytest.fixture
def crl_setup(mesh: Any, tmp_path: Path) -> tuple[Any, Path, FileBundleSource]:
    """payments revoked by the CA's current CRL, copied to a file the test controls."""
    mesh.ca.revoke(name="payments")
    crl = tmp_path / "crl.pem"
    _replace(crl, mesh.ca.crl_path.read_bytes(), 1)
    bundle = FileBundleSource(mesh.ca.bundle_path, crl, check_interval=0)
    assert bundle.is_revoked(mesh.cert("payments"))
    assert bundle.update_refused is None
    return mesh, crl, bundle


def _number(pem: bytes) -> int:
    crl = x509.load_pem_x509_crl(pem)
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_an_older_crl_number_is_refused(
    crl_setup: Any, caplog: pytest.LogCaptureFixture
) -> None:
    mesh, crl, bundle = crl_setup
    current = _number(crl.read_bytes())
    older = _crl(mesh.ca.root_cert, mesh.ca._root_key, [], number=current - 1)
    generation = bundle.generation
    with caplog.at_level(logging.WARNING, logger="mesh.identity.bundle"):
        _replace(crl, older, 2)
        assert bundle.refresh() is False
    assert bundle.is_revoked(mesh.cert("payments"))
    assert bundle.generation == generation
    assert f"CRL number {current - 1}, lower than {current}" in (bundle.update_refused or "")
    assert "keeping the previous trust bundle" in caplog.text
    with pytest.raises(E.CertificateRevoked):
        bundle.verify_chain([mesh.cert("payments")])


def test_a_newer_crl_is_applied(crl_setup: Any) -> None:
    """Negative control: the CA revoking one more certificate is picked up, and a refused
    update is forgotten once a good one arrives."""
    mesh, crl, bundle = crl_setup
    _replace(crl, _crl(mesh.ca.root_cert, mesh.ca._root_key, [], number=1), 2)
    assert bundle.refresh() is False and bundle.update_refused is not None
    mesh.ca.revoke(name="orders")
    _replace(crl, mesh.ca.crl_path.read_bytes(), 3)
    assert bundle.refresh() is True
    assert bundle.update_refused is None
    assert bundle.is_revoked(mesh.cert("orders")) and bundle.is_revoked(mesh.cert("payments"))


def test_the_same_crl_again_is_accepted(crl_setup: Any) -> None:
    mesh, crl, bundle = crl_setup
    _replace(crl, crl.read_bytes(), 2)
    assert bundle.refresh() is True
    assert bundle.update_refused is None
    assert bundle.is_revoked(mesh.cert("payments"))


def test_the_same_number_must_not_drop_a_revocation(crl_setup: Any) -> None:
    mesh, crl, bundle = crl_setup
    number = _number(crl.read_bytes())
    serial = mesh.cert("payments").serial_number
    # same number, a superset: nothing is un-revoked, so it is accepted (control)
    _replace(crl, _crl(mesh.ca.root_cert, mesh.ca._root_key, [serial, 777], number=number), 2)
    assert bundle.refresh() is True
    assert bundle.is_revoked(mesh.cert("payments"))
    _replace(crl, _crl(mesh.ca.root_cert, mesh.ca._root_key, [777], number=number), 3)
    assert bundle.refresh() is False
    assert "same number" in (bundle.update_refused or "")
    assert bundle.is_revoked(mesh.cert("payments"))


def test_without_crl_numbers_this_update_orders_them(mesh: Any, tmp_path: Path) -> None:
    serial = mesh.cert("payments").serial_number
    t0 = datetime.now(UTC) - timedelta(hours=2)
    crl = tmp_path / "crl.pem"
    key, root = mesh.ca._root_key, mesh.ca.root_cert
    _replace(crl, _crl(root, key, [serial], number=None, this_update=t0), 1)
    bundle = FileBundleSource(mesh.ca.bundle_path, crl, check_interval=0)
    assert bundle.is_revoked(mesh.cert("payments"))
    _replace(crl, _crl(root, key, [], number=None, this_update=t0 - timedelta(hours=1)), 2)
    assert bundle.refresh() is False
    assert "earlier than" in (bundle.update_refused or "")
    assert bundle.is_revoked(mesh.cert("payments"))
    later = _crl(root, key, [serial, 5], number=None, this_update=t0 + timedelta(hours=1))
    _replace(crl, later, 3)
    assert bundle.refresh() is True  # control: a later one is applied
    assert bundle.is_revoked(mesh.cert("payments"))


def test_dropping_the_crl_of_a_ca_still_in_the_bundle_is_refused(inter_mesh: Any) -> None:
    ca, svids, _, crl = inter_mesh
    revoking = _crl(ca.root_cert, ca._root_key, [ca.issuer_cert.serial_number], number=2)
    _replace(crl, ca.crl_path.read_bytes() + revoking, 1)
    bundle = FileBundleSource(ca.bundle_path, crl, check_interval=0)
    # the intermediate's own (current) CRL alone would un-revoke the intermediate
    _replace(crl, ca.crl_path.read_bytes(), 2)
    assert bundle.refresh() is False
    assert "no longer holds a CRL" in (bundle.update_refused or "")
    with pytest.raises(E.CertificateRevoked):
        bundle.verify_chain(list(svids["orders"].chain))
    # control: a newer root CRL that lifts nothing it should not (the CA's choice) is applied
    _replace(crl, ca.crl_path.read_bytes()
             + _crl(ca.root_cert, ca._root_key, [ca.issuer_cert.serial_number, 9], number=3), 3)
    assert bundle.refresh() is True


# --- bundle rollback (review finding 2) ----------------------------------------------------------


def test_an_older_bundle_sequence_is_refused(mesh: Any, tmp_path: Path) -> None:
    doc = json.loads(mesh.ca.bundle_path.read_text())
    sequence = doc["spiffe_sequence"]
    path = tmp_path / "bundle.spiffe.json"
    _replace(path, json.dumps(doc).encode(), 1)
    bundle = FileBundleSource(path, mesh.ca.crl_path, check_interval=0)
    kids = set(bundle.kids())
    # an older bundle (here one without the key of orders)
    old = dict(doc, spiffe_sequence=sequence - 1)
    old["keys"] = [k for k in doc["keys"] if k.get("kid") != mesh.kid("orders")]
    _replace(path, json.dumps(old).encode(), 2)
    assert bundle.refresh() is False
    assert f"spiffe_sequence {sequence - 1}, lower than the {sequence}" in (
        bundle.update_refused or "")
    assert set(bundle.kids()) == kids
    # controls: the same sequence, and a higher one, are applied
    same = dict(old, spiffe_sequence=sequence)
    _replace(path, json.dumps(same).encode(), 3)
    assert bundle.refresh() is True and mesh.kid("orders") not in bundle.kids()
    _replace(path, json.dumps(dict(doc, spiffe_sequence=sequence + 1)).encode(), 4)
    assert bundle.refresh() is True and set(bundle.kids()) == kids
    assert bundle.update_refused is None


def test_a_verifier_keeps_refusing_after_a_crl_rollback(mesh: Any, tmp_path: Path) -> None:
    """End to end: the rollback does not let a revoked peer back in."""
    crl = tmp_path / "crl.pem"
    old = mesh.ca.crl_path.read_bytes()
    mesh.ca.revoke(name="gateway")
    _replace(crl, mesh.ca.crl_path.read_bytes(), 1)
    bundle = FileBundleSource(mesh.ca.bundle_path, crl, check_interval=0)
    v = ChainVerifier(mesh.id("orders"), bundle, limits=VerifyLimits(), clock=mesh.clock)
    token = mesh.chain("gateway", "orders")
    with pytest.raises(E.CertificateRevoked):
        v.verify(token, mesh.cert("gateway"))
    _replace(crl, old, 2)
    assert bundle.refresh() is False
    with pytest.raises(E.CertificateRevoked):
        v.verify(token, mesh.cert("gateway"))
