"""Every cache meshid keeps holds its stated bound under many distinct tokens or peers
(docs/architecture.md, "Caches"): entry counts never pass the bound, and the memory they hold
stays under the figure the docs give."""

from __future__ import annotations

import tracemalloc
from typing import Any

from support.minimesh import allow_all

from mesh.tokens.cache import VerifiedTokenCache
from mesh.tokens.verify import PEER_TABLE_MAX, ChainVerifier
from mesh.transport.audit import AuditLog
from mesh.transport.context import enter_call, leave_call
from mesh.transport.guard import CALL_CACHE_MAX, CallGuard
from mesh.transport.minter import TokenMinter

# The documented memory bounds, per entry, for tokens of the size used here (a 2-signature
# chain of ~1.3 KB): docs/architecture.md gives them as a multiple of the token size.
PER_TOKEN_ENTRY = 12 * 1024
PER_CALL_ENTRY = 12 * 1024


def _tokens(mesh: Any, n: int) -> list[str]:
    user = mesh.user_token("gateway")
    signer = mesh.signers["gateway"]
    return [signer.app_asserted_token(user, mesh.id("orders")) for _ in range(n)]


def test_the_verified_token_cache_holds_its_bound(mesh: Any) -> None:
    bound = 2_000
    cache = VerifiedTokenCache(max_entries=bound, clock=mesh.clock)
    verifier = ChainVerifier("orders", mesh.bundle(), cache=cache, clock=mesh.clock)
    tokens = _tokens(mesh, bound + 500)
    peer = mesh.cert("gateway")
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for token in tokens:
        assert verifier.verify(token, peer).user == "alice"
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(cache) == bound  # full, and never more (the user token is one of them)
    assert held < bound * PER_TOKEN_ENTRY, held
    # the oldest went first: the last token is still a hit
    hits = cache.hits
    verifier.verify(tokens[-1], peer)
    assert cache.hits == hits + 1


def test_the_per_call_cache_holds_its_bound(mesh: Any) -> None:
    verifier = ChainVerifier("orders", mesh.trust, clock=mesh.clock)
    guard = CallGuard(verifier=verifier, policy=allow_all(), audit=AuditLog(mesh.id("orders")),
                      clock=mesh.clock)
    auth = {"x509_pem_cert": [mesh.svids["gateway"].chain_pem()]}
    tokens = _tokens(mesh, CALL_CACHE_MAX + 300)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for token in tokens:
        chain = guard.check("/x.Y/Z", [("authorization", "Bearer " + token)], auth)
        assert chain is not None and chain.user == "alice"
        assert len(guard._calls or {}) <= CALL_CACHE_MAX
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # both caches (per-call and the verifier's verified tokens) together stay under the bound
    assert held < CALL_CACHE_MAX * (PER_CALL_ENTRY + PER_TOKEN_ENTRY), held


def test_the_peer_table_holds_its_bound(mesh: Any) -> None:
    verifier = ChainVerifier("orders", mesh.bundle(), clock=mesh.clock)
    issued = mesh.ca.issue_many([f"peer-{i}" for i in range(PEER_TABLE_MAX + 50)])
    for svid in issued:
        assert verifier.peer(svid.chain_pem()).spiffe_id == svid.spiffe_id
        assert len(verifier._peers) <= PEER_TABLE_MAX


def test_the_minted_token_cache_holds_its_bound(mesh: Any) -> None:
    svid = mesh.identity("gateway").current()
    bound = 500
    minter = TokenMinter(svid, mesh.id("orders"), max_entries=bound)
    verifier = ChainVerifier("gateway", mesh.bundle())
    users = [verifier.verify(mesh.user_token("gateway", sub=f"user-{i}"), None)
             for i in range(bound + 100)]
    for chain in users:
        handle = enter_call(chain)
        try:
            minter.metadatum()
        finally:
            leave_call(handle)
        assert len(minter._cache) <= bound
