"""The hardened JOSE layer: the only module that imports python-jose.

python-jose trusts too much of the token (NOTES): it takes ``alg`` from the header, ignores
``kid`` and ``crit``, tries every key of a JWKS and accepts non-canonical base64. So our code does
everything that decides *whether* to verify and *with what*:

- split the compact JWS ourselves and accept only canonical base64url (RFC 7515 section 2: URL
  alphabet, no padding, no whitespace, and the encoding must round-trip byte for byte);
- parse header and payload as UTF-8 JSON objects, rejecting duplicate member names (RFC 7515
  4 / RFC 7519 4: a parser that keeps the last duplicate lets two readers see two tokens);
- require the header to be exactly ``{alg, typ, kid}`` with ``alg`` from OUR allowlist;
- reject signatures of the wrong length or with a zero ``r`` or ``s`` (the all-zero signature);
- hand python-jose only the final ECDSA check, through a key WE selected by ``kid`` and built
  once for ES256 (a prebuilt key pins algorithm and key type: the HS256-with-public-key
  confusion cannot arise). Where python-jose's JWS layer is called (signing, and
  :meth:`VerifyKey.verify_jws`, the cross-check tests use), ``algorithms`` is always a list.

Every python-jose error is translated into :mod:`mesh.tokens.errors`.
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jose import jwk, jws
from jose.backends.base import Key
from jose.exceptions import JOSEError

from mesh.identity.certs import b64url
from mesh.tokens.errors import (
    AlgorithmNotAllowed,
    HeaderInvalid,
    SignatureInvalid,
    SigningError,
    TokenMalformed,
    TokenMissing,
)

ALGORITHM = "ES256"
#: The allowlist python-jose sees. A list, never a string: python-jose tests ``alg in algorithms``
#: and a string would match substrings.
ALGORITHMS: list[str] = [ALGORITHM]


HEADER_MEMBERS = frozenset({"alg", "typ", "kid"})
_SIG_LEN = 64  # ES256: r || s, 32 bytes each (RFC 7518 3.4)
_URL_TO_STD = bytes.maketrans(b"-_+/=", b"+/!!!")
_B64_VALUE = {
    c: i
    for i, c in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
}
_KID_RE = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url of a SHA-256 digest


class ParsedJws(NamedTuple):
    """One compact JWS, split and decoded but NOT verified.

    ``claims`` is the decoded payload; treat it as read-only (parsed tokens are cached and shared).
    A NamedTuple rather than a frozen dataclass: it is built once per layer on the request path,
    and tuple construction is several times cheaper.
    """

    typ: str
    kid: str
    claims: Mapping[str, Any]
    signing_input: bytes
    signature: bytes
    token: str


class VerifyKey:
    """An ES256 public key prepared once for python-jose (building a key per call costs ~30%)."""

    __slots__ = ("_key", "public_key")

    def __init__(self, public_key: ec.EllipticCurvePublicKey) -> None:
        # python-jose accepts any object with public_bytes() as an "EC" key: check it ourselves.
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
            public_key.curve, ec.SECP256R1
        ):
            raise SigningError("ES256 needs an ECDSA P-256 public key")
        self.public_key = public_key
        try:
            # PEM is the key form python-jose documents; it is parsed once, here.
            pem = public_key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            self._key: Key = jwk.construct(pem, ALGORITHM)
        except JOSEError as err:  # pragma: no cover - guarded by the type check above
            raise SigningError("python-jose refused the P-256 public key") from err

    def verify(self, parsed: ParsedJws) -> None:
        """Raise SignatureInvalid unless ``parsed`` carries a valid ES256 signature by this key."""
        sig = parsed.signature
        if len(sig) != _SIG_LEN or not any(sig[:32]) or not any(sig[32:]):
            # r = 0 or s = 0 (the all-zero "psychic signature", CVE-2022-21449) never verifies in
            # a correct ECDSA; reject it by name rather than rely on the backend.
            raise SignatureInvalid(
                "the token's ES256 signature is not a valid 64-byte (r, s) pair with non-zero r "
                "and s (spec 3.1)"
            )
        try:
            # The key is the one OUR code selected by kid, prebuilt for ES256; the signing input
            # and signature are the exact bytes our parser checked. (jws.verify would re-split
            # and re-decode the whole token: +40% per layer for no added check.)
            ok = self._key.verify(parsed.signing_input, sig)
        except Exception as err:  # any backend surprise is a failed verification, never a pass
            raise SignatureInvalid("the token's signature could not be checked") from err
        if ok is not True:
            raise SignatureInvalid(
                "the token's signature does not verify with the key its kid names (spec 4.4/4.5)"
            )


    def verify_jws(self, token: str) -> bytes:
        """python-jose's own full JWS verification with this key: a second opinion for tests.

        Returns the payload bytes; raises SignatureInvalid. Not used on the request path.
        """
        try:
            payload: bytes = jws.verify(token, self._key, algorithms=ALGORITHMS)
        except JOSEError as err:
            raise SignatureInvalid("python-jose rejected the token's signature") from err
        return payload


class SignKey:
    """An ES256 private key prepared once for python-jose."""

    __slots__ = ("_key", "kid")

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, kid: str) -> None:
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(
            private_key.curve, ec.SECP256R1
        ):
            raise SigningError("tokens are signed with ES256: the key must be ECDSA P-256")
        if not _KID_RE.fullmatch(kid):
            raise SigningError("kid must be the certificate's x5t#S256 thumbprint")
        self.kid = kid
        try:
            pem = private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            self._key: Key = jwk.construct(pem, ALGORITHM)
        except JOSEError as err:  # pragma: no cover - guarded by the type check above
            raise SigningError("python-jose refused the P-256 private key") from err

    def sign(self, claims: Mapping[str, Any], typ: str) -> str:
        try:
            payload = json.dumps(dict(claims), separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as err:
            raise SigningError("token claims must be plain JSON values") from err
        try:
            return jws.sign(
                payload.encode(), self._key, headers={"typ": typ, "kid": self.kid},
                algorithm=ALGORITHM,
            )
        except JOSEError as err:
            raise SigningError("python-jose could not sign the token") from err


# --- parsing ------------------------------------------------------------------------------


def b64url_decode(part: str, what: str) -> bytes:
    """Decode canonical base64url (RFC 7515 2) or raise TokenMalformed naming the part."""
    try:
        data = part.encode("ascii")
    except UnicodeEncodeError:
        data = b"!"  # not ASCII, so not base64url; fall through to the error below
    size = len(data)
    if size % 4 == 1:
        raise TokenMalformed(
            f"the token's {what} is not base64url without padding or whitespace (RFC 7515 2)"
        )
    try:
        # One pass maps the URL alphabet onto the standard one and the standard alphabet's own
        # '+', '/' and '=' onto '!', which strict mode rejects like whitespace or any other
        # byte outside the alphabet.
        raw = binascii.a2b_base64(
            data.translate(_URL_TO_STD) + b"=" * (-size % 4), strict_mode=True
        )
    except binascii.Error as err:
        raise TokenMalformed(
            f"the token's {what} is not base64url without padding or whitespace (RFC 7515 2)"
        ) from err
    # Leftover bits in the last character make several strings decode to the same bytes; accept
    # only the one canonical spelling (unused bits zero) so a token has exactly one encoding.
    if size % 4 and _B64_VALUE[data[-1]] & (0x0F if size % 4 == 2 else 0x03):
        raise TokenMalformed(f"the token's {what} is not canonical base64url (RFC 7515 2)")
    return raw


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return out


class _DuplicateKey(ValueError):
    pass


def _bad_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_bad_constant)


def json_object(raw: bytes, what: str) -> dict[str, Any]:
    """Parse strict UTF-8 JSON that must be an object without duplicate member names."""
    try:
        value = _DECODER.decode(raw.decode("utf-8"))
    except _DuplicateKey as err:
        raise TokenMalformed(
            f"the token's {what} repeats the member {str(err)[:40]!r}; duplicate names are "
            "ambiguous and rejected (RFC 7515 4)"
        ) from err
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise TokenMalformed(f"the token's {what} is not UTF-8 JSON") from err
    if not isinstance(value, dict):
        raise TokenMalformed(f"the token's {what} is not a JSON object")
    return value


def shown(value: Any, limit: int) -> str:
    """A header value fit to quote in a refusal: a short string as it is, anything else
    (absent, another type, long enough to flood a log) named instead."""
    return value if isinstance(value, str) and len(value) <= limit else (
        "(missing or not a string)")


def split(token: str) -> tuple[str, str, str]:
    if not isinstance(token, str):
        raise TokenMalformed("a token must be text (a JWS compact serialisation)")
    if not token:
        raise TokenMissing("no token was presented; send 'authorization: Bearer <token>'")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenMalformed(
            f"a token must be three base64url parts separated by '.', this one has {len(parts)}"
        )
    return parts[0], parts[1], parts[2]


def encoded_header(typ: str, kid: str) -> str:
    """The base64url header a meshid signer emits for ``typ`` and ``kid`` (python-jose's
    encoding: sorted members, no spaces). A test keeps it equal to what :class:`SignKey` signs."""
    header = json.dumps({"alg": ALGORITHM, "kid": kid, "typ": typ}, separators=(",", ":"),
                        sort_keys=True)
    return b64url(header.encode("ascii"))


def parse(token: str, expected: Mapping[str, tuple[str, str]] | None = None) -> ParsedJws:
    """Split, decode and check the header of one compact JWS, without verifying it.

    ``expected`` maps encoded headers known to be valid (see :func:`encoded_header`) to their
    ``(typ, kid)``; a header equal to one of them is not parsed again. Any other header is
    decoded and checked in full.
    """
    h64, p64, s64 = split(token)
    known = expected.get(h64) if expected is not None else None
    typ, kid = known if known is not None else _check_header(h64)
    claims = json_object(b64url_decode(p64, "payload"), "payload")
    signature = b64url_decode(s64, "signature")
    return ParsedJws(
        typ=typ,
        kid=kid,
        claims=claims,
        signing_input=f"{h64}.{p64}".encode("ascii"),
        signature=signature,
        token=token,
    )


# The header python-jose (and so every meshid signer) emits, byte for byte: members sorted, no
# spaces. Decoded bytes that match it exactly are a valid header (three members, no duplicate,
# alg from the allowlist, a well-formed kid) without running the JSON parser; anything else is
# parsed and checked member by member below.
_CANONICAL_HEADER = re.compile(
    rb'\{"alg":"ES256","kid":"([A-Za-z0-9_-]{43})","typ":"(user\+jwt|app\+jwt|app-asserted\+jwt)"\}'
)


def _check_header(h64: str) -> tuple[str, str]:
    raw = b64url_decode(h64, "header")
    canonical = _CANONICAL_HEADER.fullmatch(raw)
    if canonical is not None:
        return canonical.group(2).decode("ascii"), canonical.group(1).decode("ascii")
    header = json_object(raw, "header")
    alg = header.get("alg")
    if alg != ALGORITHM:
        raise AlgorithmNotAllowed(
            f"the token's algorithm {shown(alg, 16)!r} is not allowed; only {ALGORITHM} is "
            "accepted (spec 3.2, 4.3)"
        )
    if header.keys() != HEADER_MEMBERS:
        extra = sorted(header.keys() - HEADER_MEMBERS)
        missing = sorted(HEADER_MEMBERS - header.keys())
        detail = []
        if extra:
            shown_extra = ", ".join(repr(k[:20]) for k in extra[:5])
            detail.append(f"forbidden member(s) {shown_extra}")
        if missing:
            detail.append(f"missing {', '.join(missing)}")
        raise HeaderInvalid(
            f"the token header must be exactly alg, typ and kid: {'; '.join(detail)} (spec 3.2)"
        )
    typ, kid = header["typ"], header["kid"]
    if not isinstance(typ, str):
        raise HeaderInvalid("the token header's typ is not a string (spec 3.2)")
    if not isinstance(kid, str) or not _KID_RE.fullmatch(kid):
        raise HeaderInvalid(
            "the token header's kid is not an x5t#S256 certificate thumbprint (spec 3.2)"
        )
    return typ, kid


@dataclass(frozen=True, slots=True)
class UnverifiedPart:
    """What ``mesh token inspect`` shows of one layer: decoded, not checked."""

    header: Mapping[str, Any]
    claims: Mapping[str, Any] | None
    signature_length: int
    problems: tuple[str, ...]


def decode_unverified(token: str) -> UnverifiedPart:
    """Decode a JWS leniently for display. Never use the result for a decision."""
    h64, p64, s64 = split(token)
    problems: list[str] = []
    header = json_object(b64url_decode(h64, "header"), "header")
    try:
        parse(token)
    except (HeaderInvalid, TokenMalformed) as err:
        problems.append(f"{err.reason}: {err}")
    claims: dict[str, Any] | None
    try:
        claims = json_object(b64url_decode(p64, "payload"), "payload")
    except TokenMalformed as err:
        claims = None
        problems.append(f"{err.reason}: {err}")
    try:
        sig_len = len(b64url_decode(s64, "signature"))
    except TokenMalformed:
        sig_len = -1
    return UnverifiedPart(header, claims, sig_len, tuple(dict.fromkeys(problems)))
