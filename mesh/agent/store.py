"""What the agent holds right now, and who may see which part of it.

One :class:`IdentityStore` per agent, touched only from the agent's event loop thread (no
locks). Every change bumps ``version`` and wakes the Workload API streams, which recompute their
caller's view and send a message only when that view changed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from mesh.agent.model import HeldSvid, TrustState


@dataclass(frozen=True, slots=True)
class Registration:
    """A service registered to this node (from the CA's ListRegistrations)."""

    service: str
    spiffe_id: str
    uid: int
    ttl_seconds: int


class IdentityStore:
    """The node's registrations, the SVIDs held for them and the trust state."""

    def __init__(self, trust_domain: str) -> None:
        self.trust_domain = trust_domain
        self.trust: TrustState | None = None
        self.registrations: dict[str, Registration] = {}
        self.svids: dict[str, HeldSvid] = {}
        self.version = 0
        self._changed = asyncio.Event()

    # --- changes (event loop thread only) -------------------------------------------------

    def _bump(self) -> None:
        self.version += 1
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def set_trust(self, trust: TrustState) -> None:
        self.trust = trust
        self._bump()

    def set_registrations(self, regs: dict[str, Registration]) -> None:
        if regs != self.registrations:
            self.registrations = dict(regs)
            for gone in set(self.svids) - set(regs):
                del self.svids[gone]
            self._bump()

    def put_svid(self, svid: HeldSvid) -> None:
        self.svids[svid.name] = svid
        self._bump()

    def expire(self) -> None:
        """Wake the streams (an SVID passed its not_after: views must drop it)."""
        self._bump()

    async def wait_change(self, seen: int, timeout: float | None = None) -> None:
        """Return once ``version`` differs from ``seen`` (or after ``timeout``)."""
        while self.version == seen:
            event = self._changed
            try:
                await asyncio.wait_for(event.wait(), timeout)
            except TimeoutError:
                return

    # --- views ----------------------------------------------------------------------------

    def uids(self) -> set[int]:
        return {r.uid for r in self.registrations.values()}

    def entitled(self, uid: int) -> bool:
        """Whether ``uid`` runs any service registered to this node."""
        return any(r.uid == uid for r in self.registrations.values())

    def svids_for(self, uid: int, now: float | None = None) -> list[HeldSvid]:
        """The valid SVIDs of ``uid``'s services, by service name (the first is the default)."""
        at = time.time() if now is None else now
        out = []
        for name in sorted(self.registrations):
            reg = self.registrations[name]
            svid = self.svids.get(name)
            if reg.uid == uid and svid is not None and svid.valid_at(at):
                out.append(svid)
        return out

    def next_expiry(self, now: float) -> float | None:
        """The soonest not_after still ahead (streams re-check then)."""
        ahead = [s.not_after for s in self.svids.values() if s.not_after > now]
        return min(ahead) if ahead else None
