"""Checks on what a caller asks the CA for, translated into ``ca`` errors."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca.errors import InvalidSAN, InvalidServiceName, InvalidTrustDomain
from ca.templates import IPAddress
from mesh.errors import InvalidSpiffeIdError
from mesh.identity.spiffeid import TrustDomain, validate_service_name

_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def check_trust_domain(trust_domain: str) -> TrustDomain:
    try:
        return TrustDomain(trust_domain)
    except InvalidSpiffeIdError as err:
        raise InvalidTrustDomain(str(err)) from err


#: Service names the CA never issues: ``ca.svc.<td>`` is the CA service's own DNS name, which
#: node agents pin (spec 8); a service called ``ca`` could answer for the CA.
RESERVED_NAMES = frozenset({"ca"})


def check_name(name: str) -> str:
    try:
        name = validate_service_name(name)
    except InvalidSpiffeIdError as err:
        raise InvalidServiceName(str(err)) from err
    if name in RESERVED_NAMES:
        raise InvalidServiceName(
            f"service name {name!r} is reserved: {name}.svc.<trust domain> is the CA service's "
            "own name, which node agents pin"
        )
    return name


def check_dns(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    if isinstance(names, str):
        raise InvalidSAN("dns must be a sequence of names, not a single string")
    for name in names:
        if not isinstance(name, str) or not name or len(name) > 253:
            raise InvalidSAN(f"DNS name {name!r} is invalid: use 1 to 253 characters")
        labels = name.rstrip(".").split(".")
        if name.startswith("*"):
            raise InvalidSAN(f"DNS name {name!r} is a wildcard; this CA issues exact names only")
        if not all(_DNS_LABEL.fullmatch(label) for label in labels):
            raise InvalidSAN(
                f"DNS name {name!r} is invalid: each label needs 1 to 63 characters of "
                "lowercase a-z, 0-9 and '-', not starting or ending with '-'"
            )
        canonical = ".".join(labels)
        if canonical not in out:
            out.append(canonical)
    return out


def check_dns_reserved(name: str, td: TrustDomain, dns: Sequence[str]) -> None:
    """Refuse extra DNS names inside the trust domain's own namespace.

    Python clients authenticate a server only by the pinned name ``<NAME>.svc.<td>`` (spec
    1.5), so every name under ``<td>`` is reserved to the service it names: a certificate
    for ``orders`` naming ``payments.svc.<td>`` would let orders' key serve as payments.
    """
    own = td.service_dns_name(name)
    suffix = "." + td.name
    for extra in dns:
        if extra != own and (extra == td.name or extra.endswith(suffix)):
            raise InvalidSAN(
                f"DNS name {extra!r} is inside trust domain {td.name}, where names are reserved "
                f"to the service they name; {name} may only have {own} there"
            )


def check_ips(ips: Sequence[str | IPAddress]) -> list[IPAddress]:
    if isinstance(ips, str):
        raise InvalidSAN("ips must be a sequence of addresses, not a single string")
    out: list[IPAddress] = []
    for ip in ips:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError as err:
            raise InvalidSAN(f"IP address {ip!r} is invalid") from err
        if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
            # A certificate holds 16 bytes; the zone would be silently dropped.
            raise InvalidSAN(f"IP address {ip!r} has a zone; a certificate cannot carry one")
        if addr not in out:
            out.append(addr)
    return out


def same_key(a: ec.EllipticCurvePublicKey, b: object) -> bool:
    if not isinstance(b, ec.EllipticCurvePublicKey):
        return False
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return a.public_bytes(enc, fmt) == b.public_bytes(enc, fmt)
