"""Generate the conformance vectors in ``spec/vectors/`` (docs/spec.md section 10).

Each vector is one JSON file: a token, the verifying service, the peer's certificate chain (or
none, for an edge port), the trust bundle and CRL, the clock (``now``) and optional limits, and
what a conforming verifier must conclude. Certificates come from real CAs made here with
:class:`ca.authority.CertificateAuthority`: roots and intermediates valid for 50 years, service
certificates for 10. Every vector is verified at its fixed ``now`` (about a day after the run),
so vectors stay valid long after they were made; regenerating gives new keys and tokens, not
the same bytes.

Edge-port vectors with a ``method`` are whole edge calls under DPoP (spec 4.7): the token is
bound to a key (``cnf.jkt``) and ``dpop`` holds the call's proof (absent: the call sent none).
Proofs are built by hand here (any header, claim or signature), with ``iat`` = ``now`` unless
the case is about ``iat``.

Before a file is written, the vector is run through :class:`mesh.tokens.ChainVerifier` (and,
with a ``method``, :class:`mesh.tokens.dpop.ProofVerifier`) and the run stops if the outcome is
not the one the vector states, so a case cannot silently test the wrong rule.

Usage: ``scripts/gen-vectors [--out DIR]`` (default: the repository's ``spec/vectors``)
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import hmac
import itertools
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ca.authority import CertificateAuthority
from ca.bundle import b64der, der_of, ec_coordinates
from ca.service.ids import agent_id, ca_id
from ca.svid import IssuedSVID
from mesh.errors import CallRefused
from mesh.identity.bundle import FileBundleSource
from mesh.identity.certs import load_pem_chain
from mesh.identity.spiffeid import SpiffeId
from mesh.tokens import ChainVerifier, MaxLifetime, TokenSigner, VerifyLimits
from mesh.tokens.dpop import ProofVerifier

VECTORS = Path(__file__).resolve().parent.parent / "spec" / "vectors"
SERVICES = ("auth", "gateway", "orders", "payments", "inventory", "reporting")
TD = "mesh.internal"
CA_LIFETIME = timedelta(days=365 * 50)
LEAF_LIFETIME = timedelta(days=365 * 10)
DAY = 86400
_DROP = object()


# --- JOSE by hand: any header, any payload, any signature -----------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def part(value: dict[str, Any] | bytes | str) -> str:
    if isinstance(value, dict):
        return b64(json.dumps(value, separators=(",", ":")).encode())
    if isinstance(value, bytes):
        return b64(value)
    return value  # already encoded, possibly on purpose wrongly


def es256_der(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def es256(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(es256_der(key, data))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def jws(
    header: dict[str, Any] | bytes | str,
    payload: dict[str, Any] | bytes | str,
    key: ec.EllipticCurvePrivateKey | None = None,
    *,
    signature: bytes | Callable[[bytes], bytes] | None = None,
) -> str:
    signing_input = f"{part(header)}.{part(payload)}"
    if signature is None:
        assert key is not None
        sig = es256(key, signing_input.encode())
    elif callable(signature):
        sig = signature(signing_input.encode())
    else:
        sig = signature
    return f"{signing_input}.{b64(sig)}"


# --- DPoP proofs by hand (spec 4.7) ------------------------------------------------------------

PLACE_ORDER = "/mesh.demo.v1.GatewayService/PlaceOrder"
LIST_ORDERS = "/mesh.demo.v1.GatewayService/ListOrders"


def ath(token: str) -> str:
    return b64(hashlib.sha256(token.encode("ascii")).digest())


@dataclass
class DpopKey:
    """A client's P-256 key, its public JWK and RFC 7638 thumbprint (computed here by hand)."""

    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    @property
    def jwk(self) -> dict[str, str]:
        x, y = ec_coordinates(self.key.public_key())
        return {"kty": "EC", "crv": "P-256", "x": x, "y": y}

    @property
    def jkt(self) -> str:
        jwk = self.jwk
        canonical = json.dumps({m: jwk[m] for m in ("crv", "kty", "x", "y")},
                               separators=(",", ":"))
        return b64(hashlib.sha256(canonical.encode()).digest())

    def proof(self, url: str, token: str | None, /, *, iat: int,
              header: dict[str, Any] | None = None,
              signer: ec.EllipticCurvePrivateKey | None = None,
              signature: bytes | Callable[[bytes], bytes] | None = None,
              raw_payload: bytes | None = None, **claims: Any) -> str:
        """A proof for a POST to ``url`` naming ``token``; claim overrides (``_DROP``: none)."""
        head = {k: v for k, v in {"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk,
                                  **(header or {})}.items() if v is not _DROP}
        body: dict[str, Any] = {
            "jti": b64(hashlib.sha256(repr((url, iat, sorted(claims))).encode()).digest()[:16]),
            "htm": "POST", "htu": url, "iat": iat,
        }
        if token is not None:
            body["ath"] = ath(token)
        body.update(claims)
        payload: dict[str, Any] | bytes = raw_payload if raw_payload is not None else {
            k: v for k, v in body.items() if v is not _DROP}
        return jws(head, payload, signer or self.key, signature=signature)


# --- a trust domain's material ----------------------------------------------------------------


@dataclass
class Domain:
    """One CA and its services; ``state()`` snapshots the published bundle and CRL."""

    ca: CertificateAuthority
    now: int
    svids: dict[str, IssuedSVID] = field(default_factory=dict)

    def id(self, name: str) -> str:
        """The SPIFFE ID of service ``name`` (a full SPIFFE ID is returned as it is)."""
        if name.startswith("spiffe://"):
            return name
        return str(self.ca.trust_domain.service(name))

    def issue(self, name: str, **kw: Any) -> IssuedSVID:
        svid = self.ca.issue(name, **kw)
        self.svids[name] = svid
        return svid

    def state(self) -> tuple[dict[str, Any], str]:
        bundle = json.loads(self.ca.bundle_path.read_text())
        return bundle, self.ca.crl_path.read_text()

    def key(self, name: str) -> ec.EllipticCurvePrivateKey:
        key = self.svids[name].private_key
        assert key is not None
        return key

    def kid(self, name: str) -> str:
        return self.svids[name].thumbprint

    def pem(self, name: str, *, leaf_only: bool = False) -> str:
        svid = self.svids[name]
        chain = svid.chain[:1] if leaf_only else svid.chain
        return "".join(
            c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in chain
        )

    def signer(self, name: str) -> TokenSigner:
        return TokenSigner(self.key(name), self.svids[name].chain, clock=lambda: self.now)

    # legitimate tokens, as meshid's own signer makes them
    def user(self, *aud: str, sub: str = "alice", ttl: int = 900, **kw: Any) -> str:
        return self.signer("auth").user_token(sub, [self.id(a) for a in aud], ttl=ttl, **kw)

    def wrap(self, token: str, by: str, to: str, ttl: int = 60) -> str:
        return self.signer(by).app_asserted_token(token, self.id(to), ttl=ttl)

    def chain(self, *hops: str) -> str:
        """A user token for hops[0], wrapped by each service in turn."""
        token = self.user(hops[0], scope="orders:write", roles=["customer"], name="Alice")
        for by, to in itertools.pairwise(hops):
            token = self.wrap(token, by, to)
        return token

    # hand-made tokens
    def claims(self, typ: str, by: str, to: str | list[str], **over: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "iss": self.id(by),
            "sub": self.id(by) if typ == "app+jwt" else "alice",
            "aud": [self.id(a) for a in to] if isinstance(to, list) else self.id(to),
            "iat": self.now,
            "exp": self.now + (900 if typ == "user+jwt" else 60),
            "jti": b64(hashlib.sha256(repr((typ, by, to, sorted(over))).encode()).digest()[:16]),
        }
        if typ != "user+jwt":
            base["cnf"] = {"x5t#S256": self.kid(by)}
        base.update(over)
        return {k: v for k, v in base.items() if v is not _DROP}

    def header(self, typ: str, by: str, /, **over: Any) -> dict[str, Any]:
        out = {"alg": "ES256", "typ": typ, "kid": self.kid(by), **over}
        return {k: v for k, v in out.items() if v is not _DROP}

    def forge(self, typ: str, by: str, to: str | list[str], **over: Any) -> str:
        """A token of kind ``typ`` with claim overrides, validly signed by ``by``'s own key."""
        return jws(self.header(typ, by), self.claims(typ, by, to, **over), self.key(by))


# --- vectors ------------------------------------------------------------------------------------


@dataclass
class Vector:
    name: str
    description: str
    audience: str
    token: str
    bundle: dict[str, Any]
    expect: str
    peer_chain_pem: str | None = None
    crl_pem: str | None = None
    limits: dict[str, Any] | None = None
    reason: str | None = None
    hop: int | None = None
    status: str | None = None
    user: str | None = None
    chain: list[str] = field(default_factory=list)
    method: str | None = None
    dpop: str | None = None

    def document(self, now: int) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "now": now,
            "audience": self.audience,
            "token": self.token,
        }
        if self.peer_chain_pem is not None:
            doc["peer_chain_pem"] = self.peer_chain_pem
        doc["bundle"] = self.bundle
        if self.crl_pem is not None:
            doc["crl_pem"] = self.crl_pem
        if self.limits is not None:
            doc["limits"] = self.limits
        if self.method is not None:
            doc["method"] = self.method
        if self.dpop is not None:
            doc["dpop"] = self.dpop
        doc["expect"] = self.expect
        if self.expect == "reject":
            doc["reason"] = self.reason
            doc["status"] = self.status or "UNAUTHENTICATED"
            doc["hop"] = self.hop
        else:
            doc["user"] = self.user
            doc["chain"] = self.chain
        return doc


def run(doc: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Verify one vector document with meshid's verifier; the outcome in the vector's terms."""
    bundle_file = folder / "bundle.spiffe.json"
    bundle_file.write_text(json.dumps(doc["bundle"]))
    crl_file = None
    if "crl_pem" in doc:
        crl_file = folder / "crl.pem"
        crl_file.write_text(doc["crl_pem"])
    now = doc["now"]

    def clock() -> float:
        return float(now)

    bundle = FileBundleSource(bundle_file, crl_file, clock=clock)
    raw = doc.get("limits", {})
    limits = VerifyLimits(
        max_size=raw.get("max_size", 8192),
        max_depth=raw.get("max_depth", 4),
        leeway=raw.get("leeway", 30),
        max_lifetime=MaxLifetime(**{
            k.replace("-", "_"): v for k, v in raw.get("max_lifetime", {}).items()
        }),
    )
    verifier = ChainVerifier(
        SpiffeId.parse(doc["audience"]), bundle, limits=limits, cache=None, clock=clock
    )
    peer = None
    intermediates: list[Any] = []
    if "peer_chain_pem" in doc:
        peer, *intermediates = load_pem_chain(doc["peer_chain_pem"].encode())
    try:
        result = verifier.verify(doc["token"], peer, peer_intermediates=intermediates)
        if "method" in doc:
            ProofVerifier(verifier.own_id, clock=clock).check_call(
                result, "DPoP", doc.get("dpop"), doc["method"])
    except CallRefused as err:
        return {"expect": "reject", "reason": str(err.reason), "status": err.status.name,
                "hop": err.hop}
    return {"expect": "accept", "user": result.user, "chain": [str(s) for s in result.chain]}


def expected(doc: dict[str, Any]) -> dict[str, Any]:
    keys = ("expect", "reason", "status", "hop") if doc["expect"] == "reject" else (
        "expect", "user", "chain")
    return {k: doc[k] for k in keys}


@contextmanager
def quiet_bundle_warnings() -> Iterator[None]:
    """Vectors with a rejected bundle entry make the bundle source log it; that is expected."""
    log = logging.getLogger("mesh.identity.bundle")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


# --- the cases ------------------------------------------------------------------------------


def build(work: Path) -> tuple[int, list[Vector]]:
    made_at = int(time.time())
    now = made_at + DAY - made_at % 60  # a day after the run: short-lived certificates expire

    def new_ca(label: str, td: str = TD, *, intermediate: bool = False) -> Domain:
        ca = CertificateAuthority.init(
            work / label, trust_domain=td, intermediate=intermediate,
            root_lifetime=CA_LIFETIME, intermediate_lifetime=CA_LIFETIME,
        )
        return Domain(ca, now)

    m = new_ca("main")
    for name in SERVICES:
        m.issue(name, ttl=LEAF_LIFETIME)
    bundle, crl = m.state()

    vs: list[Vector] = []

    def mtls(name: str, description: str, audience: str, token: str, peer: str,
             **kw: Any) -> None:
        vs.append(Vector(name, description, m.id(audience), token,
                         kw.pop("bundle", bundle), kw.pop("expect", "reject"),
                         peer_chain_pem=kw.pop("peer_pem", None) or m.pem(peer),
                         crl_pem=kw.pop("crl", crl), **kw))

    def edge(name: str, description: str, audience: str, token: str, **kw: Any) -> None:
        vs.append(Vector(name, description, m.id(audience), token,
                         kw.pop("bundle", bundle), kw.pop("expect", "reject"),
                         crl_pem=kw.pop("crl", crl), **kw))

    alice_key = DpopKey()

    def call(name: str, description: str, audience: str, token: str,  # noqa: PLR0917
             proof: str | object | None = _DROP, method: str = PLACE_ORDER, **kw: Any) -> None:
        """An edge call under DPoP: ``token`` with ``proof`` (default: alice's valid proof
        for ``method`` at ``audience``, made at ``now``; None: no proof)."""
        if proof is _DROP:
            proof = alice_key.proof(htu(audience, method), token, iat=now)
        assert proof is None or isinstance(proof, str)
        edge(name, description, audience, token, method=method, dpop=proof, **kw)

    def htu(audience: str, method: str = PLACE_ORDER) -> str:
        return f"https://{audience}.svc.{TD}{method}"

    gw, orders = m.id("gateway"), m.id("orders")
    hops5 = ("gateway", "orders", "payments", "inventory", "reporting")

    # ---- accept paths -------------------------------------------------------------------
    call("accept-edge-user-token",
         "A user token from auth bound to alice's DPoP key (cnf.jkt), presented at gateway's "
         "edge port (server TLS only, no peer certificate) as 'authorization: DPoP' with a "
         "fresh proof for PlaceOrder: accepted with no service chain (spec 4.7, 4.8).",
         "gateway", m.user("gateway", scope="orders:write", roles=["customer"], name="Alice",
                           jkt=alice_key.jkt),
         expect="accept", user="alice", chain=[])
    call("accept-edge-user-token-several-audiences",
         "A bound user token whose aud names two edge services is accepted at either, with a "
         "proof whose htu names the service called (spec 3.3, 4.7).",
         "orders", m.user("gateway", "orders", sub="bob", jkt=alice_key.jkt),
         expect="accept", user="bob", chain=[])
    mtls("accept-app-token",
         "reporting calls inventory as itself with an app token over mutual TLS: a service "
         "call with no user; the chain is the peer alone (spec 3.3, 4.4).",
         "inventory", m.signer("reporting").app_token(m.id("inventory")), "reporting",
         expect="accept", user=None, chain=[m.id("reporting")])
    mtls("reject-app-token-aud-array",
         "An app token whose aud is a one-element array instead of one string: refused, a "
         "service token's aud is exactly one string (spec 3.3).",
         "inventory", m.forge("app+jwt", "reporting", ["inventory"]), "reporting", crl=None,
         reason="CLAIM_INVALID", hop=0)
    mtls("accept-app-token-without-crl",
         "An app token verified with no CRL given (crl_pem absent): accepted; such a verifier "
         "checks no revocation (spec 2.3).",
         "inventory", m.signer("reporting").app_token(m.id("inventory")), "reporting", crl=None,
         expect="accept", user=None, chain=[m.id("reporting")])
    for n in range(2, 6):
        token = m.chain(*hops5[:n])
        mtls(f"accept-chain-{n}-signatures",
             f"A user token wrapped {n - 1} time(s) by app-asserted tokens "
             f"({' -> '.join(hops5[:n])}), verified at {hops5[n - 1]} over mutual TLS from "
             f"{hops5[n - 2]} (spec 4.4, 4.5). Depth {n - 2} wrap(s) in the inner chain, "
             f"{n} signatures.",
             hops5[n - 1], token, hops5[n - 2],
             expect="accept", user="alice", chain=[m.id(h) for h in hops5[: n - 1]])
    mtls("accept-leeway-expired-29s-ago",
         "The outermost token expired 29 s before now: within the default 30 s leeway "
         "(spec 4.4).",
         "orders", m.forge("app-asserted+jwt", "gateway", "orders", upstream=m.user("gateway"),
                           iat=now - 89, exp=now - 29), "gateway",
         expect="accept", user="alice", chain=[gw])
    mtls("accept-iat-30s-in-the-future",
         "iat 30 s after now (the issuer's clock runs ahead): within the leeway (spec 4.4).",
         "orders", m.forge("app+jwt", "gateway", "orders", iat=now + 30, exp=now + 90),
         "gateway", expect="accept", user=None, chain=[gw])
    mtls("accept-nbf-within-leeway",
         "nbf 30 s after now: within the leeway (spec 4.4).",
         "orders", m.forge("app+jwt", "gateway", "orders", nbf=now + 30), "gateway",
         expect="accept", user=None, chain=[gw])
    call("accept-unknown-claims-ignored",
         "Claims meshid does not define are carried and ignored by the verifier, in the token "
         "and in the proof (spec 3.3, 4.7).",
         "gateway", (unknown := m.forge("user+jwt", "auth", ["gateway"], tenant="acme",
                                        ext={"a": [1, 2]}, cnf={"jkt": alice_key.jkt})),
         alice_key.proof(htu("gateway"), unknown, iat=now, nonce="n-1", client="cli"),
         expect="accept", user="alice", chain=[])
    edge("reject-user-token-aud-string",
         "A user token whose aud is one string instead of an array: refused, a user token's "
         "aud is always an array of SPIFFE IDs (spec 3.3).",
         "gateway", m.forge("user+jwt", "auth", gw), reason="CLAIM_INVALID", hop=0)
    six = m.wrap(m.chain(*hops5), "reporting", "auth")
    mtls("accept-depth-5-with-raised-limit",
         "Six signatures (five wraps) with limits.max_depth = 5 (spec 4.2).",
         "auth", six, "reporting", limits={"max_depth": 5},
         expect="accept", user="alice", chain=[m.id(h) for h in hops5])
    long_user = m.user("gateway", ttl=7200, jkt=alice_key.jkt)
    call("accept-lifetime-within-raised-limit",
         "A two-hour user token with limits.max_lifetime.user = 7200 (spec 4.4).",
         "gateway", long_user, limits={"max_lifetime": {"user": 7200}},
         expect="accept", user="alice", chain=[])

    # intermediate CA
    im = new_ca("intermediate", intermediate=True)
    for name in SERVICES:
        im.issue(name, ttl=LEAF_LIFETIME)
    im_bundle, im_crl = im.state()
    im_token = im.chain("gateway", "orders", "payments")
    for leaf_only in (False, True):
        vs.append(Vector(
            "accept-intermediate-ca" + ("-peer-leaf-only" if leaf_only else ""),
            "Certificates issued by an intermediate CA: the bundle's jwt-svid x5c is "
            "[leaf, intermediate], its x509-svid anchor the root (spec 2.2). "
            + ("The peer presents only its leaf; the intermediate is taken from the bundle's "
               "validated x5c chains (spec 4.1)." if leaf_only else
               "The peer presents its leaf and the intermediate (spec 4.1)."),
            im.id("payments"), im_token, im_bundle, "accept",
            peer_chain_pem=im.pem("orders", leaf_only=leaf_only), crl_pem=im_crl,
            user="alice", chain=[im.id("gateway"), im.id("orders")]))

    # ---- rule 2: size and depth -----------------------------------------------------------
    mtls("reject-token-too-large",
         "An app token padded past the default 8192-byte limit (spec 4.2).",
         "orders", m.forge("app+jwt", "gateway", "orders", pad="x" * 9000), "gateway",
         reason="TOKEN_TOO_LARGE", hop=None)
    two = m.chain("gateway", "orders")
    mtls("reject-token-over-max-size-limit",
         "A valid two-signature chain one byte over limits.max_size (spec 4.2).",
         "orders", two, "gateway", limits={"max_size": len(two) - 1},
         reason="TOKEN_TOO_LARGE", hop=None)
    mtls("reject-depth-5-wraps",
         "Six signatures (five wraps) at the default limit of four wraps: refused at the "
         "layer that would wrap one more (spec 4.2).",
         "auth", six, "reporting", reason="TOKEN_TOO_DEEP", hop=4)
    mtls("reject-depth-over-max-depth-limit",
         "Three signatures (two wraps) with limits.max_depth = 1 (spec 4.2).",
         "payments", m.chain("gateway", "orders", "payments"), "orders",
         limits={"max_depth": 1}, reason="TOKEN_TOO_DEEP", hop=1)

    # ---- rule 3: encoding, JSON, header -----------------------------------------------------
    good_app = m.forge("app+jwt", "gateway", "orders")
    h, p, s = good_app.split(".")
    mtls("reject-empty-token", "An empty token (spec 4.3).", "orders", "", "gateway",
         reason="TOKEN_MISSING", hop=0)
    for label, bad in [
        ("two-parts", f"{h}.{p}"),
        ("four-parts", f"{h}.{p}.{s}."),
        ("padding", f"{h}.{p}.{s}=="),
        ("standard-alphabet", f"{h}.{p}.{s}".replace("_", "/").replace("-", "+")
         if ("_" in s or "-" in s) else f"{h}.{p}.+{s[1:]}"),
        ("whitespace", f"{h}.{p[:10]} {p[10:]}.{s}"),
    ]:
        mtls(f"reject-malformed-{label}",
             f"Not canonical base64url compact serialisation ({label.replace('-', ' ')}) "
             "(spec 3.1).",
             "orders", bad, "gateway", reason="TOKEN_MALFORMED", hop=0)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = s[:-1] + alphabet[alphabet.index(s[-1]) | 1]
    mtls("reject-malformed-non-canonical-trailing-bits",
         "The signature's last base64url character has non-zero unused bits: it decodes to "
         "the same bytes as the canonical spelling but is refused (spec 3.1).",
         "orders", f"{h}.{p}.{twin}", "gateway", reason="TOKEN_MALFORMED", hop=0)
    mtls("reject-malformed-non-ascii",
         "A token with a non-ASCII character (spec 3.1).", "orders", f"{h}.{p}é.{s}",
         "gateway", reason="TOKEN_MALFORMED", hop=None)
    app_claims = m.claims("app+jwt", "gateway", "orders")
    app_header = m.header("app+jwt", "gateway")
    body = json.dumps(app_claims, separators=(",", ":"))
    for label, header_part, payload_part, what in [
        ("payload-not-json", app_header, b"not json", "the payload is not JSON"),
        ("payload-array", app_header, b"[1,2,3]", "the payload is a JSON array"),
        ("payload-not-utf8", app_header, b'{"iss":"\xff"}', "the payload is not UTF-8"),
        ("payload-nan", app_header, body[:-1].encode() + b',"x":NaN}',
         "the payload holds NaN, which is not JSON"),
        ("header-not-json", b"not json", app_claims, "the header is not JSON"),
        ("duplicate-header-member",
         ('{"alg":"ES256","typ":"app+jwt","kid":"' + m.kid("gateway") + '","alg":"none"}')
         .encode(), app_claims,
         "the header repeats alg: a parser keeping the last would see alg none"),
        ("duplicate-claim", app_header,
         (body[:-1] + f',"aud":"{m.id("payments")}"}}').encode(),
         "the payload repeats aud"),
        ("duplicate-nested-member", app_header,
         body.replace(f'"cnf":{{"x5t#S256":"{m.kid("gateway")}"}}',
                      f'"cnf":{{"x5t#S256":"{m.kid("orders")}","x5t#S256":"{m.kid("gateway")}"}}'
                      ).encode(),
         "cnf repeats x5t#S256"),
    ]:
        mtls(f"reject-{label}", f"Duplicate or invalid JSON: {what} (spec 3.1).", "orders",
             jws(header_part, payload_part, m.key("gateway")), "gateway",
             reason="TOKEN_MALFORMED", hop=0)
    inner_bad = m.forge("app-asserted+jwt", "gateway", "orders", upstream="not.a.token")
    mtls("reject-malformed-inner-layer",
         "The upstream claim holds something that is not a JWS: refused at hop 1 (spec 3.4).",
         "orders", inner_bad, "gateway", reason="TOKEN_MALFORMED", hop=1)

    pub = m.svids["gateway"].certificate.public_key()
    for label, alg_header, signer in [
        ("none", {"alg": "none"}, lambda data: b""),
        ("none-zero-signature", {"alg": "none"}, lambda data: b"\0" * 64),
        ("hs256-public-key-pem", {"alg": "HS256"}, lambda data: hmac.digest(
            pub.public_bytes(serialization.Encoding.PEM,
                             serialization.PublicFormat.SubjectPublicKeyInfo), data, "sha256")),
        ("hs256-public-key-der", {"alg": "HS256"}, lambda data: hmac.digest(
            pub.public_bytes(serialization.Encoding.DER,
                             serialization.PublicFormat.SubjectPublicKeyInfo), data, "sha256")),
        ("es384", {"alg": "ES384"}, lambda data: b"\1" * 96),
        ("rs256", {"alg": "RS256"}, lambda data: rsa.generate_private_key(
            public_exponent=65537, key_size=2048).sign(data, padding.PKCS1v15(),
                                                       hashes.SHA256())),
        ("lowercase-es256", {"alg": "es256"}, lambda data: es256(m.key("gateway"), data)),
        ("missing", {"alg": _DROP}, lambda data: es256(m.key("gateway"), data)),
    ]:
        mtls(f"reject-alg-{label}",
             f"alg {alg_header['alg'] if alg_header['alg'] is not _DROP else '(absent)'}: only "
             "ES256 is accepted, and alg is never taken from the token (spec 3.2, 4.3).",
             "orders", jws(m.header("app+jwt", "gateway", **alg_header), app_claims,
                           signature=signer), "gateway", reason="ALG_NOT_ALLOWED", hop=0)
    for member, value in [("crit", ["exp"]), ("jku", "https://evil.example/jwks.json"),
                          ("x5u", "https://evil.example/c.pem"),
                          ("jwk", {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}),
                          ("x5c", ["MIIB"]), ("x5t", "abc"), ("cty", "JWT"), ("b64", False)]:
        mtls(f"reject-header-member-{member}",
             f"The header carries {member}: the header must be exactly alg, typ, kid "
             "(spec 3.2).", "orders",
             jws(m.header("app+jwt", "gateway", **{member: value}), app_claims,
                 m.key("gateway")), "gateway", reason="HEADER_INVALID", hop=0)
    for label, over, why in [
        ("missing-kid", {"kid": _DROP}, "no kid"),
        ("kid-not-thumbprint", {"kid": "gateway-key-1"}, "a kid that is not an x5t#S256"),
        ("typ-not-string", {"typ": 1}, "a typ that is not a string"),
    ]:
        mtls(f"reject-header-{label}", f"The header has {why} (spec 3.2).", "orders",
             jws(m.header("app+jwt", "gateway", **over), app_claims, m.key("gateway")),
             "gateway", reason="HEADER_INVALID", hop=0)
    for label, typ in (("jwt", "JWT"), ("application-prefix", "application/app+jwt"),
                       ("uppercase", "APP+JWT"), ("mixed-case", "app+JWT"), ("at-jwt", "at+jwt")):
        mtls(f"reject-typ-{label}",
             f"typ {typ!r}: typ is compared exactly, without the 'application/' prefix or case "
             "folding RFC 7515 allows (spec 3.2).", "orders",
             jws(m.header(typ, "gateway"), app_claims, m.key("gateway")), "gateway",
             reason="TYPE_MISMATCH", hop=0)
    user_gw = m.user("gateway")
    mtls("reject-user-token-over-mtls",
         "auth sends its user token itself as the outermost token over mutual TLS: a user "
         "token must be wrapped by the calling service (spec 4.4).",
         "gateway", user_gw, "auth", reason="TYPE_MISMATCH", hop=0)
    edge("reject-app-token-at-edge",
         "An app token at an edge port: only user tokens are accepted there (spec 4, edge "
         "port).", "orders", m.signer("gateway").app_token(orders),
         reason="TYPE_MISMATCH", hop=0)
    edge("reject-app-asserted-at-edge",
         "An app-asserted token at an edge port (spec 4, edge port).", "orders",
         m.chain("gateway", "orders"), reason="TYPE_MISMATCH", hop=0)
    app_gw = m.signer("gateway").app_token(orders)
    mtls("reject-app-token-wrapped",
         "orders wraps the app token it received as if it carried a user: an upstream must "
         "be a user token or an app-asserted token (spec 4.5).", "payments",
         m.forge("app-asserted+jwt", "orders", "payments", upstream=app_gw, sub=gw),
         "orders", reason="TYPE_MISMATCH", hop=1)

    # ---- claims --------------------------------------------------------------------------
    for label, typ, over, why in [
        ("app-no-cnf", "app+jwt", {"cnf": _DROP}, "an app token without cnf"),
        ("app-no-jti", "app+jwt", {"jti": _DROP}, "no jti"),
        ("app-no-exp", "app+jwt", {"exp": _DROP}, "no exp"),
        ("app-no-iat", "app+jwt", {"iat": _DROP}, "no iat"),
        ("app-no-aud", "app+jwt", {"aud": _DROP}, "no aud"),
        ("asserted-no-upstream", "app-asserted+jwt", {}, "an app-asserted token without "
         "upstream"),
    ]:
        mtls(f"reject-missing-{label}", f"A required claim is absent: {why} (spec 3.3).",
             "orders", m.forge(typ, "gateway", "orders", **over), "gateway",
             reason="CLAIM_MISSING", hop=0)
    edge("reject-missing-user-sub", "A user token without sub (spec 3.3).", "gateway",
         m.forge("user+jwt", "auth", ["gateway"], sub=_DROP), reason="CLAIM_MISSING", hop=0)
    float_iat = body.replace(f'"iat":{now}', f'"iat":{now}.0')
    exp_exponent = body.replace(f'"exp":{now + 60}', f'"exp":{now + 60}e0')
    assert body not in (float_iat, exp_exponent)
    for label, payload_part, why in [
        ("iat-fraction", float_iat.encode(), f"iat written {now}.0 (a fraction part)"),
        ("exp-exponent", exp_exponent.encode(), "exp written with an exponent"),
    ]:
        mtls(f"reject-{label}",
             f"Times are JSON integers without fraction or exponent: {why} (spec 3.3).",
             "orders", jws(app_header, payload_part, m.key("gateway")), "gateway",
             reason="CLAIM_INVALID", hop=0)
    for label, typ, over, why in [
        ("iat-string", "app+jwt", {"iat": str(now)}, "iat as a string"),
        ("iat-bool", "app+jwt", {"iat": True}, "iat as true"),
        ("iat-negative", "app+jwt", {"iat": -1}, "a negative iat"),
        ("exp-too-big", "app+jwt", {"exp": 2**53}, "exp of 2^53"),
        ("exp-before-iat", "app+jwt", {"exp": now}, "exp equal to iat"),
        ("app-aud-two", "app+jwt", {"aud": [orders, m.id("payments")]},
         "an app token whose aud names two services"),
        ("app-aud-number", "app+jwt", {"aud": 7}, "aud as a number"),
        ("iss-not-spiffe", "app+jwt", {"iss": "https://gateway.example"},
         "an iss that is not a SPIFFE ID"),
        ("cnf-empty", "app+jwt", {"cnf": {}}, "cnf without x5t#S256"),
        ("cnf-extra-member", "app+jwt", {"cnf": {"x5t#S256": m.kid("gateway"), "jkt": "x"}},
         "cnf with a member besides x5t#S256"),
        ("app-with-upstream", "app+jwt", {"upstream": user_gw},
         "an app token carrying upstream"),
        ("sub-empty", "app-asserted+jwt", {"sub": "", "upstream": user_gw}, "an empty sub"),
        ("jti-number", "app+jwt", {"jti": 5}, "jti as a number"),
        ("upstream-not-string", "app-asserted+jwt", {"upstream": {"token": user_gw}},
         "upstream as an object instead of the token string"),
    ]:
        mtls(f"reject-claim-{label}", f"A claim has the wrong type or value: {why} (spec 3.3).",
             "orders", m.forge(typ, "gateway", "orders", **over), "gateway",
             reason="CLAIM_INVALID", hop=0)
    for label, over, why in [
        ("aud-empty", {"aud": []}, "an empty aud array"),
        ("aud-not-spiffe", {"aud": ["gateway"]}, "an aud element that is not a SPIFFE ID"),
        ("roles-string", {"roles": "admin"}, "roles as a string instead of an array"),
        ("scope-array", {"scope": ["orders:write"]}, "scope as an array instead of a "
         "space-separated string"),
        ("name-number", {"name": 1}, "name as a number"),
        ("sub-too-long", {"sub": "a" * 1025}, "a sub of 1025 characters"),
    ]:
        edge(f"reject-user-claim-{label}", f"A user token with {why} (spec 3.3).", "gateway",
             m.forge("user+jwt", "auth", ["gateway"], **over), reason="CLAIM_INVALID", hop=0)

    # ---- keys and signatures ----------------------------------------------------------------
    made_up = b64(hashlib.sha256(b"no such certificate").digest())
    fake_user = jws({"alg": "ES256", "typ": "user+jwt", "kid": made_up},
                    m.claims("user+jwt", "auth", ["gateway"]), m.key("auth"))
    mtls("reject-inner-kid-unknown",
         "The wrapped user token names a kid that is not in the bundle (spec 4.5).",
         "orders", m.forge("app-asserted+jwt", "gateway", "orders", upstream=fake_user),
         "gateway", reason="KEY_UNKNOWN", hop=1)
    edge("reject-edge-kid-unknown", "A user token at an edge port naming an unknown kid "
         "(spec 4.5).", "gateway", fake_user, reason="KEY_UNKNOWN", hop=0)
    mtls("reject-outer-kid-not-the-peer",
         "The outermost token names another kid than the peer's certificate: the outermost "
         "token must be signed by the peer's own key (spec 4.4).", "orders",
         jws({"alg": "ES256", "typ": "app+jwt", "kid": made_up}, app_claims, m.key("gateway")),
         "gateway", reason="PEER_MISMATCH", hop=0)
    mtls("reject-tampered-payload",
         "The payload of a valid token replaced by another one's: the signature does not "
         "verify (spec 4.4).", "orders",
         f"{h}.{m.forge('app+jwt', 'gateway', 'orders', exp=now + 59).split('.')[1]}.{s}",
         "gateway", reason="SIGNATURE_INVALID", hop=0)
    for label, sig, why in [
        ("all-zero", b"\0" * 64, "r = s = 0 (CVE-2022-21449)"),
        ("r-zero", b"\0" * 32 + es256(m.key("gateway"), b"x")[32:], "r = 0"),
        ("s-zero", es256(m.key("gateway"), b"x")[:32] + b"\0" * 32, "s = 0"),
        ("short", es256(m.key("gateway"), f"{h}.{p}".encode())[:63], "63 bytes"),
    ]:
        mtls(f"reject-signature-{label}", f"An impossible ES256 signature: {why} (spec 3.1).",
             "orders", f"{h}.{p}.{b64(sig)}", "gateway", reason="SIGNATURE_INVALID", hop=0)
    mtls("reject-signature-der-encoded",
         "A valid ECDSA signature by the right key, but DER-encoded (as Node's crypto.sign and "
         "OpenSSL produce by default) instead of the 64-byte r || s of RFC 7518 3.4 "
         "(spec 3.1).", "orders",
         f"{h}.{p}.{b64(es256_der(m.key('gateway'), f'{h}.{p}'.encode()))}", "gateway",
         reason="SIGNATURE_INVALID", hop=0)
    tampered_user = user_gw.split(".")
    tampered_user[1] = b64(json.dumps({**m.claims("user+jwt", "auth", ["gateway"]),
                                       "sub": "root"}, separators=(",", ":")).encode())
    mtls("reject-inner-signature-invalid",
         "The wrapped user token's payload was changed (sub root): its signature does not "
         "verify (spec 4.5).", "orders",
         m.forge("app-asserted+jwt", "gateway", "orders", upstream=".".join(tampered_user),
                 sub="root"), "gateway", reason="SIGNATURE_INVALID", hop=1)

    # foreign CAs: same trust domain name, and another trust domain
    other = new_ca("other")
    evil = new_ca("evil", "evil.example")
    for d, label in ((other, "another-ca"), (evil, "another-trust-domain")):
        d.issue("auth", ttl=LEAF_LIFETIME)
        d.issue("gateway", ttl=LEAF_LIFETIME)
        rogue_claims = m.claims("user+jwt", "auth", ["gateway"])
        edge(f"reject-edge-key-from-{label}",
             f"A user token signed by 'auth' of {label.replace('-', ' ')} with its own kid: "
             "not a key of this bundle (spec 4.5).", "gateway",
             jws({"alg": "ES256", "typ": "user+jwt", "kid": d.kid("auth")}, rogue_claims,
                 d.key("auth")), reason="KEY_UNKNOWN", hop=0)
        edge(f"reject-edge-borrowed-kid-{label}",
             f"A user token signed by 'auth' of {label.replace('-', ' ')}, naming the real "
             "auth's kid: the signature gives it away (spec 4.5).", "gateway",
             jws({"alg": "ES256", "typ": "user+jwt", "kid": m.kid("auth")}, rogue_claims,
                 d.key("auth")), reason="SIGNATURE_INVALID", hop=0)
        mtls(f"reject-peer-from-{label}",
             f"The peer's certificate was issued by {label.replace('-', ' ')}: it does not "
             "chain to this bundle's anchors (spec 4.1).", "orders",
             jws({"alg": "ES256", "typ": "app+jwt", "kid": d.kid("gateway")},
                 {**app_claims, "iss": d.id("gateway"), "sub": d.id("gateway"),
                  "cnf": {"x5t#S256": d.kid("gateway")}}, d.key("gateway")),
             "gateway", peer_pem=d.pem("gateway"), reason="CERT_UNTRUSTED", hop=None)

    # certificates not valid at now: one expired (valid when published), one not yet valid
    m.issue("ledger", ttl=timedelta(hours=12))
    m.issue("billing", ttl=LEAF_LIFETIME,
            not_before=datetime.fromtimestamp(now + DAY, UTC))
    late_bundle, late_crl = m.state()
    for name, when, label in (("ledger", "expired before now", "expired"),
                              ("billing", "not valid until after now", "not-yet-valid")):
        mtls(f"reject-peer-certificate-{label}",
             f"The peer's certificate is {when} (spec 4.1).", "orders",
             jws({"alg": "ES256", "typ": "app+jwt", "kid": m.kid(name)},
                 {**app_claims, "iss": m.id(name), "sub": m.id(name),
                  "cnf": {"x5t#S256": m.kid(name)}}, m.key(name)),
             name, bundle=late_bundle, crl=late_crl, reason="CERT_UNTRUSTED", hop=None)
        edge(f"reject-edge-signing-certificate-{label}",
             f"A user token signed with the key of a certificate {when}: the bundle entry is "
             "not a usable key at now (spec 2.2, 4.5).", "gateway",
             jws({"alg": "ES256", "typ": "user+jwt", "kid": m.kid(name)},
                 m.claims("user+jwt", name, ["gateway"]), m.key(name)),
             bundle=late_bundle, crl=late_crl, reason="KEY_UNKNOWN", hop=0)

    # revocation: auth first, then gateway
    chain_go = m.chain("gateway", "orders")
    m.ca.revoke(name="auth", reason="keyCompromise")
    auth_revoked_bundle, auth_revoked_crl = m.state()
    assert m.kid("auth") not in {k.get("kid") for k in auth_revoked_bundle["keys"]}
    edge("reject-edge-revoked-key-republished-bundle",
         "auth's certificate was revoked; the CA republished the bundle without its key "
         "(spec 2.2): the user token's kid is unknown (spec 4.5).", "gateway", user_gw,
         bundle=auth_revoked_bundle, crl=auth_revoked_crl, reason="KEY_UNKNOWN", hop=0)
    edge("reject-edge-revoked-key-old-bundle",
         "auth's certificate was revoked; a bundle published before the revocation still "
         "holds its key, but the CRL names it (spec 4.5).", "gateway", user_gw,
         crl=auth_revoked_crl, reason="CERT_REVOKED", hop=0)
    mtls("reject-inner-revoked-key-old-bundle",
         "As above, for the user token wrapped at hop 1 (spec 4.5).", "orders", chain_go,
         "gateway", crl=auth_revoked_crl, reason="CERT_REVOKED", hop=1)
    app_go = m.signer("gateway").app_token(orders)
    m.ca.revoke(name="gateway")
    gw_revoked_bundle, gw_revoked_crl = m.state()
    mtls("reject-peer-revoked",
         "The peer's certificate is on the CRL (spec 4.1).", "orders", app_go, "gateway",
         bundle=gw_revoked_bundle, crl=gw_revoked_crl, reason="CERT_REVOKED", hop=None)

    # ---- time ---------------------------------------------------------------------------------
    mtls("reject-expired-beyond-leeway",
         "The outermost token expired 30 s before now: the leeway is 30 s and the check is "
         "now >= exp + leeway (spec 4.4).", "orders",
         m.forge("app+jwt", "gateway", "orders", iat=now - 90, exp=now - 30), "gateway",
         reason="TOKEN_EXPIRED", hop=0)
    edge("reject-edge-user-token-expired",
         "A user token that expired an hour ago (spec 4.4).", "gateway",
         m.forge("user+jwt", "auth", ["gateway"], iat=now - 4500, exp=now - 3600),
         reason="TOKEN_EXPIRED", hop=0)
    mtls("reject-expired-with-zero-leeway",
         "The outermost token expired 1 s ago and limits.leeway is 0 (spec 4.4).", "orders",
         m.forge("app+jwt", "gateway", "orders", iat=now - 61, exp=now - 1), "gateway",
         limits={"leeway": 0}, reason="TOKEN_EXPIRED", hop=0)
    mtls("reject-iat-in-the-future",
         "iat 31 s after now: beyond the leeway (spec 4.4).", "orders",
         m.forge("app+jwt", "gateway", "orders", iat=now + 31, exp=now + 90), "gateway",
         reason="TOKEN_NOT_YET_VALID", hop=0)
    mtls("reject-nbf-in-the-future",
         "nbf 31 s after now: beyond the leeway (spec 4.4).", "orders",
         m.forge("app+jwt", "gateway", "orders", nbf=now + 31, exp=now + 120), "gateway",
         reason="TOKEN_NOT_YET_VALID", hop=0)
    edge("reject-user-lifetime-over-default",
         "A user token valid for 3601 s: over the default maximum of 3600 s (spec 3.3, 4.4).",
         "gateway", m.forge("user+jwt", "auth", ["gateway"], exp=now + 3601),
         reason="TOKEN_LIFETIME_TOO_LONG", hop=0)
    edge("reject-user-lifetime-over-limit",
         "A two-hour user token with the default limits (spec 4.4); compare "
         "accept-lifetime-within-raised-limit.", "gateway", long_user,
         reason="TOKEN_LIFETIME_TOO_LONG", hop=0)
    mtls("reject-app-lifetime-over-default",
         "An app token valid for 601 s: over the default maximum of 600 s (spec 3.3, 4.4).",
         "orders", m.forge("app+jwt", "gateway", "orders", exp=now + 601), "gateway",
         reason="TOKEN_LIFETIME_TOO_LONG", hop=0)
    mtls("reject-asserted-lifetime-over-limit",
         "An app-asserted token valid for 120 s with limits.max_lifetime.app-asserted = 60 "
         "(spec 4.4).", "orders",
         m.forge("app-asserted+jwt", "gateway", "orders", upstream=user_gw, exp=now + 120),
         "gateway", limits={"max_lifetime": {"app-asserted": 60}},
         reason="TOKEN_LIFETIME_TOO_LONG", hop=0)

    # ---- who, for whom, and how the layers fit ---------------------------------------------
    mtls("reject-audience-other-service",
         "A token gateway addressed to orders, presented at payments by gateway (spec 4.4).",
         "payments", two, "gateway", reason="AUDIENCE_MISMATCH", hop=0)
    edge("reject-edge-audience",
         "A user token for gateway presented at orders' edge port (spec 4, edge port).",
         "orders", user_gw, reason="AUDIENCE_MISMATCH", hop=0)
    stolen = m.signer("orders").app_token(m.id("payments"))
    mtls("reject-stolen-token-replayed",
         "orders' token for payments, replayed by gateway over its own connection: its kid is "
         "not the peer's certificate (spec 4.4).", "payments", stolen, "gateway",
         reason="PEER_MISMATCH", hop=0)
    mtls("reject-outer-iss-not-the-peer",
         "gateway signs with its own key but claims to be orders (spec 4.4).", "payments",
         m.forge("app+jwt", "gateway", "payments", iss=orders, sub=orders),
         "gateway", reason="PEER_MISMATCH", hop=0)
    mtls("reject-outer-cnf-other-certificate",
         "The outermost token is bound (cnf) to another certificate than the peer's "
         "(spec 4.4).", "orders",
         m.forge("app+jwt", "gateway", "orders", cnf={"x5t#S256": m.kid("payments")}),
         "gateway", reason="CNF_MISMATCH", hop=0)
    mid_bad_cnf = m.forge("app-asserted+jwt", "gateway", "orders", upstream=user_gw,
                          cnf={"x5t#S256": m.kid("payments")})
    mtls("reject-inner-cnf-other-certificate",
         "A wrapped app-asserted token whose cnf names another certificate than the one that "
         "signed it (spec 4.5).", "payments",
         m.forge("app-asserted+jwt", "orders", "payments", upstream=mid_bad_cnf), "orders",
         reason="CNF_MISMATCH", hop=1)
    mid = m.wrap(user_gw, "gateway", "orders")
    lying = m.forge("app-asserted+jwt", "orders", "payments", upstream=mid,
                    iss=m.id("inventory"))
    mtls("reject-inner-iss-not-the-signer",
         "orders signs a wrapped layer but claims it came from inventory (spec 4.5).",
         "inventory", m.forge("app-asserted+jwt", "payments", "inventory", upstream=lying),
         "payments", reason="ISSUER_MISMATCH", hop=1)
    edge("reject-edge-iss-not-the-signer",
         "A user token signed by auth's key whose iss names gateway (spec 4.5).", "gateway",
         jws(m.header("user+jwt", "auth"), m.claims("user+jwt", "gateway", ["gateway"]),
             m.key("auth")), reason="ISSUER_MISMATCH", hop=0)
    rogue_user = m.signer("inventory").user_token("mallory", [gw])
    mtls("reject-user-token-untrusted-issuer",
         "A user token minted by inventory, not a trusted user-token issuer (default: "
         "spiffe://<td>/svc/auth), wrapped by gateway (spec 4.5).", "orders",
         m.wrap(rogue_user, "gateway", "orders"), "gateway",
         reason="ISSUER_UNTRUSTED", hop=1)
    edge("reject-edge-user-token-untrusted-issuer",
         "gateway mints a user token for orders and presents it at orders' edge port "
         "(spec 4.5).", "orders", m.signer("gateway").user_token("alice", [orders]),
         reason="ISSUER_UNTRUSTED", hop=0)
    for_inventory = m.wrap(user_gw, "gateway", "inventory")
    mtls("reject-chain-spliced",
         "orders re-wraps a token gateway made for inventory: the wrapped token's aud is not "
         "the service that wrapped it (spec 4.5).", "payments",
         m.forge("app-asserted+jwt", "orders", "payments", upstream=for_inventory), "orders",
         reason="CHAIN_BROKEN", hop=1)
    mtls("reject-user-token-for-another-edge",
         "gateway wraps a user token addressed to inventory only (spec 4.5).", "orders",
         m.forge("app-asserted+jwt", "gateway", "orders", upstream=m.user("inventory")),
         "gateway", reason="CHAIN_BROKEN", hop=1)
    mtls("reject-subject-changed",
         "gateway wraps alice's user token but names the user root (spec 4.5).", "orders",
         m.forge("app-asserted+jwt", "gateway", "orders", upstream=user_gw, sub="root"),
         "gateway", reason="SUBJECT_MISMATCH", hop=0)
    mtls("reject-app-token-sub-not-iss",
         "An app token speaks for its issuer only: sub must equal iss (spec 3.3).", "orders",
         m.forge("app+jwt", "gateway", "orders", sub="alice"), "gateway",
         reason="SUBJECT_MISMATCH", hop=0)
    short_user = m.user("gateway", ttl=30)
    mtls("reject-wrapper-outlives-user-token",
         "The wrapper expires after the user token it wraps (spec 3.4, 4.5).", "orders",
         m.forge("app-asserted+jwt", "gateway", "orders", upstream=short_user, exp=now + 31),
         "gateway", reason="EXPIRY_EXTENDED", hop=0)
    mid_long = m.forge("app-asserted+jwt", "gateway", "orders", upstream=short_user,
                       exp=now + 45)
    mtls("reject-middle-wrapper-outlives",
         "The middle layer outlives the user token; the outer layer is clamped to the middle "
         "one: refused at hop 1, the layer that extends (spec 4.5).", "payments",
         m.forge("app-asserted+jwt", "orders", "payments", upstream=mid_long, exp=now + 30),
         "orders", reason="EXPIRY_EXTENDED", hop=1)

    # ---- DPoP at edge ports (spec 4.7) ----------------------------------------------------
    bound = m.user("gateway", scope="orders:write", jkt=alice_key.jkt)
    place = htu("gateway")

    def proof(token: str | None = bound, at: str = place, **kw: Any) -> str:
        return alice_key.proof(at, token, iat=kw.pop("iat", now), **kw)

    call("accept-dpop-iat-at-the-window-edges",
         "A proof made 60 s before now, the default window (spec 4.7).",
         "gateway", bound, proof(iat=now - 60), expect="accept", user="alice", chain=[])
    call("accept-dpop-list-orders",
         "A proof for ListOrders on a ListOrders call (a server-streaming method: one proof "
         "per call) (spec 4.7).", "gateway", bound, proof(at=htu("gateway", LIST_ORDERS)),
         method=LIST_ORDERS, expect="accept", user="alice", chain=[])
    call("reject-edge-user-token-unbound",
         "A valid user token with no cnf at an edge port that requires bound tokens, sent with "
         "a valid proof: refused, the token names no key (spec 4.7).",
         "gateway", (unbound := m.user("gateway")), proof(unbound),
         reason="USER_TOKEN_UNBOUND", hop=0)
    call("reject-dpop-missing",
         "A bound user token sent without a proof, as a service that lifted it from a call it "
         "received would send it (spec 4.7).", "gateway", bound, None, reason="DPOP_MISSING")
    call("reject-dpop-token-rules-first",
         "An expired bound token with a valid proof: the token rules (4.8) are checked before "
         "the proof, so the reason is the token's (spec 4.7).", "gateway",
         (expired := m.forge("user+jwt", "auth", ["gateway"], iat=now - 900, exp=now - 60,
                             cnf={"jkt": alice_key.jkt})),
         proof(expired), reason="TOKEN_EXPIRED", hop=0)
    for label, bad in (
            ("two-parts", proof().rsplit(".", 1)[0]),
            ("padding", proof().split(".")[0] + "=." + ".".join(proof().split(".")[1:])),
            ("not-json", jws({"typ": "dpop+jwt", "alg": "ES256", "jwk": alice_key.jwk},
                             b"not json", alice_key.key)),
            ("duplicate-claim", alice_key.proof(place, bound, iat=now, raw_payload=(
                b'{"jti":"a","jti":"b","htm":"POST","htu":"' + place.encode()
                + b'","iat":' + str(now).encode() + b',"ath":"' + ath(bound).encode()
                + b'"}'))),
            ("header-extra-member", proof(header={"kid": "k1"})),
            ("header-no-jwk", proof(header={"jwk": _DROP})),
            ("too-long", proof(pad="x" * 2048))):
        call(f"reject-dpop-malformed-{label}",
             f"A proof that is not one well-formed DPoP JWS ({label.replace('-', ' ')}): "
             "DPOP_MALFORMED (spec 4.7).", "gateway", bound, bad, reason="DPOP_MALFORMED")
    for label, typ in (("jwt", "JWT"), ("missing", _DROP), ("uppercase", "DPOP+JWT"),
                       ("user-token", "user+jwt")):
        shown = "absent" if typ is _DROP else typ
        call(f"reject-dpop-typ-{label}",
             f"A proof whose typ is {shown}, not exactly dpop+jwt (spec 4.7).", "gateway",
             bound, proof(header={"typ": typ}), reason="DPOP_TYPE_INVALID")
    call("reject-dpop-alg-none", "A proof with alg none and no signature (spec 4.7).",
         "gateway", bound, proof(header={"alg": "none"}, signature=b""),
         reason="DPOP_ALG_NOT_ALLOWED")
    call("reject-dpop-alg-hs256",
         "A proof MACed with HS256 under a key it names in its own jwk (kty oct): a symmetric "
         "algorithm is never accepted (spec 4.7).", "gateway", bound,
         proof(header={"alg": "HS256", "jwk": {"kty": "oct", "k": b64(b"k" * 32)}},
               signature=lambda data: hmac.new(b"k" * 32, data, hashlib.sha256).digest()),
         reason="DPOP_ALG_NOT_ALLOWED")
    call("reject-dpop-alg-es384", "A proof declaring ES384 (spec 4.7).", "gateway", bound,
         proof(header={"alg": "ES384"}), reason="DPOP_ALG_NOT_ALLOWED")
    d = alice_key.key.private_numbers().private_value.to_bytes(32, "big")
    call("reject-dpop-jwk-private-d",
         "A proof whose jwk carries the private key (d) as well: a proof names the public key "
         "only (spec 4.7).", "gateway", bound, proof(header={"jwk": {**alice_key.jwk,
                                                                      "d": b64(d)}}),
         reason="DPOP_JWK_PRIVATE")
    call("reject-dpop-jwk-symmetric-k",
         "A proof declaring ES256 whose jwk is a symmetric key (kty oct, k) (spec 4.7).",
         "gateway", bound, proof(header={"jwk": {"kty": "oct", "k": b64(b"k" * 32)}}),
         reason="DPOP_JWK_PRIVATE")
    rsa_pub = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    rsa_n = rsa_pub.public_numbers().n
    off_curve = {**alice_key.jwk, "y": b64((int.from_bytes(
        base64.urlsafe_b64decode(alice_key.jwk["y"] + "="), "big") ^ 1).to_bytes(32, "big"))}
    for label, jwk in (
            ("rsa", {"kty": "RSA", "n": b64(rsa_n.to_bytes(256, "big")), "e": "AQAB"}),
            ("not-on-the-curve", off_curve),
            ("extra-member", {**alice_key.jwk, "kid": "k1"}),
            ("p-384", {**alice_key.jwk, "crv": "P-384"}),
            ("short-x", {**alice_key.jwk, "x": b64(b"\x01" * 31)}),
            ("not-an-object", "EC P-256")):
        call(f"reject-dpop-jwk-{label}",
             f"A proof whose jwk is not exactly a P-256 public key ({label.replace('-', ' ')}) "
             "(spec 4.7).", "gateway", bound, proof(header={"jwk": jwk}),
             reason="DPOP_JWK_INVALID")
    other_key = DpopKey()
    signed = proof().split(".")
    tampered = ".".join((signed[0], proof(jti="replaced").split(".")[1], signed[2]))
    for label, bad in (
            ("other-key", proof(signer=other_key.key)),
            ("der-encoded", proof(signature=lambda data: es256_der(alice_key.key, data))),
            ("all-zero", proof(signature=bytes(64))),
            ("tampered-payload", tampered)):
        call(f"reject-dpop-signature-{label}",
             f"A proof whose signature does not verify with its own jwk ({label.replace('-', ' ')})"
             " (spec 3.1, 4.7).", "gateway", bound, bad, reason="DPOP_SIGNATURE_INVALID")
    for label, kw in (("jti-missing", {"jti": _DROP}), ("jti-number", {"jti": 7}),
                      ("htu-missing", {"htu": _DROP}), ("iat-string", {"iat": str(now)}),
                      ("iat-fraction", {"iat": now + 0.5}), ("ath-missing", {"ath": _DROP}),
                      ("htm-missing", {"htm": _DROP})):
        call(f"reject-dpop-claim-{label}",
             f"A proof with a missing or mistyped claim ({label.replace('-', ' ')}) (spec 4.7).",
             "gateway", bound, proof(**kw), reason="DPOP_CLAIM_INVALID")
    call("reject-dpop-htm-get", "A proof for GET: every gRPC call is a POST (spec 4.7).",
         "gateway", bound, proof(htm="GET"), reason="DPOP_HTM_MISMATCH")
    for label, at in (("other-method", htu("gateway", LIST_ORDERS)),
                      ("other-service", htu("orders")),
                      ("with-port", place.replace(".internal/", ".internal:443/")),
                      ("with-query", place + "?x=1"),
                      ("http", place.replace("https://", "http://")),
                      ("ip-address", "https://127.0.0.1" + PLACE_ORDER)):
        call(f"reject-dpop-htu-{label}",
             f"A proof for another URI than this call's ({label.replace('-', ' ')}): htu is "
             "compared exactly with https://<service DNS name>/<full method> (spec 4.7).",
             "gateway", bound, proof(at=at), reason="DPOP_HTU_MISMATCH")
    for label, iat in (("61s-old", now - 61), ("61s-in-the-future", now + 61)):
        call(f"reject-dpop-iat-{label}",
             f"A proof made {label.replace('-', ' ')}: outside the default 60 s window "
             "(spec 4.7).", "gateway", bound, proof(iat=iat), reason="DPOP_IAT_INVALID")
    call("reject-dpop-ath-other-token",
         "A proof made for another of alice's tokens (ath) (spec 4.7).", "gateway", bound,
         proof(m.user("gateway", sub="alice", jkt=alice_key.jkt, ttl=600)),
         reason="DPOP_ATH_MISMATCH")
    call("reject-dpop-key-mismatch",
         "alice's user token, lifted from a downstream call, presented with a valid proof made "
         "with another key (the thief's) (spec 4.7).", "gateway", bound,
         other_key.proof(place, bound, iat=now), reason="DPOP_KEY_MISMATCH")
    for label, cnf in (("x5t", {"x5t#S256": m.kid("auth")}),
                       ("jkt-and-x5t", {"jkt": alice_key.jkt, "x5t#S256": m.kid("auth")}),
                       ("jkt-not-a-thumbprint", {"jkt": "alice"}),
                       ("empty", {})):
        edge(f"reject-user-claim-cnf-{label}",
             f"A user token whose cnf is not exactly {{\"jkt\": <thumbprint>}} "
             f"({label.replace('-', ' ')}) (spec 3.3).", "gateway",
             m.forge("user+jwt", "auth", ["gateway"], cnf=cnf), reason="CLAIM_INVALID", hop=0)

    # ---- reserved identities (spec 8.6): the CA service and node agents sign no token ------
    for sid, what in ((str(agent_id(m.ca.trust_domain, "node-1")), "a node agent"),
                      (str(ca_id(m.ca.trust_domain)), "the CA service")):
        reserved_key = ec.generate_private_key(ec.SECP256R1())
        issued, rec = m.ca.sign_leaf(SpiffeId.parse(sid), reserved_key.public_key(),
                                     name=sid.split("/", 3)[3], ttl=LEAF_LIFETIME)
        m.ca.change(lambda reg, rec=rec: reg.insert(rec))
        m.svids[sid] = dataclasses.replace(issued, private_key=reserved_key)
        label = "agent" if "/agent/" in sid else "ca-service"
        mtls(f"reject-app-token-from-{label}-peer",
             f"{sid} ({what}) calls inventory over mutual TLS with an app token signed by its "
             "own certificate key; a reserved identity signs no token (spec 8.6).",
             "inventory", m.forge("app+jwt", sid, "inventory"), sid,
             reason="ISSUER_UNTRUSTED", hop=0)
    agent = m.svids[str(agent_id(m.ca.trust_domain, "node-1"))]
    x, y = ec_coordinates(agent.certificate.public_key())  # type: ignore[arg-type]
    planted = {**bundle, "keys": [*bundle["keys"], {
        "use": "jwt-svid", "kid": agent.thumbprint, "kty": "EC", "crv": "P-256", "x": x, "y": y,
        "x5c": [b64der(der_of(c)) for c in agent.chain]}]}
    edge("reject-edge-user-token-signed-by-agent-key-in-bundle",
         "A bundle carrying a jwt-svid entry for a node agent's certificate (the CA never "
         "publishes one): the verifier leaves the entry out, so the user token the agent signed "
         "names no usable key (spec 2.2, 8.6).", "gateway",
         m.forge("user+jwt", str(agent_id(m.ca.trust_domain, "node-1")), ["gateway"]),
         bundle=planted, reason="KEY_UNKNOWN", hop=0)

    for d in (m, im, other, evil):
        d.ca.close()
    return now, vs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=VECTORS, metavar="DIR",
                        help="where to write the vectors (default: the repository's "
                        "spec/vectors)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, quiet_bundle_warnings():
        work = Path(tmp)
        now, vectors = build(work / "ca")
        names = [v.name for v in vectors]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            print(f"duplicate vector names: {sorted(dupes)}", file=sys.stderr)
            return 1
        docs = [v.document(now) for v in vectors]
        check = work / "check"
        check.mkdir()
        failed = 0
        for doc in docs:
            got = run(doc, check)
            if got != expected(doc):
                failed += 1
                print(f"{doc['name']}: expected {expected(doc)}, verifier said {got}",
                      file=sys.stderr)
        if failed:
            print(f"{failed} vector(s) do not test what they say; nothing written",
                  file=sys.stderr)
            return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.json"):
        old.unlink()
    for doc in docs:
        (args.out / f"{doc['name']}.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{len(docs)} vectors written to {args.out} (now = {now})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
