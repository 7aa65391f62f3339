"""The hardened JOSE module on its own: key handling, parsing, and agreement with python-jose."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from mesh.tokens import SigningError, jose
from mesh.tokens import errors as E


def test_keys_must_be_p256(mesh: Any) -> None:
    for bad in (
        ec.generate_private_key(ec.SECP384R1()).public_key(),
        rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
        ed25519.Ed25519PrivateKey.generate().public_key(),
        b"-----BEGIN PUBLIC KEY-----",
    ):
        with pytest.raises(SigningError, match="P-256"):
            jose.VerifyKey(bad)  # type: ignore[arg-type]
    with pytest.raises(SigningError, match="P-256"):
        jose.SignKey(ec.generate_private_key(ec.SECP384R1()), mesh.kid("orders"))
    with pytest.raises(SigningError, match="thumbprint"):
        jose.SignKey(mesh.key("orders"), "not-a-thumbprint")


def test_parse_returns_exactly_what_was_signed(mesh: Any) -> None:
    token = mesh.chain("gateway", "orders")
    parsed = jose.parse(token)
    h, p, _s = token.split(".")
    assert parsed.typ == "app-asserted+jwt" and parsed.kid == mesh.kid("gateway")
    assert parsed.signing_input == f"{h}.{p}".encode()
    assert len(parsed.signature) == 64
    assert parsed.claims["sub"] == "alice"


def test_our_verdict_agrees_with_python_jose(mesh: Any) -> None:
    """Our fast path (prebuilt key, our parse) and python-jose's own jws.verify agree."""
    key = jose.VerifyKey(mesh.cert("gateway").public_key())
    good = mesh.forge_signed("app+jwt", "gateway", "orders")
    key.verify(jose.parse(good))
    assert json.loads(key.verify_jws(good)) == dict(jose.parse(good).claims)
    other = mesh.forge_signed("app+jwt", "orders", "payments")
    h, p, _ = good.split(".")
    spliced = f"{h}.{p}.{other.split('.')[2]}"
    with pytest.raises(E.SignatureInvalid):
        key.verify(jose.parse(spliced))
    with pytest.raises(E.SignatureInvalid):
        key.verify_jws(spliced)
    wrong_key = jose.VerifyKey(mesh.cert("orders").public_key())
    with pytest.raises(E.SignatureInvalid):
        wrong_key.verify(jose.parse(good))
    with pytest.raises(E.SignatureInvalid):
        wrong_key.verify_jws(good)


def test_errors_from_python_jose_are_translated(mesh: Any) -> None:
    key = jose.VerifyKey(mesh.cert("gateway").public_key())
    hs = mesh.hs256({"alg": "HS256", "kid": mesh.kid("gateway"), "typ": "app+jwt"},
                    {"a": 1}, b"secret")
    with pytest.raises(E.SignatureInvalid) as info:
        key.verify_jws(hs)  # python-jose itself refuses: algorithms=["ES256"]
    assert info.value.__cause__ is not None


def test_decode_unverified_reports_problems(mesh: Any) -> None:
    token = mesh.forge({"alg": "HS256", "kid": "x", "typ": "user+jwt", "jku": "u"},
                       {"sub": "alice"}, signature=b"\x00" * 32)
    part = jose.decode_unverified(token)
    assert part.header["alg"] == "HS256"
    assert part.claims == {"sub": "alice"}
    assert part.signature_length == 32
    assert any(p.startswith("ALG_NOT_ALLOWED") for p in part.problems)
    with pytest.raises(E.TokenMalformed):
        jose.decode_unverified("only.two")
    with pytest.raises(E.TokenMissing):
        jose.parse("")


def test_header_checks_are_remembered_only_for_valid_headers(mesh: Any) -> None:
    header = {"alg": "ES256", "kid": mesh.kid("gateway"), "typ": "app+jwt", "crit": ["x"]}
    token = mesh.forge(header, {"a": 1}, mesh.key("gateway"))
    for _ in range(2):  # a rejected header is never cached as good
        with pytest.raises(E.HeaderInvalid):
            jose.parse(token)


def test_the_signer_emits_exactly_the_header_the_verifier_knows(mesh: Any) -> None:
    """The verifier skips parsing a header equal to ``encoded_header(typ, kid)``: that must be
    byte for byte what our signer emits, else the fast path silently never applies."""
    from mesh.tokens.jose import encoded_header

    token = mesh.signers["gateway"].app_token(mesh.id("orders"))
    assert token.split(".")[0] == encoded_header("app+jwt", mesh.kid("gateway"))
    user = mesh.user_token("gateway")
    assert user.split(".")[0] == encoded_header("user+jwt", mesh.kid("auth"))


def test_the_canonical_header_shortcut_agrees_with_the_full_check(mesh: Any) -> None:
    """Headers matching the signer's exact bytes skip the JSON parser; the verdict must be the
    full check's. Near misses (reordered, spaced, duplicated, other alg) take the full check."""
    from mesh.tokens.jose import _CANONICAL_HEADER, _check_header, b64url_decode, encoded_header

    kid = mesh.kid("gateway")
    for typ in ("user+jwt", "app+jwt", "app-asserted+jwt"):
        h64 = encoded_header(typ, kid)
        assert _CANONICAL_HEADER.fullmatch(b64url_decode(h64, "header"))
        assert _check_header(h64) == (typ, kid)
    near_misses = [
        ({"typ": "app+jwt", "alg": "ES256", "kid": kid}, ("app+jwt", kid)),  # reordered: fine
        (b'{"alg": "ES256","kid":"%s","typ":"app+jwt"}' % kid.encode(), ("app+jwt", kid)),
        (b'{"alg":"ES256","alg":"ES256","kid":"%s","typ":"app+jwt"}' % kid.encode(),
         E.TokenMalformed),
        ({"alg": "ES384", "kid": kid, "typ": "app+jwt"}, E.AlgorithmNotAllowed),
        ({"alg": "ES256", "kid": kid, "typ": "app+jwt", "crit": []}, E.HeaderInvalid),
    ]
    for header, expected in near_misses:
        raw = header if isinstance(header, bytes) else json.dumps(header).encode()
        h64 = jose.b64url(raw)
        assert not _CANONICAL_HEADER.fullmatch(raw)
        if isinstance(expected, tuple):
            assert _check_header(h64) == expected
        else:
            with pytest.raises(expected):
                _check_header(h64)
