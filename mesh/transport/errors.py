"""Errors raised by the gRPC layer of ``mesh`` (servers, channels): local misuses.

Verification failures of an inbound call are :class:`mesh.errors.CallRefused` subclasses
(certificate, token) or a policy :class:`mesh.policy.Decision`; they reach the caller as a
status with an ErrorInfo (:mod:`mesh.transport.status`).
"""

from __future__ import annotations

from mesh.errors import ConfigError, Reason, UserRequiredError

__all__ = ["InsecureServerError", "ServerConfigError", "UserRequiredError"]


class ServerConfigError(ConfigError):
    """A server or channel was built with contradictory or missing settings."""

    reason = Reason.CONFIG_INVALID


class InsecureServerError(ServerConfigError):
    """A mesh server was asked to serve without mutual TLS (only edge servers may)."""

    reason = Reason.INSECURE_SERVER
