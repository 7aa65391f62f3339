"""meshid's one error contract: every stable reason code, its gRPC status, and the error tree.

:class:`Reason` lists every machine-readable code meshid puts in a ``google.rpc.ErrorInfo``
detail (domain ``meshid``), in an audit line or on an exception, each with the gRPC status a
call refused for that reason gets. ``docs/spec.md`` section 7 is the same table in words; a
test keeps the two equal.

Every exception meshid raises derives from :class:`MeshError` and carries a ``reason``. Two
families matter to callers:

- :class:`CallRefused`: a call or token was refused (certificate, token, DPoP proof, policy).
  ``hop`` says which layer of a nested token failed (0 = the outermost).
- :class:`ConfigError`: a service is misconfigured (a bad SVID folder, bundle, policy, name).
  These happen at start or reload, never because of what a caller sent.

Errors of third-party libraries are translated at the boundary (``raise ... from err``).
"""

from __future__ import annotations

import enum
from typing import ClassVar

import grpc

_S = grpc.StatusCode


class Reason(enum.StrEnum):
    """A stable reason code; ``.status`` is the gRPC status of a call refused for it."""

    status: grpc.StatusCode

    def __new__(cls, value: str, status: grpc.StatusCode) -> Reason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.status = status
        return member

    # --- the token as a whole: size, depth, encoding (spec 4.2, 4.3) -------------------------
    TOKEN_INVALID = "TOKEN_INVALID", _S.UNAUTHENTICATED
    TOKEN_MISSING = "TOKEN_MISSING", _S.UNAUTHENTICATED
    TOKEN_MALFORMED = "TOKEN_MALFORMED", _S.UNAUTHENTICATED
    TOKEN_TOO_LARGE = "TOKEN_TOO_LARGE", _S.UNAUTHENTICATED
    TOKEN_TOO_DEEP = "TOKEN_TOO_DEEP", _S.UNAUTHENTICATED
    HEADER_INVALID = "HEADER_INVALID", _S.UNAUTHENTICATED
    ALG_NOT_ALLOWED = "ALG_NOT_ALLOWED", _S.UNAUTHENTICATED
    TYPE_MISMATCH = "TYPE_MISMATCH", _S.UNAUTHENTICATED
    CLAIM_MISSING = "CLAIM_MISSING", _S.UNAUTHENTICATED
    CLAIM_INVALID = "CLAIM_INVALID", _S.UNAUTHENTICATED
    # --- keys, signatures, certificates (spec 4.1, 4.4, 4.5) ---------------------------------
    KEY_UNKNOWN = "KEY_UNKNOWN", _S.UNAUTHENTICATED
    SIGNATURE_INVALID = "SIGNATURE_INVALID", _S.UNAUTHENTICATED
    CERT_UNTRUSTED = "CERT_UNTRUSTED", _S.UNAUTHENTICATED
    CERT_REVOKED = "CERT_REVOKED", _S.UNAUTHENTICATED
    # --- time (spec 4.4) -------------------------------------------------------------------------
    TOKEN_TIME_INVALID = "TOKEN_TIME_INVALID", _S.UNAUTHENTICATED
    TOKEN_EXPIRED = "TOKEN_EXPIRED", _S.UNAUTHENTICATED
    TOKEN_NOT_YET_VALID = "TOKEN_NOT_YET_VALID", _S.UNAUTHENTICATED
    TOKEN_LIFETIME_TOO_LONG = "TOKEN_LIFETIME_TOO_LONG", _S.UNAUTHENTICATED
    # --- who issued it, for whom, how the layers fit (spec 4.4, 4.5) -------------------------
    AUDIENCE_MISMATCH = "AUDIENCE_MISMATCH", _S.UNAUTHENTICATED
    ISSUER_MISMATCH = "ISSUER_MISMATCH", _S.UNAUTHENTICATED
    ISSUER_UNTRUSTED = "ISSUER_UNTRUSTED", _S.UNAUTHENTICATED
    PEER_MISMATCH = "PEER_MISMATCH", _S.UNAUTHENTICATED
    CNF_MISMATCH = "CNF_MISMATCH", _S.UNAUTHENTICATED
    CHAIN_BROKEN = "CHAIN_BROKEN", _S.UNAUTHENTICATED
    SUBJECT_MISMATCH = "SUBJECT_MISMATCH", _S.UNAUTHENTICATED
    EXPIRY_EXTENDED = "EXPIRY_EXTENDED", _S.UNAUTHENTICATED
    # --- policy (spec 4.6) -----------------------------------------------------------------------
    ALLOWED = "ALLOWED", _S.OK
    NO_POLICY_RULE = "NO_POLICY_RULE", _S.PERMISSION_DENIED
    PEER_NOT_ALLOWED = "PEER_NOT_ALLOWED", _S.PERMISSION_DENIED
    CHAIN_NOT_ALLOWED = "CHAIN_NOT_ALLOWED", _S.PERMISSION_DENIED
    USER_REQUIRED = "USER_REQUIRED", _S.PERMISSION_DENIED
    SCOPE_MISSING = "SCOPE_MISSING", _S.PERMISSION_DENIED
    ROLE_MISSING = "ROLE_MISSING", _S.PERMISSION_DENIED
    # --- the server itself (spec 5) --------------------------------------------------------------
    TOKENLESS_METHOD = "TOKENLESS_METHOD", _S.OK
    VERIFIER_FAILED = "VERIFIER_FAILED", _S.INTERNAL
    # --- the request message, parsed only after authentication (spec 5) -----------------------
    REQUEST_INVALID = "REQUEST_INVALID", _S.INVALID_ARGUMENT
    # --- sender-constrained user tokens at an edge port (spec 4.7, RFC 9449) -------------------
    USER_TOKEN_UNBOUND = "USER_TOKEN_UNBOUND", _S.UNAUTHENTICATED
    DPOP_MISSING = "DPOP_MISSING", _S.UNAUTHENTICATED
    DPOP_MALFORMED = "DPOP_MALFORMED", _S.UNAUTHENTICATED
    DPOP_TYPE_INVALID = "DPOP_TYPE_INVALID", _S.UNAUTHENTICATED
    DPOP_ALG_NOT_ALLOWED = "DPOP_ALG_NOT_ALLOWED", _S.UNAUTHENTICATED
    DPOP_JWK_INVALID = "DPOP_JWK_INVALID", _S.UNAUTHENTICATED
    DPOP_JWK_PRIVATE = "DPOP_JWK_PRIVATE", _S.UNAUTHENTICATED
    DPOP_SIGNATURE_INVALID = "DPOP_SIGNATURE_INVALID", _S.UNAUTHENTICATED
    DPOP_CLAIM_INVALID = "DPOP_CLAIM_INVALID", _S.UNAUTHENTICATED
    DPOP_HTM_MISMATCH = "DPOP_HTM_MISMATCH", _S.UNAUTHENTICATED
    DPOP_HTU_MISMATCH = "DPOP_HTU_MISMATCH", _S.UNAUTHENTICATED
    DPOP_IAT_INVALID = "DPOP_IAT_INVALID", _S.UNAUTHENTICATED
    DPOP_ATH_MISMATCH = "DPOP_ATH_MISMATCH", _S.UNAUTHENTICATED
    DPOP_KEY_MISMATCH = "DPOP_KEY_MISMATCH", _S.UNAUTHENTICATED
    DPOP_REPLAYED = "DPOP_REPLAYED", _S.UNAUTHENTICATED
    DPOP_REPLAY_CACHE_FULL = "DPOP_REPLAY_CACHE_FULL", _S.UNAUTHENTICATED
    # --- the CA service and node agents (spec 8) -------------------------------------------------
    JOIN_TOKEN_UNKNOWN = "JOIN_TOKEN_UNKNOWN", _S.UNAUTHENTICATED
    JOIN_TOKEN_EXPIRED = "JOIN_TOKEN_EXPIRED", _S.UNAUTHENTICATED
    JOIN_TOKEN_USED = "JOIN_TOKEN_USED", _S.UNAUTHENTICATED
    JOIN_TOKEN_NODE_MISMATCH = "JOIN_TOKEN_NODE_MISMATCH", _S.UNAUTHENTICATED
    NODE_EVICTED = "NODE_EVICTED", _S.PERMISSION_DENIED
    NOT_AN_AGENT = "NOT_AN_AGENT", _S.PERMISSION_DENIED
    NOT_REGISTERED = "NOT_REGISTERED", _S.PERMISSION_DENIED
    CSR_INVALID = "CSR_INVALID", _S.INVALID_ARGUMENT
    SVID_LIMIT = "SVID_LIMIT", _S.RESOURCE_EXHAUSTED
    CA_UNAVAILABLE = "CA_UNAVAILABLE", _S.UNAVAILABLE
    # --- the SPIFFE Workload API served by the agent (spec 9) ------------------------------------
    WORKLOAD_HEADER_MISSING = "WORKLOAD_HEADER_MISSING", _S.INVALID_ARGUMENT
    WORKLOAD_UNKNOWN = "WORKLOAD_UNKNOWN", _S.PERMISSION_DENIED
    WORKLOAD_API_UNIMPLEMENTED = "WORKLOAD_API_UNIMPLEMENTED", _S.UNIMPLEMENTED
    # --- local configuration: raised at start or reload, never sent on the wire ---------------
    MESH_ERROR = "MESH_ERROR", _S.INTERNAL
    CONFIG_INVALID = "CONFIG_INVALID", _S.FAILED_PRECONDITION
    INSECURE_SERVER = "INSECURE_SERVER", _S.FAILED_PRECONDITION
    SPIFFE_ID_INVALID = "SPIFFE_ID_INVALID", _S.INVALID_ARGUMENT
    SVID_INVALID = "SVID_INVALID", _S.FAILED_PRECONDITION
    SVID_KEY_EXPOSED = "SVID_KEY_EXPOSED", _S.FAILED_PRECONDITION
    BUNDLE_INVALID = "BUNDLE_INVALID", _S.FAILED_PRECONDITION
    POLICY_INVALID = "POLICY_INVALID", _S.FAILED_PRECONDITION
    SIGNING_FAILED = "SIGNING_FAILED", _S.FAILED_PRECONDITION
    TRUST_MISMATCH = "TRUST_MISMATCH", _S.FAILED_PRECONDITION


class MeshError(Exception):
    """Base class of every error raised by ``mesh``; ``reason`` names the rule that failed."""

    reason: ClassVar[Reason] = Reason.MESH_ERROR

    @property
    def status(self) -> grpc.StatusCode:
        """The gRPC status a call refused for this error gets."""
        return self.reason.status


class CallRefused(MeshError):
    """A call, or a token it carries, was refused. ``hop`` names the layer (0 = outermost).

    Messages are sentences a person can act on: they name the rule (a ``docs/spec.md``
    section) and the SPIFFE IDs involved, and never contain a token, a signature or a key.
    """

    reason = Reason.TOKEN_INVALID

    def __init__(self, message: str, *, hop: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hop = hop

    def __str__(self) -> str:
        return self.message

    def at_hop(self, hop: int) -> CallRefused:
        """Set ``hop`` if nothing set it yet; returns self so it can be re-raised."""
        if self.hop is None:
            self.hop = hop
        return self


class UserRequiredError(CallRefused):
    """The call needs an end user and carries none (:func:`mesh.require_user`, a channel
    with ``require_user=True``)."""

    reason = Reason.USER_REQUIRED


class ConfigError(MeshError):
    """Something this service was given (a file, a name, an option) is unusable."""

    reason = Reason.CONFIG_INVALID


class InvalidSpiffeIdError(ConfigError, ValueError):
    """A string is not a valid SPIFFE ID, trust domain or service name."""

    reason = Reason.SPIFFE_ID_INVALID


def all_error_classes() -> list[type[MeshError]]:
    """Every MeshError class defined so far (for docs and tests)."""
    out: list[type[MeshError]] = []
    stack: list[type[MeshError]] = [MeshError]
    while stack:
        cls = stack.pop()
        out.append(cls)
        stack.extend(cls.__subclasses__())
    return out
