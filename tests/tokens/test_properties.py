"""Property tests: the parser and verifier never fail with anything but our token errors, and
what is minted verifies back to the same claims."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
from typing import Any

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.errors import CallRefused
from mesh.tokens import TokenError, jose

# The mesh fixture is set up once per test and only read by the examples.
_SHARED = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


def fixture_ok(max_examples: int = 100) -> settings:
    return settings(suppress_health_check=_SHARED, deadline=None, max_examples=max_examples)

json_scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
HEADER_NAMES = ["alg", "typ", "kid", "crit", "jku", "x5c", "cty"]
CLAIM_NAMES = ["iss", "sub", "aud", "iat", "exp", "nbf", "jti", "cnf", "upstream", "name",
               "scope", "roles"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@fixture_ok()
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_random_bytes_raise_only_token_errors(mesh: Any, data: bytes) -> None:
    edge, inner = mesh.verifier("gateway"), mesh.verifier("orders")
    for token in (data.decode("latin-1"), ".".join(_b64(c) for c in data.split(b"."))):
        for verifier, peer in ((edge, None), (inner, mesh.cert("gateway"))):
            try:
                verifier.verify(token, peer)
            except CallRefused as err:
                assert err.reason
                assert err.status == grpc.StatusCode.UNAUTHENTICATED
            else:  # pragma: no cover - random bytes never make a valid ES256 signature
                raise AssertionError("random bytes verified")


@fixture_ok(150)
@given(
    header=st.dictionaries(st.sampled_from(HEADER_NAMES), json_values, max_size=5),
    claims=st.dictionaries(st.sampled_from(CLAIM_NAMES) | st.text(max_size=6), json_values,
                           max_size=10),
    use_valid_header=st.booleans(),
)
def test_random_json_signed_with_a_real_key_raises_only_token_errors(
    mesh: Any, header: dict[str, Any], claims: dict[str, Any], use_valid_header: bool
) -> None:
    """Random JSON with a VALID signature by the peer's key exercises every claim rule."""
    if use_valid_header:
        header = {"alg": "ES256", "kid": mesh.kid("gateway"),
                  "typ": header.get("typ", "app+jwt")}
    token = mesh.forge(header, claims, mesh.key("gateway"))
    for verifier, peer in ((mesh.verifier("gateway"), None),
                           (mesh.verifier("orders"), mesh.cert("gateway"))):
        with contextlib.suppress(TokenError):
            verifier.verify(token, peer)


@fixture_ok(40)
@given(
    sub=st.text(min_size=1, max_size=60).filter(str.strip),
    name=st.none() | st.text(max_size=40),
    scopes=st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz:._-", min_size=1,
                            max_size=12), max_size=4),
    roles=st.lists(st.text(max_size=12), max_size=3),
    ttl=st.integers(min_value=1, max_value=3600),  # the default max_lifetime of a user token
    wraps=st.integers(min_value=0, max_value=3),
)
def test_mint_then_verify_round_trips(
    mesh: Any, sub: str, name: str | None, scopes: list[str], roles: list[str], ttl: int,
    wraps: int,
) -> None:
    path = ["gateway", "orders", "payments", "inventory"][: wraps + 1]
    token = mesh.signers["auth"].user_token(sub, [mesh.id(path[0])], name=name, scope=scopes,
                                            roles=roles, ttl=ttl)
    user_claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    for by, to in itertools.pairwise(path):
        token = mesh.wrap(token, by, to)
    peer = mesh.cert(path[-2]) if wraps else None
    result = mesh.verifier(path[-1]).verify(token, peer)
    assert result.user == sub
    assert result.kind == "user"
    assert result.chain == tuple(mesh.id(n) for n in path[:-1])
    assert result.expires_at == min(int(mesh.clock.now) + (60 if wraps else ttl),
                                    user_claims["exp"])
    assert dict(result.user_claims) == {
        k: tuple(v) if isinstance(v, list) else v for k, v in user_claims.items()
    }
    assert result.user_claims.get("name") == name
    assert result.user_claims["scope"] == " ".join(scopes)


@given(data=st.binary(max_size=200))
def test_base64url_round_trip(data: bytes) -> None:
    assert jose.b64url_decode(_b64(data), "part") == data


B64_AND_JUNK = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/= \n"


@given(text=st.text(alphabet=B64_AND_JUNK, max_size=40))
def test_only_canonical_base64url_decodes(text: str) -> None:
    """Whatever decodes must be the one canonical spelling of its bytes."""
    try:
        raw = jose.b64url_decode(text, "part")
    except CallRefused as err:
        assert err.reason == "TOKEN_MALFORMED"
    else:
        assert _b64(raw) == text


@fixture_ok(150)
@given(data=st.data())
def test_any_one_character_change_to_a_valid_chain_is_rejected(mesh: Any, data: Any) -> None:
    """With the verified chain in the cache, a token differing in any one character (of any
    layer, since inner layers are characters of the outer one too) is still rejected."""
    verifier = mesh.cached_verifier("payments")
    token = mesh.chain("gateway", "orders", "payments")
    verifier.verify(token, mesh.cert("orders"))
    index = data.draw(st.integers(min_value=0, max_value=len(token) - 1))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
    char = data.draw(st.sampled_from(alphabet).filter(lambda c: c != token[index]))
    mutated = token[:index] + char + token[index + 1:]
    try:
        verifier.verify(mutated, mesh.cert("orders"))
    except CallRefused:
        pass
    else:
        raise AssertionError(f"a token changed at {index} verified")
    assert verifier.verify(token, mesh.cert("orders")).user == "alice"
