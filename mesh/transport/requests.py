"""Parsing a request message after the call was authenticated (spec 5).

Mesh servers register every handler with no request deserializer, so gRPC hands the wrapper
raw bytes: the peer, token and policy checks run first, and only an authenticated, authorised
caller's bytes ever reach the protobuf parser. A message that does not parse is refused with
``INVALID_ARGUMENT`` / ``REQUEST_INVALID`` and a plain sentence; the parser's exception type and
text stay out of the reply and out of the log (they can echo attacker-chosen bytes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from mesh.errors import CallRefused, Reason

_log = logging.getLogger(__name__)


class RequestInvalid(CallRefused):
    """The request message of an authenticated call could not be parsed."""

    reason = Reason.REQUEST_INVALID


def _message_name(deserializer: Callable[[bytes], Any]) -> str:
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", None)
    return name if isinstance(name, str) else "request message"


class Parser:
    """Turns the raw request bytes of one method into its message, or raises RequestInvalid."""

    __slots__ = ("_deserializer", "_method", "_what")

    def __init__(self, deserializer: Callable[[bytes], Any] | None, method: str) -> None:
        self._deserializer = deserializer
        self._method = method
        self._what = _message_name(deserializer) if deserializer is not None else ""

    def __call__(self, raw: Any) -> Any:
        if self._deserializer is None:
            return raw
        try:
            return self._deserializer(raw)
        except Exception as err:
            _log.info("refused a request to %s: its bytes are not a valid %s",
                      self._method, self._what)
            raise RequestInvalid(
                f"the request to {self._method} is not a valid {self._what}: it could not be "
                "parsed, so nothing was done (spec 5)"
            ) from err
