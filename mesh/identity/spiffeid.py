"""SPIFFE IDs, trust domains and meshid service names, as immutable values.

Rules follow the SPIFFE ID specification (SPIFFE-ID.md): scheme ``spiffe``, a trust domain of
``[a-z0-9._-]``, path segments of ``[A-Za-z0-9._-]`` with no empty, ``.`` or ``..`` segment, and
no query, fragment, port or user info. A meshid service ``NAME`` (``[a-z0-9-]``, 1..63) maps to
``spiffe://<td>/svc/<NAME>`` and the DNS name ``<NAME>.svc.<td>`` (spec 1).

Everywhere meshid takes an identity (a verifier's own ID, a callee, a policy's peers, a token
audience, a trusted issuer) it accepts the same three forms through :func:`spiffe_id`: a
:class:`SpiffeId`, the text ``spiffe://td/path``, or a service ``NAME`` of the trust domain in
context. Anything else is refused when the object is built, never later at a call.
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
# The whole of a valid ID in one match: the fast path of SpiffeId.parse (tokens carry several
# IDs, parsed on every new token); anything it does not match takes the rule-by-rule path,
# which names the broken rule.
_ID_RE = re.compile(r"spiffe://([a-z0-9._-]{1,255})((?:/[A-Za-z0-9._-]+)*)")


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
        """The DNS name a client pins for service ``name`` (spec 1.5)."""
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
        match = _ID_RE.fullmatch(value)
        if match is not None and len(value) <= _MAX_ID_BYTES and not _DOT_SEGMENT.search(
            match.group(2)
        ):
            return _trusted(match.group(1), match.group(2))
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

    @property
    def reserved_role(self) -> str | None:
        """What this ID names when it is the CA service's (``/ca``) or a node agent's
        (``/agent/NODE``): identities that may never sign a token (spec 8). None otherwise."""
        if self.path == "/ca":
            return "the CA service"
        if self.path.startswith("/agent/"):
            return "a node agent"
        return None

    def member_of(self, td: TrustDomain) -> bool:
        return self.trust_domain == td

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain.name}{self.path}"


_DOT_SEGMENT = re.compile(r"/\.\.?(?=/|$)")


def _trusted(td: str, path: str) -> SpiffeId:
    """A SpiffeId from parts the full-ID pattern already validated (skips re-validation)."""
    domain = object.__new__(TrustDomain)
    object.__setattr__(domain, "name", td)
    sid = object.__new__(SpiffeId)
    object.__setattr__(sid, "trust_domain", domain)
    object.__setattr__(sid, "path", path)
    return sid


def spiffe_id(value: SpiffeId | str, trust_domain: TrustDomain | str | None = None) -> SpiffeId:
    """The one rule for naming an identity: a :class:`SpiffeId`, ``spiffe://td/path``, or a
    service ``NAME`` of ``trust_domain`` (``spiffe://<td>/svc/<NAME>``).

    Raises :class:`InvalidSpiffeIdError` for anything else, including a bare name when no trust
    domain is known.
    """
    if isinstance(value, SpiffeId):
        return value
    if not isinstance(value, str):
        raise InvalidSpiffeIdError(
            f"an identity must be a SpiffeId, 'spiffe://...' text or a service name, not "
            f"{type(value).__name__}"
        )
    if value.startswith(SCHEME):
        return SpiffeId.parse(value)
    if trust_domain is None:
        raise InvalidSpiffeIdError(
            f"{value!r} is not a SPIFFE ID, and no trust domain is known to make it one: write "
            "spiffe://<trust domain>/svc/<name>"
        )
    td = trust_domain if isinstance(trust_domain, TrustDomain) else TrustDomain(trust_domain)
    return td.service(value)
