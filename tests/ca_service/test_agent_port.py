"""The agent port (mutual TLS): who may call, what they may get, eviction and renewal.

Each refusal: right status and reason, nothing changed, and a control that passes.
"""

from __future__ import annotations

import json
from datetime import timedelta

import ca_service_client as cc
import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.cli import main as mesh_ca
from ca.service import admin
from mesh.ca.v1 import ca_pb2
from mesh.transport.status import error_info

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _leaf(svid: ca_pb2.X509Svid) -> x509.Certificate:
    return x509.load_pem_x509_certificates(svid.cert_chain_pem)[0]


def test_registered_service_gets_its_svid_for_the_csr_key(svc, capsys) -> None:  # type: ignore[no-untyped-def]
    svc.register("orders", "node-1", uid=1001, ttl=timedelta(minutes=20))
    agent = svc.agent("node-1")
    regs = agent.registrations().registrations
    assert [(r.service, r.spiffe_id, r.uid, r.ttl_seconds) for r in regs] == [
        ("orders", "spiffe://mesh.internal/svc/orders", 1001, 1200)
    ]
    key = cc.new_key()
    svid = agent.issue("orders", key=key).svid
    leaf = _leaf(svid)
    assert svid.spiffe_id == "spiffe://mesh.internal/svc/orders"
    assert leaf.public_key() == key.public_key()
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(sans) == [x509.UniformResourceIdentifier("spiffe://mesh.internal/svc/orders"),
                          x509.DNSName("orders.svc.mesh.internal")]
    assert svid.not_after - svid.not_before == 20 * 60 + 60  # the registration's lifetime
    # a service key signs tokens: it is in the bundle; mesh-ca list names the node
    bundle = json.loads(svc.ca.bundle_path.read_text())
    assert svc.ca.record(leaf.serial_number).thumbprint in {k.get("kid") for k in bundle["keys"]}
    assert mesh_ca(["list", "--json", "--ca-dir", str(svc.ca.ca_dir)]) == 0
    rows = {int(c["serial"], 16): c for c in json.loads(capsys.readouterr().out)["certificates"]}
    row = rows[int(svid.serial, 16)]
    assert (row["node"], row["kind"]) == ("node-1", "workload")
    # the registration's lifetime can change
    svc.register("orders", "node-1", uid=1001, ttl=timedelta(hours=2))
    svid = agent.issue("orders").svid
    assert svid.not_after - svid.not_before == 7200 + 60


def test_service_not_registered_to_the_node_is_refused(svc, refused) -> None:  # type: ignore[no-untyped-def]
    svc.register("orders", "node-1")
    svc.register("payments", "node-2")  # registered, but to another node
    agent = svc.agent("node-1")
    before = svc.snapshot()
    err = refused(lambda: agent.issue("payments"), DENIED, "NOT_REGISTERED")
    assert "mesh-ca register payments --node node-1" in err.details()
    refused(lambda: agent.issue("inventory"), DENIED, "NOT_REGISTERED")
    refused(lambda: agent.issue("Not A Name"), INVALID, "REQUEST_INVALID")
    assert svc.snapshot() == before
    assert agent.issue("orders").svid.spiffe_id.endswith("/svc/orders")  # control
    # unregistering ends it at once
    admin.unregister(svc.ca, "orders", "node-1")
    refused(lambda: agent.issue("orders"), DENIED, "NOT_REGISTERED")


def test_a_service_svid_is_not_an_agent(svc, refused) -> None:  # type: ignore[no-untyped-def]
    svc.register("orders", "node-1")
    issued = svc.ca.issue("orders")  # a real SVID of this CA, but a service's
    before = svc.snapshot()
    with svc.session(issued.private_key, issued.chain_pem()) as impostor:
        refused(lambda: impostor.issue("orders"), DENIED, "NOT_AN_AGENT")
        refused(impostor.registrations, DENIED, "NOT_AN_AGENT")
        refused(lambda: impostor.renew(cc.csr_for(cc.new_key())), DENIED, "NOT_AN_AGENT")
        stream = impostor.stub.WatchTrust(ca_pb2.WatchTrustRequest(), timeout=10)
        refused(lambda: next(stream), DENIED, "NOT_AN_AGENT")
    assert svc.snapshot() == before
    assert svc.agent("node-1").issue("orders").svid.serial  # control: a real agent


def test_authentication_comes_before_parsing(svc, refused) -> None:  # type: ignore[no-untyped-def]
    issued = svc.ca.issue("orders")
    with svc.session(issued.private_key, issued.chain_pem()) as impostor:
        raw = impostor.channel.unary_unary("/mesh.ca.v1.NodeAgentService/IssueWorkloadSvid")
        refused(lambda: raw(b"\xff\xff\xff", timeout=10), DENIED, "NOT_AN_AGENT")
    agent = svc.agent("node-1")
    raw = agent.channel.unary_unary("/mesh.ca.v1.NodeAgentService/IssueWorkloadSvid")
    refused(lambda: raw(b"\xff\xff\xff", timeout=10), INVALID, "REQUEST_INVALID")


def test_client_certificate_from_another_ca_never_gets_in(svc, ca_factory) -> None:  # type: ignore[no-untyped-def]
    other = ca_factory().issue("orders")
    with svc.session(other.private_key, other.chain_pem()) as stranger:
        try:
            stranger.registrations()
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails
        else:
            raise AssertionError("a certificate of another CA was accepted")


def test_revoked_agent_certificate_is_refused(svc, refused) -> None:  # type: ignore[no-untyped-def]
    svc.register("orders", "node-1")
    svc.register("orders", "node-2")
    agent = svc.agent("node-1")
    bystander = svc.agent("node-2")
    serial = _leaf_of_session(agent).serial_number
    svc.ca.revoke(serial=serial, reason="keyCompromise")
    before = svc.snapshot()
    err = refused(lambda: agent.issue("orders"), UNAUTH, "CERT_REVOKED")
    assert "mesh-ca join-token node-1" in err.details()
    refused(lambda: agent.renew(cc.csr_for(cc.new_key())), UNAUTH, "CERT_REVOKED")
    assert svc.snapshot() == before
    assert bystander.issue("orders").svid.serial  # control: another node's agent


def _leaf_of_session(session: cc.AgentSession) -> x509.Certificate:
    return x509.load_pem_x509_certificates(session.chain_pem)[0]


def test_evicted_node_gets_nothing_and_everything_it_got_is_revoked(svc, refused, capsys) -> None:  # type: ignore[no-untyped-def]
    svc.register("orders", "node-1")
    svc.register("orders", "node-2")
    agent = svc.agent("node-1")
    bystander = svc.agent("node-2")
    through_1 = [agent.issue("orders").svid.serial for _ in range(2)]
    through_2 = bystander.issue("orders").svid.serial
    renewed = agent.renew(cc.csr_for(cc.new_key())).agent_svid.serial
    first_agent = format(_leaf_of_session(agent).serial_number, "032x")

    assert mesh_ca(["evict", "node-1", "--ca-dir", str(svc.ca.ca_dir)]) == 0
    out = capsys.readouterr().out
    assert "evicted node node-1: revoked 4 certificate(s)" in out
    crl = x509.load_pem_x509_crl(svc.ca.crl_path.read_bytes())
    on_crl = {format(e.serial_number, "032x") for e in crl}
    assert on_crl == {first_agent, renewed, *through_1}
    assert through_2 not in on_crl
    bundle = svc.ca.bundle_path.read_text()
    for serial in through_1:
        assert svc.ca.record(int(serial, 16)).thumbprint not in bundle

    before = svc.snapshot()
    refused(lambda: agent.issue("orders"), DENIED, "NODE_EVICTED")
    refused(agent.registrations, DENIED, "NODE_EVICTED")
    refused(lambda: agent.renew(cc.csr_for(cc.new_key())), DENIED, "NODE_EVICTED")
    assert svc.snapshot() == before
    # no way back under that name
    assert mesh_ca(["join-token", "node-1", "--ca-dir", str(svc.ca.ca_dir)]) == 2
    assert "was evicted" in capsys.readouterr().err
    assert bystander.issue("orders").svid.serial  # control: node-2 is untouched
    nodes = {n.node: n for n in admin.node_views(svc.ca.ca_dir)}
    assert nodes["node-1"].evicted_at is not None and nodes["node-2"].evicted_at is None


def test_renew_agent_needs_a_new_key(svc, refused) -> None:  # type: ignore[no-untyped-def]
    svc.register("orders", "node-1")
    agent = svc.agent("node-1")
    before = svc.snapshot()
    err = refused(lambda: agent.renew(cc.csr_for(agent.key)), INVALID, "CSR_INVALID")
    assert "new key" in err.details()
    refused(lambda: agent.renew(b"not a csr"), INVALID, "CSR_INVALID")
    assert svc.snapshot() == before
    # control: a new key renews; the new certificate works on a new channel
    new_key = cc.new_key()
    svid = agent.renew(cc.csr_for(new_key)).agent_svid
    assert svid.spiffe_id == "spiffe://mesh.internal/agent/node-1"
    assert _leaf(svid).public_key() == new_key.public_key()
    with svc.session(new_key, svid.cert_chain_pem) as renewed:
        assert renewed.issue("orders").svid.serial
    view = {n.node: n for n in admin.node_views(svc.ca.ca_dir)}["node-1"]
    assert format(view.agent_serial or 0, "032x") == svid.serial
    # the old certificate keeps working until it expires (the agent switches when ready)
    assert agent.registrations().registrations


def test_workload_csr_is_validated(svc, refused) -> None:  # type: ignore[no-untyped-def]
    svc.register("orders", "node-1")
    agent = svc.agent("node-1")
    before = svc.snapshot()
    refused(lambda: agent.issue("orders", csr=b"garbage"), INVALID, "CSR_INVALID")
    root_key_csr = cc.csr_for(svc.ca._root_key)
    refused(lambda: agent.issue("orders", csr=root_key_csr), INVALID, "CSR_INVALID")
    assert svc.snapshot() == before
    pem = agent.issue("orders").svid.cert_chain_pem  # control
    assert x509.load_pem_x509_certificates(pem)[0].public_bytes(serialization.Encoding.DER)


def test_many_agents_at_once_all_served_and_the_registry_stays_consistent(svc) -> None:  # type: ignore[no-untyped-def]
    import concurrent.futures

    nodes = [f"node-{i}" for i in range(4)]
    for n in nodes:
        svc.register("orders", n)
        svc.register("payments", n)
    agents = [svc.agent(n) for n in nodes]
    jobs = [(a, s) for a in agents for s in ("orders", "payments") for _ in range(6)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        serials = list(pool.map(lambda job: job[0].issue(job[1]).svid.serial, jobs))
    assert len(set(serials)) == len(jobs)
    records = {format(r.serial, "032x"): r for r in svc.ca.records()}
    assert set(serials) <= set(records)
    bundle = json.loads(svc.ca.bundle_path.read_text())
    kids = {k["kid"] for k in bundle["keys"] if k["use"] == "jwt-svid"}
    assert kids == {r.thumbprint for r in records.values() if r.spiffe_id.count("/svc/")}
    via = admin.issued_through(svc.ca.ca_dir)
    assert {via[int(s, 16)][1] for s in serials} == {"workload"}


def test_a_node_cannot_pile_up_svids(start_service, refused) -> None:  # type: ignore[no-untyped-def]
    """A compromised agent must not grow the bundle every verifier loads without end."""
    svc = start_service(max_valid=3)
    svc.register("orders", "node-1")
    svc.register("payments", "node-1")
    agent = svc.agent("node-1")
    serials = [agent.issue("orders").svid.serial for _ in range(3)]
    before = svc.snapshot()
    err = refused(lambda: agent.issue("orders"), grpc.StatusCode.RESOURCE_EXHAUSTED, "SVID_LIMIT")
    assert "already holds 3 valid certificates for orders" in err.details()
    # when a slot frees: the first of the three expires in about an hour (the default ttl)
    assert 3500 < int(error_info(err).metadata["retry_after"]) <= 3601
    assert svc.snapshot() == before
    assert agent.issue("payments").svid.serial  # control: the limit is per service
    svc.ca.revoke(serial=int(serials[0], 16))
    assert agent.issue("orders").svid.serial  # control: room again
    # agent certificates too: the first one plus two renewals
    agent.renew(cc.csr_for(cc.new_key()))
    agent.renew(cc.csr_for(cc.new_key()))
    refused(lambda: agent.renew(cc.csr_for(cc.new_key())),
            grpc.StatusCode.RESOURCE_EXHAUSTED, "SVID_LIMIT")
