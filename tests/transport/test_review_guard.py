"""Review: the server-side guard (metadata, peer, call cache) and the policy (spec 4, 6)."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from mesh.dpop import DpopClient
from mesh.policy import NO_POLICY_RULE, Policy, Rule
from mesh.tokens.errors import TokenMalformed, TokenMissing
from mesh.tokens.verify import ChainVerifier
from mesh.transport.audit import AuditLog
from mesh.transport.guard import CallGuard, Rejected, bearer_token

METHOD = "/review.v1.Probe/Who"


def _guard(m: Any, name: str, *, edge: bool, caches: bool = True,
           clock: Any = time.time) -> CallGuard:
    bundle = m.bundle(clock=clock)
    verifier = ChainVerifier(m.id(name), bundle, cache=None, clock=clock)
    policy = Policy([Rule(methods=("*",), peers=("*",), require_user=False)],
                    trust_domain=m.ca.trust_domain)
    return CallGuard(verifier=verifier, policy=policy,
                     audit=AuditLog(m.id(name)), edge=edge,
                     call_cache_size=4096 if caches else 0, clock=clock)


# --- metadata ------------------------------------------------------------------------------


@pytest.mark.parametrize("metadata, error", [
    ([], TokenMissing),
    ([("authorization", "Bearer a.b.c"), ("authorization", "Bearer a.b.c")], TokenMalformed),
    ([("authorization", "Bearer a.b.c"), ("authorization", "Bearer x.y.z")], TokenMalformed),
    ([("authorization", b"Bearer a.b.c")], TokenMalformed),
    ([("authorization", "Basic a.b.c")], TokenMalformed),
    ([("authorization", "Bearer")], TokenMalformed),
    ([("authorization", "Bearer ")], TokenMalformed),
    ([("authorization", "Bearera.b.c")], TokenMalformed),
    ([("authorization", "Bearer\ta.b.c")], TokenMalformed),
])
def test_bearer_metadata_is_strict(metadata: list[tuple[str, Any]], error: type) -> None:
    """Regression guard: no token, two tokens (even identical), binary values and other
    schemes are refused; the scheme is case-insensitive (RFC 7235 2.1)."""
    with pytest.raises(error):
        bearer_token(metadata)


def test_bearer_scheme_case_insensitive() -> None:
    assert bearer_token([("x-other", "1"), ("authorization", "bearer a.b.c")]) == "a.b.c"
    assert bearer_token([("authorization", "BEARER a.b.c")]) == "a.b.c"


def test_mtls_guard_without_peer_certificate_fails_closed(mesh_factory: Any) -> None:
    """Regression guard (4.1): a call whose auth context has no certificate (a misconfigured
    port, a plaintext hop) is refused before the token is looked at, even a valid one."""
    m = mesh_factory()
    token = m.signers["gateway"].app_token(m.id("orders"))
    guard = _guard(m, "orders", edge=False)
    ctx_ok = {"x509_pem_cert": [m.svids["gateway"].certificate.public_bytes(Encoding.PEM)]}
    assert guard.check(METHOD, [("authorization", "Bearer " + token)], ctx_ok) is not None
    for ctx in ({}, {"x509_pem_cert": []}, {"transport_security_type": [b"ssl"]}):
        with pytest.raises(Rejected) as info:
            guard.check(METHOD, [("authorization", "Bearer " + token)], ctx)
        assert info.value.reason == "CERT_UNTRUSTED"


def test_edge_guard_refuses_service_tokens(mesh_factory: Any) -> None:
    """Regression guard (edge port): an app token or an app-asserted token is refused there,
    even one addressed to this service and validly signed."""
    m = mesh_factory()
    guard = _guard(m, "gateway", edge=True)
    client = DpopClient()
    user = m.bound_user_token(client)
    assert guard.check(METHOD, m.edge_metadata("gateway", METHOD, user, client), {}) is not None
    app = m.signers["orders"].app_token(m.id("gateway"))
    wrapped = m.signers["orders"].app_asserted_token(m.user_token("orders"), m.id("gateway"))
    for token in (app, wrapped):
        for metadata in ([("authorization", "Bearer " + token)],
                         m.edge_metadata("gateway", METHOD, token, client)):
            with pytest.raises(Rejected) as info:
                guard.check(METHOD, metadata, {})
            assert info.value.reason == "TYPE_MISMATCH"


def test_call_cache_stops_at_signing_certificate_expiry(mesh_factory: Any) -> None:
    """The guard's call cache must end when a certificate that signed an inner token expires,
    not only at the token's exp and the peer's expiry. The token is forged by hand because
    TokenSigner caps exp at its certificate's not_after; another issuer might not."""
    m = mesh_factory(auth={"ttl": timedelta(minutes=10)})
    clock = m.clock  # one fake clock for bundle, verifier, guard and the client's proofs
    expiry = int(m.svids["auth"].certificate.not_valid_after_utc.timestamp())
    client = DpopClient(clock=clock)
    # far past auth's certificate
    token = m.forge_user(m.user_claims(iat=int(clock.now), exp=expiry + 900,
                                       cnf={"jkt": client.jkt}))
    cached = _guard(m, "gateway", edge=True, clock=clock)
    uncached = _guard(m, "gateway", edge=True, caches=False, clock=clock)

    def metadata() -> tuple[tuple[str, str], ...]:  # a fresh proof per call: proofs are single-use
        return m.edge_metadata("gateway", METHOD, token, client)

    assert cached.check(METHOD, metadata(), {}) is not None
    assert uncached.check(METHOD, metadata(), {}) is not None
    clock.now = expiry + 1  # auth's certificate has expired; the token has not
    # negative control: without the call cache the very same call is refused for this reason
    with pytest.raises(Rejected) as control:
        uncached.check(METHOD, metadata(), {})
    assert control.value.reason == "CERT_UNTRUSTED"
    with pytest.raises(Rejected) as info:
        cached.check(METHOD, metadata(), {})
    assert info.value.reason == "CERT_UNTRUSTED"


# --- policy --------------------------------------------------------------------------------


class _Call:
    def __init__(self, m: Any, peer: str | None, chain: tuple[str, ...], user: str | None,
                 claims: dict[str, Any] | None = None) -> None:
        self.peer = m.id(peer) if peer else None
        self.kind = "user" if user else "service"
        self.user = user
        self.user_claims = claims or {}
        self.chain = tuple(m.id(s) for s in chain)


def test_policy_service_wildcard_does_not_cover_a_prefixed_service(mesh_factory: Any) -> None:
    """Regression guard: ``/pkg.Orders/*`` must not cover ``/pkg.OrdersAdmin/Drop`` nor a
    method whose path only starts like it; uncovered methods are denied by default."""
    m = mesh_factory()
    policy = Policy([Rule(methods=("/pkg.Orders/*",), peers=("*",))],
                    trust_domain=m.ca.trust_domain)
    call = _Call(m, "gateway", ("gateway",), "alice")
    assert policy.decide("/pkg.Orders/Get", call).allowed
    for method in ("/pkg.OrdersAdmin/Drop", "/pkg.Orders.Admin/Drop", "/pkg/Orders/Get",
                   "/pkg.Order/Get", "/pkg.orders/Get"):
        decision = policy.decide(method, call)
        assert not decision.allowed and decision.reason == NO_POLICY_RULE, method


def test_policy_chain_is_ordered_and_exact(mesh_factory: Any) -> None:
    """Regression guard: chains match whole and in order, never as a prefix or a set."""
    m = mesh_factory()
    policy = Policy([Rule(methods=("*",), chains=(("gateway", "orders"),))],
                    trust_domain=m.ca.trust_domain)
    assert policy.decide(METHOD, _Call(m, "orders", ("gateway", "orders"), "alice")).allowed
    for chain in (("orders", "gateway"), ("gateway",), ("gateway", "orders", "orders"),
                  ("payments", "gateway", "orders")):
        assert not policy.decide(METHOD, _Call(m, chain[-1], chain, "alice")).allowed, chain


def test_policy_scope_is_whole_word(mesh_factory: Any) -> None:
    """Regression guard: scope 'orders:write' is not held by 'orders:write-not' or
    'orders:writes', and a list-valued scope claim grants nothing."""
    m = mesh_factory()
    policy = Policy([Rule(methods=("*",), peers=("*",), scopes=("orders:write",))],
                    trust_domain=m.ca.trust_domain)
    def ok(scope: Any) -> bool:
        return policy.decide(METHOD, _Call(m, "gateway", ("gateway",), "alice",
                                           {"scope": scope})).allowed
    assert ok("orders:read orders:write")
    for scope in ("orders:writes", "orders:write-not", "xorders:write", ["orders:write"], None):
        assert not ok(scope), scope
