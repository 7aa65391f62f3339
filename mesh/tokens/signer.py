"""Minting meshid tokens with a service's own SVID key (spec 3)."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from mesh.errors import InvalidSpiffeIdError
from mesh.identity.certs import spiffe_id_of, thumbprint
from mesh.identity.spiffeid import SpiffeId, spiffe_id
from mesh.identity.svid import SvidSource
from mesh.tokens import jose
from mesh.tokens.claims import (
    APP,
    APP_ASSERTED,
    CNF_JKT,
    CNF_THUMBPRINT,
    KIND_NAMES,
    USER,
    is_jkt,
    wrap_facts,
)
from mesh.tokens.errors import (
    AudienceMismatch,
    SigningError,
    TokenExpired,
    TypeMismatch,
)
from mesh.tokens.result import Hop

DEFAULT_USER_TTL = 900
DEFAULT_APP_TTL = 60


def _jti() -> str:
    return secrets.token_urlsafe(16)


class TokenSigner:
    """Signs user, app and app-asserted tokens as the service whose SVID is ``chain[0]``.

    ``key`` must be the leaf's ECDSA P-256 private key. The signer's SPIFFE ID comes from the leaf
    and ``kid`` is the leaf's ``x5t#S256``, so a verifier can find the key in the bundle. No token
    outlives the leaf: ``exp`` is capped at its ``not_after`` (a verifier refuses a token whose
    signing certificate has expired anyway, so a longer ``exp`` would only be a false promise).
    """

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        chain: Sequence[x509.Certificate],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not chain:
            raise SigningError("a signer needs its certificate chain (leaf first)")
        leaf = chain[0]
        try:
            self.spiffe_id: SpiffeId = spiffe_id_of(leaf)
        except InvalidSpiffeIdError as err:
            raise SigningError(f"the signing certificate is not an X.509-SVID: {err}") from err
        leaf_key = leaf.public_key()
        if (
            not isinstance(key, ec.EllipticCurvePrivateKey)
            or not isinstance(leaf_key, ec.EllipticCurvePublicKey)
            or key.public_key() != leaf_key
        ):
            raise SigningError(
                f"the private key does not belong to the certificate of {self.spiffe_id}"
            )
        self.kid = thumbprint(leaf)
        self.not_after = int(leaf.not_valid_after_utc.timestamp())
        self._key = jose.SignKey(key, self.kid)
        self._clock = clock

    def _id(self, value: SpiffeId | str) -> SpiffeId:
        """An audience in any of the accepted forms (a service name means this trust domain)."""
        try:
            return spiffe_id(value, self.spiffe_id.trust_domain)
        except InvalidSpiffeIdError as err:
            raise SigningError(f"audience {value!r} is not a SPIFFE ID or service name: {err}"
                               ) from err

    def _base(self, sub: str, aud: str | list[str], ttl: int) -> dict[str, Any]:
        if type(ttl) is not int or ttl <= 0:
            raise SigningError("ttl must be a positive whole number of seconds")
        now = int(self._clock())
        if now >= self.not_after:
            raise SigningError(
                f"the signing certificate of {self.spiffe_id} expired at {self.not_after} "
                "(Unix time); renew the SVID before minting tokens"
            )
        return {
            "iss": str(self.spiffe_id),
            "sub": sub,
            "aud": aud,
            "iat": now,
            "exp": min(now + ttl, self.not_after),
            "jti": _jti(),
        }

    def user_token(
        self,
        sub: str,
        aud: Sequence[str | SpiffeId],
        *,
        name: str | None = None,
        scope: str | Sequence[str] | None = None,
        roles: Sequence[str] | None = None,
        ttl: int = DEFAULT_USER_TTL,
        jkt: str | None = None,
    ) -> str:
        """A ``user+jwt`` for end user ``sub``, for the edge service(s) ``aud``.

        ``jkt``: the RFC 7638 thumbprint of the DPoP key the user proved at login
        (:meth:`mesh.tokens.dpop.ProofVerifier.check_login`); the token then carries
        ``cnf: {"jkt": ...}`` and an edge port accepts it only with a proof made with that key
        (spec 4.7). Without it the token is an unbound bearer token, which edge ports refuse
        unless configured to accept bearer user tokens.
        """
        if not isinstance(sub, str) or not sub:
            raise SigningError("a user token needs the user's id as a non-empty string")
        if isinstance(aud, str | SpiffeId):
            aud = [aud]
        audiences = [str(self._id(a)) for a in aud]
        if not audiences:
            raise SigningError("a user token needs at least one audience")
        claims = self._base(sub, audiences, ttl)
        if name is not None:
            claims["name"] = _text(name, "name")
        if scope is not None:
            claims["scope"] = scope if isinstance(scope, str) else " ".join(
                _text(s, "scope") for s in scope
            )
        if roles is not None:
            if isinstance(roles, str):
                raise SigningError("roles must be a list of strings, not one string")
            claims["roles"] = [_text(r, "role") for r in roles]
        if jkt is not None:
            if not is_jkt(jkt):
                raise SigningError("jkt must be an RFC 7638 SHA-256 thumbprint (43 base64url "
                                   "characters)")
            claims["cnf"] = {CNF_JKT: jkt}
        return self._key.sign(claims, USER)

    def app_token(self, aud: SpiffeId | str, ttl: int = DEFAULT_APP_TTL) -> str:
        """An ``app+jwt``: this service calling ``aud`` as itself."""
        claims = self._base(str(self.spiffe_id), str(self._id(aud)), ttl)
        claims["cnf"] = {CNF_THUMBPRINT: self.kid}
        return self._key.sign(claims, APP)

    def app_asserted_token(
        self, upstream: str, aud: SpiffeId | str, ttl: int = DEFAULT_APP_TTL, *,
        verified: Hop | None = None,
    ) -> str:
        """An ``app-asserted+jwt`` wrapping ``upstream`` (the token this service received).

        Reads the upstream's kind, ``aud``, ``sub`` and ``exp`` WITHOUT verifying it (the caller
        did that on receipt), from ``verified`` (the verifier's outermost :class:`Hop` of
        ``upstream``, which a channel has at hand) or else by decoding it, and never lets the
        new token outlive it. Raises early, with the verifier's error types, if the upstream is
        not a token this service may wrap; an upstream past its ``exp`` is
        :class:`TokenExpired` (``UNAUTHENTICATED``): a verifier may have accepted it within its
        clock-skew leeway for the call at hand, but it cannot be carried further (spec 4.4).
        """
        if verified is not None:
            typ, up_aud, sub, up_exp = verified.typ, verified.aud, verified.sub, verified.exp
        else:
            parsed = jose.parse(upstream)
            typ = parsed.typ
            if typ in (USER, APP_ASSERTED):
                up_aud, sub, up_exp = wrap_facts(typ, parsed.claims)
        if typ not in (USER, APP_ASSERTED):
            kind = KIND_NAMES.get(typ, repr(typ[:40]))
            raise TypeMismatch(
                f"only a user token or an app-asserted token can be wrapped, not a {kind}"
            )
        if str(self.spiffe_id) not in up_aud:
            raise AudienceMismatch(
                f"the upstream token is not addressed to this service {self.spiffe_id}; "
                "wrapping it would be rejected downstream (spec 4.5)"
            )
        claims = self._base(sub, str(self._id(aud)), ttl)
        if up_exp <= claims["iat"]:
            raise TokenExpired(
                f"the {KIND_NAMES[typ]} this call carries expired {claims['iat'] - up_exp} s "
                "ago: it was accepted within the allowed clock skew for this call, but cannot "
                "be carried to another service; the client must get a fresh one (spec 4.4)"
            )
        claims["exp"] = min(claims["exp"], up_exp)
        claims["cnf"] = {CNF_THUMBPRINT: self.kid}
        claims["upstream"] = upstream
        return self._key.sign(claims, APP_ASSERTED)




def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise SigningError(f"{what} must be a string")
    return value


class RotatingSigner:
    """Signs with whatever SVID ``source`` holds now, so a renewed key is used at once.

    A :class:`TokenSigner` is built once per SVID generation (building one parses the key for
    python-jose); each call asks the source for its current snapshot, a cheap check.
    """

    def __init__(self, source: SvidSource) -> None:
        self._source = source
        self._lock = threading.Lock()
        self._signer: tuple[int, TokenSigner] | None = None

    @property
    def current(self) -> TokenSigner:
        """The signer of the SVID in force now."""
        svid = self._source.current()
        held = self._signer
        if held is not None and held[0] == svid.generation:
            return held[1]
        with self._lock:
            held = self._signer
            if held is None or held[0] != svid.generation:
                held = (svid.generation, TokenSigner(svid.private_key, svid.chain))
                self._signer = held
        return held[1]

    @property
    def spiffe_id(self) -> SpiffeId:
        return self.current.spiffe_id

    def user_token(
        self,
        sub: str,
        aud: Sequence[str | SpiffeId],
        *,
        name: str | None = None,
        scope: str | Sequence[str] | None = None,
        roles: Sequence[str] | None = None,
        ttl: int = DEFAULT_USER_TTL,
        jkt: str | None = None,
    ) -> str:
        """See :meth:`TokenSigner.user_token`."""
        return self.current.user_token(sub, aud, name=name, scope=scope, roles=roles, ttl=ttl,
                                       jkt=jkt)

    def app_token(self, aud: SpiffeId | str, ttl: int = DEFAULT_APP_TTL) -> str:
        """See :meth:`TokenSigner.app_token`."""
        return self.current.app_token(aud, ttl)

    def app_asserted_token(
        self, upstream: str, aud: SpiffeId | str, ttl: int = DEFAULT_APP_TTL, *,
        verified: Hop | None = None,
    ) -> str:
        """See :meth:`TokenSigner.app_asserted_token`."""
        return self.current.app_asserted_token(upstream, aud, ttl, verified=verified)
