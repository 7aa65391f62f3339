"""Parsers for what people type: lifetimes (``24h``, ``1h30m``) and serials (hex). The one way
serials are printed, :func:`format_serial`, lives in :mod:`mesh.identity.certs` (``mesh`` never
imports ``ca``) and is re-exported here."""

from __future__ import annotations

import re
from datetime import timedelta

from ca.errors import InvalidSerial, InvalidValidity
from mesh.identity.certs import SERIAL_DIGITS, format_serial

__all__ = ["SERIAL_DIGITS", "format_duration", "format_serial", "parse_duration",
           "parse_serial"]

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:(\d{1,6})d)?(?:(\d{1,7})h)?(?:(\d{1,9})m)?(?:(\d{1,10})s)?")
MAX_TTL = timedelta(days=3650)


def parse_duration(text: str) -> timedelta:
    """``30s``, ``15m``, ``24h``, ``7d`` or a combination in that order (``1d12h``)."""
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if not text or match is None or not any(match.groups()):
        raise InvalidValidity(
            f"lifetime {text!r} is invalid: write a number with a unit, like 30s, 15m, 24h or 7d"
        )
    seconds = sum(int(v) * _UNITS[u] for v, u in zip(match.groups(), "dhms", strict=True) if v)
    if seconds <= 0:
        raise InvalidValidity(f"lifetime {text!r} is invalid: it must be at least one second")
    if seconds > MAX_TTL.total_seconds():
        raise InvalidValidity(f"lifetime {text!r} is invalid: the longest is 3650d")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta, *, units: int = 4) -> str:
    """The inverse of :func:`parse_duration` for whole seconds (``90061s`` -> ``1d1h1m1s``).

    ``units`` keeps only the largest few (``units=2``: ``1d1h``), for display.
    """
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in _UNITS.items():
        value, seconds = divmod(seconds, size)
        if value:
            parts.append(f"{value}{unit}")
    return "".join(parts[:units])


def parse_serial(text: str) -> int:
    """A serial as this CA and openssl print it: hex in any case, with or without leading
    zeros, an optional ``0x`` prefix and ``:`` separators (``0A:1B``, as some tools print)."""
    cleaned = text.strip().lower().replace(":", "") if isinstance(text, str) else ""
    cleaned = cleaned.removeprefix("0x")
    if not cleaned or not re.fullmatch(r"[0-9a-f]+", cleaned):
        raise InvalidSerial(f"serial {text!r} is not a hexadecimal number of up to 20 bytes")
    value = int(cleaned, 16)
    if value == 0:
        raise InvalidSerial("serial 0 is invalid: serials are positive")
    if value.bit_length() > 160:
        raise InvalidSerial(f"serial {text!r} is not a hexadecimal number of up to 20 bytes")
    return value
