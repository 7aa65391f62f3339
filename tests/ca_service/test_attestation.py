"""AttestNode over the attestation port: bootstrap by fingerprint, join tokens, refusals.

Every refusal is checked for its status AND its ErrorInfo reason, changes nothing (a snapshot of
every file and registry table), and has a control: the same call without the attack passes.
"""

from __future__ import annotations

import json
from datetime import timedelta

import ca_service_client as cc
import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.verification import PolicyBuilder, Store

from ca.cli import main as mesh_ca
from ca.service import admin
from mesh.ca.v1 import ca_pb2

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def test_bootstrap_by_fingerprint_finds_the_root_in_the_served_chain(svc) -> None:  # type: ignore[no-untyped-def]
    chain = cc.served_chain(svc.endpoint.attest_address, "ca.svc.mesh.internal")
    leaf = chain[0]
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == \
        x509.SubjectAlternativeName([
            x509.UniformResourceIdentifier("spiffe://mesh.internal/ca"),
            x509.DNSName("ca.svc.mesh.internal"),
        ])
    # leaf, intermediate, root: the root travels so a fingerprint is enough to find it
    assert chain[-1] == svc.ca.root_cert
    assert [c.subject for c in chain[1:-1]] == [svc.ca.issuer_cert.subject]
    roots = cc.roots_by_fingerprint(svc.endpoint.attest_address, svc.fingerprint,
                                    "ca.svc.mesh.internal")
    assert roots == svc.ca.root_cert.public_bytes(serialization.Encoding.PEM)
    # openssl's spelling of the same fingerprint (upper case, colons) pins the same root
    openssl_style = ":".join(f"{b:02X}" for b in svc.ca.root_cert.fingerprint(hashes.SHA256()))
    assert cc.roots_by_fingerprint(svc.endpoint.attest_address, openssl_style,
                                   "ca.svc.mesh.internal") == roots
    # a wrong fingerprint finds nothing to trust; a wrong name does not verify
    with pytest.raises(ValueError, match="pinned fingerprint"):
        cc.roots_by_fingerprint(svc.endpoint.attest_address, "00" * 32, "ca.svc.mesh.internal")
    with pytest.raises(x509.verification.VerificationError):
        cc.roots_by_fingerprint(svc.endpoint.attest_address, svc.fingerprint,
                                "orders.svc.mesh.internal")
    # the served certificate is the CA service's own registry row, never a bundle signing key
    assert svc.ca.record(leaf.serial_number).name == "ca"
    assert svc.ca.record(leaf.serial_number).thumbprint not in svc.ca.bundle_path.read_text()


def test_attest_gives_the_node_an_agent_svid_and_the_trust_state(svc, capsys) -> None:  # type: ignore[no-untyped-def]
    key = cc.new_key()
    resp = svc.endpoint.attest("node-1", svc.token("node-1"), key)
    svid = resp.agent_svid
    chain = x509.load_pem_x509_certificates(svid.cert_chain_pem)
    leaf = chain[0]
    assert svid.spiffe_id == "spiffe://mesh.internal/agent/node-1"
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == \
        x509.SubjectAlternativeName([x509.UniformResourceIdentifier(svid.spiffe_id)])
    assert leaf.public_key() == key.public_key()  # the CSR's key; the CA never saw the private
    assert svid.serial == format(leaf.serial_number, "032x")
    assert svid.not_after - svid.not_before == 3600 + 60  # 1 h, started a minute back
    PolicyBuilder().store(Store([svc.ca.root_cert])).build_client_verifier().verify(
        leaf, chain[1:])
    # the trust state is what the CA published, byte for byte
    assert resp.trust.roots_pem == svc.ca.roots_path.read_bytes()
    assert resp.trust.bundle_json == svc.ca.bundle_path.read_bytes()
    assert resp.trust.crl_pem == svc.ca.crl_path.read_bytes()
    assert resp.trust.sequence == json.loads(resp.trust.bundle_json)["spiffe_sequence"]
    # an agent key is never a token-signing key of the bundle
    kids = {k.get("kid") for k in json.loads(resp.trust.bundle_json)["keys"]}
    assert not kids & {svc.ca.record(leaf.serial_number).thumbprint}
    # mesh-ca list shows it, with the node it was issued through
    assert mesh_ca(["list", "--json", "--ca-dir", str(svc.ca.ca_dir)]) == 0
    rows = {int(c["serial"], 16): c for c in json.loads(capsys.readouterr().out)["certificates"]}
    row = rows[int(svid.serial, 16)]
    assert (row["node"], row["kind"], row["name"]) == ("node-1", "agent", "agent/node-1")
    # the agent's session works at once
    with svc.session(key, svid.cert_chain_pem) as agent:
        assert list(agent.registrations().registrations) == []


def test_unknown_token_is_refused_and_changes_nothing(svc, refused) -> None:  # type: ignore[no-untyped-def]
    good = svc.token("node-1")
    before = svc.snapshot()
    forged = "meshjoin-" + "A" * 43
    refused(lambda: svc.endpoint.attest("node-1", forged, cc.new_key()),
            UNAUTH, "JOIN_TOKEN_UNKNOWN")
    refused(lambda: svc.endpoint.attest("node-1", "not a token", cc.new_key()),
            UNAUTH, "JOIN_TOKEN_UNKNOWN")
    refused(lambda: svc.endpoint.attest("node-1", good[:-1] + ("A" if good[-1] != "A" else "B"),
                                        cc.new_key()),
            UNAUTH, "JOIN_TOKEN_UNKNOWN")
    assert svc.snapshot() == before
    assert svc.endpoint.attest("node-1", good, cc.new_key()).agent_svid.spiffe_id  # control


def test_replayed_token_is_refused_for_another_key(svc, refused) -> None:  # type: ignore[no-untyped-def]
    token = svc.token("node-1")
    first = svc.endpoint.attest("node-1", token, cc.new_key())  # control: first use passes
    before = svc.snapshot()
    err = refused(lambda: svc.endpoint.attest("node-1", token, cc.new_key()),
                  UNAUTH, "JOIN_TOKEN_USED")
    assert "already used" in err.details()
    assert token not in err.details()
    assert svc.snapshot() == before
    assert first.agent_svid.serial


def test_same_key_retry_gets_the_same_certificate_not_a_new_one(svc) -> None:  # type: ignore[no-untyped-def]
    """A lost answer must not strand the node: the key that used the token may ask again."""
    token, key = svc.token("node-1"), cc.new_key()
    first = svc.endpoint.attest("node-1", token, key)
    before = svc.snapshot()
    again = svc.endpoint.attest("node-1", token, key, csr=cc.csr_for(key, cn="other"))
    assert again.agent_svid.serial == first.agent_svid.serial
    assert again.agent_svid.cert_chain_pem == first.agent_svid.cert_chain_pem
    assert svc.snapshot() == before  # nothing issued


def test_expired_token_is_refused(svc, clock, refused) -> None:  # type: ignore[no-untyped-def]
    import time

    made = admin.make_join_token(svc.ca, "node-1", timedelta(minutes=10))
    assert made.expires_at - time.time() <= 600
    before = svc.snapshot()
    clock.offset = made.expires_at - time.time()  # the service's clock: at the expiry
    err = refused(lambda: svc.endpoint.attest("node-1", made.token, cc.new_key()),
                  UNAUTH, "JOIN_TOKEN_EXPIRED")
    assert "mesh-ca join-token node-1" in err.details()
    assert svc.snapshot() == before
    clock.offset = made.expires_at - 60 - time.time()  # control: a minute before it
    assert svc.endpoint.attest("node-1", made.token, cc.new_key()).agent_svid.spiffe_id


def test_token_used_for_another_node_is_refused_and_stays_usable(svc, refused) -> None:  # type: ignore[no-untyped-def]
    token = svc.token("node-a")
    svc.token("node-b")
    before = svc.snapshot()
    err = refused(lambda: svc.endpoint.attest("node-b", token, cc.new_key()),
                  UNAUTH, "JOIN_TOKEN_NODE_MISMATCH")
    assert "made for node node-a, not node-b" in err.details()
    refused(lambda: svc.endpoint.attest("Node B!", token, cc.new_key()),
            UNAUTH, "JOIN_TOKEN_NODE_MISMATCH")
    assert svc.snapshot() == before
    resp = svc.endpoint.attest("node-a", token, cc.new_key())  # control
    assert resp.agent_svid.spiffe_id == "spiffe://mesh.internal/agent/node-a"


def test_evicted_node_cannot_attest_again(svc, refused) -> None:  # type: ignore[no-untyped-def]
    spare = svc.token("node-1")  # made before the eviction: must not let the node back in
    svc.agent("node-1")
    admin.evict(svc.ca, "node-1")
    before = svc.snapshot()
    refused(lambda: svc.endpoint.attest("node-1", spare, cc.new_key()), DENIED, "NODE_EVICTED")
    assert svc.snapshot() == before
    svc.agent("node-2")  # control: another node joins


@pytest.mark.parametrize("kind", ["garbage", "two-blocks", "p384", "rsa", "tampered",
                                  "ca-key", "empty"])
def test_bad_csr_is_refused_and_the_token_is_not_spent(svc, refused, kind) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    def csr_with(key) -> bytes:  # type: ignore[no-untyped-def]
        return x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
        ).sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    good = cc.csr_for(cc.new_key())
    csr = {
        "garbage": (b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"
                    b"-----END CERTIFICATE REQUEST-----\n"),
        "two-blocks": good + good,
        "p384": csr_with(ec.generate_private_key(ec.SECP384R1())),
        "rsa": csr_with(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "tampered": _tamper(good),
        "ca-key": csr_with(svc.ca._issuer_key),
        "empty": b"",
    }[kind]
    token = svc.token("node-1")
    before = svc.snapshot()
    refused(lambda: svc.endpoint.attest("node-1", token, cc.new_key(), csr=csr),
            INVALID, "CSR_INVALID")
    assert svc.snapshot() == before
    assert svc.endpoint.attest("node-1", token, cc.new_key()).agent_svid.serial  # control


def _tamper(pem: bytes) -> bytes:
    """Change the subject's CN inside the signed part: the signature no longer verifies."""
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    assert b"anything" in der
    bad = x509.load_der_x509_csr(der.replace(b"anything", b"anythinG"))
    return bad.public_bytes(serialization.Encoding.PEM)


def test_requested_names_are_ignored(svc) -> None:  # type: ignore[no-untyped-def]
    from cryptography.x509.oid import NameOID

    key = cc.new_key()
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")])
    ).add_extension(
        x509.SubjectAlternativeName([x509.UniformResourceIdentifier(
            "spiffe://mesh.internal/svc/auth"), x509.DNSName("auth.svc.mesh.internal")]),
        critical=False,
    ).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(
        key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    resp = svc.endpoint.attest("node-1", svc.token("node-1"), key, csr=csr)
    leaf = x509.load_pem_x509_certificates(resp.agent_svid.cert_chain_pem)[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(sans) == [x509.UniformResourceIdentifier("spiffe://mesh.internal/agent/node-1")]
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_request_that_does_not_parse_is_invalid_argument(svc, refused) -> None:  # type: ignore[no-untyped-def]
    channel, _ = svc.endpoint.attestation()
    with channel:
        raw = channel.unary_unary("/mesh.ca.v1.NodeAttestation/AttestNode")
        refused(lambda: raw(b"\xff\xff\xff", timeout=10), INVALID, "REQUEST_INVALID")
        # control: the same raw channel with a real message gets a real answer
        token = svc.token("node-1")
        body = ca_pb2.AttestNodeRequest(node="node-1", join_token=token,
                                        csr_pem=cc.csr_for(cc.new_key())).SerializeToString()
        assert ca_pb2.AttestNodeResponse.FromString(raw(body, timeout=10)).agent_svid.serial


def test_two_agents_racing_for_one_token_one_wins(svc) -> None:  # type: ignore[no-untyped-def]
    import concurrent.futures

    token = svc.token("node-1")
    keys = [cc.new_key() for _ in range(6)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(svc.endpoint.attest, "node-1", token, k) for k in keys]
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result().agent_svid.serial)
            except grpc.RpcError as err:
                outcomes.append(err.code())
    won = [o for o in outcomes if isinstance(o, str)]
    assert len(won) == 1, outcomes
    assert outcomes.count(UNAUTH) == 5
    agents = [r for r in svc.ca.records() if r.name == "agent/node-1"]
    assert [r.serial for r in agents] == [int(w, 16) for w in won]
