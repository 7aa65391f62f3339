"""WatchTrust: the bundle and CRL stream, including changes made by another process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
from cryptography import x509

from mesh.ca.v1 import ca_pb2

MESH_CA = Path(sys.executable).parent / "mesh-ca"


def _published(svc) -> tuple[bytes, bytes, bytes]:  # type: ignore[no-untyped-def]
    return (svc.ca.roots_path.read_bytes(), svc.ca.bundle_path.read_bytes(),
            svc.ca.crl_path.read_bytes())


def test_first_message_is_the_published_state(svc) -> None:  # type: ignore[no-untyped-def]
    agent = svc.agent("node-1")
    stream = agent.stub.WatchTrust(ca_pb2.WatchTrustRequest(known_sequence=0), timeout=30)
    first = next(stream)
    assert (first.roots_pem, first.bundle_json, first.crl_pem) == _published(svc)
    stream.cancel()


def test_revocation_by_another_process_is_streamed(svc) -> None:  # type: ignore[no-untyped-def]
    svc.register("orders", "node-1")
    agent = svc.agent("node-1")
    victim = agent.issue("orders").svid.serial
    stream = agent.stub.WatchTrust(ca_pb2.WatchTrustRequest(known_sequence=0), timeout=60)
    first = next(stream)
    assert first.bundle_json == svc.ca.bundle_path.read_bytes()
    # the agent already holds this sequence: nothing comes until the CA changes
    subprocess.run(
        [str(MESH_CA), "revoke", "--serial", victim, "--reason", "key-compromise",
         "--ca-dir", str(svc.ca.ca_dir)],
        check=True, capture_output=True,
    )
    update = next(stream)
    assert update.sequence > first.sequence
    crl = x509.load_pem_x509_crl(update.crl_pem)
    assert format(next(iter(crl)).serial_number, "032x") == victim
    assert (update.roots_pem, update.bundle_json, update.crl_pem) == _published(svc)
    stream.cancel()


def test_known_sequence_suppresses_the_first_message(svc) -> None:  # type: ignore[no-untyped-def]
    svc.register("orders", "node-1")
    agent = svc.agent("node-1")
    current = svc.service.watcher.current.sequence
    stream = agent.stub.WatchTrust(ca_pb2.WatchTrustRequest(known_sequence=current),
                                   timeout=60)
    issued = agent.issue("orders")  # a new service key: the bundle changes
    update = next(stream)
    assert update.sequence > current
    leaf = x509.load_pem_x509_certificates(issued.svid.cert_chain_pem)[0]
    assert svc.ca.record(leaf.serial_number).thumbprint.encode() in update.bundle_json
    stream.cancel()


def test_eviction_ends_the_stream(svc, refused) -> None:  # type: ignore[no-untyped-def]
    agent = svc.agent("node-1")
    other = svc.agent("node-2")
    stream = agent.stub.WatchTrust(ca_pb2.WatchTrustRequest(), timeout=60)
    control = other.stub.WatchTrust(ca_pb2.WatchTrustRequest(), timeout=60)
    next(stream)
    next(control)
    subprocess.run([str(MESH_CA), "evict", "node-1", "--ca-dir", str(svc.ca.ca_dir)],
                   check=True, capture_output=True)
    refused(lambda: list(stream), grpc.StatusCode.PERMISSION_DENIED, "NODE_EVICTED")
    # node-2's stream goes on and carries the new CRL
    update = next(control)
    assert len(x509.load_pem_x509_crl(update.crl_pem)) == 1
    control.cancel()
