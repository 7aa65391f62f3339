"""The lint judges certificates made by hand, not only ours: each bad one fails by name."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.authority import CertificateAuthority
from ca.cli import main
from ca.lint import lint, role_of, violations

KU_DIGSIG = dict(
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
URI = x509.UniformResourceIdentifier


def _make(
    sans: list[x509.GeneralName] | None,
    *,
    ca: bool = False,
    ku: dict[str, bool] | None = None,
    eku: list[x509.ObjectIdentifier] | None = None,
) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hand-made")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans is not None:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if ku is not None:
        b = b.add_extension(x509.KeyUsage(**ku), critical=True)
    if eku is not None:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return b.sign(key, hashes.SHA256())


BOTH = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
GOOD_SANS: list[x509.GeneralName] = [
    URI("spiffe://mesh.internal/svc/a"),
    x509.DNSName("a.svc.mesh.internal"),
]

BAD: list[tuple[str, dict[str, Any], str]] = [
    (
        "two URI SANs",
        dict(sans=[URI("spiffe://mesh.internal/svc/a"), URI("spiffe://mesh.internal/svc/b")],
             ku=KU_DIGSIG, eku=BOTH),
        "URI_SAN_COUNT",
    ),
    ("CA:true leaf", dict(sans=GOOD_SANS, ca=True, ku=KU_DIGSIG, eku=BOTH), "CA_FLAG"),
    (
        "no digitalSignature",
        dict(sans=GOOD_SANS, ku={**KU_DIGSIG, "digital_signature": False,
                                  "key_encipherment": True}, eku=BOTH),
        "KEY_USAGE",
    ),
    ("no keyUsage at all", dict(sans=GOOD_SANS, eku=BOTH), "KEY_USAGE"),
    ("keyCertSign on a leaf", dict(sans=GOOD_SANS, ku={**KU_DIGSIG, "key_cert_sign": True},
                                   eku=BOTH), "KEY_USAGE"),
    ("DNS-only leaf", dict(sans=[x509.DNSName("a.example.com")], ku=KU_DIGSIG, eku=BOTH),
     "URI_SAN_COUNT"),
    ("no SAN at all", dict(sans=None, ku=KU_DIGSIG, eku=BOTH), "URI_SAN_COUNT"),
    ("https URI", dict(sans=[URI("https://mesh.internal/svc/a")], ku=KU_DIGSIG, eku=BOTH),
     "SPIFFE_ID"),
    ("SPIFFE ID without a path", dict(sans=[URI("spiffe://mesh.internal")], ku=KU_DIGSIG,
                                      eku=BOTH), "SPIFFE_ID_PATH"),
    ("serverAuth only", dict(sans=GOOD_SANS, ku=KU_DIGSIG,
                             eku=[ExtendedKeyUsageOID.SERVER_AUTH]), "EKU"),
]


@pytest.mark.parametrize(("what", "spec", "rule"), BAD, ids=[b[0] for b in BAD])
def test_hand_made_bad_certificate_is_named(what: str, spec: dict[str, Any], rule: str) -> None:
    cert = _make(**spec)
    found = violations(lint(cert))
    assert rule in {f.rule for f in found}, found


def test_hand_made_good_certificate_conforms() -> None:
    # Negative control for the table above: the same builder with nothing wrong passes.
    cert = _make(GOOD_SANS, ku=KU_DIGSIG, eku=BOTH)
    assert violations(lint(cert)) == []


def test_our_certificates_conform(ca_factory: Callable[..., CertificateAuthority]) -> None:
    ca = ca_factory(intermediate=True)
    svid = ca.issue("orders")
    for cert in (*svid.chain, ca.root_cert):
        assert lint(cert) == [], cert
    assert role_of(svid.certificate) == "leaf" and role_of(ca.root_cert) == "ca"


def test_inspect_cli_exit_codes(
    mesh_ca: CertificateAuthority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mesh_ca.issue("orders", out_dir=tmp_path)
    assert main(["inspect", str(tmp_path / "orders" / "svid.pem")]) == 0
    out = capsys.readouterr().out
    assert "spiffe://mesh.internal/svc/orders" in out and "conforms" in out

    bad = tmp_path / "bad.pem"
    bad.write_bytes(
        _make(GOOD_SANS, ca=True, ku=KU_DIGSIG, eku=BOTH).public_bytes(serialization.Encoding.PEM)
    )
    assert main(["inspect", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "violation [CA_FLAG]" in out

    der = tmp_path / "leaf.der"
    der.write_bytes(_make([x509.DNSName("x.org")], ku=KU_DIGSIG, eku=BOTH).public_bytes(
        serialization.Encoding.DER))
    assert main(["inspect", "--json", str(der)]) == 1
    import json

    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["conforms"] is False
    assert "URI_SAN_COUNT" in {f["rule"] for f in doc["certificates"][0]["findings"]}

    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    assert main(["inspect", str(junk)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no readable certificate" in err


def test_malformed_extensions_are_a_violation_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptography.x509.oid import ExtensionOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(5)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        # A SAN whose DER is cut short: it only fails when someone reads it.
        .add_extension(
            x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x03\x86\x01"),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    reloaded = x509.load_der_x509_certificate(cert.public_bytes(serialization.Encoding.DER))
    assert [f.rule for f in violations(lint(reloaded))] == ["EXTENSIONS"]
    path = tmp_path / "malformed.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    assert main(["inspect", str(path)]) == 1
    assert "violation [EXTENSIONS]" in capsys.readouterr().out


def test_inspect_refuses_a_certificate_with_an_unreadable_subject(
    mesh_ca: CertificateAuthority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    der = mesh_ca.issue("orders").certificate.public_bytes(serialization.Encoding.DER)
    assert der.count(b"\x0c\x06orders") == 1  # the subject's CN, a UTF8String
    broken = tmp_path / "broken.der"
    broken.write_bytes(der.replace(b"\x0c\x06orders", b"\x03\x06orders"))  # now a BIT STRING
    assert main(["inspect", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "certificate 1 in" in err and "is malformed: its subject cannot be read" in err
    assert err.count("\n") == 1
