"""The CA service's identity (/ca) and node agents (/agent/NODE) never sign a trusted token.

Three layers, each tested with a control that passes: the CA leaves their keys out of the
bundle; a verifier's FileBundleSource refuses such an entry if a bundle carries one anyway; and
the chain verifier refuses a token from such a peer or key (ISSUER_UNTRUSTED).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ca.authority import CertificateAuthority
from ca.bundle import der_of, ec_coordinates, render_bundle
from ca.registry import BundleKeyRow
from ca.service.ids import agent_id, ca_id
from mesh.identity.bundle import BundleKey, FileBundleSource
from mesh.identity.certs import thumbprint
from mesh.identity.spiffeid import SpiffeId
from mesh.tokens import ChainVerifier, TokenSigner
from mesh.tokens.errors import IssuerUntrusted, KeyUnknown

KEY = ec.generate_private_key  # (aliases keep the lines short)


def _issue(ca: CertificateAuthority, sid: SpiffeId, name: str
           ) -> tuple[ec.EllipticCurvePrivateKey, tuple[x509.Certificate, ...]]:
    key = KEY(ec.SECP256R1())
    svid, rec = ca.sign_leaf(sid, key.public_key(), name=name, ttl=timedelta(hours=1))
    ca.change(lambda reg: reg.insert(rec))
    return key, svid.chain


@pytest.fixture
def mesh(ca_factory):  # type: ignore[no-untyped-def]
    ca = ca_factory(intermediate=True)
    td = ca.trust_domain
    auth = ca.issue("auth")
    orders = ca.issue("orders")
    agent = _issue(ca, agent_id(td, "node-1"), "agent/node-1")
    server = _issue(ca, ca_id(td), "ca")
    return ca, auth, orders, agent, server


def _row(cert: x509.Certificate) -> BundleKeyRow:
    x, y = ec_coordinates(cert.public_key())  # type: ignore[arg-type]
    return BundleKeyRow(thumbprint(cert), der_of(cert), x, y)


def _bundle_with(ca: CertificateAuthority, leaves: Sequence[x509.Certificate], path: Path
                 ) -> FileBundleSource:
    path.write_bytes(render_bundle(ca.roots, ca.intermediates, [_row(c) for c in leaves],
                                   sequence=1))
    return FileBundleSource(path, ca.crl_path)


def test_the_ca_publishes_no_agent_or_ca_key(mesh) -> None:  # type: ignore[no-untyped-def]
    ca, auth, orders, agent, server = mesh
    kids = {k.get("kid") for k in json.loads(ca.bundle_path.read_text())["keys"]}
    assert thumbprint(agent[1][0]) not in kids
    assert thumbprint(server[1][0]) not in kids
    assert {auth.thumbprint, orders.thumbprint} <= kids  # control: services are there


def test_a_bundle_entry_for_an_agent_or_the_ca_is_rejected(mesh, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca, auth, _, agent, server = mesh
    source = _bundle_with(ca, [auth.certificate, agent[1][0], server[1][0]],
                          tmp_path / "bundle.json")
    assert source.key_for(auth.thumbprint) is not None  # control
    for leaf, role in ((agent[1][0], "a node agent"), (server[1][0], "the CA service")):
        assert source.key_for(thumbprint(leaf)) is None
        assert f"the identity of {role}, which may not sign tokens" in source.rejected[
            thumbprint(leaf)]


def test_a_user_token_signed_by_an_agent_is_untrusted(mesh, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca, auth, _, agent, _ = mesh
    source = _bundle_with(ca, [auth.certificate, agent[1][0]], tmp_path / "bundle.json")
    gateway = ca.trust_domain.service("gateway")
    verifier = ChainVerifier(gateway, source, cache=None)
    forged = TokenSigner(agent[0], agent[1]).user_token("alice", [gateway])
    with pytest.raises(KeyUnknown, match="may not sign tokens"):
        verifier.verify(forged, None)
    real = TokenSigner(auth.private_key, auth.chain).user_token("alice", [gateway])
    assert verifier.verify(real, None).user == "alice"  # control


@pytest.mark.parametrize("which", ["agent", "server"])
def test_an_app_token_from_an_agent_or_ca_peer_is_untrusted(mesh, which) -> None:  # type: ignore[no-untyped-def]
    ca, _, orders, agent, server = mesh
    key, chain = agent if which == "agent" else server
    source = FileBundleSource(ca.bundle_path, ca.crl_path)
    payments = ca.trust_domain.service("payments")
    verifier = ChainVerifier(payments, source, cache=None)
    token = TokenSigner(key, chain).app_token(payments)
    with pytest.raises(IssuerUntrusted, match="may not sign tokens") as caught:
        verifier.verify(token, chain[0], peer_intermediates=chain[1:])
    assert caught.value.reason == "ISSUER_UNTRUSTED" and caught.value.hop == 0
    ok = TokenSigner(orders.private_key, orders.chain).app_token(payments)  # control
    assert verifier.verify(ok, orders.certificate).peer == orders.spiffe_id


def test_a_bundle_source_that_hands_out_an_agent_key_is_not_believed(mesh) -> None:  # type: ignore[no-untyped-def]
    """Another BundleSource implementation (not FileBundleSource) might carry agent keys: the
    verifier refuses them itself."""
    ca, auth, _, agent, _ = mesh
    files = FileBundleSource(ca.bundle_path, ca.crl_path)
    leaf = agent[1][0]
    planted = BundleKey(
        kid=thumbprint(leaf), spiffe_id=agent_id(ca.trust_domain, "node-1"),
        public_key=leaf.public_key(), certificate=leaf, chain=tuple(agent[1]),  # type: ignore[arg-type]
        not_before=int(leaf.not_valid_before_utc.timestamp()),
        not_after=int(leaf.not_valid_after_utc.timestamp()),
    )

    class Lenient:
        trust_domain = files.trust_domain
        anchors = files.anchors
        checks_revocation = True

        @property
        def generation(self) -> int:
            return files.generation

        def key_for(self, kid: str) -> BundleKey | None:
            return planted if kid == planted.kid else files.key_for(kid)

        def keys(self) -> Mapping[str, BundleKey]:
            return {**files.keys(), planted.kid: planted}

        def is_revoked(self, cert: x509.Certificate) -> bool:
            return files.is_revoked(cert)

        def verify_chain(self, chain: Sequence[x509.Certificate]) -> SpiffeId:
            return files.verify_chain(chain)

    gateway = ca.trust_domain.service("gateway")
    verifier = ChainVerifier(gateway, Lenient(), cache=None)  # type: ignore[arg-type]
    forged = TokenSigner(agent[0], agent[1]).user_token("alice", [gateway])
    with pytest.raises(IssuerUntrusted, match="may not sign tokens"):
        verifier.verify(forged, None)
    real = TokenSigner(auth.private_key, auth.chain).user_token("alice", [gateway])
    assert verifier.verify(real, None).user == "alice"  # control
