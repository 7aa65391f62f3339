"""Minting the outgoing token for one callee, from one SVID snapshot.

If the call being handled carries an end user (:func:`mesh.transport.context.current_call`), the
next hop gets an app-asserted token wrapping the inbound token, so the user and the chain travel on
with no code in the handler; otherwise an app token. Minted tokens are reused for a fraction of
their lifetime (default half): ES256 signing is cheap, but not free on every call.
"""

from __future__ import annotations

import threading
import time

from mesh.errors import UserRequiredError
from mesh.identity.spiffeid import SpiffeId
from mesh.identity.svid import Svid
from mesh.tokens.signer import TokenSigner
from mesh.transport.context import current_call

DEFAULT_TTL = 60

Metadatum = tuple[str, str]


class TokenMinter:
    """Thread-safe; bound to one SVID snapshot (a rotation builds a new minter)."""

    def __init__(self, svid: Svid, callee: SpiffeId, *, ttl: int = DEFAULT_TTL,
                 cache: bool = True, reuse_fraction: float = 0.5, max_entries: int = 4096,
                 require_user: bool = False) -> None:
        if not 0 < reuse_fraction < 1:
            raise ValueError("reuse_fraction must lie strictly between 0 and 1")
        self.svid = svid
        self.callee = callee
        self._signer = TokenSigner(svid.private_key, svid.chain)
        self._ttl = ttl
        self._cache_on = cache
        self._fraction = reuse_fraction
        self._max = max_entries
        self._require_user = require_user
        self._lock = threading.Lock()
        # inbound token (None: app token) -> (minted token, reuse until, metadata entry)
        self._cache: dict[str | None, tuple[str, float, Metadatum]] = {}

    def token(self) -> str:
        """The token for an outgoing call made in the current context."""
        return self.metadatum()[1][7:]

    def metadatum(self) -> Metadatum:
        """``("authorization", "Bearer <token>")`` for an outgoing call in the current context.

        Built once per minted token: the entry is ~1 KB, and a call should not rebuild it.
        """
        inbound = current_call()
        upstream = inbound.token if inbound is not None and inbound.user is not None else None
        if upstream is None and self._require_user:
            raise UserRequiredError(
                f"calls to {self.callee} require an end user, and the current call carries "
                "none (it is not a user's call, or the context was lost in a thread you started: "
                "use contextvars.copy_context().run)"
            )
        now = time.time()
        if self._cache_on:
            hit = self._cache.get(upstream)
            if hit is not None and now < hit[1]:
                return hit[2]
        if upstream is not None and inbound is not None:
            # The verifier's outermost hop of the inbound token: no need to decode it again.
            hop = inbound.hops[0] if inbound.hops else None
            token = self._signer.app_asserted_token(upstream, aud=self.callee, ttl=self._ttl,
                                                    verified=hop)
            expires = min(now + self._ttl, float(inbound.expires_at))
        else:
            token = self._signer.app_token(self.callee, ttl=self._ttl)
            expires = now + self._ttl
        entry: Metadatum = ("authorization", "Bearer " + token)
        if self._cache_on:
            reuse_until = now + (expires - now) * self._fraction
            with self._lock:
                if len(self._cache) >= self._max:
                    self._evict(now)
                self._cache[upstream] = (token, reuse_until, entry)
        return entry

    def _evict(self, now: float) -> None:
        stale = [k for k, (_, until, _) in self._cache.items() if until <= now]
        for key in stale:
            del self._cache[key]
        while len(self._cache) >= self._max:
            del self._cache[next(iter(self._cache))]
