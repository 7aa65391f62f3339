"""Errors of the node agent. Reason codes live in :class:`mesh.errors.Reason`."""

from __future__ import annotations

from mesh.errors import ConfigError, MeshError, Reason


class AgentError(MeshError):
    """Base class of the agent's errors (the base reason: something the agent was given or
    told is unusable)."""

    reason = Reason.CONFIG_INVALID


class AgentConfigError(AgentError, ConfigError):
    """An option or the state folder is unusable (exit 2)."""

    reason = Reason.CONFIG_INVALID


class BootstrapError(AgentError):
    """The CA's served chain does not lead to the pinned root (wrong fingerprint, wrong
    server, or a chain that does not verify): the agent must not talk to it."""

    reason = Reason.TRUST_MISMATCH


class CAUnavailable(AgentError):
    """The CA could not be reached or did not answer (retried with backoff)."""

    reason = Reason.CA_UNAVAILABLE


class CARefused(AgentError):
    """The CA answered and refused; ``code`` is the CA's reason (``NODE_EVICTED``,
    ``JOIN_TOKEN_USED``, ...), and ``status`` its gRPC status. The class-level ``reason`` is only
    the family's default. ``retry_after``: seconds until asking again can succeed, when the CA
    said (``SVID_LIMIT``)."""

    reason = Reason.NOT_REGISTERED

    def __init__(self, message: str, code: Reason, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after

    @property
    def status(self):  # type: ignore[no-untyped-def]
        return self.code.status


class CAAnswerInvalid(AgentError):
    """The CA answered with something the agent refuses to use (a certificate for another
    identity or key, one that does not chain to the trust anchors)."""

    reason = Reason.SVID_INVALID
