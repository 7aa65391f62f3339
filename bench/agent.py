"""The CA service and its node agents, measured against in-process issuance in the same run.

Parts (``--part NAME``, repeatable; default: all):

- ``issuance``: X.509-SVIDs per second issued through the CA service: a client holding an agent
  SVID calls ``IssueWorkloadSvid`` with a CSR over mutual TLS to ``mesh-ca serve`` running as its
  own process (1 call at a time, and ``--concurrency`` in flight). Baseline, in the same round:
  ``CertificateAuthority.issue_many`` in-process (one transaction and one publication for
  ``--batch`` certificates, keys made by the CA); for reference also ``--calls`` ``issue()``
  one at a time (one commit and publication each, like a lone service call). Each mode starts
  from a fresh CA: a publication renders every valid service key, so its cost grows with the
  number issued. The ratio is service / baseline,
  the median over rounds of same-round ratios; rates are the best round. The mean batch size
  (certificates per commit of the service's group-commit writer) is read from the bundle's
  spiffe_sequence, which grows by one per publication.

A part is a function ``(args, work_dir) -> Part`` in ``PARTS``: it prints its own lines and
returns its figures; ``--json`` prints ``{part: figures, ...}`` as one JSON object on the last
line. New parts (the agent's renewal storm) add a function and an entry.

    .venv/bin/python bench/agent.py [--json] [--part issuance] [--calls 400] [--rounds 3]
                                    [--concurrency 16] [--batch 200]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from ca.authority import CertificateAuthority
from ca.service import admin
from mesh.ca.v1 import ca_pb2, ca_pb2_grpc

MESH_CA = Path(sys.executable).parent / "mesh-ca"


@dataclass
class Part:
    figures: dict[str, Any] = field(default_factory=dict)


# ---- a minimal agent-side client ----------------------------------------------------------------


def _csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pinned_root(address: str, fingerprint: str, server_name: str) -> bytes:
    """The served chain, read without trusting it, and the certificate with the pinned
    fingerprint among it (docs/agent.md, "Bootstrapping trust")."""
    import socket

    host, _, port = address.rpartition(":")
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_verify(SSL.VERIFY_NONE, lambda *_: True)
    with socket.create_connection((host, int(port))) as sock:
        conn = SSL.Connection(ctx, sock)
        conn.set_tlsext_host_name(server_name.encode())
        conn.set_connect_state()
        conn.do_handshake()
        chain = conn.get_peer_cert_chain(as_cryptography=True) or []
    root = next(c for c in chain if c.fingerprint(hashes.SHA256()).hex() == fingerprint)
    return root.public_bytes(serialization.Encoding.PEM)


class Served:
    """``mesh-ca serve`` as a process, and an attested agent session against it."""

    def __init__(self, ca_dir: Path, node: str) -> None:
        ready = ca_dir.parent / "ready.json"
        self.proc = subprocess.Popen(
            [str(MESH_CA), "serve", "--ca-dir", str(ca_dir), "--listen", "127.0.0.1:0",
             "--ready-file", str(ready)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert self.proc.stdout is not None
        for _ in range(4):  # the banner ends once it serves
            self.proc.stdout.readline()
        info = json.loads(ready.read_text())
        options = [("grpc.ssl_target_name_override", info["server_name"]),
                   ("grpc.enable_http_proxy", 0)]
        roots = _pinned_root(info["attest_address"], info["root_fingerprint"],
                             info["server_name"])
        with CertificateAuthority.open(ca_dir) as ca:
            token = admin.make_join_token(ca, node).token
        key = ec.generate_private_key(ec.SECP256R1())
        with grpc.secure_channel(info["attest_address"], grpc.ssl_channel_credentials(roots),
                                 options=options) as channel:
            svid = ca_pb2_grpc.NodeAttestationStub(channel).AttestNode(
                ca_pb2.AttestNodeRequest(node=node, join_token=token, csr_pem=_csr(key))
            ).agent_svid
        creds = grpc.ssl_channel_credentials(roots, _key_pem(key), svid.cert_chain_pem)
        self.channel = grpc.secure_channel(info["agent_address"], creds, options=options)
        self.stub = ca_pb2_grpc.NodeAgentServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _sequence(ca_dir: Path) -> int:
    return int(json.loads((ca_dir / "bundle.spiffe.json").read_text())["spiffe_sequence"])


# ---- part: issuance ---------------------------------------------------------------------------


def part_issuance(args: argparse.Namespace, work: Path) -> Part:
    counter = iter(range(10**9))
    # One registration per call, as in a storm where many workloads renew at once (and within
    # the CA's cap of valid SVIDs per node and service, --max-svids).
    services = [f"svc-{i}" for i in range(args.calls)]
    node = "bench-node"

    def fresh_ca() -> CertificateAuthority:
        return CertificateAuthority.init(work / f"ca-{next(counter)}", intermediate=True)

    def baseline() -> float:
        with fresh_ca() as ca:
            names = [f"b-{i}" for i in range(args.batch)]
            start = time.perf_counter()
            for s in ca.issue_many(names):
                s.chain_pem()
                s.key_pem()
            return args.batch / (time.perf_counter() - start)

    def single() -> float:
        # As many as the service issues per run: every publication renders a bundle holding
        # every valid service key, so the cost per commit grows with the count.
        with fresh_ca() as ca:
            start = time.perf_counter()
            for i in range(args.calls):
                ca.issue(f"s-{i}").chain_pem()
            return args.calls / (time.perf_counter() - start)

    # Workloads make their keys and CSRs; that is their cost, not the CA's: made up front.
    csrs = [_csr(ec.generate_private_key(ec.SECP256R1())) for _ in range(args.calls)]
    requests = [ca_pb2.IssueWorkloadSvidRequest(service=services[i], csr_pem=csrs[i])
                for i in range(args.calls)]

    def through_service(served: Served, ca_dir: Path, concurrency: int) -> tuple[float, float]:
        before = _sequence(ca_dir)
        start = time.perf_counter()
        if concurrency == 1:
            for req in requests:
                served.stub.IssueWorkloadSvid(req, timeout=60)
        else:
            with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(lambda r: served.stub.IssueWorkloadSvid(r, timeout=60), requests))
        rate = len(requests) / (time.perf_counter() - start)
        commits = _sequence(ca_dir) - before
        return rate, len(requests) / max(commits, 1)

    rates: dict[str, list[float]] = {"baseline": [], "single": [], "serial": [],
                                     "concurrent": []}
    batch_sizes: dict[str, list[float]] = {"serial": [], "concurrent": []}
    baseline()  # warm up imports and code paths
    for _ in range(args.rounds):
        rates["baseline"].append(baseline())
        rates["single"].append(single())
        for label, conc in (("serial", 1), ("concurrent", args.concurrency)):
            ca = fresh_ca()  # each mode starts from an empty bundle, like the reference
            for s in services:
                admin.register(ca, s, node, uid=1000)
            ca_dir = ca.ca_dir
            ca.close()
            served = Served(ca_dir, node)
            try:
                served.stub.ListRegistrations(ca_pb2.ListRegistrationsRequest(), timeout=60)
                rate, per_commit = through_service(served, ca_dir, conc)
                rates[label].append(rate)
                batch_sizes[label].append(per_commit)
            finally:
                served.close()
    ratios = {
        k: statistics.median(r / b for r, b in zip(rates[k], rates["baseline"], strict=True))
        for k in ("single", "serial", "concurrent")
    }
    serial_vs_single = statistics.median(
        r / b for r, b in zip(rates["serial"], rates["single"], strict=True))
    best = {k: max(v) for k, v in rates.items()}
    print(f"{'issue_many(' + str(args.batch) + ') in-process (baseline)':<54} "
          f"{best['baseline']:9.1f} SVIDs/s   1.00x")
    print(f"{'issue() x ' + str(args.calls) + ' in-process, a commit each (reference)':<54} "
          f"{best['single']:9.1f} SVIDs/s   {ratios['single']:.3f}x")
    print(f"{'CA service, IssueWorkloadSvid, 1 call at a time':<54} "
          f"{best['serial']:9.1f} SVIDs/s   {ratios['serial']:.3f}x  "
          f"({statistics.median(batch_sizes['serial']):.1f} per commit)")
    print(f"{'CA service, IssueWorkloadSvid, ' + str(args.concurrency) + ' in flight':<54} "
          f"{best['concurrent']:9.1f} SVIDs/s   {ratios['concurrent']:.3f}x  "
          f"({statistics.median(batch_sizes['concurrent']):.1f} per commit)")
    return Part({
        "baseline_issue_many_per_s": round(best["baseline"], 1),
        "issue_single_per_s": round(best["single"], 1),
        "service_serial_per_s": round(best["serial"], 1),
        "service_concurrent_per_s": round(best["concurrent"], 1),
        "ratio_serial_vs_issue_many": round(ratios["serial"], 3),
        "ratio_concurrent_vs_issue_many": round(ratios["concurrent"], 3),
        "ratio_serial_vs_issue_single": round(serial_vs_single, 3),
        "svids_per_commit_serial": round(statistics.median(batch_sizes["serial"]), 1),
        "svids_per_commit_concurrent": round(statistics.median(batch_sizes["concurrent"]), 1),
        "calls": args.calls,
        "concurrency": args.concurrency,
        "batch": args.batch,
        "rounds": args.rounds,
    })


PARTS: dict[str, Callable[[argparse.Namespace, Path], Part]] = {
    "issuance": part_issuance,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ap.add_argument("--part", action="append", choices=sorted(PARTS),
                    help="run only this part (repeat for several; default: all)")
    ap.add_argument("--calls", type=int, default=400, help="IssueWorkloadSvid calls per round")
    ap.add_argument("--concurrency", type=int, default=16, help="calls in flight")
    ap.add_argument("--batch", type=int, default=200, help="issue_many size (baseline)")
    ap.add_argument("--rounds", type=int, default=3, help="measurement rounds")
    args = ap.parse_args()
    os.environ.pop("MESH_CA_SERVICE_CRASH_AT", None)
    work = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    out: dict[str, Any] = {}
    try:
        for name in args.part or list(PARTS):
            print(f"== {name}")
            out[name] = PARTS[name](args, work).figures
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
