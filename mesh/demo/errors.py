"""The demo services' exception tree: one class per rule, each with its gRPC status and reason.

``status`` is a ``grpc.StatusCode`` and ``reason`` a stable machine code of the demo application
(the servicers put it in a ``google.rpc.ErrorInfo`` detail). These are the demo's business
codes, not meshid's: the library's own codes are :class:`mesh.errors.Reason`. Messages name
the rule in words a person can act on and never echo a password or token.
"""

from __future__ import annotations

from typing import ClassVar

import grpc


class DemoError(Exception):
    """Base class of every error raised by ``mesh.demo``."""

    reason: ClassVar[str] = "DEMO_ERROR"
    status: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL


class DemoConfigError(DemoError):
    """A service's command line, users file or state folder is unusable; it refuses to start."""

    reason = "DEMO_CONFIG_INVALID"
    status = grpc.StatusCode.FAILED_PRECONDITION


class UsersFileError(DemoConfigError):
    """The demo users file is missing, unreadable or breaks its format."""

    reason = "USERS_FILE_INVALID"


class InvalidCredentials(DemoError):
    """Unknown user or wrong password (deliberately not saying which)."""

    reason = "INVALID_CREDENTIALS"
    status = grpc.StatusCode.UNAUTHENTICATED


class InvalidRequest(DemoError):
    """A request field breaks its rule (empty order, quantity out of range, ...)."""

    reason = "INVALID_REQUEST"
    status = grpc.StatusCode.INVALID_ARGUMENT


class UnknownSku(DemoError):
    """The SKU is not in the catalog."""

    reason = "UNKNOWN_SKU"
    status = grpc.StatusCode.NOT_FOUND


class OutOfStock(DemoError):
    """Not enough units are available to reserve."""

    reason = "OUT_OF_STOCK"
    status = grpc.StatusCode.FAILED_PRECONDITION


class PaymentRefused(DemoError):
    """The charge breaks a payment rule (over the limit, currency, conflicting retry)."""

    reason = "PAYMENT_REFUSED"
    status = grpc.StatusCode.FAILED_PRECONDITION


class UserRequired(DemoError):
    """A handler that acts for a user found no verified user on the call."""

    reason = "USER_REQUIRED"
    status = grpc.StatusCode.PERMISSION_DENIED


class DownstreamFailed(DemoError):
    """A service this one depends on failed in a way that has no more precise reason."""

    reason = "DOWNSTREAM_FAILED"
    status = grpc.StatusCode.UNAVAILABLE
