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

- ``storm``: a renewal storm. ``--storm-agents`` node agents (``mesh agent``'s Agent, each on
  its own event loop thread in this process) hold ``--storm-svids`` workload SVIDs between
  them (1 h lifetimes) from ``mesh-ca serve`` in its own process; every agent is told to renew
  everything at the same instant (what SIGHUP does), and the time until every SVID on every
  agent is a new one is measured, with the number of failed attempts (every warning the agents
  log: a retry, a refusal, the CA unreachable). Agents here do what they always do per SVID (a
  new key and CSR, the answer checked, the state folder written and fsynced, the Workload API
  view updated), except the key-propagation hold (``key_propagation=0``: a deliberate wait,
  not work). Baseline, in the same run: a fresh CA and service in the same state (the same
  registrations, one SVID each already issued), and the same number of ``IssueWorkloadSvid``
  calls from a plain gRPC client, one channel per node, all in flight at once, each with a key
  and CSR made in the timed part. The ratio is storm throughput over baseline throughput; the
  SVIDs per commit of the CA's group-commit writer are reported for both.

A part is a function ``(args, work_dir) -> Part`` in ``PARTS``: it prints its own lines and
returns its figures; ``--json`` prints ``{part: figures, ...}`` as one JSON object on the last
line.

    .venv/bin/python bench/agent.py [--json] [--part issuance|storm] [--calls 400] [--rounds 3]
                                    [--concurrency 16] [--batch 200]
                                    [--storm-svids 1000] [--storm-agents 4]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
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
from mesh.agent.agent import Agent, AgentConfig
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


class Serving:
    """``mesh-ca serve`` as a process (port 0), and what a client needs to reach it."""

    def __init__(self, ca_dir: Path) -> None:
        self.ca_dir = ca_dir
        self.channels: list[grpc.Channel] = []
        ready = ca_dir.parent / "ready.json"
        self.proc = subprocess.Popen(
            [str(MESH_CA), "serve", "--ca-dir", str(ca_dir), "--listen", "127.0.0.1:0",
             "--ready-file", str(ready)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert self.proc.stdout is not None
        for _ in range(4):  # the banner ends once it serves
            self.proc.stdout.readline()
        self.info = json.loads(ready.read_text())
        self.options = [("grpc.ssl_target_name_override", self.info["server_name"]),
                        ("grpc.enable_http_proxy", 0)]
        self.roots = _pinned_root(self.info["attest_address"], self.info["root_fingerprint"],
                                  self.info["server_name"])

    def session(self, node: str) -> ca_pb2_grpc.NodeAgentServiceStub:
        """Attest ``node`` with a fresh join token; a stub on a channel holding its SVID."""
        with CertificateAuthority.open(self.ca_dir) as ca:
            token = admin.make_join_token(ca, node).token
        key = ec.generate_private_key(ec.SECP256R1())
        with grpc.secure_channel(self.info["attest_address"],
                                 grpc.ssl_channel_credentials(self.roots),
                                 options=self.options) as channel:
            svid = ca_pb2_grpc.NodeAttestationStub(channel).AttestNode(
                ca_pb2.AttestNodeRequest(node=node, join_token=token, csr_pem=_csr(key))
            ).agent_svid
        creds = grpc.ssl_channel_credentials(self.roots, _key_pem(key), svid.cert_chain_pem)
        self.channels.append(grpc.secure_channel(self.info["agent_address"], creds,
                                                 options=self.options))
        return ca_pb2_grpc.NodeAgentServiceStub(self.channels[-1])

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self.channels.clear()
        self.proc.terminate()
        self.proc.wait(timeout=30)


class Served(Serving):
    """``mesh-ca serve`` and one attested agent session against it (``stub``)."""

    def __init__(self, ca_dir: Path, node: str) -> None:
        super().__init__(ca_dir)
        self.stub = self.session(node)


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


# ---- part: storm ------------------------------------------------------------------------------


class _AgentRunner:
    """One node agent on its own event loop thread (as one host runs one ``mesh agent``)."""

    def __init__(self, config: AgentConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.agent = Agent(config)
        self.ready = threading.Event()
        self.result: concurrent.futures.Future[int] = concurrent.futures.Future()
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def run() -> int:
            asyncio.ensure_future(self.agent.ready.wait()).add_done_callback(
                lambda _: self.ready.set())
            return await self.agent.run()

        try:
            self.result.set_result(self.loop.run_until_complete(run()))
        except BaseException as err:
            self.result.set_exception(err)
        finally:
            self.ready.set()

    def on_loop(self, fn: Callable[[], Any]) -> None:
        self.loop.call_soon_threadsafe(fn)

    def stop(self) -> None:
        self.on_loop(self.agent.stop)
        self.thread.join(60)


class _Warnings(logging.Handler):
    """Counts what the agents log at WARNING and above: each is a failed attempt."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.first) < 3:
            self.first.append(record.getMessage()[:200])


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 900) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _registered_ca(work: Path, label: str, nodes: list[str], per: int) -> Path:
    with CertificateAuthority.init(work / label, intermediate=True) as ca:
        for node in nodes:
            for i in range(per):
                admin.register(ca, f"{node}-svc-{i}", node, uid=0)
        return ca.ca_dir


def part_storm(args: argparse.Namespace, work: Path) -> Part:
    agents_n, per = args.storm_agents, args.storm_svids // args.storm_agents
    total = agents_n * per
    nodes = [f"node-{a}" for a in range(agents_n)]

    # --- the storm through the agents ---
    ca_dir = _registered_ca(work, "storm-ca", nodes, per)
    serving = Serving(ca_dir)
    warnings = _Warnings()
    logging.getLogger("mesh.agent").addHandler(warnings)
    runners: list[_AgentRunner] = []
    try:
        start = time.perf_counter()
        for node in nodes:
            with CertificateAuthority.open(ca_dir) as ca:
                token = admin.make_join_token(ca, node).token
            base = Path(tempfile.mkdtemp(prefix=f"{node}-", dir=work))
            runners.append(_AgentRunner(AgentConfig(
                ca=serving.info["agent_address"], ca_attest=serving.info["attest_address"],
                ca_fingerprint=serving.info["root_fingerprint"], node=node, join_token=token,
                state=base / "state", socket=base / "agent.sock", retry_base=0.1,
                retry_cap=2.0, sync_interval=3600.0, key_propagation=0.0)))
        for r in runners:
            r.ready.wait(120)
            if r.result.done():
                r.result.result()
        agents = [r.agent for r in runners]

        def held() -> int:
            return sum(len(a.store.svids) for a in agents if a.store is not None)

        _wait(lambda: held() == total, "the first issuance")
        first_issuance = time.perf_counter() - start
        before = {(i, n): svid.serial for i, a in enumerate(agents)
                  for n, svid in list(a.store.svids.items())}  # type: ignore[union-attr]
        seq0, warned0 = _sequence(ca_dir), warnings.count
        start = time.perf_counter()
        for r in runners:
            r.on_loop(r.agent.renew_now)

        def renewed() -> bool:
            return held() == total and all(
                svid.serial != before[(i, n)] for i, a in enumerate(agents)
                for n, svid in list(a.store.svids.items()))  # type: ignore[union-attr]

        _wait(renewed, "every SVID renewed")
        storm_s = time.perf_counter() - start
        storm_commits = _sequence(ca_dir) - seq0
        errors = warnings.count - warned0
        error_samples = list(warnings.first)
    finally:
        for r in runners:
            r.stop()
        logging.getLogger("mesh.agent").removeHandler(warnings)
        serving.close()
    with CertificateAuthority.open(ca_dir) as ca:
        issued = sum(1 for r in ca.records() if "/svc/" in r.spiffe_id)

    # --- the baseline: the same calls from a plain client, from the same starting state ---
    base_dir = _registered_ca(work, "baseline-ca", nodes, per)
    serving = Serving(base_dir)
    try:
        stubs = {node: serving.session(node) for node in nodes}
        names = [(node, f"{node}-svc-{i}") for node in nodes for i in range(per)]

        def wave() -> tuple[float, int, int]:
            seq = _sequence(base_dir)
            t0 = time.perf_counter()
            calls = [stubs[node].IssueWorkloadSvid.future(ca_pb2.IssueWorkloadSvidRequest(
                service=name, csr_pem=_csr(ec.generate_private_key(ec.SECP256R1()))),
                timeout=600) for node, name in names]
            failed = 0
            for call in calls:
                try:
                    call.result()
                except grpc.RpcError:
                    failed += 1
            return time.perf_counter() - t0, _sequence(base_dir) - seq, failed

        wave()  # the first SVID of each: the state the agents started the storm from
        baseline_s, baseline_commits, baseline_failed = wave()
    finally:
        serving.close()

    storm_rate, base_rate = total / storm_s, total / baseline_s
    ratio = storm_rate / base_rate
    print(f"first issuance through {agents_n} agents: {total} SVIDs in {first_issuance:.2f} s")
    print(f"storm: {total} SVIDs on {agents_n} agents renewed in {storm_s:.2f} s "
          f"({storm_rate:.0f}/s, {total / max(storm_commits, 1):.1f} per commit), "
          f"failed attempts: {errors}" + (f" ({error_samples})" if errors else ""))
    print(f"baseline: {total} IssueWorkloadSvid calls from a plain client in {baseline_s:.2f} s "
          f"({base_rate:.0f}/s, {total / max(baseline_commits, 1):.1f} per commit), "
          f"failed: {baseline_failed}")
    print(f"ratio (storm / baseline): {ratio:.2f}x")
    return Part({
        "svids": total,
        "agents": agents_n,
        "first_issuance_s": round(first_issuance, 3),
        "storm_s": round(storm_s, 3),
        "storm_per_s": round(storm_rate, 1),
        "storm_svids_per_commit": round(total / max(storm_commits, 1), 1),
        "failed_attempts": errors,
        "workload_svids_issued": issued,
        "baseline_s": round(baseline_s, 3),
        "baseline_per_s": round(base_rate, 1),
        "baseline_svids_per_commit": round(total / max(baseline_commits, 1), 1),
        "baseline_failed": baseline_failed,
        "ratio_storm_vs_baseline": round(ratio, 3),
    })


PARTS: dict[str, Callable[[argparse.Namespace, Path], Part]] = {
    "issuance": part_issuance,
    "storm": part_storm,
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
    ap.add_argument("--storm-svids", type=int, default=1000,
                    help="workload SVIDs renewed at once in the storm part")
    ap.add_argument("--storm-agents", type=int, default=4, help="agents holding them")
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
