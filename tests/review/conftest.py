"""Fixtures for the security review tests: a small mesh of real SVIDs from OUR CA (ca/).

``review_mesh(intermediate=False)`` builds a CA (optionally with an intermediate) and SVIDs for
auth, gateway, orders and payments, with signers; ``forge`` builds an arbitrary ES256 JWS.
Test modules cannot import each other (``--import-mode=importlib``), so helpers are fixtures.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from mesh.identity.spiffeid import SpiffeId
from mesh.tokens import ChainVerifier, FileBundleSource, TokenSigner, VerifyLimits

SERVICES = ("auth", "gateway", "orders", "payments")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def es256(key: ec.EllipticCurvePrivateKey, signing_input: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@dataclass
class ReviewMesh:
    ca: Any
    svids: dict[str, Any]
    signers: dict[str, TokenSigner] = field(default_factory=dict)

    def id(self, name: str) -> SpiffeId:
        return self.ca.trust_domain.service(name)  # type: ignore[no-any-return]

    def bundle(self, crl_path: Any = "default") -> FileBundleSource:
        crl = self.ca.crl_path if crl_path == "default" else crl_path
        return FileBundleSource(self.ca.bundle_path, crl)

    def verifier(self, name: str, bundle: FileBundleSource | None = None,
                 cache: Any = None) -> ChainVerifier:
        return ChainVerifier(self.id(name), bundle or self.bundle(), limits=VerifyLimits(),
                             cache=cache)

    def user_token(self, aud: str = "gateway", sub: str = "alice", **kw: Any) -> str:
        return self.signers["auth"].user_token(sub, [self.id(aud)], **kw)

    def forge_user(self, payload: dict[str, Any] | bytes, by: str = "auth") -> str:
        """A user token with exactly this payload, validly signed by ``by``'s SVID key."""
        header = {"alg": "ES256", "typ": "user+jwt", "kid": self.svids[by].thumbprint}
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(raw)}"
        sig = es256(self.svids[by].private_key, signing_input.encode())
        return f"{signing_input}.{b64(sig)}"

    def user_claims(self, **over: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": str(self.id("auth")), "sub": "alice", "aud": [str(self.id("gateway"))],
            "iat": now, "exp": now + 300, "jti": secrets.token_hex(8),
        }
        claims.update(over)
        return claims

    def root_crl(self, revoked_serials: list[int], number: int = 1) -> bytes:
        """A CRL signed by the ROOT key (the only key that can revoke an intermediate)."""
        now = datetime.now(UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ca.root_cert.subject)
            .last_update(now - timedelta(minutes=1))
            .next_update(now + timedelta(days=1))
            .add_extension(x509.CRLNumber(number), critical=False)
        )
        for serial in revoked_serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(now - timedelta(minutes=1)).build()
            )
        crl = builder.sign(self.ca._root_key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM)


MeshFactory = Callable[..., ReviewMesh]


def _populate(ca: Any, issue_kw: dict[str, Any]) -> ReviewMesh:
    svids = {name: ca.issue(name, **issue_kw.get(name, {})) for name in SERVICES}
    m = ReviewMesh(ca=ca, svids=svids)
    m.signers = {n: TokenSigner(s.private_key, s.chain) for n, s in svids.items()}
    return m


@pytest.fixture
def review_mesh(ca_factory: Callable[..., Any]) -> MeshFactory:
    """``review_mesh(intermediate=False, auth={"ttl": ...})``: a fresh CA and four SVIDs."""
    def make(intermediate: bool = False, **issue_kw: Any) -> ReviewMesh:
        return _populate(ca_factory(intermediate=intermediate), issue_kw)

    return make


@pytest.fixture(scope="module")
def shared_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReviewMesh]:
    """One mesh for a module's many read-only parametrised cases (CA creation dominates)."""
    from ca.authority import CertificateAuthority

    ca = CertificateAuthority.init(tmp_path_factory.mktemp("review") / "ca")
    yield _populate(ca, {})
    ca.close()
