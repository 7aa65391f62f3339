"""Token kinds and the claim rules that need nothing but the token itself (spec 3.3).

A claim set is checked here for presence and JSON type, per kind, once: the result is what the
verified-token cache keeps. Everything that depends on the caller, the clock or the bundle is
checked by :mod:`mesh.tokens.verify` on every call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

from mesh.errors import InvalidSpiffeIdError
from mesh.identity.spiffeid import SpiffeId
from mesh.tokens.errors import ClaimInvalid, ClaimMissing, SubjectMismatch

USER: Final = "user+jwt"
APP: Final = "app+jwt"
APP_ASSERTED: Final = "app-asserted+jwt"
KINDS: Final = frozenset({USER, APP, APP_ASSERTED})
KIND_NAMES: Final = {USER: "user token", APP: "app token", APP_ASSERTED: "app-asserted token"}
CNF_THUMBPRINT: Final = "x5t#S256"
#: a user token's ``cnf`` member: the RFC 7638 thumbprint of the user's DPoP key (spec 4.7)
CNF_JKT: Final = "jkt"
_MAX_SUB_LEN = 1024
_JKT_RE = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url of a SHA-256 digest, no padding


class Claims(NamedTuple):
    """The claims every meshid token has, typed. ``raw`` keeps the full decoded claim set.

    Immutable (a NamedTuple: built once per layer on the request path, cheaper than a frozen
    dataclass).
    """

    typ: str
    iss: SpiffeId
    iss_text: str
    sub: str
    aud: tuple[str, ...]
    iat: int
    exp: int
    nbf: int | None
    jti: str
    cnf: str | None
    upstream: str | None
    raw: Mapping[str, Any]
    #: a user token's ``cnf.jkt`` (the DPoP key it is bound to), None if unbound (spec 4.7)
    jkt: str | None = None


def _require(claims: Mapping[str, Any], name: str, kind: str) -> Any:
    if name not in claims:
        raise ClaimMissing(f"the {KIND_NAMES[kind]} has no '{name}' claim (spec 3.3)")
    return claims[name]


def _int(claims: Mapping[str, Any], name: str, kind: str, *, required: bool = True) -> int | None:
    if not required and name not in claims:
        return None
    value = _require(claims, name, kind)
    # bool is an int in Python; JSON true is not a time.
    if type(value) is not int or not 0 <= value < 2**53:
        raise ClaimInvalid(
            f"the {KIND_NAMES[kind]}'s '{name}' claim must be a whole number of seconds since "
            "the epoch (RFC 7519 2, NumericDate)"
        )
    return value


def _str(claims: Mapping[str, Any], name: str, kind: str) -> str:
    value = _require(claims, name, kind)
    if not isinstance(value, str) or not value:
        raise ClaimInvalid(f"the {KIND_NAMES[kind]}'s '{name}' claim must be a non-empty string")
    return value


def parse_claims(
    typ: str, claims: Mapping[str, Any], known: Mapping[str, SpiffeId] | None = None
) -> Claims:
    """Check presence and type of every claim the kind ``typ`` requires (spec 3).

    ``typ`` must already be one of :data:`KINDS`. ``known`` maps SPIFFE IDs already parsed
    (the peer, the trusted issuers) from their text, so the common issuers are not parsed again.
    """
    iss_text = _str(claims, "iss", typ)
    try:
        iss = known.get(iss_text) if known is not None else None
        iss = iss if iss is not None else SpiffeId.parse(iss_text)
    except InvalidSpiffeIdError as err:
        raise ClaimInvalid(
            f"the {KIND_NAMES[typ]}'s 'iss' claim is not a SPIFFE ID ({err})"
        ) from err
    sub = _str(claims, "sub", typ)
    if len(sub) > _MAX_SUB_LEN:
        raise ClaimInvalid(f"the {KIND_NAMES[typ]}'s 'sub' claim is longer than {_MAX_SUB_LEN}")
    aud_value = _require(claims, "aud", typ)
    aud: tuple[str, ...]
    if typ == USER:
        # A user token may be for several edge services: an array of SPIFFE IDs, always.
        if not (isinstance(aud_value, list) and aud_value
                and all(isinstance(a, str) for a in aud_value)):
            raise ClaimInvalid(
                "the user token's 'aud' claim must be a non-empty array of SPIFFE IDs (spec 3.3)"
            )
        for a in aud_value:
            if known is not None and a in known:
                continue
            try:
                SpiffeId.parse(a)
            except InvalidSpiffeIdError as err:
                raise ClaimInvalid(
                    f"the user token's 'aud' claim holds a value that is not a SPIFFE ID ({err}) "
                    "(spec 3.3)"
                ) from err
        aud = tuple(aud_value)
    elif isinstance(aud_value, str):
        # A service token is for exactly one callee: one string (compared exactly, so a value
        # that is not a SPIFFE ID can only fail as AUDIENCE_MISMATCH or CHAIN_BROKEN).
        aud = (aud_value,)
    else:
        raise ClaimInvalid(
            f"the {KIND_NAMES[typ]}'s 'aud' claim must be one string, the called service's "
            "SPIFFE ID (spec 3.3)"
        )
    iat = _int(claims, "iat", typ)
    exp = _int(claims, "exp", typ)
    nbf = _int(claims, "nbf", typ, required=False)
    assert iat is not None and exp is not None  # required=True never returns None
    if exp <= iat:
        raise ClaimInvalid(f"the {KIND_NAMES[typ]} expires ('exp') before it was issued ('iat')")
    jti = _str(claims, "jti", typ)

    cnf: str | None = None
    upstream: str | None = None
    if typ in (APP, APP_ASSERTED):
        cnf_value = _require(claims, "cnf", typ)
        if (
            not isinstance(cnf_value, dict)
            or set(cnf_value) != {CNF_THUMBPRINT}
            or not isinstance(cnf_value[CNF_THUMBPRINT], str)
        ):
            raise ClaimInvalid(
                f"the {KIND_NAMES[typ]}'s 'cnf' claim must be exactly "
                '{"x5t#S256": <certificate thumbprint>} (RFC 8705)'
            )
        cnf = cnf_value[CNF_THUMBPRINT]
    jkt: str | None = None
    if typ == USER and "cnf" in claims:
        jkt = _user_jkt(claims["cnf"])
    if typ == APP_ASSERTED:
        upstream_value = _require(claims, "upstream", typ)
        if not isinstance(upstream_value, str) or not upstream_value:
            raise ClaimInvalid(
                "the app-asserted token's 'upstream' claim must hold the wrapped token as a string"
            )
        upstream = upstream_value
    elif "upstream" in claims:
        raise ClaimInvalid(f"a {KIND_NAMES[typ]} must not wrap an 'upstream' token (spec 3.3)")
    if typ == APP and sub != iss_text:
        raise SubjectMismatch(
            f"an app token speaks for its issuer only, but its sub {sub[:80]!r} is not its iss "
            f"{iss} (spec 3.3)"
        )
    if typ == USER:
        _check_user_extras(claims)
    return Claims(typ, iss, iss_text, sub, aud, iat, exp, nbf, jti, cnf, upstream, claims, jkt)


def is_jkt(value: object) -> bool:
    """Whether ``value`` has the form of an RFC 7638 SHA-256 thumbprint (43 base64url chars)."""
    return isinstance(value, str) and _JKT_RE.fullmatch(value) is not None


def _user_jkt(cnf: object) -> str:
    # One shape only (spec 3.3): a reader that took {"jkt": ..., "x5t#S256": ...} as bound to
    # either key would let two verifiers disagree on who may present the token.
    if not isinstance(cnf, dict) or set(cnf) != {CNF_JKT} or not is_jkt(cnf[CNF_JKT]):
        raise ClaimInvalid(
            "the user token's 'cnf' claim must be exactly {\"jkt\": <RFC 7638 thumbprint of "
            "the user's DPoP key>} (spec 3.3, 4.7)"
        )
    value: str = cnf[CNF_JKT]
    return value


def _check_user_extras(claims: Mapping[str, Any]) -> None:
    if "name" in claims and not isinstance(claims["name"], str):
        raise ClaimInvalid("the user token's 'name' claim must be a string")
    if "scope" in claims and not isinstance(claims["scope"], str):
        raise ClaimInvalid("the user token's 'scope' claim must be a space-separated string")
    roles = claims.get("roles")
    if "roles" in claims and not (
        isinstance(roles, list) and all(isinstance(r, str) for r in roles)
    ):
        raise ClaimInvalid("the user token's 'roles' claim must be a list of strings")


class WrapFacts(NamedTuple):
    """What a signer needs to know of a token it wraps: who it is for, whose, until when."""

    aud: tuple[str, ...]
    sub: str
    exp: int


def wrap_facts(typ: str, claims: Mapping[str, Any]) -> WrapFacts:
    """The ``aud``, ``sub`` and ``exp`` of a user or app-asserted token, type-checked as
    :func:`parse_claims` does, without the rest (a wrapping signer already verified the token
    on receipt; this only guards against wrapping something a verifier would refuse)."""
    sub = _str(claims, "sub", typ)
    exp = _int(claims, "exp", typ)
    assert exp is not None  # required=True never returns None
    aud_value = _require(claims, "aud", typ)
    if isinstance(aud_value, str):
        aud: tuple[str, ...] = (aud_value,)
    elif isinstance(aud_value, list) and all(isinstance(a, str) for a in aud_value):
        aud = tuple(aud_value)
    else:
        raise ClaimInvalid(f"the {KIND_NAMES[typ]}'s 'aud' claim is not a SPIFFE ID or a list")
    return WrapFacts(aud, sub, exp)
