"""When to renew an SVID and how long to wait after a failed attempt.

Renewal: at a random point between 25 % and 33 % of the certificate's life, counted from the
moment the agent received it to ``not_after`` (the CA backdates ``notBefore`` a minute for clock
skew; that minute is not life the agent can use). The renewed SVID is served after its key has
reached this node's bundle and a key-propagation hold of at most :data:`PROPAGATION_SHARE` of
the life: by 43 % of the life at the latest, which leaves 7 % (four minutes of a one-hour SVID)
for the CA's answer and for the service to pick the new SVID up (a folder source polls every
second). So with a reachable CA a service never holds a certificate older than half its life
(SPIRE's agent starts rotating at one half). The jitter spreads the renewals of SVIDs issued
together (a node's services after a restart, a fleet after a CA outage) so they do not reach the
CA at the same instant every cycle. An SVID has at least 67 % of its life left when its renewal
starts: the time the agent has to ride out a CA outage.

Retries: capped exponential backoff with full jitter (a random wait between 0 and
``min(cap, base * 2**attempt)``), and never later than the moment the certificate expires, so
the last attempt before expiry is not slept through.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

RENEW_EARLIEST = 0.25
RENEW_LATEST = 0.33
#: the longest key-propagation hold, as a share of the new SVID's life: RENEW_LATEST plus this
#: stays under one half, with room for the CA's answer and the delivery to the service
PROPAGATION_SHARE = 0.10


def renewal_time(not_before: float, not_after: float, rng: random.Random | None = None) -> float:
    """The Unix time at which to start renewing a certificate whose life runs from
    ``not_before`` (the agent passes the time it received it) to ``not_after``."""
    life = max(0.0, not_after - not_before)
    r = (rng or random).uniform(RENEW_EARLIEST, RENEW_LATEST)
    return not_before + life * r


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with full jitter."""

    base: float = 1.0
    cap: float = 30.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait before retry number ``attempt`` (0 = the first retry)."""
        ceiling = min(self.cap, self.base * (2.0 ** min(attempt, 30)))
        # Never less than a tenth of the base: a zero wait would spin on a dead CA.
        return max(self.base / 10, (rng or random).uniform(0.0, ceiling))

    def next_attempt(
        self, now: float, attempt: int, expires: float | None, rng: random.Random | None = None
    ) -> float:
        """When to try again: after the backoff, but not after ``expires`` (if given and
        still ahead), so one attempt lands in the certificate's last moments."""
        at = now + self.delay(attempt, rng)
        if expires is not None and now < expires < at:
            return max(now, expires - self.base / 10)
        return at
