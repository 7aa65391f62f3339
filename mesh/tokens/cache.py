"""The verified-token cache: what a token proved about itself, remembered until it expires.

An entry says "these exact bytes (SHA-256) carry a valid signature by the certificate whose
thumbprint is ``kid``, and decode to these well-formed claims". An entry that verified as a
wrapped token may also carry a :class:`ChainVerdict`: "this token and everything it wraps form a
valid upstream chain (spec 4.5) for the end user ``user``", which is a function of the token's
bytes (they include the whole inner chain) plus the things the verdict records and the verifier
re-checks on every use: the bundle and its generation (keys, revocations), the clock (the
subchain's time window), the verifier's trusted user-token issuers, maximum lifetimes and its
depth limit. Everything that depends on where the token appears (the peer, the wrapping token,
this service) is checked again on every call. Failures are never stored, so the cache can only
save work, never turn a rejection into an acceptance.

Bounded (least recently used out first) and thread-safe.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from mesh.identity.spiffeid import SpiffeId
from mesh.tokens.claims import Claims
from mesh.tokens.result import Hop


class ChainVerdict(NamedTuple):
    """A token and all it wraps verified as an upstream chain (spec 4.5) in one bundle state.

    It holds for a verifier only while ``bundle`` is that verifier's bundle source (identity:
    two sources can share a generation number) at ``generation``; the clock is inside every
    layer's time window (``iat``/``nbf`` .. ``exp``, with that verifier's leeway) and every
    signing certificate's validity; the layers' lifetimes are within its maximum; the verifier
    trusts ``user_iss``; and the chain fits its depth limit. The verifier checks all of that on
    each use and otherwise verifies in full.
    """

    bundle: object
    generation: int
    #: this token plus the tokens nested in it (1: a user token)
    layers: int
    #: earliest ``exp`` of those layers
    exp: int
    #: latest ``iat`` or ``nbf`` of those layers
    not_before: int
    #: latest ``not_before`` / earliest ``not_after`` of their signing certificates
    key_not_before: int
    key_not_after: int
    #: the user token's ``exp - iat``, and the longest ``exp - iat`` of the app-asserted layers
    #: (0 if none): checked against each verifier's own ``max_lifetime``
    user_lifetime: int
    asserted_lifetime: int
    #: the innermost (user) token's issuer, as text
    user_iss: str
    #: the layers' hops, this token's first
    hops: tuple[Hop, ...]
    #: the issuers from the edge service to this token's, as in ``VerifiedChain.chain``
    chain: tuple[SpiffeId, ...]
    user: str
    user_claims: Mapping[str, Any]


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
    #: lookup per layer; its relations and times are re-checked unless ``verdict`` vouches)
    upstream_entry: VerifiedToken | None = None
    #: set once the token verified as a wrapped token, with everything it wraps
    verdict: ChainVerdict | None = None


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class VerifiedTokenCache:
    """LRU of :class:`VerifiedToken` keyed by the token's SHA-256, each expiring with its token."""

    def __init__(
        self, max_entries: int = 4096, *, clock: Callable[[], float] = time.time
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
