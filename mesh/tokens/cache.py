"""The verified-token cache: what a token proved about itself, remembered until it expires.

An entry says only "these exact bytes (SHA-256) carry a valid signature by the certificate whose
thumbprint is ``kid``, and decode to these well-formed claims". Everything that depends on where
the token appears (the peer, the wrapping token, this service), on the clock, or on the current
bundle and CRL is checked again on every call by the verifier. Failures are never stored, so the
cache can only save work, never turn a rejection into an acceptance.

Bounded (least recently used out first) and thread-safe.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from mesh.tokens.claims import Claims
from mesh.tokens.result import Hop


class VerifiedToken(NamedTuple):
    """A token whose signature and standalone claims were checked, plus values derived once."""

    kid: str
    claims: Claims
    hop: Hop
    #: SHA-256 of the ``upstream`` claim (the next cache key), None if nothing is wrapped
    upstream_digest: bytes | None
    #: read-only copy of a user token's claims, None for other kinds
    user_claims: Mapping[str, Any] | None
    #: the verified entry of the upstream token, linked once a whole chain verified (saves a
    #: lookup per layer; the verifier still re-checks every relation and time on every call)
    upstream_entry: VerifiedToken | None = None


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class VerifiedTokenCache:
    """LRU of :class:`VerifiedToken` keyed by the token's SHA-256, each expiring with its token."""

    def __init__(
        self, max_entries: int = 10_000, *, clock: Callable[[], float] = time.time
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, VerifiedToken] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes) -> VerifiedToken | None:
        # A miss (every new outer token) needs no lock: dict.get is atomic, and the counters are
        # statistics, not decisions.
        if digest not in self._entries:
            self.misses += 1
            return None
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None or entry.claims.exp <= self._clock():
                if entry is not None:
                    del self._entries[digest]
                self.misses += 1
                return None
            self._entries.move_to_end(digest)
            self.hits += 1
            return entry

    def put(self, digest: bytes, entry: VerifiedToken) -> None:
        if entry.claims.exp <= self._clock():
            return
        with self._lock:
            self._entries[digest] = entry
            self._entries.move_to_end(digest)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
