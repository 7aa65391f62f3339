"""SPIFFE IDs, trust domains and meshid service names, as immutable values.

Rules follow the SPIFFE ID specification (SPIFFE-ID.md): scheme ``spiffe``, a trust domain of
``[a-z0-9._-]``, path segments of ``[A-Za-z0-9._-]`` with no empty, ``.`` or ``..`` segment, and
no query, fragment, port or user info. A meshid service ``NAME`` (``[a-z0-9-]``, 1..63) maps to
``spiffe://<td>/svc/<NAME>`` and the DNS name ``<NAME>.svc.<td>`` (DESIGN section 1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mesh.errors import InvalidSpiffeIdError

DEFAULT_TRUST_DOMAIN = "mesh.internal"
SCHEME = "spiffe://"
_MAX_ID_BYTES = 2048
_MAX_TD_BYTES = 255
_TD_RE = re.compile(r"[a-z0-9._-]+")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]+")
_SERVICE_RE = re.compile(r"[a-z0-9-]{1,63}")


def validate_service_name(name: str) -> str:
    """Return ``name`` if it is a valid service name, else raise InvalidSpiffeIdError."""
    if not isinstance(name, str) or not _SERVICE_RE.fullmatch(name):
        raise InvalidSpiffeIdError(
            f"service name {name!r} is invalid: use 1 to 63 characters of a-z, 0-9 and '-'"
        )
    if name.startswith("-") or name.endswith("-"):
        raise InvalidSpiffeIdError(
            f"service name {name!r} is invalid: it must not start or end with '-'"
        )
    return name


@dataclass(frozen=True, slots=True)
class TrustDomain:
    """A SPIFFE trust domain name such as ``mesh.internal``."""

    name: str

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name:
            raise InvalidSpiffeIdError("trust domain is empty")
        if len(name.encode()) > _MAX_TD_BYTES:
            raise InvalidSpiffeIdError(f"trust domain is longer than {_MAX_TD_BYTES} bytes")
        if not _TD_RE.fullmatch(name):
            raise InvalidSpiffeIdError(
                f"trust domain {name!r} is invalid: use only lowercase a-z, 0-9, '.', '-' and '_'"
            )

    @property
    def id(self) -> SpiffeId:
        """The trust domain's own SPIFFE ID (no path), as used in a CA's URI SAN."""
        return SpiffeId(self, "")

    def service(self, name: str) -> SpiffeId:
        """The SPIFFE ID of service ``name`` in this trust domain."""
        return SpiffeId(self, "/svc/" + validate_service_name(name))

    def service_dns_name(self, name: str) -> str:
        """The DNS name a client pins for service ``name`` (DESIGN section 1)."""
        return f"{validate_service_name(name)}.svc.{self.name}"

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A parsed, validated SPIFFE ID. ``str(x)`` gives its URI form."""

    trust_domain: TrustDomain
    path: str

    def __post_init__(self) -> None:
        if self.path:
            if not self.path.startswith("/"):
                raise InvalidSpiffeIdError("SPIFFE ID path must start with '/'")
            for segment in self.path[1:].split("/"):
                if not segment:
                    raise InvalidSpiffeIdError("SPIFFE ID path has an empty segment")
                if segment in (".", ".."):
                    raise InvalidSpiffeIdError("SPIFFE ID path has a '.' or '..' segment")
                if not _SEGMENT_RE.fullmatch(segment):
                    raise InvalidSpiffeIdError(
                        "SPIFFE ID path segment has a character outside "
                        "A-Z, a-z, 0-9, '.', '-', '_'"
                    )
        if len(str(self).encode()) > _MAX_ID_BYTES:
            raise InvalidSpiffeIdError(f"SPIFFE ID is longer than {_MAX_ID_BYTES} bytes")

    @classmethod
    def parse(cls, value: str) -> SpiffeId:
        """Parse ``spiffe://td/path``; raise InvalidSpiffeIdError naming the broken rule."""
        if not isinstance(value, str):
            raise InvalidSpiffeIdError("SPIFFE ID must be a string")
        if not value.startswith(SCHEME):
            raise InvalidSpiffeIdError("SPIFFE ID must start with 'spiffe://'")
        rest = value[len(SCHEME):]
        if any(c in rest for c in "?#"):
            raise InvalidSpiffeIdError("SPIFFE ID must not have a query or fragment")
        td, sep, path = rest.partition("/")
        if "@" in td:
            raise InvalidSpiffeIdError("SPIFFE ID must not have user info")
        if ":" in td:
            raise InvalidSpiffeIdError("SPIFFE ID must not have a port")
        return cls(TrustDomain(td), sep + path if sep else "")

    @property
    def service_name(self) -> str | None:
        """``NAME`` when this is ``spiffe://td/svc/NAME`` with a valid name, else None."""
        parts = self.path.split("/")
        if len(parts) == 3 and parts[1] == "svc":
            try:
                return validate_service_name(parts[2])
            except InvalidSpiffeIdError:
                return None
        return None

    def member_of(self, td: TrustDomain) -> bool:
        return self.trust_domain == td

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain.name}{self.path}"
