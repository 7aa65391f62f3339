"""The DPoP replay cache: single use, a hard memory bound, and failing closed when full."""

from __future__ import annotations

import secrets
import threading
import tracemalloc

import pytest
from support.minimesh import Clock

from mesh.dpop import DpopClient
from mesh.identity.spiffeid import SpiffeId
from mesh.tokens.dpop import DpopSettings, ProofVerifier
from mesh.tokens.errors import DpopReplayCacheFull, DpopReplayed
from mesh.tokens.replay import BYTES_PER_ENTRY, DEFAULT_MAX_ENTRIES, ReplayCache

NOW = 1_800_000_000
JKT = "A" * 43
BURST = 10_000


def test_a_burst_of_10000_distinct_proofs_stays_within_the_stated_bound() -> None:
    """Every one of 10,000 distinct proofs is remembered, the memory they hold (tracemalloc,
    the peak while the set grows included) is within BYTES_PER_ENTRY each, and the next one is
    refused: the cache is full, so it fails closed."""
    clock = Clock(float(NOW))
    cache = ReplayCache(BURST, clock=clock)
    jtis = [secrets.token_urlsafe(16) for _ in range(BURST + 1)]
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for i, jti in enumerate(jtis[:BURST]):
            cache.use(JKT, jti, NOW + 61 + i % 121)  # windows ending over two minutes
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(cache) == BURST
    assert peak - before <= BURST * BYTES_PER_ENTRY, (peak - before) / BURST
    assert after - before > BURST * 32  # it does hold them (a 16-byte key each at least)
    with pytest.raises(DpopReplayCacheFull):
        cache.use(JKT, jtis[BURST], NOW + 61)
    # every remembered proof is still refused as a replay, not merely as "full"
    with pytest.raises(DpopReplayed):
        cache.use(JKT, jtis[0], NOW + 61)
    # control: once windows end, their entries go and new proofs are taken again
    clock.now = NOW + 62  # the entries ending at NOW + 61 and NOW + 62 have ended
    cache.use(JKT, jtis[BURST], NOW + 122)
    assert len(cache) < BURST


def test_the_default_bound_is_documented() -> None:
    assert DEFAULT_MAX_ENTRIES * BYTES_PER_ENTRY <= 24 * 1024 * 1024  # "about 22 MB"


def test_keys_and_proofs_do_not_collide() -> None:
    cache = ReplayCache(10, clock=lambda: float(NOW))
    cache.use(JKT, "j1", NOW + 10)
    cache.use("B" * 43, "j1", NOW + 10)  # another key's jti of the same text: another proof
    with pytest.raises(DpopReplayed):
        cache.use(JKT, "j1", NOW + 10)
    cache.use(JKT, "j1.", NOW + 10)  # no ambiguity from the separator
    assert len(cache) == 3


def test_concurrent_use_of_one_proof_succeeds_once() -> None:
    cache = ReplayCache(100, clock=lambda: float(NOW))
    ok: list[int] = []
    refused: list[int] = []
    barrier = threading.Barrier(8)

    def run(i: int) -> None:
        barrier.wait()
        try:
            cache.use(JKT, "same", NOW + 60)
            ok.append(i)
        except DpopReplayed:
            refused.append(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ok) == 1 and len(refused) == 7


def test_a_full_cache_refuses_valid_proofs_at_the_edge_then_recovers() -> None:
    """Through the proof verifier: with room for 3 proofs, the 4th valid proof within the
    window is refused DPOP_REPLAY_CACHE_FULL; control: after the first proofs' window ends it
    is accepted, and a smaller burst never hits the bound."""
    clock = Clock(float(NOW))
    gateway = SpiffeId.parse("spiffe://mesh.internal/svc/gateway")
    method = "/mesh.demo.v1.GatewayService/PlaceOrder"
    verifier = ProofVerifier(gateway, DpopSettings(window=60, max_proofs=3), clock=clock)
    client = DpopClient(clock=clock)
    for _ in range(3):
        verifier.verify(client.proof_for(gateway, method), method)
    late = client.proof_for(gateway, method)
    with pytest.raises(DpopReplayCacheFull) as info:
        verifier.verify(late, method)
    assert info.value.reason == "DPOP_REPLAY_CACHE_FULL"
    assert "retry" in str(info.value)
    clock.now = NOW + 61  # the three proofs' window is over
    fresh = client.proof_for(gateway, method)
    assert verifier.verify(fresh, method).jkt == client.jkt
    roomy = ProofVerifier(gateway, DpopSettings(window=60, max_proofs=4), clock=clock)
    for _ in range(4):
        roomy.verify(client.proof_for(gateway, method), method)


def test_bad_bounds() -> None:
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError):
            ReplayCache(bad)  # type: ignore[arg-type]
