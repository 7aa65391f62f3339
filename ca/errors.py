"""The ``ca`` exception tree: one root, the failed rule in the type.

Each class carries a stable machine ``reason`` code; the message is one sentence a person can
act on. Third-party errors are translated at the boundary (``raise ... from err``). No message
ever contains key material.
"""

from __future__ import annotations

from typing import ClassVar


class CAError(Exception):
    """Base class of every error raised by ``ca``."""

    reason: ClassVar[str] = "CA_ERROR"


class InvalidInput(CAError, ValueError):
    """A value given to the CA breaks a rule; nothing was changed."""

    reason = "INVALID_INPUT"


class InvalidServiceName(InvalidInput):
    reason = "INVALID_SERVICE_NAME"


class InvalidTrustDomain(InvalidInput):
    reason = "INVALID_TRUST_DOMAIN"


class InvalidSAN(InvalidInput):
    """An extra DNS name or IP address asked for is not acceptable."""

    reason = "INVALID_SAN"


class InvalidValidity(InvalidInput):
    """A lifetime or start time is out of range."""

    reason = "INVALID_VALIDITY"


class InvalidRevocationReason(InvalidInput):
    reason = "INVALID_REVOCATION_REASON"


class InvalidSerial(InvalidInput):
    reason = "INVALID_SERIAL"


class BadCSR(InvalidInput):
    """A certificate signing request is unreadable, badly signed or has the wrong key type."""

    reason = "BAD_CSR"


class InvalidCertificate(InvalidInput):
    """A file given for inspection holds no readable certificate."""

    reason = "INVALID_CERTIFICATE"


class CANotFound(CAError):
    reason = "CA_NOT_FOUND"


class CAExists(CAError):
    reason = "CA_EXISTS"


class CAKeyMismatch(CAError):
    """A CA private key does not belong to the certificate stored beside it."""

    reason = "CA_KEY_MISMATCH"


class InsecureCAKey(CAError):
    """A CA key file is readable or writable by other users; the CA refuses to use it."""

    reason = "INSECURE_CA_KEY"


class CorruptCA(CAError):
    """The CA folder exists but a file in it is unreadable or inconsistent."""

    reason = "CORRUPT_CA"


class UnknownSerial(CAError, LookupError):
    reason = "UNKNOWN_SERIAL"


class UnknownService(CAError, LookupError):
    reason = "UNKNOWN_SERVICE"


class AlreadyRevoked(CAError):
    """For callers that report a revocation that changed nothing. ``revoke`` does not raise
    it: a repeat republishes, which is how to make sure a revocation is out."""

    reason = "ALREADY_REVOKED"


class OutputError(CAError):
    """A file could not be written; the registry was left as it was."""

    reason = "OUTPUT_ERROR"
