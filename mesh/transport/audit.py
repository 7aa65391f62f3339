"""The audit log: one JSON line per authorization decision, through :mod:`logging`.

Fields: ``method``, ``peer``, ``user``, ``chain`` (edge first), ``decision`` (``allow`` or
``deny``), ``reason`` (the stable code), ``rule`` (the policy rule, when one decided),
``verify_us`` (time spent on peer, token and policy checks) and ``service``; on a line that
refuses the peer's certificate, also ``presented``: the SPIFFE ID that certificate carries,
unverified (``peer`` stays null: no identity was established). Never a token: callers hand
over identities only, so there is nothing secret to leak.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from mesh.identity.spiffeid import SpiffeId

LOGGER_NAME = "mesh.transport.audit"


class AuditLog:
    """Writes decision lines to a logger (default ``mesh.transport.audit``) at INFO level."""

    def __init__(self, service: SpiffeId | str, logger: logging.Logger | None = None) -> None:
        self._service = str(service)
        self._logger = logger or logging.getLogger(LOGGER_NAME)

    @property
    def logger(self) -> logging.Logger:
        return self._logger

    @property
    def enabled(self) -> bool:
        """Whether a decision line would be written (the logger is on for INFO)."""
        return self._logger.isEnabledFor(logging.INFO)

    def record(self, *, method: str, peer: SpiffeId | None, user: str | None,
               chain: Sequence[SpiffeId], allowed: bool, reason: str, rule: str | None,
               verify_us: int, presented: SpiffeId | None = None) -> None:
        # Building the line costs more than the policy check: skip it when nobody listens.
        if not self._logger.isEnabledFor(logging.INFO):
            return
        line = {
            "event": "mesh.authz",
            "service": self._service,
            "method": method,
            "peer": str(peer) if peer is not None else None,
            "user": user,
            "chain": [str(s) for s in chain],
            "decision": "allow" if allowed else "deny",
            "reason": reason,
            "rule": rule,
            "verify_us": verify_us,
        }
        if presented is not None:
            line["presented"] = str(presented)
        self._logger.info(json.dumps(line, separators=(",", ":")))
