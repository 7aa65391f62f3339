"""Errors of the CA service: refusals sent to agents, and operator mistakes at the CLI.

:class:`Refused` carries the stable :class:`mesh.errors.Reason` a refused RPC gets (with its
gRPC status) and a sentence an operator can act on; it never holds a token, key or CSR.
Operator errors are :class:`ca.errors.CAError` subclasses like the rest of ``mesh-ca``.
"""

from __future__ import annotations

from ca.errors import CAError, InvalidInput
from mesh.errors import Reason


class Refused(CAError):
    """An agent's request was refused and changed nothing; ``wire`` is the reason it gets.

    ``retry_after`` (seconds, ``SVID_LIMIT`` only): when asking again can succeed; sent as the
    ErrorInfo metadata entry ``retry_after``.
    """

    reason = "CA_SERVICE_REFUSED"

    def __init__(self, wire: Reason, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.wire = wire
        self.message = message
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message


class UnknownNode(CAError, LookupError):
    reason = "UNKNOWN_NODE"


class NodeEvicted(CAError):
    """The node was evicted: it gets no join token, registration or certificate again."""

    reason = "NODE_EVICTED"


class UnknownRegistration(CAError, LookupError):
    reason = "UNKNOWN_REGISTRATION"


class InvalidUid(InvalidInput):
    reason = "INVALID_UID"


class ServeError(CAError):
    """``mesh-ca serve`` cannot start (an address that does not bind, a CA it must not serve)."""

    reason = "SERVE_ERROR"
