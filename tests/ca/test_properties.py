"""Property tests for everything in ca/ that parses what a person or a file hands it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ca import errors
from ca.authority import CertificateAuthority
from ca.crl import REASONS, parse_reason
from ca.describe import load_certificates
from ca.lint import lint
from ca.parsing import MAX_TTL, format_duration, format_serial, parse_duration, parse_serial

FAST = settings(max_examples=200, deadline=None)
NAMES = st.text(max_size=70) | st.from_regex(r"[a-z0-9][a-z0-9-]{0,70}", fullmatch=True)


@pytest.fixture(scope="module")
def shared_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CertificateAuthority]:
    # One CA for the whole module: hypothesis reruns a body many times within one test.
    with CertificateAuthority.init(tmp_path_factory.mktemp("props") / "ca") as ca:
        yield ca


@FAST
@given(st.integers(min_value=1, max_value=int(MAX_TTL.total_seconds())))
def test_duration_round_trip(seconds: int) -> None:
    text = format_duration(timedelta(seconds=seconds))
    assert re.fullmatch(r"(\d+d)?(\d+h)?(\d+m)?(\d+s)?", text)
    assert parse_duration(text) == timedelta(seconds=seconds)


@FAST
@given(st.text(max_size=20))
def test_duration_rejects_or_parses_only(text: str) -> None:
    try:
        value = parse_duration(text)
    except errors.InvalidValidity as err:
        assert "lifetime" in str(err)
    else:
        assert timedelta(seconds=1) <= value <= MAX_TTL


@FAST
@given(st.integers(min_value=1, max_value=2**160 - 1), st.booleans(), st.booleans(), st.booleans())
def test_serial_round_trip(serial: int, upper: bool, colons: bool, prefix: bool) -> None:
    text = format(serial, "X" if upper else "x")
    if colons:
        text = text.zfill(len(text) + len(text) % 2)
        text = ":".join(text[i : i + 2] for i in range(0, len(text), 2))
    if prefix:
        text = "0x" + text
    assert parse_serial(text) == serial


@FAST
@given(st.integers(min_value=1, max_value=2**160 - 1), st.integers(min_value=0, max_value=8))
def test_serial_prints_one_way_and_parses_back(serial: int, zeros: int) -> None:
    text = format_serial(serial)
    assert re.fullmatch(r"[0-9a-f]{32,40}", text)
    assert len(text) == 32 or serial >= 2**128  # 32 digits for every serial this CA makes
    assert parse_serial(text) == parse_serial("0" * zeros + text.lstrip("0")) == serial


@FAST
@given(st.text(max_size=50))
def test_serial_rejects_or_parses_only(text: str) -> None:
    try:
        value = parse_serial(text)
    except errors.InvalidSerial:
        return
    assert 0 < value < 2**160


@FAST
@given(st.text(max_size=30))
def test_reason_rejects_or_names_an_rfc5280_reason(text: str) -> None:
    try:
        assert parse_reason(text) in REASONS
    except errors.InvalidRevocationReason as err:
        assert "unknown" in str(err)


@pytest.mark.parametrize("name", list(REASONS))
def test_reason_spellings(name: str) -> None:
    snake = re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()
    kebab = snake.replace("_", "-")
    assert parse_reason(name) == parse_reason(snake) == parse_reason(kebab) == name


@FAST
@given(st.binary(max_size=600))
def test_certificate_loader_never_crashes(data: bytes) -> None:
    for cert in load_certificates(data):  # rarely anything; must never raise
        lint(cert)


@FAST
@given(
    data=st.binary(max_size=400)
    | st.builds(
        lambda body: b"-----BEGIN CERTIFICATE REQUEST-----\n" + body
        + b"\n-----END CERTIFICATE REQUEST-----\n",
        st.binary(max_size=300),
    )
)
def test_csr_parser_refuses_garbage_with_badcsr(
    shared_ca: CertificateAuthority, data: bytes
) -> None:
    ca = shared_ca
    with pytest.raises(errors.BadCSR):
        ca._csr_public_key(data)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=NAMES)
def test_issue_with_any_name_issues_or_refuses_cleanly(
    shared_ca: CertificateAuthority, name: str
) -> None:
    ca = shared_ca
    before = len(ca.records())
    try:
        svid = ca.issue(name)
    except errors.InvalidServiceName as err:
        assert "service name" in str(err)
        assert len(ca.records()) == before
    else:
        assert re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", name)
        assert str(svid.spiffe_id) == f"spiffe://mesh.internal/svc/{name}"
        assert len(ca.records()) == before + 1


DNS_LIKE = st.text(alphabet="abcXYZ019-._*é ", max_size=30) | st.from_regex(
    r"[a-z0-9]{1,10}(\.[a-z0-9-]{1,10}){0,3}\.?", fullmatch=True
)
IP_LIKE = st.text(alphabet="0123456789.:abcdef", max_size=20) | st.ip_addresses().map(str)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dns=st.lists(DNS_LIKE, max_size=3), ips=st.lists(IP_LIKE, max_size=2))
def test_extra_sans_are_issued_exactly_or_refused(
    shared_ca: CertificateAuthority, dns: list[str], ips: list[str]
) -> None:
    import ipaddress

    from cryptography import x509

    before = len(shared_ca.records())
    try:
        svid = shared_ca.issue("sans", dns=dns, ips=ips)
    except errors.InvalidSAN:
        assert len(shared_ca.records()) == before
        return
    san = svid.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    got_dns = san.get_values_for_type(x509.DNSName)
    assert got_dns[0] == "sans.svc.mesh.internal"
    assert set(got_dns[1:]) <= {d.rstrip(".") for d in dns}
    assert all(re.fullmatch(r"[a-z0-9.-]+", d) for d in got_dns)
    assert set(san.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address(i) for i in ips}
    assert len(san.get_values_for_type(x509.UniformResourceIdentifier)) == 1


@pytest.fixture(scope="module")
def leaf_der(shared_ca: CertificateAuthority) -> bytes:
    from cryptography.hazmat.primitives import serialization

    svid = shared_ca.issue("fuzz", dns=["fuzz.example.org"], ips=["10.0.0.1"])
    return svid.certificate.public_bytes(serialization.Encoding.DER)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_inspect_survives_any_corruption_of_a_real_certificate(
    leaf_der: bytes, data: st.DataObject
) -> None:
    from ca.describe import render, summary, unreadable_part

    der = bytearray(leaf_der)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        i = data.draw(st.integers(min_value=0, max_value=len(der) - 1))
        der[i] = data.draw(st.integers(min_value=0, max_value=255))
    for cert in load_certificates(bytes(der)):
        if unreadable_part(cert) is not None:
            continue  # the CLI refuses it with one sentence (exit 2)
        info = summary(cert)
        assert isinstance(info["conforms"], bool)
        render(cert, 1, 1)
