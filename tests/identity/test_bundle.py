"""The bundle source: what it trusts, what it refuses, and how it follows the files."""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from mesh.identity.spiffeid import TrustDomain
from mesh.tokens import BundleSource, FileBundleSource
from mesh.tokens import errors as E


def _doc(mesh: Any) -> dict[str, Any]:
    return json.loads(mesh.ca.bundle_path.read_text())  # type: ignore[no-any-return]


def _write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(json.dumps(doc))
    return path


def _entry(doc: dict[str, Any], kid: str) -> dict[str, Any]:
    return next(k for k in doc["keys"] if k.get("kid") == kid)


def test_loads_the_cas_bundle(mesh: Any) -> None:
    bundle = mesh.bundle()
    assert isinstance(bundle, BundleSource)
    assert bundle.trust_domain == TrustDomain("mesh.internal")
    assert bundle.anchors == (mesh.ca.root_cert,)
    assert set(bundle.kids()) == {mesh.kid(n) for n in mesh.svids}
    key = bundle.key_for(mesh.kid("orders"))
    assert key is not None
    assert key.spiffe_id == mesh.id("orders")
    assert key.certificate == mesh.cert("orders")
    assert key.public_key == mesh.cert("orders").public_key()
    assert bundle.rejected == {}
    assert bundle.key_for("A" * 43) is None
    assert "public_key" not in repr(key) and "BEGIN" not in repr(key)


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("kid", "is not its certificate's x5t#S256"),
        ("jwk", "is not its certificate's P-256 public key"),
        ("foreign_leaf", "does not chain to the trust anchors"),
        ("no_x5c", "has no x5c certificate chain"),
        ("bad_x5c", "unreadable x5c"),
    ],
)
def test_bundle_entries_that_do_not_check_out_are_left_out(
    mesh: Any, ca_factory: Any, tmp_path: Path, tamper: str, reason: str
) -> None:
    doc = _doc(mesh)
    entry = _entry(doc, mesh.kid("orders"))
    other = _entry(doc, mesh.kid("gateway"))
    if tamper == "kid":
        entry["kid"] = "B" * 43
    elif tamper == "jwk":
        entry["x"], entry["y"] = other["x"], other["y"]
    elif tamper == "foreign_leaf":
        rogue = ca_factory().issue("orders")
        der = rogue.certificate.public_bytes(serialization.Encoding.DER)
        entry["x5c"] = [base64.b64encode(der).decode()]
        entry["kid"] = rogue.thumbprint
        x, y = _xy(rogue.certificate)
        entry["x"], entry["y"] = x, y
    elif tamper == "no_x5c":
        del entry["x5c"]
    else:
        entry["x5c"] = ["not base64!"]
    bundle = FileBundleSource(_write(tmp_path / "b.json", doc), mesh.ca.crl_path)
    kid = entry["kid"]
    assert bundle.key_for(kid) is None
    assert reason in bundle.rejected[kid]
    assert bundle.key_for(mesh.kid("gateway")) is not None  # the others are unaffected
    # a token with a hop signed by orders' real key: that key is unknown, and we say why
    token = mesh.chain("gateway", "orders", "payments", "inventory")
    with pytest.raises(E.KeyUnknown) as info:
        mesh.verifier("inventory", bundle=bundle).verify(token, mesh.cert("payments"))
    assert info.value.hop == 1
    if tamper in ("jwk", "no_x5c", "bad_x5c"):  # the entry still names orders' kid
        assert reason in str(info.value)


def _xy(cert: Any) -> tuple[str, str]:
    numbers = cert.public_key().public_numbers()

    def enc(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()

    return enc(numbers.x), enc(numbers.y)


def test_keys_outside_the_trust_domain_are_refused(mesh: Any) -> None:
    bundle = FileBundleSource(mesh.ca.bundle_path, trust_domain="other.example")
    assert bundle.kids() == ()
    assert all("outside the trust domain other.example" in r for r in bundle.rejected.values())


def test_unusable_bundles_are_configuration_errors(mesh: Any, tmp_path: Path) -> None:
    with pytest.raises(E.BundleError, match="cannot read"):
        FileBundleSource(tmp_path / "missing.json")
    with pytest.raises(E.BundleError, match="not JSON"):
        FileBundleSource(_write_text(tmp_path / "a.json", "{"))
    with pytest.raises(E.BundleError, match="not a SPIFFE bundle"):
        FileBundleSource(_write(tmp_path / "b.json", {"kty": "EC"}))
    doc = _doc(mesh)
    doc["keys"] = [k for k in doc["keys"] if k["use"] != "x509-svid"]
    with pytest.raises(E.BundleError, match="no usable x509-svid trust anchor"):
        FileBundleSource(_write(tmp_path / "c.json", doc))
    with pytest.raises(E.BundleError, match="no PEM 'X509 CRL' block"):
        FileBundleSource(mesh.ca.bundle_path, _write_text(tmp_path / "crl.pem", "nothing"))


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_crl_not_signed_by_its_issuer_is_refused(mesh: Any, ca_factory: Any) -> None:
    impostor = ca_factory()  # same subject name as our CA, different key
    assert impostor.root_cert.subject == mesh.ca.root_cert.subject
    with pytest.raises(E.BundleError, match="signature does not verify"):
        FileBundleSource(mesh.ca.bundle_path, impostor.crl_path)


def test_follows_the_files_when_they_change(mesh: Any) -> None:
    bundle = mesh.bundle(check_interval=0)
    generation = bundle.generation
    ledger = mesh.ca.issue("ledger")
    assert bundle.key_for(ledger.thumbprint) is not None
    assert bundle.generation > generation
    mesh.ca.revoke(name="ledger")
    assert bundle.is_revoked(ledger.certificate)
    assert bundle.key_for(ledger.thumbprint) is None


def test_unknown_kid_triggers_a_rate_limited_reload(mesh: Any) -> None:
    bundle = mesh.bundle(check_interval=3600, unknown_kid_interval=3600)
    first = mesh.ca.issue("ledger")
    # the files changed, but the periodic check is an hour away: the unknown kid makes the
    # bundle look again, once
    assert bundle.key_for(first.thumbprint) is not None
    second = mesh.ca.issue("billing")
    assert bundle.key_for(second.thumbprint) is None  # rate-limited: no second look
    assert bundle.refresh()
    assert bundle.key_for(second.thumbprint) is not None


def test_a_rotated_key_is_picked_up_without_restart(mesh: Any) -> None:
    v = mesh.verifier("orders", bundle=mesh.bundle(check_interval=3600))
    v.verify(mesh.chain("gateway", "orders"), mesh.cert("gateway"))
    renewed = mesh.ca.renew("auth")
    from mesh.tokens import TokenSigner

    signer = TokenSigner(renewed.private_key, renewed.chain, clock=mesh.clock)
    user = signer.user_token("alice", [mesh.id("gateway")])
    assert v.verify(mesh.wrap(user, "gateway", "orders"), mesh.cert("gateway")).user == "alice"


def test_a_broken_update_keeps_the_last_good_bundle(
    mesh: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "bundle.spiffe.json"
    shutil.copy(mesh.ca.bundle_path, path)
    bundle = FileBundleSource(path, check_interval=0)
    kids = set(bundle.kids())
    generation = bundle.generation
    tmp = tmp_path / "new.json"
    tmp.write_text('{"keys": [')
    os.replace(tmp, path)
    with caplog.at_level(logging.WARNING, logger="mesh.identity.bundle"):
        assert not bundle.refresh()
        assert set(bundle.kids()) == kids
    assert bundle.generation == generation
    assert "keeping the previous trust bundle" in caplog.text


def test_verify_chain_for_peer_certificates(mesh: Any, ca_factory: Any) -> None:
    bundle = mesh.bundle()
    assert bundle.verify_chain([mesh.cert("orders")]) == mesh.id("orders")
    stranger = ca_factory().issue("orders")
    with pytest.raises(E.CertificateUntrusted, match="does not chain to the trust anchors"):
        bundle.verify_chain([stranger.certificate])
    with pytest.raises(E.CertificateUntrusted, match="no certificate"):
        bundle.verify_chain([])
    with pytest.raises(E.CertificateUntrusted, match="SPIFFE ID"):
        bundle.verify_chain([_no_uri_cert()])
    mesh.ca.revoke(name="orders")
    assert FileBundleSource(mesh.ca.bundle_path, mesh.ca.crl_path).is_revoked(mesh.cert("orders"))
    with pytest.raises(E.CertificateRevoked):
        FileBundleSource(mesh.ca.bundle_path, mesh.ca.crl_path).verify_chain([mesh.cert("orders")])
    # without the CRL nothing is revoked: revocation is opt-in by passing crl_path
    assert FileBundleSource(mesh.ca.bundle_path).verify_chain([mesh.cert("orders")])


def _no_uri_cert() -> Any:
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "no uri")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )


def test_intermediate_ca(ca_factory: Any) -> None:
    ca = ca_factory(intermediate=True)
    names = ("auth", "gateway", "orders")
    svids = {n: ca.issue(n) for n in names}
    from mesh.tokens import ChainVerifier, TokenSigner

    bundle = FileBundleSource(ca.bundle_path, ca.crl_path)
    assert len(bundle.anchors) == 1
    signers = {n: TokenSigner(s.private_key, s.chain) for n, s in svids.items()}
    td = ca.trust_domain
    user = signers["auth"].user_token("alice", [td.service("gateway")])
    token = signers["gateway"].app_asserted_token(user, td.service("orders"))
    verifier = ChainVerifier(td.service("orders"), bundle, cache=None)
    # the peer presents only its leaf: the intermediate comes from the bundle's validated keys
    assert verifier.verify(token, svids["gateway"].certificate).user == "alice"
    ca.revoke(name="gateway")
    fresh = FileBundleSource(ca.bundle_path, ca.crl_path)
    with pytest.raises(E.CertificateRevoked):
        ChainVerifier(td.service("orders"), fresh).verify(token, svids["gateway"].certificate)


def test_a_key_refused_for_time_is_revalidated_when_asked_for(mesh: Any) -> None:
    """A certificate not valid yet at load (clock skew) is re-checked once a token names it,
    although the files did not change."""
    from datetime import UTC, datetime, timedelta

    start = datetime.now(UTC)
    clock = [start.timestamp()]
    early = mesh.ca.issue("ledger", not_before=start + timedelta(minutes=2))
    bundle = mesh.bundle(check_interval=3600, unknown_kid_interval=0, clock=lambda: clock[0])
    assert bundle.key_for(early.thumbprint) is None
    assert "does not chain" in bundle.rejected[early.thumbprint]
    clock[0] = (start + timedelta(minutes=5)).timestamp()
    key = bundle.key_for(early.thumbprint)
    assert key is not None and key.spiffe_id == mesh.id("ledger")
