"""The Workload API as real clients see it: py-spiffe's client (a client meshid did not
write), meshid's own WorkloadApiSource, and callers of another uid (setpriv)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from spiffe import WorkloadApiClient, X509Source
from spiffe._proto import workload_pb2, workload_pb2_grpc

from mesh.identity import workload_api
from mesh.identity.workload_api import WorkloadApiSource
from mesh.transport.status import error_info

from .conftest import wait_for

TD = "spiffe://mesh.internal"


def _stub(sock):
    channel = grpc.insecure_channel(f"unix:{sock}")
    return channel, workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)


@pytest.fixture
def running(ca_service, agent_runner):
    ca_service.register("node-a", "orders", uid=os.geteuid(), ttl=4)
    ca_service.register("node-a", "payments", uid=os.geteuid(), ttl=3600)
    ca_service.register("node-a", "nobody-svc", uid=65534, ttl=3600)
    t = agent_runner()
    agent = t.wait_ready()
    wait_for(lambda: {"orders", "payments", "nobody-svc"} <= set(agent.store.svids),
             what="three SVIDs")
    return t


def test_py_spiffe_fetches_svids_and_bundles_and_sees_rotation(running):
    sock = running.config.socket
    with WorkloadApiClient(f"unix://{sock}", default_timeout=5) as client:
        svids = client.fetch_x509_svids()
        assert [str(s.spiffe_id) for s in svids] == [f"{TD}/svc/orders", f"{TD}/svc/payments"]
        bundles = client.fetch_x509_bundles()
        bundle = bundles.get_bundle_for_trust_domain(svids[0].spiffe_id.trust_domain)
        assert bundle is not None and len(bundle.x509_authorities) == 1
        jwt = client.fetch_jwt_bundles()
        assert jwt.get_bundle_for_trust_domain(svids[0].spiffe_id.trust_domain) is not None
    # X509Source follows the stream: orders lives 4 s, so it rotates at 1.6-2 s
    source = X509Source(socket_path=f"unix://{sock}", timeout_in_seconds=5)
    try:
        first = source.get_x509_context().default_svid.leaf.serial_number
        wait_for(lambda: source.get_x509_context().default_svid.leaf.serial_number != first,
                 timeout=15, what="a rotation seen by py-spiffe")
    finally:
        source.close()


def test_missing_header_is_invalid_argument(running):
    channel, stub = _stub(running.config.socket)
    with channel:
        with pytest.raises(grpc.RpcError) as err:
            next(stub.FetchX509SVID(workload_pb2.X509SVIDRequest()))
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(err.value).reason == "WORKLOAD_HEADER_MISSING"
        # negative control: the same call with the header passes
        resp = next(stub.FetchX509SVID(workload_pb2.X509SVIDRequest(),
                                       metadata=(("workload.spiffe.io", "true"),)))
        assert len(resp.svids) == 2


def test_jwt_svids_are_unimplemented(running):
    channel, stub = _stub(running.config.socket)
    with channel, pytest.raises(grpc.RpcError) as err:
        stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["x"]),
                          metadata=(("workload.spiffe.io", "true"),))
    assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert error_info(err.value).reason == "WORKLOAD_API_UNIMPLEMENTED"


def test_meshid_source_follows_rotation_and_checks_revocation(running):
    src = WorkloadApiSource.connect(running.config.socket, timeout=5)
    try:
        assert str(src.current().spiffe_id) == f"{TD}/svc/orders"
        assert src.checks_revocation
        assert str(src.trust_domain) == "mesh.internal"
        src.verify_chain(src.current().chain)
        rotated = []
        src.subscribe(rotated.append)
        first = src.current().thumbprint
        wait_for(lambda: rotated, timeout=15, what="rotation")
        assert src.current().thumbprint != first
        # the token-signing key of the new SVID is found in the bundle by kid
        wait_for(lambda: src.key_for(src.current().thumbprint) is not None, timeout=10,
                 what="new key in the bundle")
    finally:
        src.stop()


_CLIENT = textwrap.dedent("""
    import json, sys, grpc
    from spiffe import WorkloadApiClient
    from spiffe._proto import workload_pb2, workload_pb2_grpc
    out = {}
    try:
        with WorkloadApiClient(sys.argv[1], default_timeout=5) as c:
            out["svids"] = [str(s.spiffe_id) for s in c.fetch_x509_svids()]
    except Exception as e:
        out["svids_error"] = str(e)
    ch = grpc.insecure_channel("unix:" + sys.argv[1][len("unix://"):])
    stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(ch)
    md = (("workload.spiffe.io", "true"),)
    for name, call in (("bundles", lambda: next(stub.FetchX509Bundles(
                            workload_pb2.X509BundlesRequest(), metadata=md, timeout=5))),
                       ("svid", lambda: next(stub.FetchX509SVID(
                            workload_pb2.X509SVIDRequest(), metadata=md, timeout=5)))):
        try:
            r = call()
            out[name] = "answered"
        except grpc.RpcError as e:
            out[name] = e.code().name
    print(json.dumps(out))
""")


def _as_uid(uid: int, sock) -> dict:
    proc = subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", sys.executable, "-c",
         _CLIENT, f"unix://{sock}"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": "/"}, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_other_uids_get_only_their_own_or_permission_denied(ca_service, agent_runner):
    ca_service.register("node-a", "nobody-svc", uid=65534, ttl=3600)
    ca_service.register("node-a", "orders", uid=0, ttl=3600)
    t = agent_runner()
    agent = t.wait_ready()
    wait_for(lambda: {"orders", "nobody-svc"} <= set(agent.store.svids), what="SVIDs")
    os.chmod(t.config.socket.parent, 0o755)  # let other users reach the socket's folder
    got = _as_uid(65534, t.config.socket)
    assert got["svids"] == [f"{TD}/svc/nobody-svc"]
    assert got["bundles"] == "answered"
    got = _as_uid(65533, t.config.socket)  # registered nowhere
    assert "svids" not in got
    assert got["bundles"] == "PERMISSION_DENIED" and got["svid"] == "PERMISSION_DENIED"


def _x509_message(issued) -> workload_pb2.X509SVIDResponse:
    der = serialization.Encoding.DER
    return workload_pb2.X509SVIDResponse(svids=[workload_pb2.X509SVID(
        spiffe_id=str(issued.spiffe_id),
        x509_svid=b"".join(c.public_bytes(der) for c in issued.chain),
        x509_svid_key=issued.private_key.private_bytes(
            der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        bundle=b"".join(c.public_bytes(der) for c in issued.bundle),
    )])


def _jwt_message(ca) -> workload_pb2.JWTBundlesResponse:
    doc = json.loads(ca.bundle_path.read_bytes())
    doc["keys"] = [k for k in doc["keys"] if k["use"] == "jwt-svid"]
    return workload_pb2.JWTBundlesResponse(bundles={TD: json.dumps(doc).encode()})


def test_a_rotated_svid_is_used_once_the_bundle_carries_its_key(mesh_ca, monkeypatch):
    """The agent streams the new SVID and the new bundle separately: the source keeps the
    current SVID until the bundle carries the new one's key (its tokens would be refused
    before), and switches anyway when the key does not come in time."""
    first = mesh_ca.issue("orders")
    source = WorkloadApiSource()  # fed by hand below, as its two streams would
    rotated = []
    source._on_jwt(_jwt_message(mesh_ca))
    source._on_x509(_x509_message(first))
    source.subscribe(rotated.append)
    assert source.current().thumbprint == first.thumbprint
    second = mesh_ca.issue("orders")  # the CA's bundle now has its key; ours not yet
    source._on_x509(_x509_message(second))
    assert source.current().thumbprint == first.thumbprint and rotated == []
    source._on_jwt(_jwt_message(mesh_ca))  # the bundle with the key arrives
    assert source.current().thumbprint == second.thumbprint
    assert [s.thumbprint for s in rotated] == [second.thumbprint]
    # a key that never comes: the new SVID is used after ACTIVATION_WAIT
    monkeypatch.setattr(workload_api, "ACTIVATION_WAIT", 0.2)
    third = mesh_ca.issue("orders")
    source._on_x509(_x509_message(third))
    assert source.current().thumbprint == second.thumbprint
    wait_for(lambda: source.current().thumbprint == third.thumbprint, timeout=10,
             what="the switch after the wait")
    source.stop()
