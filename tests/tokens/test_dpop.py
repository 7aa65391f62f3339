"""DPoP proofs (spec 4.7, RFC 9449): every check broken alone, each with its control.

Proofs are built by hand here (any header, claim, key or signature); the verifier runs on a fake
clock. The wire-level tests (real edge servers, every call kind, lifted tokens) are in
tests/transport/test_dpop_edge.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from support.minimesh import DROP, Clock, MiniMesh, ProofForge, b64

from mesh.dpop import DpopClient
from mesh.errors import MeshError
from mesh.identity.spiffeid import SpiffeId
from mesh.tokens import errors as E
from mesh.tokens.claims import parse_claims
from mesh.tokens.dpop import (
    DpopSettings,
    ProofVerifier,
    ath_of,
    htu_for,
    jwk_thumbprint,
    parse_proof,
    public_jwk,
    verify_signature,
)
from mesh.tokens.errors import ClaimInvalid, SigningError
from mesh.tokens.verify import ChainVerifier
from mesh.transport.context import enter_call, leave_call, require_user

NOW = 1_800_000_000
METHOD = "/mesh.demo.v1.GatewayService/PlaceOrder"
GATEWAY = SpiffeId.parse("spiffe://mesh.internal/svc/gateway")
HTU = "https://gateway.svc.mesh.internal" + METHOD
TOKEN = "eyJ.the-user-token.sig"

# RFC 9449 Figure 2 (the proof) and Figure 9 (its key's thumbprint, the cnf.jkt of an access
# token bound to it): a known answer for the parser, the signature check and RFC 7638.
RFC_PROOF = (
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0"
    "VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10"
    "NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoi"
    "UE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ.2-"
    "GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg")
RFC_JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
RFC_JWK = {"kty": "EC", "crv": "P-256", "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
           "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA"}


class Hand(ProofForge):
    """A client key at the fixed clock, proofs for HTU naming TOKEN unless told otherwise."""

    def __init__(self) -> None:
        super().__init__(HTU, clock=lambda: float(NOW))

    def proof(self, *, token: str | None = TOKEN, **kw: Any) -> str:  # type: ignore[override]
        return super().proof(token=token, **kw)


def _verifier(**settings: Any) -> tuple[ProofVerifier, Clock]:
    clock = Clock(float(NOW))
    return ProofVerifier(GATEWAY, DpopSettings(**settings), clock=clock), clock


def _reason(fn: Callable[[], object]) -> str:
    with pytest.raises(E.DpopError) as info:
        fn()
    return str(info.value.reason)


# --- known answers ------------------------------------------------------------------------------


def test_the_rfc_9449_example_proof_and_thumbprint() -> None:
    """RFC 9449's own proof parses, its signature verifies with its jwk, and its key's RFC 7638
    thumbprint is the one the RFC publishes."""
    parsed = parse_proof(RFC_PROOF)
    assert parsed.jkt == RFC_JKT == jwk_thumbprint(RFC_JWK)
    assert (parsed.htm, parsed.htu, parsed.iat, parsed.jti) == (
        "POST", "https://server.example.com/token", 1562262616, "-BwC3ESc6acc2lTc")
    verify_signature(parsed)
    # at a meshid edge port it is a proof for another URI: refused for that, and only for that
    verifier = ProofVerifier(GATEWAY, clock=lambda: 1562262616.0)
    assert _reason(lambda: verifier.verify(RFC_PROOF, METHOD)) == "DPOP_HTU_MISMATCH"
    # control: one flipped bit in the signature and it no longer verifies
    head, payload, sig = RFC_PROOF.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[10] ^= 1
    with pytest.raises(E.DpopSignatureInvalid):
        verify_signature(parse_proof(f"{head}.{payload}.{b64(bytes(raw))}"))


def test_thumbprint_is_rfc_7638_member_order_without_whitespace() -> None:
    hand = Hand()
    assert public_jwk(hand.key.public_key()) == hand.jwk
    canonical = json.dumps({"crv": "P-256", "kty": "EC", "x": hand.jwk["x"],
                            "y": hand.jwk["y"]}, separators=(",", ":"))
    assert hand.jkt == b64(hashlib.sha256(canonical.encode()).digest())
    # member order and extra members of the object given do not change it
    assert jwk_thumbprint({"y": hand.jwk["y"], "x": hand.jwk["x"], "kty": "EC",
                           "crv": "P-256", "kid": "k"}) == hand.jkt


def test_htu_and_ath() -> None:
    assert htu_for(GATEWAY, METHOD) == HTU
    assert ath_of("abc") == b64(hashlib.sha256(b"abc").digest())
    with pytest.raises(MeshError):
        htu_for(SpiffeId.parse("spiffe://mesh.internal/agent/node-1"), METHOD)


# --- every rule broken alone, each with its control --------------------------------------------

CASES: list[tuple[str, Callable[[Hand, Hand], str], str]] = [
    ("typ JWT", lambda h, o: h.proof(header={"typ": "JWT"}), "DPOP_TYPE_INVALID"),
    ("typ absent", lambda h, o: h.proof(header={"typ": DROP}), "DPOP_TYPE_INVALID"),
    ("typ of a user token", lambda h, o: h.proof(header={"typ": "user+jwt"}),
     "DPOP_TYPE_INVALID"),
    ("alg none", lambda h, o: h.proof(header={"alg": "none"}, signature=b""),
     "DPOP_ALG_NOT_ALLOWED"),
    ("alg HS256 keyed by a jwk k", lambda h, o: h.proof(
        header={"alg": "HS256", "jwk": {"kty": "oct", "k": b64(b"s" * 32)}},
        signature=lambda d: hmac.new(b"s" * 32, d, hashlib.sha256).digest()),
     "DPOP_ALG_NOT_ALLOWED"),
    ("alg ES384", lambda h, o: h.proof(header={"alg": "ES384"}), "DPOP_ALG_NOT_ALLOWED"),
    ("alg es256", lambda h, o: h.proof(header={"alg": "es256"}), "DPOP_ALG_NOT_ALLOWED"),
    ("header member kid", lambda h, o: h.proof(header={"kid": "k"}), "DPOP_MALFORMED"),
    ("header member x5c", lambda h, o: h.proof(header={"x5c": ["MII"]}), "DPOP_MALFORMED"),
    ("no jwk", lambda h, o: h.proof(header={"jwk": DROP}), "DPOP_MALFORMED"),
    ("jwk with d", lambda h, o: h.proof(header={"jwk": {**h.jwk, "d": b64(bytes(32))}}),
     "DPOP_JWK_PRIVATE"),
    ("jwk symmetric", lambda h, o: h.proof(header={"jwk": {"kty": "oct", "k": "c2VjcmV0"}}),
     "DPOP_JWK_PRIVATE"),
    ("jwk RSA", lambda h, o: h.proof(header={"jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}}),
     "DPOP_JWK_INVALID"),
    ("jwk P-384", lambda h, o: h.proof(header={"jwk": {**h.jwk, "crv": "P-384"}}),
     "DPOP_JWK_INVALID"),
    ("jwk extra member", lambda h, o: h.proof(header={"jwk": {**h.jwk, "use": "sig"}}),
     "DPOP_JWK_INVALID"),
    ("jwk x padded", lambda h, o: h.proof(header={"jwk": {**h.jwk, "x": h.jwk["x"] + "="}}),
     "DPOP_JWK_INVALID"),
    ("jwk off the curve", lambda h, o: h.proof(header={"jwk": {**h.jwk, "y": h.jwk["x"]}}),
     "DPOP_JWK_INVALID"),
    ("jwk a string", lambda h, o: h.proof(header={"jwk": "key"}), "DPOP_JWK_INVALID"),
    ("jti absent", lambda h, o: h.proof(jti=DROP), "DPOP_CLAIM_INVALID"),
    ("jti empty", lambda h, o: h.proof(jti=""), "DPOP_CLAIM_INVALID"),
    ("htm absent", lambda h, o: h.proof(htm=DROP), "DPOP_CLAIM_INVALID"),
    ("htu a list", lambda h, o: h.proof(htu=[HTU]), "DPOP_CLAIM_INVALID"),
    ("iat a string", lambda h, o: h.proof(iat=str(NOW)), "DPOP_CLAIM_INVALID"),
    ("iat true", lambda h, o: h.proof(iat=True), "DPOP_CLAIM_INVALID"),
    ("iat a fraction", lambda h, o: h.proof(iat=NOW + 0.5), "DPOP_CLAIM_INVALID"),
    ("ath absent", lambda h, o: h.proof(token=None), "DPOP_CLAIM_INVALID"),
    ("ath a number", lambda h, o: h.proof(ath=1), "DPOP_CLAIM_INVALID"),
    ("signed by another key", lambda h, o: h.proof(signer=o.key), "DPOP_SIGNATURE_INVALID"),
    ("signature DER", lambda h, o: h.proof(
        signature=lambda d: h.key.sign(d, ec.ECDSA(hashes.SHA256()))),
     "DPOP_SIGNATURE_INVALID"),
    ("signature zero", lambda h, o: h.proof(signature=bytes(64)), "DPOP_SIGNATURE_INVALID"),
    ("htm GET", lambda h, o: h.proof(htm="GET"), "DPOP_HTM_MISMATCH"),
    ("htm post", lambda h, o: h.proof(htm="post"), "DPOP_HTM_MISMATCH"),
    ("htu another method", lambda h, o: h.proof(htu=HTU.replace("PlaceOrder", "ListOrders")),
     "DPOP_HTU_MISMATCH"),
    ("htu another service", lambda h, o: h.proof(htu=HTU.replace("gateway.", "orders.")),
     "DPOP_HTU_MISMATCH"),
    ("htu with a port", lambda h, o: h.proof(htu=HTU.replace(".internal/", ".internal:443/")),
     "DPOP_HTU_MISMATCH"),
    ("htu http", lambda h, o: h.proof(htu=HTU.replace("https", "http")), "DPOP_HTU_MISMATCH"),
    ("iat 61 s old", lambda h, o: h.proof(iat=NOW - 61), "DPOP_IAT_INVALID"),
    ("iat 61 s ahead", lambda h, o: h.proof(iat=NOW + 61), "DPOP_IAT_INVALID"),
    ("ath of another token", lambda h, o: h.proof(token=TOKEN + "x"), "DPOP_ATH_MISMATCH"),
    ("another key, valid proof", lambda h, o: o.proof(), "DPOP_KEY_MISMATCH"),
]


@pytest.mark.parametrize(("case", "make", "reason"), CASES, ids=[c[0] for c in CASES])
def test_each_rule_broken_alone(case: str, make: Callable[[Hand, Hand], str],
                                reason: str) -> None:
    hand, other = Hand(), Hand()
    verifier, _ = _verifier()
    assert _reason(lambda: verifier.verify(make(hand, other), METHOD, token=TOKEN,
                                           jkt=hand.jkt)) == reason
    # control: the same builder with the rule intact is accepted by the same verifier
    ok = verifier.verify(hand.proof(), METHOD, token=TOKEN, jkt=hand.jkt)
    assert ok.jkt == hand.jkt and ok.htu == HTU


def test_the_header_memo_holds_only_headers_of_accepted_proofs() -> None:
    """A client sends the same encoded header (its key) on every call; the verifier decodes it
    once. Only an accepted proof's header is remembered, and a header differing in any byte
    is checked in full."""
    hand = Hand()
    verifier, _ = _verifier()
    assert _reason(lambda: verifier.verify(hand.proof(htm="GET"), METHOD, token=TOKEN)) == (
        "DPOP_HTM_MISMATCH")
    assert verifier._headers == {}
    verifier.verify(hand.proof(), METHOD, token=TOKEN, jkt=hand.jkt)
    assert [jkt for _, jkt in verifier._headers.values()] == [hand.jkt]
    # the same key with its private part, or another typ: a new header, refused in full
    assert _reason(lambda: verifier.verify(hand.proof(header={"jwk": {**hand.jwk, "d": "AA"}}),
                                           METHOD, token=TOKEN)) == "DPOP_JWK_PRIVATE"
    assert _reason(lambda: verifier.verify(hand.proof(header={"typ": "jwt"}), METHOD,
                                           token=TOKEN)) == "DPOP_TYPE_INVALID"
    # a remembered header signed by another key still fails its signature
    assert _reason(lambda: verifier.verify(hand.proof(signer=Hand().key), METHOD,
                                           token=TOKEN)) == "DPOP_SIGNATURE_INVALID"
    assert len(verifier._headers) == 1
    verifier.verify(hand.proof(), METHOD, token=TOKEN, jkt=hand.jkt)


def test_the_window_edges_are_inclusive() -> None:
    hand = Hand()
    verifier, _ = _verifier(window=60)
    for iat in (NOW - 60, NOW + 60, NOW):
        verifier.verify(hand.proof(iat=iat), METHOD, token=TOKEN, jkt=hand.jkt)
    narrow, _ = _verifier(window=5)
    assert _reason(lambda: narrow.verify(hand.proof(iat=NOW - 6), METHOD, token=TOKEN)) == (
        "DPOP_IAT_INVALID")


def test_malformed_proofs() -> None:
    hand = Hand()
    good = hand.proof()
    head, payload, sig = good.split(".")
    verifier, _ = _verifier()
    duplicate = b64(b'{"jti":"a","jti":"b","htm":"POST","htu":"x","iat":1}')
    nan = b64(b'{"iat":NaN}')
    for bad in (good.rsplit(".", 1)[0], good + ".x", f"{head}=.{payload}.{sig}",
                f"{head}.{payload}.{sig}=", f" {good}", f"{head}.+{payload}.{sig}",
                "x" * 3000, "é." + good, f"{b64(b'[]')}.{payload}.{sig}",
                f"{head}.{b64(b'not json')}.{sig}", f"{head}.{duplicate}.{sig}",
                f"{head}.{nan}.{sig}", f"{head}.{b64(b'[1]')}.{sig}", ""):
        assert _reason(lambda bad=bad: verifier.verify(bad, METHOD, token=TOKEN)) == (
            "DPOP_MALFORMED"), bad[:60]
    # control
    verifier.verify(good, METHOD, token=TOKEN, jkt=hand.jkt)


# --- replay ---------------------------------------------------------------------------------


def test_a_proof_is_single_use_within_the_window_and_a_failed_one_is_not_spent() -> None:
    hand = Hand()
    verifier, clock = _verifier(window=60)
    proof = hand.proof(jti="one-shot")
    # a failing check (wrong key expected) does not record the jti
    assert _reason(lambda: verifier.verify(proof, METHOD, token=TOKEN, jkt="x" * 43)) == (
        "DPOP_KEY_MISMATCH")
    verifier.verify(proof, METHOD, token=TOKEN, jkt=hand.jkt)
    clock.now = NOW + 60  # still inside the window: still remembered
    assert _reason(lambda: verifier.verify(proof, METHOD, token=TOKEN, jkt=hand.jkt)) == (
        "DPOP_REPLAYED")
    clock.now = NOW + 61  # its window is over: refused for its age, no longer remembered
    assert _reason(lambda: verifier.verify(proof, METHOD, token=TOKEN, jkt=hand.jkt)) == (
        "DPOP_IAT_INVALID")
    # the same jti from another key is another proof; recording it dropped the expired entry
    other = Hand()
    verifier.verify(other.proof(jti="one-shot", iat=NOW + 61), METHOD, token=TOKEN)
    assert len(verifier.replay) == 1


def test_a_login_proof_has_no_token_and_is_single_use() -> None:
    hand = Hand()
    verifier, _ = _verifier()
    md = [("dpop", hand.proof(token=None))]
    assert verifier.check_login(md, METHOD).jkt == hand.jkt
    assert _reason(lambda: verifier.check_login(md, METHOD)) == "DPOP_REPLAYED"
    assert _reason(lambda: verifier.check_login([], METHOD)) == "DPOP_MISSING"
    two = [("dpop", hand.proof(token=None)), ("dpop", hand.proof(token=None))]
    assert _reason(lambda: verifier.check_login(two, METHOD)) == "DPOP_MALFORMED"
    assert _reason(lambda: verifier.check_login([("dpop", b"bin")], METHOD)) == "DPOP_MALFORMED"
    # control
    assert verifier.check_login([("x", "1"), ("dpop", hand.proof(token=None))], METHOD)


# --- the binding: check_call --------------------------------------------------------------


def test_check_call_binding_rules(shared_mesh: MiniMesh) -> None:
    m = shared_mesh
    hand = Hand()
    verifier = ChainVerifier(m.id("gateway"), m.trust)
    bound_token = m.user_token(jkt=hand.jkt)
    bound = verifier.verify(bound_token, None)
    unbound_token = m.user_token()
    unbound = verifier.verify(unbound_token, None)
    assert (bound.user_jkt, unbound.user_jkt) == (hand.jkt, None)
    for chain, jkt in ((bound, hand.jkt), (unbound, None)):
        handle = enter_call(chain)
        try:
            assert require_user().jkt == jkt
        finally:
            leave_call(handle)
    strict = ProofVerifier(m.id("gateway"))
    migrating = ProofVerifier(m.id("gateway"), DpopSettings(accept_bearer=True))

    def proof(token: str) -> str:
        return hand.proof(token=token, iat=int(time.time()),
                          htu="https://" + m.dns("gateway") + METHOD)

    for port in (strict, migrating):
        # a bound token: DPoP scheme and a proof by its key, whatever the port allows
        assert port.check_call(bound, "DPoP", proof(bound_token), METHOD) is not None
        assert port.check_call(bound, "dpop", proof(bound_token), METHOD) is not None
        assert _reason(lambda p=port: p.check_call(bound, "DPoP", None, METHOD)) == (
            "DPOP_MISSING")
        assert _reason(lambda p=port: p.check_call(bound, "Bearer", proof(bound_token),
                                                   METHOD)) == "DPOP_MISSING"
        # an unbound token under the DPoP scheme is refused everywhere
        with pytest.raises(E.UserTokenUnbound) as info:
            port.check_call(unbound, "DPoP", proof(unbound_token), METHOD)
        assert info.value.hop == 0
    # given the call's metadata, the binding is settled before the proof entries are read
    two = [("dpop", "a.b.c"), ("dpop", "d.e.f")]
    assert _reason(lambda: strict.check_call(unbound, "DPoP", two, METHOD)) == (
        "USER_TOKEN_UNBOUND")
    assert _reason(lambda: strict.check_call(bound, "DPoP", two, METHOD)) == "DPOP_MALFORMED"
    assert _reason(lambda: strict.check_call(bound, "DPoP", [("x", "1")], METHOD)) == (
        "DPOP_MISSING")
    assert strict.check_call(bound, "DPoP", [("dpop", proof(bound_token))], METHOD)
    # an unbound bearer token: refused by default, accepted when migrating
    assert _reason(lambda: strict.check_call(unbound, "Bearer", None, METHOD)) == (
        "USER_TOKEN_UNBOUND")
    assert migrating.check_call(unbound, "Bearer", None, METHOD) is None


def test_settings_are_checked() -> None:
    for bad in ({"window": 0}, {"window": 3601}, {"window": 1.5}, {"max_proofs": 0}):
        with pytest.raises(MeshError):
            DpopSettings(**bad)


# --- the user token's cnf (spec 3.3) ---------------------------------------------------------


def _user_claims(**over: Any) -> dict[str, Any]:
    claims = {"iss": "spiffe://mesh.internal/svc/auth", "sub": "alice",
              "aud": ["spiffe://mesh.internal/svc/gateway"], "iat": NOW, "exp": NOW + 60,
              "jti": "j"}
    claims.update(over)
    return claims


@pytest.mark.parametrize("cnf", [
    {}, {"jkt": "short"}, {"jkt": RFC_JKT, "x5t#S256": RFC_JKT}, {"x5t#S256": RFC_JKT},
    {"jkt": 7}, [RFC_JKT], RFC_JKT, {"jkt": RFC_JKT + "="}, None,
])
def test_a_user_tokens_cnf_is_exactly_jkt(cnf: Any) -> None:
    with pytest.raises(ClaimInvalid):
        parse_claims("user+jwt", _user_claims(cnf=cnf))
    # control
    assert parse_claims("user+jwt", _user_claims(cnf={"jkt": RFC_JKT})).jkt == RFC_JKT
    assert parse_claims("user+jwt", _user_claims()).jkt is None


def test_the_signer_binds_only_a_thumbprint(shared_mesh: MiniMesh) -> None:
    signer = shared_mesh.signers["auth"]
    with pytest.raises(SigningError):
        signer.user_token("alice", ["gateway"], jkt="alice")
    token = signer.user_token("alice", ["gateway"], jkt=RFC_JKT)
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert payload["cnf"] == {"jkt": RFC_JKT}


# --- the client helper's proofs ------------------------------------------------------------


def test_dpop_client_proofs_are_exactly_the_format() -> None:
    client = DpopClient(clock=lambda: float(NOW))
    proof = client.proof_for(GATEWAY, METHOD, token=TOKEN)
    header = json.loads(base64.urlsafe_b64decode(proof.split(".")[0] + "=="))
    claims = json.loads(base64.urlsafe_b64decode(proof.split(".")[1] + "=="))
    assert header == {"typ": "dpop+jwt", "alg": "ES256", "jwk": client.jwk}
    assert set(client.jwk) == {"kty", "crv", "x", "y"}
    assert claims.keys() == {"jti", "htm", "htu", "iat", "ath"}
    assert (claims["htm"], claims["htu"], claims["iat"], claims["ath"]) == (
        "POST", HTU, NOW, ath_of(TOKEN))
    assert len(base64.urlsafe_b64decode(claims["jti"] + "==")) == 16
    assert client.proof_for("gateway.svc.mesh.internal", METHOD) != proof  # a new jti each
    verifier, _ = _verifier()
    assert verifier.verify(proof, METHOD, token=TOKEN, jkt=client.jkt).jkt == client.jkt
    assert client.metadata(GATEWAY, METHOD, token=TOKEN)[0] == ("authorization",
                                                                f"DPoP {TOKEN}")
    assert "d" not in client.jwk and repr(client) == f"DpopClient(jkt={client.jkt!r})"
    with pytest.raises(MeshError):
        client.proof_for(GATEWAY, "PlaceOrder")
    with pytest.raises(MeshError):
        DpopClient(ec.generate_private_key(ec.SECP384R1()))


# --- the parser on anything ----------------------------------------------------------------


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
_header = st.fixed_dictionaries(
    {}, optional={"typ": st.sampled_from(["dpop+jwt", "JWT", 1]) | _json,
                  "alg": st.sampled_from(["ES256", "none", "HS256"]) | _json,
                  "jwk": st.sampled_from([RFC_JWK, {**RFC_JWK, "d": "x"}]) | _json,
                  "kid": _json})
_claims = st.fixed_dictionaries(
    {}, optional={"jti": _json, "htm": st.just("POST") | _json, "htu": st.just(HTU) | _json,
                  "iat": st.just(NOW) | _json, "ath": _json})


def _b64json(value: Any) -> str:
    return b64(json.dumps(value).encode())


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_any_text_raises_only_dpop_errors(text: str) -> None:
    with pytest.raises(E.DpopError):
        parse_proof(text)


@settings(max_examples=300, deadline=None)
@given(_header, _claims, st.binary(max_size=70))
def test_any_json_raises_only_dpop_errors(header: dict[str, Any], claims: dict[str, Any],
                                          sig: bytes) -> None:
    verifier = ProofVerifier(GATEWAY, clock=lambda: float(NOW))
    try:
        verifier.verify(f"{_b64json(header)}.{_b64json(claims)}.{b64(sig)}", METHOD,
                        token=TOKEN, jkt=RFC_JKT)
    except E.DpopError:
        return
    raise AssertionError("a proof with a made-up signature was accepted")


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.integers(0, 2))
def test_bytes_in_any_part_raise_only_dpop_errors(raw: bytes, where: int) -> None:
    parts = Hand().proof().split(".")
    parts[where] = b64(raw)
    with pytest.raises(E.DpopError):
        ProofVerifier(GATEWAY, clock=lambda: float(NOW)).verify(".".join(parts), METHOD,
                                                                 token=TOKEN)
