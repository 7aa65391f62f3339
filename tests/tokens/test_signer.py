"""Minting: the wire format of spec 3, exactly."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from mesh.tokens import SigningError, TokenSigner
from mesh.tokens import errors as E


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    def dec(part: str) -> bytes:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

    h, p, s = token.split(".")
    return json.loads(dec(h)), json.loads(dec(p)), dec(s)


def test_user_token_format(mesh: Any) -> None:
    now = int(mesh.clock.now)
    token = mesh.signers["auth"].user_token(
        "alice", [mesh.id("gateway"), str(mesh.id("orders"))], name="Alice",
        scope=["orders:read", "orders:write"], roles=["customer"],
    )
    header, claims, sig = _parts(token)
    assert header == {"alg": "ES256", "kid": mesh.kid("auth"), "typ": "user+jwt"}
    assert claims["iss"] == str(mesh.id("auth"))
    assert claims["sub"] == "alice"
    assert claims["aud"] == [str(mesh.id("gateway")), str(mesh.id("orders"))]
    assert (claims["iat"], claims["exp"]) == (now, now + 900)
    assert claims["scope"] == "orders:read orders:write"
    assert claims["roles"] == ["customer"] and claims["name"] == "Alice"
    assert "cnf" not in claims and "upstream" not in claims
    assert len(sig) == 64
    assert len(claims["jti"]) >= 22


def test_app_token_format(mesh: Any) -> None:
    header, claims, _ = _parts(mesh.signers["gateway"].app_token(mesh.id("orders")))
    assert header["typ"] == "app+jwt"
    assert claims["iss"] == claims["sub"] == str(mesh.id("gateway"))
    assert claims["aud"] == str(mesh.id("orders"))
    assert claims["cnf"] == {"x5t#S256": mesh.kid("gateway")}
    assert claims["exp"] - claims["iat"] == 60


def test_app_asserted_token_wraps_and_clamps(mesh: Any) -> None:
    user = mesh.user_token("gateway", sub="carol", ttl=45)
    token = mesh.signers["gateway"].app_asserted_token(user, mesh.id("orders"), ttl=60)
    header, claims, _ = _parts(token)
    assert header["typ"] == "app-asserted+jwt"
    assert claims["upstream"] == user
    assert claims["sub"] == "carol"
    assert claims["exp"] == _parts(user)[1]["exp"]  # clamped to the upstream's 45 s
    assert claims["cnf"] == {"x5t#S256": mesh.kid("gateway")}
    shorter = mesh.signers["gateway"].app_asserted_token(user, mesh.id("orders"), ttl=10)
    assert _parts(shorter)[1]["exp"] == int(mesh.clock.now) + 10


def test_every_token_has_a_fresh_jti(mesh: Any) -> None:
    jtis = {_parts(mesh.signers["gateway"].app_token(mesh.id("orders")))[1]["jti"]
            for _ in range(50)}
    assert len(jtis) == 50


def test_the_signer_checks_its_key_and_certificate(mesh: Any) -> None:
    cert = mesh.cert("orders")
    with pytest.raises(SigningError, match="does not belong"):
        TokenSigner(mesh.key("gateway"), [cert])
    with pytest.raises(SigningError, match="does not belong"):
        TokenSigner(ec.generate_private_key(ec.SECP384R1()), [cert])
    with pytest.raises(SigningError, match="certificate chain"):
        TokenSigner(mesh.key("orders"), [])
    with pytest.raises(SigningError, match=r"not an X\.509-SVID"):
        TokenSigner(mesh.key("orders"), [_no_uri_cert(mesh)])
    signer = TokenSigner(mesh.key("orders"), [cert])
    assert signer.spiffe_id == mesh.id("orders") and signer.kid == mesh.kid("orders")


def _no_uri_cert(mesh: Any) -> Any:
    """orders' key in a certificate without a URI SAN: not an X.509-SVID."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = mesh.key("orders")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orders")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(7)
        .not_valid_before(now).not_valid_after(now + timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"sub": ""},
        {"aud": []},
        {"aud": ["https://not-spiffe"]},
        {"ttl": 0},
        {"ttl": 1.5},
        {"roles": "admin"},
        {"name": 3},
    ],
)
def test_bad_user_token_requests(mesh: Any, bad: dict[str, Any]) -> None:
    args: dict[str, Any] = {"sub": "alice", "aud": [mesh.id("gateway")]} | bad
    with pytest.raises(SigningError):
        mesh.signers["auth"].user_token(args.pop("sub"), args.pop("aud"), **args)


def test_wrapping_refuses_what_the_callee_would_reject(mesh: Any) -> None:
    signer = mesh.signers["orders"]
    with pytest.raises(E.TokenMalformed):
        signer.app_asserted_token("not.a.token", mesh.id("payments"))
    with pytest.raises(E.AudienceMismatch):
        signer.app_asserted_token(mesh.user_token("gateway"), mesh.id("payments"))
    with pytest.raises(E.TypeMismatch):
        signer.app_asserted_token(mesh.signers["gateway"].app_token(mesh.id("orders")),
                                  mesh.id("payments"))
