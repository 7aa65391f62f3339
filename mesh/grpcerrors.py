"""Errors raised by the gRPC layer of ``mesh`` (servers, channels, client interceptors).

Verification failures of an inbound call are :class:`mesh.tokens.errors.TokenError` (peer
certificate and token) or a policy :class:`mesh.policy.Decision`; they reach the caller as a
status with an ErrorInfo (:mod:`mesh.status`). The classes here are local misuses.
"""

from __future__ import annotations

from typing import ClassVar

from mesh.errors import MeshError


class MeshGrpcError(MeshError):
    """Base of the gRPC layer's own errors."""

    reason: ClassVar[str] = "MESH_GRPC_ERROR"


class InsecureServerError(MeshGrpcError):
    """A mesh server was asked to serve without mutual TLS (only edge servers may)."""

    reason = "INSECURE_SERVER"


class ServerConfigError(MeshGrpcError):
    """A server or channel was built with contradictory or missing settings."""

    reason = "CONFIG_INVALID"


class UserRequiredError(MeshGrpcError):
    """An outgoing call needs an end user (channel policy) and the current call carries none."""

    reason = "USER_REQUIRED"
