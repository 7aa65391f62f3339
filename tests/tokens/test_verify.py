"""What a successful verification returns, and the verified-token cache's semantics."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from mesh.tokens import VerifiedTokenCache
from mesh.tokens import errors as E


def test_service_call_with_an_app_token(mesh: Any) -> None:
    token = mesh.signers["gateway"].app_token(mesh.id("orders"))
    result = mesh.verifier("orders").verify(token, mesh.cert("gateway"))
    assert result.kind == "service"
    assert result.peer == mesh.id("gateway")
    assert result.user is None and dict(result.user_claims) == {}
    assert result.chain == (mesh.id("gateway"),)
    assert result.expires_at == int(mesh.clock.now) + 60
    assert result.token == token
    assert token not in repr(result)
    assert [h.typ for h in result.hops] == ["app+jwt"]


def test_user_call_through_three_services(mesh: Any) -> None:
    user = mesh.signers["auth"].user_token(
        "alice", [mesh.id("gateway")], name="Alice", scope="orders:read orders:write",
        roles=["customer", "beta"], ttl=900,
    )
    token = mesh.wrap(mesh.wrap(mesh.wrap(user, "gateway", "orders"), "orders", "payments"),
                      "payments", "inventory")
    result = mesh.verifier("inventory").verify(token, mesh.cert("payments"))
    assert result.kind == "user"
    assert result.user == "alice"
    assert result.peer == mesh.id("payments")
    assert result.chain == (mesh.id("gateway"), mesh.id("orders"), mesh.id("payments"))
    assert result.user_claims["name"] == "Alice"
    assert result.user_claims["scope"] == "orders:read orders:write"
    assert result.user_claims["roles"] == ("customer", "beta")
    assert result.user_claims["iss"] == str(mesh.id("auth"))
    assert result.expires_at == int(mesh.clock.now) + 60
    assert [h.typ for h in result.hops] == ["app-asserted+jwt"] * 3 + ["user+jwt"]
    assert [h.iss for h in result.hops] == [mesh.id(n) for n in
                                            ("payments", "orders", "gateway", "auth")]
    assert result.hops[-1].kid == mesh.kid("auth")
    with pytest.raises(TypeError):
        result.user_claims["name"] = "Mallory"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.user = "mallory"  # type: ignore[misc]


def test_edge_port_accepts_a_user_token_for_it(mesh: Any) -> None:
    token = mesh.signers["auth"].user_token(
        "bob", [mesh.id("gateway"), mesh.id("orders")], ttl=120
    )
    for name in ("gateway", "orders"):
        result = mesh.verifier(name).verify(token, None)
        assert (result.kind, result.user, result.peer, result.chain) == ("user", "bob", None, ())
        assert result.expires_at == int(mesh.clock.now) + 120


def test_errors_never_contain_the_token(mesh: Any) -> None:
    token = mesh.chain("gateway", "orders")
    for verifier, peer in [
        (mesh.verifier("payments"), mesh.cert("gateway")),
        (mesh.verifier("orders"), mesh.cert("payments")),
        (mesh.verifier("orders"), None),
    ]:
        with pytest.raises(E.TokenError) as info:
            verifier.verify(token, peer)
        text = str(info.value) + repr(info.value)
        for part in token.split("."):
            assert part[:20] not in text


# --- the verified-token cache --------------------------------------------------------------------


def test_cache_serves_repeats_and_stores_only_successes(mesh: Any) -> None:
    v = mesh.cached_verifier("payments")
    cache = v.cache
    token = mesh.chain("gateway", "orders", "payments")
    with pytest.raises(E.PeerMismatch):
        v.verify(token, mesh.cert("gateway"))
    assert len(cache) == 0  # a failure leaves nothing behind
    first = v.verify(token, mesh.cert("orders"))
    assert len(cache) == 3
    hits = cache.hits
    second = v.verify(token, mesh.cert("orders"))
    assert cache.hits == hits + 1  # the outermost hit; the layers below are linked from it
    assert first == second


def test_cached_outer_token_is_rebound_to_the_peer_every_call(mesh: Any) -> None:
    v = mesh.cached_verifier("payments")
    token = mesh.chain("gateway", "orders", "payments")
    v.verify(token, mesh.cert("orders"))
    with pytest.raises(E.PeerMismatch):
        v.verify(token, mesh.cert("gateway"))
    # a cache shared with another service does not make the token addressed to it
    other = mesh.verifier("inventory", cache=v.cache)
    with pytest.raises(E.AudienceMismatch):
        other.verify(token, mesh.cert("orders"))


def test_cached_inner_token_is_rechecked_in_each_new_context(mesh: Any) -> None:
    """A user token verified as gateway's upstream is cached; reused elsewhere, every relation
    to its new wrapper is still checked."""
    v = mesh.cached_verifier("orders")
    user = mesh.user_token("gateway", sub="alice", ttl=120)
    v.verify(mesh.wrap(user, "gateway", "orders"), mesh.cert("gateway"))
    assert v.cache.get(_digest(user)) is not None
    # wrapped by a service it was not addressed to
    spliced = mesh.forge_signed("app-asserted+jwt", "inventory", "orders", upstream=user)
    with pytest.raises(E.ChainBroken) as info:
        v.verify(spliced, mesh.cert("inventory"))
    assert info.value.hop == 1
    # wrapped with another subject
    renamed = mesh.forge_signed("app-asserted+jwt", "gateway", "orders", upstream=user,
                                sub="mallory")
    with pytest.raises(E.SubjectMismatch):
        v.verify(renamed, mesh.cert("gateway"))
    # wrapped by a token that outlives it
    longer = mesh.forge_signed("app-asserted+jwt", "gateway", "orders", upstream=user,
                               exp=int(mesh.clock.now) + 121)
    with pytest.raises(E.ExpiryExtended):
        v.verify(longer, mesh.cert("gateway"))
    # and to a service that does not trust its issuer, it is not a user token at all
    picky = mesh.verifier("orders", cache=v.cache, trusted_user_issuers=(mesh.id("gateway"),))
    with pytest.raises(E.IssuerUntrusted):
        picky.verify(mesh.wrap(user, "gateway", "orders"), mesh.cert("gateway"))


def test_cached_chain_expires_with_the_token(mesh: Any) -> None:
    v = mesh.cached_verifier("orders")
    token = mesh.chain("gateway", "orders")
    v.verify(token, mesh.cert("gateway"))
    mesh.clock.now += 60 + 30
    with pytest.raises(E.TokenExpired):
        v.verify(token, mesh.cert("gateway"))
    assert v.cache.get(_digest(token)) is None


def test_cached_chain_fails_once_a_key_leaves_the_bundle(mesh: Any) -> None:
    bundle = mesh.bundle(check_interval=3600)
    v = mesh.cached_verifier("payments", bundle=bundle)
    token = mesh.chain("gateway", "orders", "payments")
    v.verify(token, mesh.cert("orders"))
    mesh.ca.revoke(name="gateway")
    v.verify(token, mesh.cert("orders"))  # the bundle has not looked at the files yet
    assert bundle.refresh()
    with pytest.raises(E.KeyUnknown) as info:
        v.verify(token, mesh.cert("orders"))
    assert info.value.hop == 1


def test_cache_is_bounded(mesh: Any) -> None:
    cache = VerifiedTokenCache(max_entries=2, clock=mesh.clock)
    v = mesh.verifier("orders", cache=cache)
    for _ in range(3):
        v.verify(mesh.chain("gateway", "orders"), mesh.cert("gateway"))
        assert len(cache) <= 2
    with pytest.raises(ValueError, match="at least 1"):
        VerifiedTokenCache(max_entries=0)


def test_no_cache(mesh: Any) -> None:
    v = mesh.verifier("orders", cache=None)
    assert v.cache is None
    token = mesh.chain("gateway", "orders")
    assert v.verify(token, mesh.cert("gateway")) == v.verify(token, mesh.cert("gateway"))


def _digest(token: str) -> bytes:
    import hashlib

    return hashlib.sha256(token.encode()).digest()


def test_concurrent_verification_while_the_bundle_changes(mesh: Any) -> None:
    """Threads share one verifier and cache while the CA publishes new bundles underneath."""
    import threading

    bundle = mesh.bundle(check_interval=0)
    v = mesh.verifier("payments", bundle=bundle, cache=VerifiedTokenCache(clock=mesh.clock))
    tokens = [mesh.chain("gateway", "orders", "payments") for _ in range(8)]
    bad = mesh.chain("gateway", "orders", "inventory")
    errors: list[BaseException] = []
    results: list[str | None] = []

    def work() -> None:
        try:
            for i in range(40):
                results.append(v.verify(tokens[i % len(tokens)], mesh.cert("orders")).user)
                with pytest.raises(E.AudienceMismatch):
                    v.verify(bad, mesh.cert("orders"))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for n in range(3):
        mesh.ca.issue(f"extra-{n}")  # republishes bundle.spiffe.json and crl.pem
    for t in threads:
        t.join()
    assert errors == []
    assert results == ["alice"] * 160
    assert bundle.key_for(mesh.svids["auth"].thumbprint) is not None


def test_a_peer_revoked_after_its_first_call_is_refused(mesh: Any) -> None:
    bundle = mesh.bundle(check_interval=3600)
    v = mesh.cached_verifier("orders", bundle=bundle)
    token = mesh.chain("gateway", "orders")
    assert v.check_peer(mesh.cert("gateway")) == mesh.id("gateway")
    v.verify(token, mesh.cert("gateway"))  # the peer's chain check is now remembered
    mesh.ca.revoke(name="gateway")
    assert bundle.refresh()
    with pytest.raises(E.CertificateRevoked) as info:
        v.verify(token, mesh.cert("gateway"))
    assert info.value.hop is None
    with pytest.raises(E.CertificateRevoked):
        v.check_peer(mesh.cert("gateway"))
