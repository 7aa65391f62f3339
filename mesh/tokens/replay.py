"""The DPoP replay cache: every accepted proof is single-use (spec 4.7, RFC 9449 11.1).

A proof is identified by its key and its ``jti``: the entry is the first 16 bytes of
SHA-256(``jkt`` "." ``jti``), so one client cannot spend another key's ``jti`` values, and an
entry has a fixed size whatever the ``jti`` (a collision of two different proofs would refuse
the second as a replay, never accept anything). An entry lives exactly as long as its proof
could still be accepted: until ``iat + window`` (the verifier passes that instant), after which
the ``iat`` check refuses the proof anyway.

The cache is bounded by entries, not by time: ``max_entries`` distinct proofs within one
window. When it is full (after dropping every entry whose window has ended), a new proof cannot
be proven fresh, so it is refused with ``DPOP_REPLAY_CACHE_FULL``: fail closed, never "forget
the oldest and accept". Only proofs that passed every other check are added, so filling it takes
that many valid calls, by holders of valid bound user tokens, within one window.

Memory: :data:`BYTES_PER_ENTRY` is the measured bound per entry (the key object, its set slot
and its expiry-list slot; ``tests/tokens/test_replay.py`` checks it with tracemalloc), so the
default 100,000 entries stay under about 22 MB. The cache is per process: replicas behind a
load balancer do not share it (see docs/tokens.md).
"""

from __future__ import annotations

import hashlib
import heapq
import threading
import time
from collections.abc import Callable

from mesh.tokens.errors import DpopReplayCacheFull, DpopReplayed

#: default bound: distinct proofs accepted within one window
DEFAULT_MAX_ENTRIES = 100_000
#: measured upper bound of the memory one entry holds (bytes), tracemalloc, CPython 3.11
BYTES_PER_ENTRY = 224
_KEY_BYTES = 16


def proof_key(jkt: str, jti: str) -> bytes:
    """The fixed-size identity of a proof: its key thumbprint and its ``jti``."""
    data = f"{jkt}.{jti}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).digest()[:_KEY_BYTES]


class ReplayCache:
    """Remembers accepted proofs until their window ends; thread-safe; bounded, fails closed."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, *,
                 clock: Callable[[], float] = time.time) -> None:
        if type(max_entries) is not int or max_entries < 1:
            raise ValueError("the replay cache needs room for at least one proof")
        self.max_entries = max_entries
        self._clock = clock
        self._seen: set[bytes] = set()
        # end second -> the keys whose window ends then; a heap of those seconds. A proof's
        # window ends at most 2 windows after now, so there are few distinct seconds.
        self._ending: dict[int, list[bytes]] = {}
        self._ends: list[int] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def use(self, jkt: str, jti: str, until: int) -> None:
        """Record the proof ``(jkt, jti)`` as used until ``until`` (Unix seconds, exclusive).

        Raises DpopReplayed if it was used before and its window has not ended, and
        DpopReplayCacheFull (recording nothing) if there is no room.
        """
        key = proof_key(jkt, jti)
        now = int(self._clock())
        with self._lock:
            self._expire(now)
            if key in self._seen:
                raise DpopReplayed(
                    "this DPoP proof was already used: a proof is good for one call only "
                    "(its jti was seen for this key within the window) (spec 4.7)"
                )
            if len(self._seen) >= self.max_entries:
                raise DpopReplayCacheFull(
                    f"the DPoP replay cache holds {self.max_entries} proofs, its bound, so this "
                    "proof cannot be proven unused; the call is refused rather than risk a "
                    "replay (spec 4.7); retry shortly"
                )
            if until <= now:
                return  # already outside its window: nothing to remember
            self._seen.add(key)
            keys = self._ending.get(until)
            if keys is None:
                self._ending[until] = keys = []
                heapq.heappush(self._ends, until)
            keys.append(key)

    def _expire(self, now: int) -> None:
        ends = self._ends
        while ends and ends[0] <= now:
            for key in self._ending.pop(heapq.heappop(ends)):
                self._seen.discard(key)

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()
            self._ending.clear()
            self._ends.clear()
