"""The token exception tree.

Every verification failure is a :class:`TokenError` whose *type* names the rule that failed, with
two class attributes a server maps onto the wire: ``reason`` (a stable machine code for
``google.rpc.ErrorInfo``) and ``status`` (the gRPC status name). ``hop`` says which layer of a
nested token failed: 0 is the outermost token (the one the peer signed), 1 the token it wraps, and
so on; ``None`` when the failure is not about one layer (the peer's certificate, the whole size).

Messages are sentences a person can act on: they name the rule (DESIGN section 4.x) and the
SPIFFE IDs involved, and never contain a token, a signature or key material.

Like PyJWT, the tree has intermediate classes so callers can catch a family
(:class:`TokenFormatError`, :class:`TokenTimeError`, ...) or one exact rule.
"""

from __future__ import annotations

from typing import ClassVar

from mesh.errors import MeshError

UNAUTHENTICATED = "UNAUTHENTICATED"
PERMISSION_DENIED = "PERMISSION_DENIED"


class TokenError(MeshError):
    """A token or token chain was rejected. ``reason`` and ``status`` name the rule."""

    reason: ClassVar[str] = "TOKEN_INVALID"
    status: ClassVar[str] = UNAUTHENTICATED

    def __init__(self, message: str, *, hop: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hop = hop

    def __str__(self) -> str:
        return self.message

    def at_hop(self, hop: int) -> TokenError:
        """Set ``hop`` if nothing set it yet; returns self so it can be re-raised."""
        if self.hop is None:
            self.hop = hop
        return self


# --- rule 2 and 3: shape of the token --------------------------------------------------------


class TokenFormatError(TokenError):
    """The token is not a well-formed meshid JWS (DESIGN 3, 4.2, 4.3)."""

    reason = "TOKEN_MALFORMED"


class TokenMissing(TokenFormatError):
    reason = "TOKEN_MISSING"


class TokenMalformed(TokenFormatError):
    """Not three canonical base64url parts, not JSON, duplicate keys, not UTF-8, ..."""

    reason = "TOKEN_MALFORMED"


class TokenTooLarge(TokenFormatError):
    reason = "TOKEN_TOO_LARGE"


class TokenTooDeep(TokenFormatError):
    reason = "TOKEN_TOO_DEEP"


class HeaderInvalid(TokenFormatError):
    """The JOSE header is not exactly ``alg``, ``typ``, ``kid`` with valid values."""

    reason = "HEADER_INVALID"


class AlgorithmNotAllowed(HeaderInvalid):
    reason = "ALG_NOT_ALLOWED"


class ClaimMissing(TokenFormatError):
    reason = "CLAIM_MISSING"


class ClaimInvalid(TokenFormatError):
    """A claim has the wrong JSON type or an impossible value."""

    reason = "CLAIM_INVALID"


class TypeMismatch(TokenFormatError):
    """The token kind (``typ``) is not the one this position in the chain needs (RFC 8725 3.11)."""

    reason = "TYPE_MISMATCH"


# --- keys, signatures and certificates --------------------------------------------------------


class KeyUnknown(TokenError):
    """``kid`` names no valid key of the trust bundle."""

    reason = "KEY_UNKNOWN"


class SignatureInvalid(TokenError):
    reason = "SIGNATURE_INVALID"


class CertificateError(TokenError):
    """A certificate (the peer's, or the one behind a signing key) is not acceptable."""

    reason = "CERT_UNTRUSTED"


class CertificateUntrusted(CertificateError):
    """No valid chain to the trust anchors, expired, or not exactly one SPIFFE ID in the domain."""

    reason = "CERT_UNTRUSTED"


class CertificateRevoked(CertificateError):
    reason = "CERT_REVOKED"


# --- time ---------------------------------------------------------------------------------------


class TokenTimeError(TokenError):
    reason = "TOKEN_TIME_INVALID"


class TokenExpired(TokenTimeError):
    reason = "TOKEN_EXPIRED"


class TokenNotYetValid(TokenTimeError):
    """``iat`` or ``nbf`` lies in the future beyond the allowed clock skew."""

    reason = "TOKEN_NOT_YET_VALID"


class TokenLifetimeTooLong(TokenTimeError):
    """``exp - iat`` exceeds the verifier's maximum lifetime for the token's kind."""

    reason = "TOKEN_LIFETIME_TOO_LONG"


# --- who issued it, for whom, and how the layers fit -------------------------------------------


class AudienceMismatch(TokenError):
    reason = "AUDIENCE_MISMATCH"


class IssuerMismatch(TokenError):
    """``iss`` is not the SPIFFE ID of the certificate whose key signed the token."""

    reason = "ISSUER_MISMATCH"


class IssuerUntrusted(TokenError):
    """A user token signed by a service that is not a trusted user-token issuer."""

    reason = "ISSUER_UNTRUSTED"


class PeerMismatch(TokenError):
    """The outermost token was not issued and signed by the mutual-TLS peer (DESIGN 4.4)."""

    reason = "PEER_MISMATCH"


class ConfirmationMismatch(TokenError):
    """``cnf.x5t#S256`` does not name the caller's certificate (RFC 8705)."""

    reason = "CNF_MISMATCH"


class ChainError(TokenError):
    """The layers of a nested token do not fit together (DESIGN 4.5)."""

    reason = "CHAIN_BROKEN"


class ChainBroken(ChainError):
    """A wrapped token was not addressed to the service that wrapped it (spliced chain)."""

    reason = "CHAIN_BROKEN"


class SubjectMismatch(ChainError):
    reason = "SUBJECT_MISMATCH"


class ExpiryExtended(ChainError):
    """A wrapping token expires after the token it wraps."""

    reason = "EXPIRY_EXTENDED"


# --- not verification failures: configuration ---------------------------------------------------


class BundleError(MeshError):
    """The trust bundle or CRL file could not be loaded (a configuration problem, not a token)."""


class SigningError(MeshError, ValueError):
    """A token could not be minted: wrong key type, key not matching the certificate, bad claim."""


def all_reasons() -> dict[str, type[TokenError]]:
    """Every reason code of the tree, mapped to its most specific class (for docs and tests)."""
    out: dict[str, type[TokenError]] = {}
    stack: list[type[TokenError]] = [TokenError]
    while stack:
        cls = stack.pop()
        out[cls.reason] = cls
        stack.extend(cls.__subclasses__())
    return out
