"""Keys and lifetimes: the curve ES256 needs, tokens that would outlive their signing
certificate, and the verifier's maximum token lifetime per kind (VerifyLimits.max_lifetime).

Each check has its control: the same thing just inside the rule passes.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.identity.certs import thumbprint
from mesh.tokens import FileBundleSource, MaxLifetime, SigningError, TokenSigner
from mesh.tokens import errors as E
from mesh.tokens.cache import VerifiedTokenCache

UNAUTH = grpc.StatusCode.UNAUTHENTICATED


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


# --- no token outlives its signing certificate (review finding 4) -------------------------------


def test_the_signer_caps_exp_at_its_certificate(mesh: Any) -> None:
    short = mesh.ca.issue("ledger", ttl=timedelta(minutes=5))
    signer = TokenSigner(short.private_key, short.chain, clock=mesh.clock)
    end = int(short.not_after.timestamp())
    now = int(mesh.clock.now)
    assert now + 60 < end < now + 900
    user = signer.user_token("alice", [mesh.id("gateway")], ttl=900)
    assert _claims(user)["exp"] == end
    assert _claims(signer.app_token(mesh.id("orders"), ttl=900))["exp"] == end
    upstream = mesh.user_token("ledger", ttl=900)
    assert _claims(signer.app_asserted_token(upstream, mesh.id("orders"), ttl=900))["exp"] == end
    # control: a ttl inside the certificate's life is kept
    assert _claims(signer.user_token("alice", [mesh.id("gateway")], ttl=60))["exp"] == now + 60
    mesh.clock.now = end
    with pytest.raises(SigningError, match="expired"):
        signer.app_token(mesh.id("orders"))


def _claims(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return claims


@pytest.mark.parametrize("cached", [False, True])
def test_a_token_outliving_its_signing_certificate_is_refused(mesh: Any, cached: bool) -> None:
    """Another issuer's signer might not cap exp: the verifier checks the certificate's validity
    on every call, cache or not (edge port, and an inner hop under a cached verdict)."""
    short = mesh.ca.issue("ledger", ttl=timedelta(minutes=5))
    end = int(short.not_after.timestamp())
    now = int(mesh.clock.now)
    header = {"alg": "ES256", "kid": short.thumbprint, "typ": "user+jwt"}
    user = mesh.forge(header, mesh.claims("user+jwt", "ledger", [str(mesh.id("gateway"))],
                                          exp=now + 900), short.private_key)
    kw: dict[str, Any] = {"trusted_user_issuers": (mesh.id("ledger"),)}
    edge = mesh.cached_verifier("gateway", **kw) if cached else mesh.verifier("gateway", **kw)
    inner = mesh.wrap(user, "gateway", "orders", ttl=600)
    mid = mesh.verifier("payments", cache=VerifiedTokenCache(clock=mesh.clock) if cached
                        else None, **kw)
    for _ in range(2):  # controls: within the certificate's life (the second call cached)
        assert edge.verify(user, None).user == "alice"
        mid.verify(mesh.wrap(inner, "orders", "payments"), mesh.cert("orders"))
    mesh.clock.now = end + 1  # every token is still valid; the signing certificate is not
    assert _claims(user)["exp"] > mesh.clock.now + 60
    with pytest.raises(E.CertificateUntrusted) as info:
        edge.verify(user, None)
    assert info.value.hop == 0 and "not valid now" in str(info.value)
    with pytest.raises(E.CertificateUntrusted) as info:
        mid.verify(mesh.wrap(inner, "orders", "payments"), mesh.cert("orders"))
    assert info.value.hop == 2


# --- maximum lifetime per kind (review finding 5) ------------------------------------------------


def _lifetime_error(verifier: Any, token: str, peer: Any, hop: int) -> E.TokenError:
    with pytest.raises(E.TokenLifetimeTooLong) as info:
        verifier.verify(token, peer)
    err = info.value
    assert err.reason == "TOKEN_LIFETIME_TOO_LONG" and err.status == UNAUTH
    assert err.hop == hop
    assert "max_lifetime" in str(err)
    return err


def test_default_lifetimes_per_kind(mesh: Any) -> None:
    now = int(mesh.clock.now)
    gw = mesh.cert("gateway")
    edge, orders = mesh.verifier("gateway"), mesh.verifier("orders")
    # user tokens: 1 h
    assert edge.verify(mesh.user_token(ttl=3600), None).user == "alice"
    err = _lifetime_error(edge, mesh.user_token(ttl=3601), None, 0)
    assert "3601 s" in str(err) and "3600 s for user tokens" in str(err)
    # app tokens: 10 min
    orders.verify(mesh.signers["gateway"].app_token(mesh.id("orders"), ttl=600), gw)
    _lifetime_error(orders, mesh.signers["gateway"].app_token(mesh.id("orders"), ttl=601), gw, 0)
    # app-asserted tokens: 10 min, outermost and inner
    user = mesh.user_token(ttl=3000)
    orders.verify(mesh.wrap(user, "gateway", "orders", ttl=600), gw)
    _lifetime_error(orders, mesh.wrap(user, "gateway", "orders", ttl=601), gw, 0)
    long_inner = mesh.wrap(user, "gateway", "orders", ttl=601)
    outer = mesh.wrap(long_inner, "orders", "payments")
    _lifetime_error(mesh.verifier("payments"), outer, mesh.cert("orders"), 1)
    # iat/exp are what count: a token issued long ago and still unexpired is measured the same
    old = mesh.forge_signed("app+jwt", "gateway", "orders", iat=now - 30, exp=now + 571)
    _lifetime_error(orders, old, gw, 0)


def test_lifetimes_are_configurable(mesh: Any) -> None:
    token = mesh.user_token(ttl=7200)
    _lifetime_error(mesh.verifier("gateway"), token, None, 0)
    v = mesh.verifier("gateway", max_lifetime=MaxLifetime(user=7200))
    assert v.verify(token, None).user == "alice"
    strict = mesh.verifier("gateway", max_lifetime=MaxLifetime(user=60))
    _lifetime_error(strict, mesh.user_token(ttl=61), None, 0)
    for bad in ({"user": 0}, {"app": -1}, {"app_asserted": 1.5}):
        with pytest.raises(ValueError, match="positive"):
            MaxLifetime(**bad)


def test_a_verdict_from_a_more_lenient_verifier_is_not_used(mesh: Any) -> None:
    """Two verifiers share a cache: the lenient one's chain verdict must not carry a long user
    token or wrap past the strict one's limits; it then fails exactly as uncached."""
    cache = VerifiedTokenCache(clock=mesh.clock)
    bundle = mesh.bundle(check_interval=3600)
    lenient = MaxLifetime(user=7200, app_asserted=3600)
    user = mesh.user_token(ttl=5000)
    inner = mesh.wrap(user, "gateway", "orders", ttl=3000)
    orders = mesh.cert("orders")
    for limits, hop in ((MaxLifetime(app_asserted=3600), 2), (MaxLifetime(user=7200), 1)):
        warm = mesh.verifier("payments", bundle=bundle, cache=cache, max_lifetime=lenient)
        warm.verify(mesh.wrap(inner, "orders", "payments"), orders)
        outer = mesh.wrap(inner, "orders", "payments")
        strict = mesh.verifier("payments", bundle=bundle, cache=cache, max_lifetime=limits)
        plain = mesh.verifier("payments", bundle=bundle, max_lifetime=limits)
        errs = [_lifetime_error(v, outer, orders, hop) for v in (strict, plain)]
        assert str(errs[0]) == str(errs[1])
        # control: the lenient verifier still uses its verdict
        assert warm.verify(outer, orders).user == "alice"


def test_every_reason_code_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "tokens.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", doc, re.MULTILINE))
    raised = {r for r in E.all_reasons() if r not in ("TOKEN_INVALID", "TOKEN_TIME_INVALID")}
    assert raised <= documented, raised - documented
