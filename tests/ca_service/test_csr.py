"""The CA service's CSR parser: property tests (hypothesis) and each rule with its control."""

from __future__ import annotations

import base64

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ca.service.csr import MAX_CSR_BYTES, CsrInvalid, parse_csr, spki
from mesh.errors import Reason

KEY = ec.generate_private_key(ec.SECP256R1())


SHA256 = hashes.SHA256()


def _csr(key, algorithm=SHA256, cn: str = "w") -> x509.CertificateSigningRequest:  # type: ignore[no-untyped-def]
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, algorithm)
    )


GOOD = _csr(KEY).public_bytes(serialization.Encoding.PEM)
GOOD_DER = _csr(KEY).public_bytes(serialization.Encoding.DER)


def _pem(der: bytes) -> bytes:
    body = base64.encodebytes(der)
    return b"-----BEGIN CERTIFICATE REQUEST-----\n" + body + b"-----END CERTIFICATE REQUEST-----\n"


def test_a_good_csr_gives_its_key() -> None:
    assert spki(parse_csr(GOOD)) == spki(KEY.public_key())
    for algorithm in (hashes.SHA384(), hashes.SHA512()):
        pem = _csr(KEY, algorithm).public_bytes(serialization.Encoding.PEM)
        assert spki(parse_csr(pem)) == spki(KEY.public_key())


@pytest.mark.parametrize(
    ("pem", "words"),
    [
        (GOOD + GOOD, "exactly one PEM"),
        (b"junk" + GOOD, "exactly one PEM"),
        (GOOD.replace(b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST"), "exactly one PEM"),
        (b"", "exactly one PEM"),
        (GOOD + b"\0" * MAX_CSR_BYTES, "larger than"),
        (_pem(b"\x30\x03\x02\x01\x00"), "not a readable"),
        (_csr(ec.generate_private_key(ec.SECP384R1()), SHA256)
         .public_bytes(serialization.Encoding.PEM), "not ECDSA P-256"),
        (_csr(KEY, hashes.SHA224()).public_bytes(serialization.Encoding.PEM),
         "SHA-256, SHA-384 or SHA-512"),
        (_csr(rsa.generate_private_key(public_exponent=65537, key_size=2048))
         .public_bytes(serialization.Encoding.PEM), "ECDSA"),
        (_csr(ed25519.Ed25519PrivateKey.generate(), None)
         .public_bytes(serialization.Encoding.PEM), "ECDSA"),
    ],
)
def test_each_rule_refuses_with_csr_invalid(pem: bytes, words: str) -> None:
    with pytest.raises(CsrInvalid, match=words) as caught:
        parse_csr(pem)
    assert caught.value.wire is Reason.CSR_INVALID
    assert "PRIVATE" not in str(caught.value)


def test_a_forged_signature_proves_nothing() -> None:
    # The CSR of KEY with its public key swapped for another's: the signature no longer holds.
    other = ec.generate_private_key(ec.SECP256R1())
    forged = GOOD_DER.replace(spki(KEY.public_key()), spki(other.public_key()))
    assert forged != GOOD_DER
    with pytest.raises(CsrInvalid, match="does not verify"):
        parse_csr(_pem(forged))
    assert parse_csr(_pem(GOOD_DER))  # control: the untouched DER


def test_refused_keys_are_refused_with_their_sentence() -> None:
    with pytest.raises(CsrInvalid, match="a new key please"):
        parse_csr(GOOD, refused_keys=[(KEY.public_key(), "a new key please")])
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    assert parse_csr(GOOD, refused_keys=[(other, "never")])  # control


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_are_a_refusal_never_a_crash(data: bytes) -> None:
    try:
        key = parse_csr(data)
    except CsrInvalid:
        return
    assert isinstance(key, ec.EllipticCurvePublicKey)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(GOOD_DER) - 1), st.integers(1, 255))
def test_any_flipped_byte_is_refused_or_yields_the_same_key(at: int, mask: int) -> None:
    """Flip bits anywhere in a good CSR's DER: it is refused, or (where DER leaves room, e.g.
    an ignored part) it still yields the key that signed it, never another key."""
    mutated = bytearray(GOOD_DER)
    mutated[at] ^= mask
    try:
        key = parse_csr(_pem(bytes(mutated)))
    except CsrInvalid:
        return
    assert spki(key) == spki(KEY.public_key())


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=64), st.integers(0, len(GOOD_DER)))
def test_inserted_bytes_are_refused_or_yield_the_same_key(junk: bytes, at: int) -> None:
    mutated = GOOD_DER[:at] + junk + GOOD_DER[at:]
    try:
        key = parse_csr(_pem(mutated))
    except CsrInvalid:
        return
    assert spki(key) == spki(KEY.public_key())


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_pem_shaped_text_is_a_refusal_never_a_crash(body: str) -> None:
    pem = ("-----BEGIN CERTIFICATE REQUEST-----\n" + body + "\n-----END CERTIFICATE REQUEST-----"
           ).encode("utf-8", "surrogatepass")
    with pytest.raises(CsrInvalid):
        parse_csr(pem)
