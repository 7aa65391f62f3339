"""The renewal schedule keeps the promise of docs/agent.md: with a reachable CA, a service never
holds a certificate older than half its life (renewal start plus the longest key-propagation
hold stay under one half), and every renewal starts with most of the life left."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from mesh.agent.schedule import PROPAGATION_SHARE, RENEW_LATEST, Backoff, renewal_time


@given(st.floats(min_value=0, max_value=2e9), st.floats(min_value=1, max_value=1e7),
       st.integers(min_value=0, max_value=2**32))
def test_a_renewal_is_served_before_half_the_life(start: float, life: float, seed: int) -> None:
    at = renewal_time(start, start + life, random.Random(seed))
    assert start + 0.25 * life - 1e-6 <= at <= start + RENEW_LATEST * life + 1e-6
    longest_hold = PROPAGATION_SHARE * life
    # room for the CA's answer and the delivery (a folder source polls every second): 5 %
    assert (at - start) + longest_hold <= 0.45 * life


@given(st.integers(min_value=0, max_value=60), st.integers(min_value=0, max_value=2**32))
def test_backoff_is_capped_and_never_zero(attempt: int, seed: int) -> None:
    backoff = Backoff(base=1.0, cap=30.0)
    delay = backoff.delay(attempt, random.Random(seed))
    assert 0.1 <= delay <= 30.0
    # the last try before expiry is not slept through
    assert backoff.next_attempt(100.0, attempt, 100.5, random.Random(seed)) <= 100.5
