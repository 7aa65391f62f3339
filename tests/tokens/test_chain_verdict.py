"""The cached chain verdict: a wrapped token verified with everything it wraps is not re-checked
below it, but only while the verdict still holds for THIS verifier, now.

Every test compares with an uncached verifier on the same bundle and clock: the cache may save
work, never change an outcome (result, or exception type, hop and message).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.errors import CallRefused
from mesh.identity.spiffeid import SpiffeId, TrustDomain
from mesh.tokens import (
    BundleKey,
    ChainVerifier,
    FileBundleSource,
    MaxLifetime,
    TokenError,
    TokenSigner,
    VerifiedChain,
    VerifiedTokenCache,
    VerifyLimits,
    jose,
)
from mesh.tokens import errors as E


class CountingBundle:
    """A BundleSource that records which kids a verifier looked up (to see the verdict used)."""

    def __init__(self, inner: FileBundleSource) -> None:
        self.inner = inner
        self.looked_up: list[str] = []

    @property
    def trust_domain(self) -> TrustDomain:
        return self.inner.trust_domain

    @property
    def anchors(self) -> tuple[x509.Certificate, ...]:
        return self.inner.anchors

    @property
    def generation(self) -> int:
        return self.inner.generation

    def key_for(self, kid: str) -> BundleKey | None:
        self.looked_up.append(kid)
        return self.inner.key_for(kid)

    def keys(self) -> Mapping[str, BundleKey]:
        return self.inner.keys()

    def is_revoked(self, cert: x509.Certificate) -> bool:
        return self.inner.is_revoked(cert)

    def verify_chain(self, chain: Sequence[x509.Certificate]) -> SpiffeId:
        return self.inner.verify_chain(chain)

    def rejection_reason(self, kid: str) -> str | None:
        return self.inner.rejection_reason(kid)


def _verifier(mesh: Any, name: str, bundle: Any, cache: VerifiedTokenCache | None,
              **limits: Any) -> ChainVerifier:
    return ChainVerifier(mesh.id(name), bundle, limits=VerifyLimits(**limits), cache=cache,
                         clock=mesh.clock)


def _outcome(verifier: ChainVerifier, token: str, peer: Any) -> Any:
    try:
        return verifier.verify(token, peer)
    except CallRefused as err:
        return (type(err), err.reason, err.hop, str(err))


def _setup(mesh: Any) -> tuple[CountingBundle, VerifiedTokenCache, str]:
    """A bundle, a cache and the token orders sends to payments (user, gateway, orders), whose
    subchain (gateway's wrap and the user token) gets a verdict when payments verifies it."""
    bundle = CountingBundle(mesh.bundle(check_interval=3600))
    cache = VerifiedTokenCache(clock=mesh.clock)
    inner = mesh.chain("gateway", "orders")
    first = mesh.wrap(inner, "orders", "payments")
    _verifier(mesh, "payments", bundle, cache).verify(first, mesh.cert("orders"))
    return bundle, cache, inner


def test_a_verdict_skips_the_layers_below_and_changes_nothing(mesh: Any) -> None:
    bundle, cache, inner = _setup(mesh)
    outer = mesh.wrap(inner, "orders", "payments")  # a new outermost token, as on every call
    fresh = _verifier(mesh, "payments", bundle, cache)  # empty key memo, shared cache
    bundle.looked_up.clear()
    cached = fresh.verify(outer, mesh.cert("orders"))
    assert bundle.looked_up == []  # no inner key was looked at: the verdict vouched for them
    uncached = _verifier(mesh, "payments", bundle, None).verify(outer, mesh.cert("orders"))
    assert len(bundle.looked_up) == 2  # the control: without the cache both inner keys are
    assert cached == uncached
    assert cached.chain == (mesh.id("gateway"), mesh.id("orders"))
    assert [h.iss for h in cached.hops] == [mesh.id(n) for n in ("orders", "gateway", "auth")]
    # one layer further down the mesh: payments wraps it for inventory; the verdict of the
    # subchain orders sent is built on the one below it
    deeper = mesh.wrap(outer, "payments", "inventory")
    inventory = _verifier(mesh, "inventory", bundle, cache)
    first = inventory.verify(deeper, mesh.cert("payments"))
    again = mesh.wrap(outer, "payments", "inventory")
    bundle.looked_up.clear()
    assert _verifier(mesh, "inventory", bundle, cache).verify(again, mesh.cert("payments")) == (
        _verifier(mesh, "inventory", bundle, None).verify(again, mesh.cert("payments"))
    )
    assert len(bundle.looked_up) == 3  # only by the uncached control
    assert first.user == "alice" and first.chain[-1] == mesh.id("payments")


def test_a_key_removed_from_the_bundle_ends_the_verdict(mesh: Any) -> None:
    bundle, cache, inner = _setup(mesh)
    v = _verifier(mesh, "payments", bundle, cache)
    mesh.ca.revoke(name="auth")
    # the bundle has not looked at the files yet: same generation, the verdict still holds
    assert v.verify(mesh.wrap(inner, "orders", "payments"), mesh.cert("orders")).user == "alice"
    assert bundle.inner.refresh()
    outer = mesh.wrap(inner, "orders", "payments")
    with pytest.raises(E.KeyUnknown) as info:
        v.verify(outer, mesh.cert("orders"))
    assert info.value.hop == 2  # the user token, below hop 1 (gateway's wrap), in the subchain
    assert _outcome(v, outer, mesh.cert("orders")) == _outcome(
        _verifier(mesh, "payments", bundle, None), outer, mesh.cert("orders"))


def test_a_revocation_in_the_crl_alone_ends_the_verdict(mesh: Any) -> None:
    """The key stays in the bundle; only the CRL changes: the generation still moves."""
    bundle, cache, inner = _setup(mesh)
    v = _verifier(mesh, "payments", bundle, cache)
    old_bundle = mesh.ca.bundle_path.read_bytes()
    mesh.ca.revoke(name="gateway")
    tmp = mesh.ca.bundle_path.with_name("bundle.test-tmp")
    tmp.write_bytes(old_bundle)  # the old bundle (gateway's key still in it), the new CRL
    os.replace(tmp, mesh.ca.bundle_path)
    assert bundle.inner.refresh()
    assert bundle.inner.key_for(mesh.kid("gateway")) is not None
    outer = mesh.wrap(inner, "orders", "payments")
    with pytest.raises(E.CertificateRevoked) as info:
        v.verify(outer, mesh.cert("orders"))
    assert info.value.hop == 1  # gateway's wrap, the top of the cached subchain
    assert _outcome(v, outer, mesh.cert("orders")) == _outcome(
        _verifier(mesh, "payments", bundle, None), outer, mesh.cert("orders"))


def test_a_verdict_from_another_bundle_with_the_same_generation_is_not_used(
    mesh: Any, ca_factory: Any
) -> None:
    """Another CA of the same trust domain: its bundle source is at generation 1 too. Its
    verifier shares the cache but never saw our keys: the subchain is checked, and refused."""
    bundle, cache, inner = _setup(mesh)
    other_ca = ca_factory()
    svid = other_ca.issue("orders")  # the same SPIFFE ID as our orders, another CA
    other_bundle = FileBundleSource(other_ca.bundle_path, other_ca.crl_path)
    assert other_bundle.generation == bundle.generation
    signer = TokenSigner(svid.private_key, svid.chain, clock=mesh.clock)
    outer = signer.app_asserted_token(inner, mesh.id("payments"))
    other = _verifier(mesh, "payments", other_bundle, cache)
    with pytest.raises(E.KeyUnknown) as info:
        other.verify(outer, svid.certificate)
    assert info.value.hop == 1
    assert _outcome(other, outer, svid.certificate) == _outcome(
        _verifier(mesh, "payments", other_bundle, None), outer, svid.certificate)


def test_inner_layers_past_their_time_are_refused_despite_the_verdict(mesh: Any) -> None:
    bundle, cache, inner = _setup(mesh)
    v = _verifier(mesh, "payments", bundle, cache)
    plain = _verifier(mesh, "payments", bundle, None)
    gateway_exp = jose.parse(inner).claims["exp"]
    mesh.clock.now += 60 + 30  # gateway's wrap (60 s) is past exp + leeway
    # a wrap that does not outlive it (as the signer clamps it) has expired too: exp ordering
    # means an inner layer can never be the first one found expired
    clamped = mesh.forge_signed("app-asserted+jwt", "orders", "payments", upstream=inner,
                                iat=gateway_exp - 60, exp=gateway_exp)
    with pytest.raises(E.TokenExpired) as info:
        v.verify(clamped, mesh.cert("orders"))
    assert info.value.hop == 0
    # a forged wrap that is itself still valid outlives the expired token it wraps
    extended = mesh.forge_signed("app-asserted+jwt", "orders", "payments", upstream=inner,
                                 exp=int(mesh.clock.now) + 60)
    with pytest.raises(E.ExpiryExtended) as info:
        v.verify(extended, mesh.cert("orders"))
    assert info.value.hop == 0
    for token in (clamped, extended):
        assert _outcome(v, token, mesh.cert("orders")) == _outcome(
            plain, token, mesh.cert("orders"))


def test_an_inner_token_issued_in_the_future_of_a_clock_set_back(mesh: Any) -> None:
    bundle, cache, inner = _setup(mesh)
    v = _verifier(mesh, "payments", bundle, cache, leeway=5)
    mesh.clock.now -= 10  # the cached layers' iat are now 10 s in the future (leeway 5 s)
    outer = mesh.wrap(inner, "orders", "payments")
    with pytest.raises(E.TokenNotYetValid) as info:
        v.verify(outer, mesh.cert("orders"))
    assert info.value.hop == 1
    assert _outcome(v, outer, mesh.cert("orders")) == _outcome(
        _verifier(mesh, "payments", bundle, None, leeway=5), outer, mesh.cert("orders"))


def test_an_inner_signing_certificate_past_its_validity(mesh: Any) -> None:
    """Tokens valid for two days, signed by certificates of one (auth, gateway) and three
    (ledger, the peer) days: a day later the cached subchain's signers are no longer valid.
    Our signer caps exp at its certificate's end, so the inner tokens are forged (another
    issuer's signer need not), and the verifiers accept such lifetimes."""
    ledger = mesh.ca.issue("ledger", ttl=timedelta(days=3))
    ledger_signer = TokenSigner(ledger.private_key, ledger.chain, clock=mesh.clock)
    two_days = 2 * 86_400
    exp = int(mesh.clock.now) + two_days
    user = mesh.forge_signed("user+jwt", "auth", [str(mesh.id("gateway"))], exp=exp)
    inner = mesh.forge_signed("app-asserted+jwt", "gateway", "ledger", exp=exp, upstream=user)
    bundle = CountingBundle(mesh.bundle(check_interval=3600))
    cache = VerifiedTokenCache(clock=mesh.clock)
    long = MaxLifetime(user=two_days, app_asserted=two_days)
    v = _verifier(mesh, "payments", bundle, cache, max_lifetime=long)
    v.verify(ledger_signer.app_asserted_token(inner, mesh.id("payments"), ttl=two_days),
             ledger.certificate)
    mesh.clock.now += 86_400 + 120
    outer = ledger_signer.app_asserted_token(inner, mesh.id("payments"), ttl=two_days)
    with pytest.raises(E.CertificateUntrusted) as info:
        v.verify(outer, ledger.certificate)
    assert info.value.hop == 1
    assert _outcome(v, outer, ledger.certificate) == _outcome(
        _verifier(mesh, "payments", bundle, None, max_lifetime=long), outer, ledger.certificate)


def test_a_smaller_depth_limit_sharing_the_cache(mesh: Any) -> None:
    bundle = CountingBundle(mesh.bundle(check_interval=3600))
    cache = VerifiedTokenCache(clock=mesh.clock)
    inner = mesh.chain("gateway", "orders", "payments", "inventory")  # user + 3 wraps
    _verifier(mesh, "gateway", bundle, cache, max_depth=4).verify(
        mesh.wrap(inner, "inventory", "gateway"), mesh.cert("inventory"))
    outer = mesh.wrap(inner, "inventory", "gateway")  # 4 wraps
    strict = _verifier(mesh, "gateway", bundle, cache, max_depth=3)
    with pytest.raises(E.TokenTooDeep) as info:
        strict.verify(outer, mesh.cert("inventory"))
    assert info.value.hop == 3
    assert _outcome(strict, outer, mesh.cert("inventory")) == _outcome(
        _verifier(mesh, "gateway", bundle, None, max_depth=3), outer, mesh.cert("inventory"))
    # the control: the verifier it was cached under still accepts it, from the verdict
    bundle.looked_up.clear()
    loose = _verifier(mesh, "gateway", bundle, cache, max_depth=4)
    assert loose.verify(outer, mesh.cert("inventory")).user == "alice"
    assert bundle.looked_up == []


def test_a_verifier_that_does_not_trust_the_user_token_issuer(mesh: Any) -> None:
    bundle, cache, inner = _setup(mesh)
    outer = mesh.wrap(inner, "orders", "payments")
    picky = _verifier(mesh, "payments", bundle, cache,
                      trusted_user_issuers=(mesh.id("gateway"),))
    with pytest.raises(E.IssuerUntrusted) as info:
        picky.verify(outer, mesh.cert("orders"))
    assert info.value.hop == 2
    assert _outcome(picky, outer, mesh.cert("orders")) == _outcome(
        _verifier(mesh, "payments", bundle, None, trusted_user_issuers=(mesh.id("gateway"),)),
        outer, mesh.cert("orders"))


@pytest.mark.parametrize(
    ("override", "error", "hop"),
    [
        ({"sub": "mallory"}, E.SubjectMismatch, 0),
        ({"exp": "later"}, E.ExpiryExtended, 0),
        ({"by": "inventory"}, E.ChainBroken, 1),
    ],
)
def test_a_cached_subchain_rewrapped_badly(
    mesh: Any, override: dict[str, Any], error: type[TokenError], hop: int
) -> None:
    """The subchain below hop 1 is vouched for; how hop 1 relates to its new wrapper is not."""
    bundle, cache, inner = _setup(mesh)
    by = override.get("by", "orders")
    claims: dict[str, Any] = {"upstream": inner}
    if "sub" in override:
        claims["sub"] = override["sub"]
    if "exp" in override:
        claims["exp"] = int(mesh.clock.now) + 61  # one second past gateway's wrap
    outer = mesh.forge_signed("app-asserted+jwt", by, "payments", **claims)
    v = _verifier(mesh, "payments", bundle, cache)
    with pytest.raises(error) as info:
        v.verify(outer, mesh.cert(by))
    assert info.value.hop == hop
    assert _outcome(v, outer, mesh.cert(by)) == _outcome(
        _verifier(mesh, "payments", bundle, None), outer, mesh.cert(by))
    # the control: the same forge without the change is accepted, from the verdict
    fine = mesh.forge_signed("app-asserted+jwt", "orders", "payments", upstream=inner)
    bundle.looked_up.clear()
    assert v.verify(fine, mesh.cert("orders")).user == "alice"
    assert bundle.looked_up == []


# --- property: the cache never changes an outcome ------------------------------------------------

HOPS = ["gateway", "orders", "payments", "inventory"]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
          deadline=None, max_examples=100)
@given(
    path=st.lists(st.sampled_from(HOPS), min_size=1, max_size=6),
    user_ttl=st.integers(min_value=30, max_value=900),
    ttls=st.lists(st.integers(min_value=1, max_value=120), min_size=6, max_size=6),
    sub=st.sampled_from(["alice", "bob"]),
    roles=st.lists(st.sampled_from(["customer", "beta", "admin"]), max_size=2),
    # weighted towards what a verdict is used for, so that most examples exercise it
    later=st.integers(min_value=0, max_value=20) | st.integers(min_value=-90, max_value=400),
    tamper=st.sampled_from([None, None, None, "sub", "exp", "aud", "by"]),
    max_depth=st.sampled_from([4, 4, 4, 0, 1, 2, 3, 5]),
    leeway=st.sampled_from([0, 5, 30]),
    trust_auth=st.sampled_from([True, True, True, False]),
    lifetimes=st.sampled_from([None, None, (600, 60), (300, 60)]),
)
def test_cached_and_uncached_verifiers_agree(
    mesh: Any, path: list[str], user_ttl: int, ttls: list[int], sub: str, roles: list[str],
    later: int, tamper: str | None, max_depth: int, leeway: int, trust_auth: bool,
    lifetimes: tuple[int, int] | None,
) -> None:
    """A random chain is verified once (warming a shared cache), the clock moves, a new outer
    token (maybe tampered) wraps the same inner chain, and a cached verifier with random limits
    must reach exactly the uncached verifier's outcome."""
    bundle = mesh.bundle(check_interval=3600)
    cache = VerifiedTokenCache(clock=mesh.clock)
    start = mesh.clock.now
    try:
        inner = mesh.signers["auth"].user_token(sub, [mesh.id(path[0])], roles=roles,
                                                ttl=user_ttl)
        for (by, to), ttl in zip(itertools.pairwise(path[:-1]), ttls, strict=False):
            inner = mesh.wrap(inner, by, to, ttl=ttl)
        last = path[-2] if len(path) > 1 else None
        callee = path[-1]
        if last is not None:
            warm = mesh.wrap(inner, last, callee, ttl=ttls[-1])
            _outcome(_verifier(mesh, callee, bundle, cache), warm, mesh.cert(last))
        mesh.clock.now += later
        if last is None:
            outer, peer = inner, None
        else:
            outer, peer = _rewrap(mesh, inner, last, callee, ttls[-1], sub, tamper)
        limits: dict[str, Any] = {"max_depth": max_depth, "leeway": leeway}
        if not trust_auth:
            limits["trusted_user_issuers"] = (mesh.id("gateway"),)
        if lifetimes is not None:  # stricter than the verifier that warmed the cache
            limits["max_lifetime"] = MaxLifetime(user=lifetimes[0], app_asserted=lifetimes[1])
        cached = _verifier(mesh, callee, bundle, cache, **limits)
        plain = _verifier(mesh, callee, bundle, None, **limits)
        first, second = _outcome(cached, outer, peer), _outcome(cached, outer, peer)
        expected = _outcome(plain, outer, peer)
        assert first == expected
        assert second == expected  # and again, now with the outer token cached too
        if isinstance(expected, VerifiedChain):
            assert expected.hops == first.hops and expected.user_claims == first.user_claims
    finally:
        mesh.clock.now = start


def _rewrap(mesh: Any, inner: str, by: str, to: str, ttl: int, sub: str,
            tamper: str | None) -> tuple[str, Any]:
    """A new outer token around ``inner``, as the signer makes it (exp clamped) unless
    ``tamper`` says what to get wrong; forged so that a wrap past expiry can still be made."""
    now = int(mesh.clock.now)
    claims: dict[str, Any] = {
        "upstream": inner, "sub": sub, "iat": now,
        "exp": min(now + ttl, jose.parse(inner).claims["exp"]),
    }
    if tamper == "sub":
        claims["sub"] = "mallory"
    elif tamper == "exp":
        claims["exp"] = now + 100_000
    elif tamper == "aud":
        claims["aud"] = str(mesh.id("auth"))
    elif tamper == "by":
        by = "auth"
    return mesh.forge_signed("app-asserted+jwt", by, to, **claims), mesh.cert(by)
