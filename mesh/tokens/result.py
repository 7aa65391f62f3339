"""What a verification proves, as immutable values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from mesh.identity.spiffeid import SpiffeId


class Hop(NamedTuple):
    """One verified layer of a chain, for display and audit (no signature, no key).

    Immutable; a NamedTuple because one is built per decoded layer on the request path.
    """

    typ: str
    iss: SpiffeId
    sub: str
    aud: tuple[str, ...]
    iat: int
    exp: int
    kid: str


@dataclass(frozen=True, slots=True)
class VerifiedChain:
    """What a verified call proves. ``chain`` runs from the edge service to the peer.

    ``kind`` is ``"user"`` when the call carries an end user (``user``, ``user_claims``: the
    user token's claims, read-only) and ``"service"`` when the peer calls as itself (an app
    token; ``chain`` is just the peer). At an edge port ``peer`` is None and ``chain`` empty.
    ``expires_at`` is the earliest ``exp`` of all layers.
    """

    peer: SpiffeId | None
    kind: Literal["user", "service"]
    user: str | None
    user_claims: Mapping[str, Any] = field(hash=False)
    chain: tuple[SpiffeId, ...]
    expires_at: int
    #: The raw inbound token, needed to wrap it onward. Never log it.
    token: str = field(repr=False)
    #: Every layer, the outermost (hop 0, signed by the peer) first.
    hops: tuple[Hop, ...] = field(default=(), repr=False)

    @property
    def user_jkt(self) -> str | None:
        """The user token's ``cnf.jkt``: the thumbprint of the DPoP key it is bound to (spec
        4.7), or None for an unbound user token or a service call. Downstream hops see it too;
        only an edge port checks a proof against it."""
        cnf = self.user_claims.get("cnf")
        if isinstance(cnf, Mapping):
            jkt = cnf.get("jkt")
            if isinstance(jkt, str):
                return jkt
        return None
