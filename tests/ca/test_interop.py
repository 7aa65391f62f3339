"""Interop: verifiers nobody here wrote accept our leaves and reject revoked ones.

openssl (the command), cryptography.x509.verification and pyOpenSSL's X509Store with CRLs.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from OpenSSL import crypto

from ca.authority import CertificateAuthority

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _openssl_verify(
    ca: CertificateAuthority, leaf_folder: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    cmd = ["openssl", "verify", "-CAfile", str(leaf_folder / "svid_bundle.pem")]
    if ca.intermediates:
        # svid.pem holds leaf + intermediate; openssl wants the intermediate as untrusted.
        cmd += ["-untrusted", str(leaf_folder / "svid.pem")]
    cmd += [*extra, str(leaf_folder / "svid.pem")]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("intermediate", [False, True], ids=["root-only", "intermediate"])
def test_openssl_verify_accepts_and_crl_check_rejects_revoked(
    ca_factory: Callable[..., CertificateAuthority], tmp_path: Path, intermediate: bool
) -> None:
    ca = ca_factory(intermediate=intermediate)
    _, bad = ca.issue_many(["orders", "payments"], out_dir=tmp_path)
    for name in ("orders", "payments"):
        res = _openssl_verify(ca, tmp_path / name, "-purpose", "sslclient")
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip().endswith(": OK")
        res = _openssl_verify(ca, tmp_path / name, "-purpose", "sslserver")
        assert res.returncode == 0, res.stderr

    ca.revoke(serial=bad.serial, reason="keyCompromise")
    crl_args = ("-crl_check", "-CRLfile", str(ca.crl_path))
    ok = _openssl_verify(ca, tmp_path / "orders", *crl_args)
    assert ok.returncode == 0, ok.stderr
    revoked = _openssl_verify(ca, tmp_path / "payments", *crl_args)
    assert revoked.returncode != 0
    assert "certificate revoked" in (revoked.stdout + revoked.stderr)
    # Negative control: the same leaf still verifies when the CRL is not consulted, so the
    # rejection above is the CRL's doing and nothing else.
    assert _openssl_verify(ca, tmp_path / "payments").returncode == 0


def test_openssl_rejects_a_leaf_from_another_ca(
    ca_factory: Callable[..., CertificateAuthority], tmp_path: Path
) -> None:
    ours, theirs = ca_factory(), ca_factory()
    theirs.issue("orders", out_dir=tmp_path)
    shutil.copy(ours.roots_path, tmp_path / "orders" / "svid_bundle.pem")
    res = _openssl_verify(ours, tmp_path / "orders")
    assert res.returncode != 0
    assert "unable to get local issuer certificate" in (res.stdout + res.stderr)


@pytest.mark.parametrize("intermediate", [False, True], ids=["root-only", "intermediate"])
def test_cryptography_client_verifier_yields_the_uri_san(
    ca_factory: Callable[..., CertificateAuthority], intermediate: bool
) -> None:
    ca = ca_factory(trust_domain="example.org", intermediate=intermediate)
    svid = ca.issue("orders")
    verifier = (
        PolicyBuilder().store(Store(list(ca.roots))).time(datetime.now(UTC)).build_client_verifier()
    )
    verified = verifier.verify(svid.certificate, list(svid.chain[1:]))
    assert verified.chain[0] == svid.certificate
    assert verified.chain[-1] == ca.root_cert
    assert verified.subjects is not None
    assert x509.UniformResourceIdentifier("spiffe://example.org/svc/orders") in verified.subjects
    # Negative control: the wrong anchors make the same verifier refuse.
    other = ca_factory(trust_domain="example.org")
    wrong = PolicyBuilder().store(Store(list(other.roots))).build_client_verifier()
    with pytest.raises(VerificationError):
        wrong.verify(svid.certificate, list(svid.chain[1:]))


@pytest.mark.parametrize("intermediate", [False, True], ids=["root-only", "intermediate"])
def test_pyopenssl_store_with_crl(
    ca_factory: Callable[..., CertificateAuthority], intermediate: bool
) -> None:
    ca = ca_factory(intermediate=intermediate)
    good, bad = ca.issue_many(["orders", "payments"])
    ca.revoke(name="payments")

    def verify(svid_cert: x509.Certificate, chain: tuple[x509.Certificate, ...]) -> None:
        store = crypto.X509Store()
        for root in ca.roots:
            store.add_cert(crypto.X509.from_cryptography(root))
        store.add_crl(x509.load_pem_x509_crl(ca.crl_path.read_bytes()))
        store.set_flags(crypto.X509StoreFlags.CRL_CHECK)
        ctx = crypto.X509StoreContext(
            store,
            crypto.X509.from_cryptography(svid_cert),
            [crypto.X509.from_cryptography(c) for c in chain],
        )
        ctx.verify_certificate()

    verify(good.certificate, good.chain[1:])
    with pytest.raises(crypto.X509StoreContextError, match="certificate revoked"):
        verify(bad.certificate, bad.chain[1:])
