"""Node agents under a renewal storm: 1,000 workload SVIDs across agents renewing at once.

Measured: N agents (in this process, each on its own event loop thread) hold ``--services``
SVIDs between them; every agent is told to renew everything at the same instant (what SIGHUP
does); the time until every SVID on every agent is a new one, and how many renewals failed.

Baseline (same run, same CA service): the same number of ``IssueWorkloadSvid`` calls made
straight to the CA by a plain gRPC client (mutual TLS as an agent, 64 threads), each with a
fresh P-256 key and CSR, as the agent makes them. The ratio is agent storm throughput over
that raw throughput: what the agent's own work (checking each answer, writing state, the
Workload API update) costs on top of the CA's.

The CA service here is the test stand-in over a real ``ca/`` CA (tests/agent/fakeca.py): every
issuance is a real registry commit and republication.

    .venv/bin/python bench/agent.py [--json] [--services 1000] [--agents 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ca.authority import CertificateAuthority  # noqa: E402
from mesh.agent.agent import AgentConfig  # noqa: E402
from mesh.agent.model import csr_pem, new_key  # noqa: E402
from mesh.ca.v1 import ca_pb2, ca_pb2_grpc  # noqa: E402
from tests.agent.conftest import AgentThread, wait_for  # noqa: E402
from tests.agent.fakeca import FakeCA  # noqa: E402


def storm(fake: FakeCA, services: int, agents: int, base: Path) -> dict[str, float]:
    per = services // agents
    threads = []
    for a in range(agents):
        node = f"node-{a}"
        for s in range(per):
            fake.register(node, f"svc-{a}-{s}", uid=0, ttl=3600)
        cfg = AgentConfig(
            ca=f"127.0.0.1:{fake.agent_port}", ca_attest=f"127.0.0.1:{fake.attest_port}",
            ca_fingerprint=fake.fingerprint, node=node, join_token=fake.join_token(node),
            state=base / f"state-{a}", socket=base / f"a{a}.sock",
            retry_base=0.1, retry_cap=2.0, sync_interval=1.0,
        )
        threads.append(AgentThread(cfg))
    agents_ = [t.wait_ready(60) for t in threads]
    total = per * agents
    wait_for(lambda: sum(len(a.store.svids) for a in agents_) == total, timeout=600,
             what="initial issuance")
    before = {(i, n): s.serial for i, a in enumerate(agents_) for n, s in a.store.svids.items()}
    issued0 = fake.count("issue")
    start = time.perf_counter()
    for t, a in zip(threads, agents_, strict=True):
        t.call(a.renew_now)

    def renewed() -> bool:
        return all(
            s.serial != before[(i, n)] for i, a in enumerate(agents_)
            for n, s in list(a.store.svids.items())
        ) and sum(len(a.store.svids) for a in agents_) == total

    wait_for(renewed, timeout=600, what="all renewed")
    elapsed = time.perf_counter() - start
    calls = fake.count("issue") - issued0
    failed = sum(1 for a in agents_ for t in a.tracked.values() if t.state != "ok")
    agent0 = agents_[0]
    identity = (agent0.agent_svid.chain_pem, agent0.agent_svid.key_pem,
                agent0.store.trust.roots_pem)
    for t in threads:
        t.stop()
    return {"seconds": elapsed, "renewed": total, "issue_calls": calls,
            "errors": calls - total + failed, "identity": identity}  # type: ignore[dict-item]


def raw(fake: FakeCA, count: int, per: int, identity: tuple[bytes, bytes, bytes]) -> float:
    chain, key, roots = identity
    creds = grpc.ssl_channel_credentials(roots, key, chain)
    name = f"ca.svc.{fake.td.name}"
    with grpc.secure_channel(f"127.0.0.1:{fake.agent_port}", creds,
                             options=[("grpc.ssl_target_name_override", name)]) as ch:
        stub = ca_pb2_grpc.NodeAgentServiceStub(ch)

        def one(i: int) -> None:
            k = new_key()
            stub.IssueWorkloadSvid(ca_pb2.IssueWorkloadSvidRequest(
                service=f"svc-0-{i % per}", csr_pem=csr_pem(k, "x")), timeout=60)

        start = time.perf_counter()
        with ThreadPoolExecutor(64) as pool:
            list(pool.map(one, range(count)))
        return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--agents", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="agb-", dir="/tmp") as tmp:
        base = Path(tmp)
        ca = CertificateAuthority.init(base / "ca")
        fake = FakeCA(ca).start()
        try:
            s = storm(fake, args.services, args.agents, base)
            baseline = raw(fake, s["renewed"], args.services // args.agents, s.pop("identity"))  # type: ignore[arg-type]
        finally:
            fake.stop()
            ca.close()
    rate, raw_rate = s["renewed"] / s["seconds"], s["renewed"] / baseline
    print(f"renewal storm: {int(s['renewed'])} SVIDs on {args.agents} agents renewed in "
          f"{s['seconds']:.2f} s ({rate:.0f}/s), errors: {int(s['errors'])}")
    print(f"baseline: {int(s['renewed'])} IssueWorkloadSvid calls straight to the CA in "
          f"{baseline:.2f} s ({raw_rate:.0f}/s)")
    print(f"ratio (agent storm / raw CA issuance throughput): {rate / raw_rate:.2f}x")
    if args.json:
        print(json.dumps({"storm_seconds": round(s["seconds"], 3),
                          "svids": int(s["renewed"]), "agents": args.agents,
                          "errors": int(s["errors"]), "baseline_seconds": round(baseline, 3),
                          "ratio": round(rate / raw_rate, 3), "cpus": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
