"""Review: JSON and claim oddities, cache keying, and what error messages may contain."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.errors import CallRefused
from mesh.tokens.cache import VerifiedTokenCache

NOT_A_TIME = [True, False, 1.0, 1e10, "1700000000", None, [1], {"t": 1}, -1, 2**53, 2**64]


@pytest.mark.parametrize("claim", ["iat", "exp", "nbf"])
@pytest.mark.parametrize("value", NOT_A_TIME, ids=repr)
def test_time_claims_must_be_whole_numbers(shared_mesh: Any, claim: str, value: Any) -> None:
    """Regression guard: bool (True == 1), floats, strings, huge and negative ints are not
    NumericDates. Checked for each of iat, exp, nbf at an edge port."""
    m = shared_mesh
    verifier = m.verifier("gateway")
    assert verifier.verify(m.forge_user(m.user_claims()), None).user == "alice"  # control
    with pytest.raises(CallRefused) as info:
        verifier.verify(m.forge_user(m.user_claims(**{claim: value})), None)
    assert info.value.reason in {"CLAIM_INVALID", "TOKEN_EXPIRED", "TOKEN_NOT_YET_VALID"}
    if claim != "exp" or value not in (True, False, -1):
        assert info.value.reason == "CLAIM_INVALID"


@pytest.mark.parametrize("over", [
    {"aud": {"spiffe://mesh.internal/svc/gateway": 1}},
    {"aud": []},
    {"aud": [["spiffe://mesh.internal/svc/gateway"]]},
    {"aud": "spiffe://mesh.internal/svc/gatewayx"},
    {"aud": ["spiffe://mesh.internal/svc/gateway/"]},
    {"aud": ["SPIFFE://mesh.internal/svc/gateway"]},
    {"aud": ["spiffe://MESH.internal/svc/gateway"]},
    {"sub": {"id": "alice"}},
    {"sub": ""},
    {"iss": {"id": "spiffe://mesh.internal/svc/auth"}},
    {"iss": "spiffe://mesh.internal/svc/auth/"},
    {"iss": "spiffe://mesh.internal/svc/orders"},
    {"scope": ["orders:write"]},
    {"roles": "admin"},
    {"upstream": "a.b.c"},
], ids=repr)
def test_claim_type_and_spelling_confusion_rejected(shared_mesh: Any,
                                                    over: dict[str, Any]) -> None:
    """Regression guard: nested objects where strings are expected, and near-miss spellings of
    the audience or issuer, are refused (no normalisation, no substring match)."""
    m = shared_mesh
    with pytest.raises(CallRefused):
        m.verifier("gateway").verify(m.forge_user(m.user_claims(**over)), None)


@pytest.mark.parametrize("raw", [
    b'{"iss":"spiffe://mesh.internal/svc/auth","sub":"alice","aud":"spiffe://mesh.internal/svc/'
    b'gateway","aud":"spiffe://mesh.internal/svc/orders","iat":%d,"exp":%d,"jti":"j"}',
    b'{"iss":"spiffe://mesh.internal/svc/auth","sub":"alice","aud":"spiffe://mesh.internal/svc/'
    b'gateway","iat":%d,"exp":%d,"jti":"j","x":NaN}',
    b'{"iss":"spiffe://mesh.internal/svc/auth","sub":"alice","aud":"spiffe://mesh.internal/svc/'
    b'gateway","iat":%d,"exp":%d,"jti":"j","x":Infinity}',
    b'{"iss":"spiffe://mesh.internal/svc/auth","sub":"alice","aud":"spiffe://mesh.internal/svc/'
    b'gateway","iat":%d,"exp":%d,"jti":"j","x":1' + b"0" * 5000 + b"}",
    b'\xef\xbb\xbf{"iss":"spiffe://mesh.internal/svc/auth","sub":"alice","aud":"spiffe://mesh.'
    b'internal/svc/gateway","iat":%d,"exp":%d,"jti":"j"}',
], ids=["duplicate aud", "NaN", "Infinity", "5000-digit int", "BOM"])
def test_json_oddities_rejected(shared_mesh: Any, raw: bytes) -> None:
    m = shared_mesh
    c = m.user_claims()
    with pytest.raises(CallRefused) as info:
        m.verifier("gateway").verify(m.forge_user(raw % (c["iat"], c["exp"])), None)
    assert info.value.reason in {"TOKEN_MALFORMED", "TOKEN_TOO_LARGE"}


def test_shared_cache_keeps_audience_and_peer_checks(mesh_factory: Any) -> None:
    """Regression guard: a verified-token cache shared by two services (or a token seen first
    from its legitimate peer) never lets the cached token through for another audience or
    another peer."""
    m = mesh_factory()
    cache = VerifiedTokenCache()
    bundle = m.bundle()
    token = m.signers["gateway"].app_asserted_token(m.user_token("gateway"), m.id("orders"))
    orders = m.verifier("orders", bundle=bundle, cache=cache)
    payments = m.verifier("payments", bundle=bundle, cache=cache)
    gw, other = m.svids["gateway"].certificate, m.svids["payments"].certificate
    for _ in range(2):  # the second round runs from the cache
        assert orders.verify(token, gw).user == "alice"
    with pytest.raises(CallRefused) as info:
        payments.verify(token, gw)
    assert info.value.reason == "AUDIENCE_MISMATCH"
    with pytest.raises(CallRefused) as info:
        orders.verify(token, other)
    assert info.value.reason == "PEER_MISMATCH"
    with pytest.raises(CallRefused) as info:
        orders.verify(token, None)  # the same bytes at an edge port
    assert info.value.reason == "TYPE_MISMATCH"


def test_errors_never_echo_the_token(mesh_factory: Any) -> None:
    """Regression guard (spec 4): no rejection message contains any part of the token."""
    m = mesh_factory()
    user = m.user_token("gateway")
    wrapped = m.signers["gateway"].app_asserted_token(user, m.id("orders"))
    h, p, s = wrapped.split(".")
    attempts = [
        (m.verifier("payments"), wrapped, m.svids["gateway"].certificate),
        (m.verifier("orders"), wrapped, m.svids["orders"].certificate),
        (m.verifier("orders"), f"{h}.{p}.{s[::-1]}", m.svids["gateway"].certificate),
        (m.verifier("orders"), f"{h}.{p}x.{s}", m.svids["gateway"].certificate),
        (m.verifier("gateway"), wrapped, None),
        (m.verifier("orders"), user, m.svids["gateway"].certificate),
    ]
    for verifier, token, peer in attempts:
        with pytest.raises(CallRefused) as info:
            verifier.verify(token, peer)
        text = str(info.value) + repr(info.value.args)
        for part in (*token.split("."), *user.split(".")):
            assert part[:24] not in text


def test_peer_with_p384_key_is_refused_as_untrusted(mesh_factory: Any) -> None:
    """A peer certificate from another issuer (SPIRE, cert-manager; spec 1) may carry a P-384
    key. ``ChainVerifier._peer`` only checks ``isinstance(EllipticCurvePublicKey)`` and then
    builds ``jose.VerifyKey``, which raises ``SigningError`` (not a TokenError): the guard turns
    it into INTERNAL / VERIFIER_FAILED and logs a traceback, instead of UNAUTHENTICATED with
    the rule that failed."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    m = mesh_factory()
    key = ec.generate_private_key(ec.SECP384R1())
    now = datetime.now(UTC)
    issuer = m.ca.issuer_cert
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orders")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.UniformResourceIdentifier(str(m.id("orders"))),
            x509.DNSName("orders.svc.mesh.internal")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH,
                                              ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer.public_key()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(m.ca._issuer_key, hashes.SHA256())
    )
    bundle = m.bundle()
    assert bundle.verify_chain([cert]) == m.id("orders")  # a valid SVID of the trust domain
    with pytest.raises(CallRefused) as info:
        m.verifier("payments", bundle=bundle).verify("a.b.c", cert)
    assert info.value.reason == "CERT_UNTRUSTED"
