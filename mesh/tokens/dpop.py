"""DPoP proofs (RFC 9449) for user tokens at edge ports: the format and every check of spec 4.7.

A user's client holds a P-256 key. At login it proves the key with a proof; the auth service
binds the user token to the key's RFC 7638 thumbprint (``cnf.jkt``). Every edge call then
carries ``authorization: DPoP <user token>`` and a ``dpop`` metadata entry holding a fresh proof:
a compact JWS with the header ``{"typ": "dpop+jwt", "alg": "ES256", "jwk": <public key>}`` and
the claims ``jti``, ``htm`` (``POST``), ``htu`` (``https://<service DNS name>/<full method>``),
``iat`` and ``ath`` (base64url SHA-256 of the user token).

:class:`ProofVerifier` is the edge port's side. :func:`parse_proof` does the checks that need
no cryptography (encoding, ``typ``, ``alg``, header members, the ``jwk``, the claims' types);
:meth:`ProofVerifier.verify` then the signature, ``htm``, ``htu``, ``iat``, ``ath``, the key
against the token's ``cnf.jkt``, and last the replay cache (:mod:`mesh.tokens.replay`), so only
a proof that passed everything else is recorded as used. :meth:`ProofVerifier.check_call` is
the whole rule for one edge call, given the verified user token; :meth:`ProofVerifier.
check_login` the proof of a login, which has no token yet.

The signature check uses ``cryptography`` directly with the key built from the header's ``jwk``
(python-jose would only add a conversion: the algorithm and key type are fixed here, never read
from the proof). The client side is :mod:`mesh.dpop`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from mesh.errors import ConfigError
from mesh.identity.certs import b64url
from mesh.identity.spiffeid import SpiffeId
from mesh.tokens import jose
from mesh.tokens.errors import (
    DpopAlgorithmNotAllowed,
    DpopAthMismatch,
    DpopClaimInvalid,
    DpopIatInvalid,
    DpopJwkInvalid,
    DpopJwkPrivate,
    DpopKeyMismatch,
    DpopMalformed,
    DpopMethodMismatch,
    DpopMissing,
    DpopSignatureInvalid,
    DpopTypeInvalid,
    DpopUriMismatch,
    TokenMalformed,
    UserTokenUnbound,
)
from mesh.tokens.replay import DEFAULT_MAX_ENTRIES, ReplayCache
from mesh.tokens.result import VerifiedChain

DPOP_TYP: Final = "dpop+jwt"
ALGORITHM: Final = "ES256"
#: every gRPC call is an HTTP/2 POST
HTM: Final = "POST"
#: the metadata entry carrying the proof, and the authorization scheme of a bound token
METADATA_KEY: Final = "dpop"
SCHEME: Final = "DPoP"
#: seconds a proof's iat may lie before or after the verifier's clock
DEFAULT_WINDOW: Final = 60
#: a proof longer than this is refused before it is decoded (a P-256 proof is ~600 bytes)
MAX_PROOF_SIZE: Final = 2048
HEADER_MEMBERS: Final = frozenset({"typ", "alg", "jwk"})
JWK_MEMBERS: Final = frozenset({"kty", "crv", "x", "y"})
#: JWK members that carry private key material (RFC 7518 6.2.2, 6.3.2, 6.4.1)
PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
#: bound of a verifier's memo of accepted proof headers (one per client key); cleared when full
HEADER_MEMO_MAX = 1024
_COORDINATE_BYTES = 32
_SIG_BYTES = 64
_ECDSA = ec.ECDSA(hashes.SHA256())

Metadata = Iterable[tuple[str, str | bytes]]


# --- the pieces both sides compute -------------------------------------------------------------


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint of a P-256 public JWK: SHA-256 over ``{"crv","kty","x","y"}`` in
    that order, no whitespace, base64url without padding."""
    canonical = json.dumps({"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"], "y": jwk["y"]},
                           separators=(",", ":"), ensure_ascii=True)
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The public JWK (``kty``, ``crv``, ``x``, ``y``) of a P-256 key."""
    if not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError("DPoP keys are ECDSA P-256 (ES256)")
    numbers = key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(_COORDINATE_BYTES, "big")),
        "y": b64url(numbers.y.to_bytes(_COORDINATE_BYTES, "big")),
    }


def htu_for(service: SpiffeId, method: str) -> str:
    """The ``htu`` of a call to ``method`` (``/pkg.Service/Method``) at ``service``'s edge:
    ``https://<name>.svc.<trust domain>/pkg.Service/Method`` (spec 4.7)."""
    name = service.service_name
    if name is None:
        raise ConfigError(f"{service} is not a service (spiffe://<td>/svc/<NAME>): only a "
                          "service has the DNS name a DPoP htu names")
    return f"https://{service.trust_domain.service_dns_name(name)}{method}"


def ath_of(token: str) -> str:
    """The ``ath`` of ``token``: base64url SHA-256 of its ASCII bytes (RFC 9449 4.2)."""
    return b64url(hashlib.sha256(token.encode("ascii", "surrogateescape")).digest())


def proof_from_metadata(metadata: Metadata) -> str | None:
    """The one ``dpop`` entry's text, or None if there is none; several, or a binary value,
    are DPOP_MALFORMED (RFC 9449 4.3: not more than one DPoP header)."""
    found = [value for key, value in metadata if key == METADATA_KEY]
    if not found:
        return None
    if len(found) > 1:
        raise DpopMalformed("the call carries more than one 'dpop' metadata entry; send exactly "
                            "one proof (spec 4.7)")
    value = found[0]
    if not isinstance(value, str):
        raise DpopMalformed("the 'dpop' metadata entry must be text (a JWS), not binary")
    return value


# --- parsing: everything that needs no cryptography ----------------------------------------------


class ParsedProof(NamedTuple):
    """A proof decoded and checked for shape, NOT yet verified (no signature, no time)."""

    public_key: ec.EllipticCurvePublicKey
    jkt: str
    jti: str
    htm: str
    htu: str
    iat: int
    ath: str | None
    signing_input: bytes
    signature: bytes
    claims: Mapping[str, Any]
    header: str  # as encoded


def _decode(part: str, what: str) -> bytes:
    try:
        return jose.b64url_decode(part, what)
    except TokenMalformed as err:
        raise DpopMalformed(f"the DPoP proof's {what} is not canonical base64url "
                            "(RFC 7515 2; spec 4.7)") from err


def _object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        return jose.json_object(raw, what)
    except TokenMalformed as err:
        raise DpopMalformed(f"the DPoP proof's {what} is not one UTF-8 JSON object without "
                            "duplicate members (spec 4.7)") from err


def _public_key(jwk: object) -> tuple[ec.EllipticCurvePublicKey, str]:
    if not isinstance(jwk, dict):
        raise DpopJwkInvalid("the DPoP proof header's jwk is not a JSON object (spec 4.7)")
    private = sorted(PRIVATE_MEMBERS & jwk.keys())
    if private:
        # Checked before anything else about the key: a client that sends its private key has
        # lost it, and the message says so without repeating it.
        raise DpopJwkPrivate(
            f"the DPoP proof header's jwk carries private key material ({', '.join(private)}); "
            "a proof names the public key only, and this key must be considered exposed "
            "(spec 4.7)"
        )
    if jwk.keys() != JWK_MEMBERS or jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise DpopJwkInvalid(
            "the DPoP proof header's jwk must be exactly an EC P-256 public key: kty \"EC\", "
            "crv \"P-256\", x and y, nothing else (spec 4.7)"
        )
    coords = []
    for name in ("x", "y"):
        value = jwk[name]
        raw = None
        if isinstance(value, str):
            try:
                raw = jose.b64url_decode(value, f"jwk {name}")
            except TokenMalformed:
                raw = None
        if raw is None or len(raw) != _COORDINATE_BYTES:
            raise DpopJwkInvalid(f"the DPoP proof header's jwk {name} is not 32 bytes of "
                                 "canonical base64url (RFC 7518 6.2.1.2; spec 4.7)")
        coords.append(int.from_bytes(raw, "big"))
    try:
        key = ec.EllipticCurvePublicNumbers(coords[0], coords[1], ec.SECP256R1()).public_key()
    except ValueError as err:
        raise DpopJwkInvalid("the DPoP proof header's jwk is not a point on P-256 "
                             "(spec 4.7)") from err
    return key, jwk_thumbprint(jwk)


def _claim_str(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise DpopClaimInvalid(f"the DPoP proof has no '{name}' claim, or it is not a non-empty "
                               "string (RFC 9449 4.2; spec 4.7)")
    return value


#: what a header that passed every header check yields: the key and its thumbprint
HeaderKey = tuple[ec.EllipticCurvePublicKey, str]


def _check_header(h64: str) -> HeaderKey:
    header = _object(_decode(h64, "header"), "header")
    typ = header.get("typ")
    if typ != DPOP_TYP:
        raise DpopTypeInvalid(f"the proof's typ {jose.shown(typ, 40)!r} is not {DPOP_TYP!r}, "
                              "so it is not a DPoP proof (spec 4.7)")
    alg = header.get("alg")
    if alg != ALGORITHM:
        raise DpopAlgorithmNotAllowed(
            f"the DPoP proof's algorithm {jose.shown(alg, 16)!r} is not allowed; only "
            f"{ALGORITHM} is accepted (never none, never a symmetric algorithm) (spec 4.7)"
        )
    if header.keys() != HEADER_MEMBERS:
        extra = ", ".join(repr(k[:20]) for k in sorted(header.keys() - HEADER_MEMBERS)[:5])
        raise DpopMalformed(
            "the DPoP proof header must be exactly typ, alg and jwk"
            + (f": forbidden member(s) {extra}" if extra else ": jwk is missing")
            + " (spec 4.7)"
        )
    return _public_key(header["jwk"])


def parse_proof(proof: object, known: Mapping[str, HeaderKey] | None = None) -> ParsedProof:
    """Decode ``proof`` and check its shape, in the order of spec 4.7: encoding, ``typ``,
    ``alg``, the header's members, the ``jwk``, the claims. Raises a DpopError; nothing here
    verifies a signature or looks at the clock.

    ``known`` maps encoded headers that passed every header check before to what they yield;
    a header equal to one of them, byte for byte, is not decoded again (a client sends the
    same header, its key, on every call). Any other header is checked in full.
    """
    if not isinstance(proof, str) or not proof.isascii():
        raise DpopMalformed("a DPoP proof must be ASCII text (a JWS compact serialisation)")
    if len(proof) > MAX_PROOF_SIZE:
        raise DpopMalformed(f"the DPoP proof is longer than {MAX_PROOF_SIZE} bytes (spec 4.7)")
    parts = proof.split(".")
    if len(parts) != 3:
        raise DpopMalformed(f"a DPoP proof must be three base64url parts separated by '.', this "
                            f"one has {len(parts)} (spec 4.7)")
    h64, p64, s64 = parts
    found = known.get(h64) if known is not None else None
    public_key, jkt = found if found is not None else _check_header(h64)
    claims = _object(_decode(p64, "payload"), "payload")
    jti = _claim_str(claims, "jti")
    htm = _claim_str(claims, "htm")
    htu = _claim_str(claims, "htu")
    iat = claims.get("iat")
    if type(iat) is not int or not 0 <= iat < 2**53:
        raise DpopClaimInvalid("the DPoP proof's 'iat' claim must be a whole number of seconds "
                               "since the epoch (RFC 7519 2; spec 4.7)")
    ath = claims.get("ath")
    if ath is not None and not isinstance(ath, str):
        raise DpopClaimInvalid("the DPoP proof's 'ath' claim must be a string (spec 4.7)")
    signature = _decode(s64, "signature")
    return ParsedProof(public_key, jkt, jti, htm, htu, iat, ath,
                       f"{h64}.{p64}".encode("ascii"), signature, claims, h64)


def verify_signature(p: ParsedProof) -> None:
    """Raise DpopSignatureInvalid unless ``p`` is signed (ES256, r||s) by its own ``jwk``."""
    sig = p.signature
    if len(sig) != _SIG_BYTES or not any(sig[:32]) or not any(sig[32:]):
        raise DpopSignatureInvalid("the DPoP proof's ES256 signature is not a 64-byte (r, s) "
                                   "pair with non-zero r and s (spec 3.1, 4.7)")
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        p.public_key.verify(der, p.signing_input, _ECDSA)
    except InvalidSignature as err:
        raise DpopSignatureInvalid("the DPoP proof's signature does not verify with the key in "
                                   "its own jwk header (spec 4.7)") from err


# --- the edge port's side ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DpopSettings:
    """An edge port's DPoP configuration (spec 4.7).

    ``window``: seconds a proof's ``iat`` may lie before or after the port's clock; a proof's
    ``jti`` is remembered as long. ``max_proofs``: the replay cache's bound (distinct proofs
    within one window); when full, calls are refused (``DPOP_REPLAY_CACHE_FULL``).
    ``accept_bearer``: ALSO accept user tokens that are not bound to a key, as plain bearer
    tokens (``authorization: Bearer``), for migrating clients; a bound token still needs its
    proof. It reopens the replay of lifted user tokens this rule exists to close, so it is off
    by default and a server built with it logs a warning when it starts.
    """

    window: int = DEFAULT_WINDOW
    max_proofs: int = DEFAULT_MAX_ENTRIES
    accept_bearer: bool = False

    def __post_init__(self) -> None:
        if type(self.window) is not int or not 1 <= self.window <= 3600:
            raise ConfigError("the DPoP window must be 1 to 3600 whole seconds")
        if type(self.max_proofs) is not int or self.max_proofs < 1:
            raise ConfigError("the DPoP replay cache needs room for at least one proof")


class VerifiedProof(NamedTuple):
    """A proof that passed every check and was recorded as used."""

    jkt: str
    jti: str
    iat: int
    htu: str


class ProofVerifier:
    """Checks DPoP proofs for the edge service ``service`` (spec 4.7); thread-safe.

    ``replay``: the cache that makes proofs single-use (default: a new one sized by
    ``settings.max_proofs``); share one between the ports of a process only if they are the
    same service.
    """

    def __init__(self, service: SpiffeId, settings: DpopSettings | None = None, *,
                 replay: ReplayCache | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.service = service
        self.settings = settings if settings is not None else DpopSettings()
        self._prefix = htu_for(service, "")
        self._clock = clock
        self.replay = replay if replay is not None else ReplayCache(
            self.settings.max_proofs, clock=clock)
        # Encoded headers of proofs that were accepted -> their key and thumbprint. A header is
        # a pure function of its bytes (typ, alg, the client's public key), so an exact match
        # needs no decoding again; only accepted proofs' headers go in (docs/architecture.md,
        # "Caches").
        self._headers: dict[str, HeaderKey] = {}

    def htu(self, method: str) -> str:
        """The ``htu`` a proof for ``method`` at this service must carry."""
        return self._prefix + method

    def verify(self, proof: str, method: str, *, token: str | None = None,
               jkt: str | None = None) -> VerifiedProof:
        """Every check of a proof for a call to ``method``, in the order of spec 4.7.

        ``token``: the token the call presents (its hash must be ``ath``); ``jkt``: the key the
        token is bound to. A login presents neither. The proof is recorded as used only if
        every other check passed.
        """
        p = parse_proof(proof, self._headers)
        if token is not None and p.ath is None:
            raise DpopClaimInvalid("the DPoP proof has no 'ath' claim, but the call presents a "
                                   "token: the proof must name it (spec 4.7)")
        verify_signature(p)
        if p.htm != HTM:
            raise DpopMethodMismatch(f"the DPoP proof's htm {_short(p.htm)} is not {HTM!r}, the "
                                     "method of every gRPC call (spec 4.7)")
        expected = self.htu(method)
        if p.htu != expected:
            raise DpopUriMismatch(
                f"the DPoP proof was made for {_short(p.htu)}, not for this call "
                f"({expected}): a proof is good for one service and method only (spec 4.7)"
            )
        now = int(self._clock())
        window = self.settings.window
        if not now - window <= p.iat <= now + window:
            when = f"{now - p.iat} s ago" if p.iat <= now else f"{p.iat - now} s in the future"
            raise DpopIatInvalid(
                f"the DPoP proof was made {when} (iat); it is accepted only within {window} s "
                "of this service's clock: make a fresh proof for each call (spec 4.7)"
            )
        if token is not None and p.ath != ath_of(token):
            raise DpopAthMismatch("the DPoP proof was made for another token: its ath is not the "
                                  "hash of the token this call presents (spec 4.7)")
        if jkt is not None and p.jkt != jkt:
            raise DpopKeyMismatch(
                "the DPoP proof is signed with another key than the one the user token is bound "
                "to (cnf.jkt): only the client the token was issued to can use it (spec 4.7)"
            )
        self.replay.use(p.jkt, p.jti, p.iat + window + 1)
        headers = self._headers
        if p.header not in headers:
            if len(headers) >= HEADER_MEMO_MAX:
                headers.clear()
            headers[p.header] = (p.public_key, p.jkt)
        return VerifiedProof(p.jkt, p.jti, p.iat, p.htu)

    def check_call(self, chain: VerifiedChain, scheme: str, proof: str | Metadata | None,
                   method: str) -> VerifiedProof | None:
        """Rule 4.7 for one edge call whose user token (``chain``) passed rule 4.8.

        ``scheme``: the authorization scheme the token came with (``DPoP`` or ``Bearer``, any
        case); ``proof``: the ``dpop`` entry's text, None if there was none, or the call's
        whole metadata (the entry is then looked for once the token's binding is settled, so
        the reasons come in the order of spec 4.7). Returns the verified proof, or None for an
        unbound token accepted as a bearer token (``accept_bearer``).
        """
        jkt = chain.user_jkt
        dpop_scheme = scheme.lower() == SCHEME.lower()
        if jkt is None:
            if self.settings.accept_bearer and not dpop_scheme:
                return None
            raise UserTokenUnbound(
                f"the user token of {_short(chain.user or '')} is not bound to a key (no "
                "cnf.jkt): this edge port accepts only DPoP-bound user tokens, each call with a "
                "fresh proof; log in again with a DPoP key (spec 4.7)",
                hop=0,
            )
        if not dpop_scheme:
            raise DpopMissing("the user token is bound to a DPoP key (cnf.jkt), so it must be "
                              "sent as 'authorization: DPoP <token>' with a 'dpop' proof, "
                              "never as a bearer token (spec 4.7)")
        if proof is not None and not isinstance(proof, str):
            proof = proof_from_metadata(proof)
        if proof is None:
            raise DpopMissing("the call carries no 'dpop' proof: a DPoP-bound user token is "
                              "accepted only with a fresh proof made with its key (spec 4.7)")
        return self.verify(proof, method, token=chain.token, jkt=jkt)

    def check_login(self, metadata: Metadata, method: str) -> VerifiedProof:
        """The proof a login presents with no token (``ath`` not checked): what a login
        handler calls before it checks the password, to learn the key to bind the new user
        token to (``TokenSigner.user_token(..., jkt=proof.jkt)``)."""
        proof = proof_from_metadata(metadata)
        if proof is None:
            raise DpopMissing("the login carries no 'dpop' proof: make a key pair and send a "
                              "proof, the user token will be bound to it (spec 4.7)")
        return self.verify(proof, method)


def _short(text: str, limit: int = 80) -> str:
    cut = text if len(text) <= limit else text[:limit] + "..."
    return repr(cut)
