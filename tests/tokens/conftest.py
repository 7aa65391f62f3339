"""Fixtures for the token tests: a small mesh of real SVIDs from OUR CA, signers, verifiers, and
an attacker's toolkit that builds arbitrary JWS (any header, any payload, any key, any bytes).

Test modules cannot import each other (``--import-mode=importlib``), so shared helpers are
fixtures.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from mesh.identity.spiffeid import SpiffeId, TrustDomain
from mesh.tokens import ChainVerifier, FileBundleSource, TokenSigner, VerifyLimits
from mesh.tokens.cache import VerifiedTokenCache

SERVICES = ("auth", "gateway", "orders", "payments", "inventory")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def es256(key: ec.EllipticCurvePrivateKey, signing_input: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def encode_part(part: dict[str, Any] | bytes | str) -> str:
    if isinstance(part, dict):
        return b64(json.dumps(part, separators=(",", ":")).encode())
    if isinstance(part, bytes):
        return b64(part)
    return part  # already encoded (or deliberately garbled)


@dataclass
class Clock:
    """A settable clock shared by the signers and verifiers of one test (starts at real time,
    since certificate chains are validated against real time)."""

    now: float

    def __call__(self) -> float:
        return self.now


@dataclass
class Mesh:
    """Five services of one CA; ``sign``/``verifier`` use a shared, settable clock."""

    ca: Any
    folder: Path
    svids: dict[str, Any]
    clock: Clock
    signers: dict[str, TokenSigner] = field(default_factory=dict)

    @property
    def td(self) -> TrustDomain:
        return self.ca.trust_domain  # type: ignore[no-any-return]

    def id(self, name: str) -> SpiffeId:
        return self.td.service(name)

    def key(self, name: str) -> ec.EllipticCurvePrivateKey:
        return self.svids[name].private_key  # type: ignore[no-any-return]

    def cert(self, name: str) -> Any:
        return self.svids[name].certificate

    def kid(self, name: str) -> str:
        return self.svids[name].thumbprint  # type: ignore[no-any-return]

    def bundle(self, **kw: Any) -> FileBundleSource:
        return FileBundleSource(self.ca.bundle_path, self.ca.crl_path, **kw)

    def verifier(
        self, name: str, *, bundle: FileBundleSource | None = None, cache: Any = None,
        **limits: Any,
    ) -> ChainVerifier:
        return ChainVerifier(
            self.id(name), bundle or self.bundle(), limits=VerifyLimits(**limits),
            cache=cache, clock=self.clock,
        )

    def cached_verifier(self, name: str, **kw: Any) -> ChainVerifier:
        return self.verifier(name, cache=VerifiedTokenCache(clock=self.clock), **kw)

    # legitimate tokens
    def user_token(self, aud: str = "gateway", sub: str = "alice", **kw: Any) -> str:
        return self.signers["auth"].user_token(sub, [self.id(aud)], **kw)

    def wrap(self, upstream: str, by: str, to: str, ttl: int = 60) -> str:
        return self.signers[by].app_asserted_token(upstream, self.id(to), ttl=ttl)

    def chain(self, *hops: str) -> str:
        """A user token for hops[0], wrapped by each service in turn: chain("gateway",
        "orders", "payments") is the token orders sends to payments."""
        token = self.user_token(hops[0])
        for by, to in itertools.pairwise(hops):
            token = self.wrap(token, by, to)
        return token

    # the attacker's toolkit
    def claims(self, typ: str, by: str, to: str | list[str], **over: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "iss": str(self.id(by)),
            "sub": "alice" if typ != "app+jwt" else str(self.id(by)),
            "aud": to if isinstance(to, list) else str(self.id(to)),
            "iat": int(self.clock.now),
            "exp": int(self.clock.now) + 60,
            "jti": "jti-" + hashlib.sha256(repr(over).encode()).hexdigest()[:16],
        }
        if typ != "user+jwt":
            base["cnf"] = {"x5t#S256": self.kid(by)}
        base.update(over)
        return {k: v for k, v in base.items() if v is not _DROP}

    def forge(
        self,
        header: dict[str, Any] | bytes | str,
        payload: dict[str, Any] | bytes | str,
        key: ec.EllipticCurvePrivateKey | None = None,
        *,
        signature: bytes | None = None,
    ) -> str:
        """A compact JWS with exactly these parts, ES256-signed by ``key`` (or ``signature``)."""
        signing_input = f"{encode_part(header)}.{encode_part(payload)}"
        if signature is None:
            assert key is not None
            signature = es256(key, signing_input.encode())
        return f"{signing_input}.{b64(signature)}"

    def forge_signed(self, typ: str, by: str, to: str | list[str], **over: Any) -> str:
        """A token of kind ``typ`` with claim overrides, validly signed with ``by``'s own key."""
        header = {"alg": "ES256", "kid": self.kid(by), "typ": typ}
        return self.forge(header, self.claims(typ, by, to, **over), self.key(by))

    @staticmethod
    def hs256(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
        signing_input = f"{encode_part(header)}.{encode_part(payload)}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64(mac)}"


_DROP = object()


@pytest.fixture
def drop() -> object:
    """Pass as a claim override to remove that claim."""
    return _DROP


@pytest.fixture
def mesh(ca_factory: Callable[..., Any], tmp_path: Path) -> Mesh:
    ca = ca_factory()
    svids = {name: ca.issue(name) for name in SERVICES}
    clock = Clock(int(time.time()))
    m = Mesh(ca=ca, folder=tmp_path, svids=svids, clock=clock)
    m.signers = {n: TokenSigner(s.private_key, s.chain, clock=clock) for n, s in svids.items()}
    return m
