"""Errors about identities: certificates a caller presented, and this service's own files.

Reason codes and their gRPC status live in :class:`mesh.errors.Reason`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mesh.errors import CallRefused, ConfigError, Reason

if TYPE_CHECKING:
    from mesh.identity.spiffeid import SpiffeId


class CertificateError(CallRefused):
    """A certificate (the peer's, or the one behind a signing key) is not acceptable.

    ``presented``: the SPIFFE ID the refused certificate carries, when it carries one, for the
    audit line; never verified, so never an identity to act on."""

    reason = Reason.CERT_UNTRUSTED

    def __init__(self, message: str, *, hop: int | None = None,
                 presented: SpiffeId | None = None) -> None:
        super().__init__(message, hop=hop)
        self.presented = presented


class CertificateUntrusted(CertificateError):
    """No valid chain to the trust anchors, not valid now, or not exactly one SPIFFE ID in the
    trust domain (spec 4.1)."""

    reason = Reason.CERT_UNTRUSTED


class CertificateRevoked(CertificateError):
    """The certificate, or a CA certificate on its chain below the anchor, is on the CRL."""

    reason = Reason.CERT_REVOKED


class CertificateFormatError(ConfigError, ValueError):
    """PEM or DER data could not be read as certificates."""

    reason = Reason.CONFIG_INVALID


class BundleError(ConfigError):
    """The trust bundle or CRL file could not be loaded (a configuration problem)."""

    reason = Reason.BUNDLE_INVALID


class SvidError(ConfigError):
    """The service's own SVID could not be loaded; the reason is in the subclass."""

    reason = Reason.SVID_INVALID


class SvidFileError(SvidError):
    """An SVID file is missing, unreadable or not PEM of the expected kind."""


class SvidKeyPermissionError(SvidFileError):
    """``svid_key.pem`` can be read or written by users other than its owner."""

    reason = Reason.SVID_KEY_EXPOSED


class SvidKeyMismatchError(SvidError):
    """The private key does not belong to the leaf certificate."""


class SvidNotSpiffeError(SvidError):
    """The leaf certificate does not carry exactly one SPIFFE ID."""


class SvidIdentityChanged(SvidError):
    """A reloaded SVID names another SPIFFE ID than the one the source started with."""


class SvidNotValidNow(SvidError):
    """A reloaded SVID's certificate is expired or not yet valid."""


class TrustMismatch(ConfigError):
    """The SVID's trust domain, its TLS anchors and the trust bundle do not agree."""

    reason = Reason.TRUST_MISMATCH
