"""The token exception tree.

Every verification failure is a :class:`TokenError` (a :class:`mesh.errors.CallRefused`) whose
*type* names the rule that failed and whose ``reason`` is a stable :class:`mesh.errors.Reason`
(with its gRPC status). ``hop`` says which layer of a nested token failed: 0 is the outermost
token (the one the peer signed), 1 the token it wraps, and so on; ``None`` when the failure is
not about one layer (the peer's certificate, the whole size).

Like PyJWT, the tree has intermediate classes so callers can catch a family
(:class:`TokenFormatError`, :class:`TokenTimeError`, ...) or one exact rule. Certificate
failures (:class:`CertificateUntrusted`, :class:`CertificateRevoked`) are identity errors,
re-exported here because the verifier raises them too.
"""

from __future__ import annotations

from mesh.errors import CallRefused, ConfigError, Reason
from mesh.identity.errors import (
    BundleError,
    CertificateError,
    CertificateRevoked,
    CertificateUntrusted,
)

__all__ = [
    "AlgorithmNotAllowed", "AudienceMismatch", "BundleError", "CertificateError",
    "CertificateRevoked", "CertificateUntrusted", "ChainBroken", "ChainError", "ClaimInvalid",
    "ClaimMissing", "ConfirmationMismatch", "DpopAlgorithmNotAllowed", "DpopAthMismatch",
    "DpopClaimInvalid", "DpopError", "DpopIatInvalid", "DpopJwkInvalid", "DpopJwkPrivate",
    "DpopKeyMismatch", "DpopMalformed", "DpopMethodMismatch", "DpopMissing", "DpopReplayCacheFull",
    "DpopReplayed", "DpopSignatureInvalid", "DpopTypeInvalid", "DpopUriMismatch",
    "ExpiryExtended", "HeaderInvalid",
    "IssuerMismatch", "IssuerUntrusted", "KeyUnknown", "PeerMismatch", "SignatureInvalid",
    "SigningError", "SubjectMismatch", "TokenError", "TokenExpired", "TokenFormatError",
    "TokenLifetimeTooLong", "TokenMalformed", "TokenMissing", "TokenNotYetValid",
    "TokenTimeError", "TokenTooDeep", "TokenTooLarge", "TypeMismatch", "UserTokenUnbound",
    "all_reasons",
]


class TokenError(CallRefused):
    """A token or token chain was rejected. ``reason`` names the rule."""

    reason = Reason.TOKEN_INVALID

# --- rule 2 and 3: shape of the token --------------------------------------------------------


class TokenFormatError(TokenError):
    """The token is not a well-formed meshid JWS (spec 3, 4.2, 4.3)."""

    reason = Reason.TOKEN_MALFORMED


class TokenMissing(TokenFormatError):
    reason = Reason.TOKEN_MISSING


class TokenMalformed(TokenFormatError):
    """Not three canonical base64url parts, not JSON, duplicate keys, not UTF-8, ..."""

    reason = Reason.TOKEN_MALFORMED


class TokenTooLarge(TokenFormatError):
    reason = Reason.TOKEN_TOO_LARGE


class TokenTooDeep(TokenFormatError):
    reason = Reason.TOKEN_TOO_DEEP


class HeaderInvalid(TokenFormatError):
    """The JOSE header is not exactly ``alg``, ``typ``, ``kid`` with valid values."""

    reason = Reason.HEADER_INVALID


class AlgorithmNotAllowed(HeaderInvalid):
    reason = Reason.ALG_NOT_ALLOWED


class ClaimMissing(TokenFormatError):
    reason = Reason.CLAIM_MISSING


class ClaimInvalid(TokenFormatError):
    """A claim has the wrong JSON type or an impossible value."""

    reason = Reason.CLAIM_INVALID


class TypeMismatch(TokenFormatError):
    """The token kind (``typ``) is not the one this position in the chain needs (RFC 8725 3.11)."""

    reason = Reason.TYPE_MISMATCH


# --- keys, signatures and certificates --------------------------------------------------------


class KeyUnknown(TokenError):
    """``kid`` names no valid key of the trust bundle."""

    reason = Reason.KEY_UNKNOWN


class SignatureInvalid(TokenError):
    reason = Reason.SIGNATURE_INVALID


# --- time ---------------------------------------------------------------------------------------


class TokenTimeError(TokenError):
    reason = Reason.TOKEN_TIME_INVALID


class TokenExpired(TokenTimeError):
    reason = Reason.TOKEN_EXPIRED


class TokenNotYetValid(TokenTimeError):
    """``iat`` or ``nbf`` lies in the future beyond the allowed clock skew."""

    reason = Reason.TOKEN_NOT_YET_VALID


class TokenLifetimeTooLong(TokenTimeError):
    """``exp - iat`` exceeds the verifier's maximum lifetime for the token's kind."""

    reason = Reason.TOKEN_LIFETIME_TOO_LONG


# --- who issued it, for whom, and how the layers fit -------------------------------------------


class AudienceMismatch(TokenError):
    reason = Reason.AUDIENCE_MISMATCH


class IssuerMismatch(TokenError):
    """``iss`` is not the SPIFFE ID of the certificate whose key signed the token."""

    reason = Reason.ISSUER_MISMATCH


class IssuerUntrusted(TokenError):
    """A user token signed by a service that is not a trusted user-token issuer."""

    reason = Reason.ISSUER_UNTRUSTED


class PeerMismatch(TokenError):
    """The outermost token was not issued and signed by the mutual-TLS peer (spec 4.4)."""

    reason = Reason.PEER_MISMATCH


class ConfirmationMismatch(TokenError):
    """``cnf.x5t#S256`` does not name the caller's certificate (RFC 8705)."""

    reason = Reason.CNF_MISMATCH


class ChainError(TokenError):
    """The layers of a nested token do not fit together (spec 4.5)."""

    reason = Reason.CHAIN_BROKEN


class ChainBroken(ChainError):
    """A wrapped token was not addressed to the service that wrapped it (spliced chain)."""

    reason = Reason.CHAIN_BROKEN


class SubjectMismatch(ChainError):
    reason = Reason.SUBJECT_MISMATCH


class ExpiryExtended(ChainError):
    """A wrapping token expires after the token it wraps."""

    reason = Reason.EXPIRY_EXTENDED


# --- sender-constrained user tokens at an edge port: DPoP (spec 4.7, RFC 9449) ---------------


class DpopError(TokenError):
    """A DPoP proof, or the binding between it and the user token, was refused (spec 4.7).

    ``hop`` is 0 when the user token itself is at fault (unbound), else None: a proof is not a
    layer of the token.
    """

    reason = Reason.DPOP_MALFORMED


class UserTokenUnbound(DpopError):
    """A user token without ``cnf.jkt`` at an edge port that requires bound tokens."""

    reason = Reason.USER_TOKEN_UNBOUND


class DpopMissing(DpopError):
    """No ``dpop`` proof where one is required."""

    reason = Reason.DPOP_MISSING


class DpopMalformed(DpopError):
    """Not one compact JWS of canonical base64url JSON objects; several proofs; too long."""

    reason = Reason.DPOP_MALFORMED


class DpopTypeInvalid(DpopError):
    reason = Reason.DPOP_TYPE_INVALID


class DpopAlgorithmNotAllowed(DpopError):
    reason = Reason.DPOP_ALG_NOT_ALLOWED


class DpopJwkInvalid(DpopError):
    """The header's ``jwk`` is not exactly a P-256 public key (kty, crv, x, y)."""

    reason = Reason.DPOP_JWK_INVALID


class DpopJwkPrivate(DpopError):
    """The header's ``jwk`` carries private key material."""

    reason = Reason.DPOP_JWK_PRIVATE


class DpopSignatureInvalid(DpopError):
    reason = Reason.DPOP_SIGNATURE_INVALID


class DpopClaimInvalid(DpopError):
    """A required proof claim (``jti``, ``htm``, ``htu``, ``iat``, ``ath``) is absent or of
    the wrong type."""

    reason = Reason.DPOP_CLAIM_INVALID


class DpopMethodMismatch(DpopError):
    reason = Reason.DPOP_HTM_MISMATCH


class DpopUriMismatch(DpopError):
    """The proof was made for another service or method (``htu``)."""

    reason = Reason.DPOP_HTU_MISMATCH


class DpopIatInvalid(DpopError):
    """The proof was made too long ago, or too far in the future (``iat``)."""

    reason = Reason.DPOP_IAT_INVALID


class DpopAthMismatch(DpopError):
    """The proof was made for another token (``ath``)."""

    reason = Reason.DPOP_ATH_MISMATCH


class DpopKeyMismatch(DpopError):
    """The proof's key is not the key the user token is bound to (``cnf.jkt``)."""

    reason = Reason.DPOP_KEY_MISMATCH


class DpopReplayed(DpopError):
    """This proof (its ``jti`` for its key) was already used within the window."""

    reason = Reason.DPOP_REPLAYED


class DpopReplayCacheFull(DpopError):
    """The replay cache is at its bound: freshness cannot be proven, so the call is refused."""

    reason = Reason.DPOP_REPLAY_CACHE_FULL


# --- not verification failures: configuration ---------------------------------------------------


class SigningError(ConfigError, ValueError):
    """A token could not be minted: wrong key type, key not matching the certificate, bad claim."""

    reason = Reason.SIGNING_FAILED


def all_reasons() -> dict[str, type[CallRefused]]:
    """Every reason code of the tree, mapped to its most specific class (for docs and tests)."""
    out: dict[str, type[CallRefused]] = {}
    stack: list[type[CallRefused]] = [TokenError, CertificateError]
    while stack:
        cls = stack.pop()
        out[cls.reason] = cls
        stack.extend(cls.__subclasses__())
    return out
