"""How fast the CA issues X.509-SVIDs, against the raw cost of doing the same with cryptography.

Baseline (measured in the same run): ECDSA P-256 key generation + building and signing the
same leaf profile + PEM-encoding certificate and key, with ``cryptography`` alone.
Measured: ``CertificateAuthority.issue`` one at a time (one transaction, one publication of
bundle/CRL each), ``issue_many`` (one transaction for the whole batch), the batch again writing
every service's files, and the wall time of one ``ca-issue`` process.

    .venv/bin/python bench/ca_issue.py [--json] [--batch 200] [--single 100] [--runs 5]
                                       [--rounds 3]

With ``--json`` the last line is one JSON object with the same figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from ca.authority import CertificateAuthority
from ca.templates import build_leaf, new_key, new_serial
from mesh.identity.spiffeid import TrustDomain


def timed(fn: Callable[[CertificateAuthority], None], ca: CertificateAuthority) -> float:
    start = time.perf_counter()
    fn(ca)
    return time.perf_counter() - start


def raw_issue(ca: CertificateAuthority, count: int) -> None:
    td = TrustDomain("mesh.internal")
    issuer, issuer_key = ca.issuer_cert, ca._issuer_key  # the same signer the CA uses
    now = datetime.now(UTC)
    for i in range(count):
        key = new_key()
        name = f"raw-{i}"
        cert = build_leaf(
            spiffe_id=td.service(name),
            name=name,
            dns_names=[td.service_dns_name(name)],
            ips=[],
            public_key=key.public_key(),
            serial=new_serial(),
            not_before=now,
            not_after=now + timedelta(hours=24),
            issuer_cert=issuer,
            issuer_key=issuer_key,
        )
        cert.public_bytes(serialization.Encoding.PEM)
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ap.add_argument("--raw", type=int, default=300, help="baseline iterations")
    ap.add_argument("--batch", type=int, default=200, help="names per issue_many call")
    ap.add_argument("--single", type=int, default=100, help="issue() calls, one at a time")
    ap.add_argument("--runs", type=int, default=5, help="ca-issue process runs")
    ap.add_argument("--rounds", type=int, default=3, help="measurement rounds")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-ca-"))
    counter = iter(range(10**9))

    def fresh_ca() -> CertificateAuthority:
        return CertificateAuthority.init(work / f"ca-{next(counter)}")

    def raw(c: CertificateAuthority) -> None:
        raw_issue(c, args.raw)

    def single(c: CertificateAuthority) -> None:
        for i in range(args.single):
            s = c.issue(f"s-{i}")
            s.chain_pem()
            s.key_pem()

    def batch(c: CertificateAuthority) -> None:
        for s in c.issue_many([f"b-{i}" for i in range(args.batch)]):
            s.chain_pem()
            s.key_pem()

    def batch_files(c: CertificateAuthority) -> None:
        c.issue_many([f"f-{i}" for i in range(args.batch)], out_dir=c.ca_dir / "out")

    cases = {
        "raw": (raw, args.raw),
        "single": (single, args.single),
        "batch": (batch, args.batch),
        "batch_files": (batch_files, args.batch),
    }
    with fresh_ca() as warm:
        raw_issue(warm, 20)
    # The machine is shared: each round measures the baseline and every path back to back,
    # so a ratio compares figures taken under the same load. Ratios: median over rounds.
    # Rates: best over rounds. Each measurement gets a fresh CA (made outside the timing).
    rates: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.rounds):
        for key, (fn, count) in cases.items():
            with fresh_ca() as c:
                rates[key].append(count / timed(fn, c))
    ratios = {
        k: statistics.median(r / b for r, b in zip(rates[k], rates["raw"], strict=True))
        for k in ("single", "batch", "batch_files")
    }
    best = {k: max(v) for k, v in rates.items()}

    exe = Path(sys.executable).parent / "ca-issue"
    cli_ca = fresh_ca()
    cli_ca.close()
    walls = []
    for i in range(args.runs):
        start = time.perf_counter()
        subprocess.run(
            [str(exe), f"cli-{i}", "--ca-dir", str(cli_ca.ca_dir), "--out", str(work / "cli")],
            check=True,
            capture_output=True,
        )
        walls.append(time.perf_counter() - start)
    starts = []
    for _ in range(args.runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        starts.append(time.perf_counter() - start)

    figures = {
        "raw_per_s": round(best["raw"], 1),
        "api_single_per_s": round(best["single"], 1),
        "api_batch_per_s": round(best["batch"], 1),
        "api_batch_files_per_s": round(best["batch_files"], 1),
        "ratio_single_vs_raw": round(ratios["single"], 3),
        "ratio_batch_vs_raw": round(ratios["batch"], 3),
        "ratio_batch_files_vs_raw": round(ratios["batch_files"], 3),
        "ca_issue_wall_ms_median": round(statistics.median(walls) * 1000, 1),
        "python_startup_ms_median": round(statistics.median(starts) * 1000, 1),
        "batch_size": args.batch,
        "single_calls": args.single,
    }
    labels = {
        "raw": "raw cryptography (keygen + build + sign + PEM)",
        "single": "CA API, issue() one at a time",
        "batch": f"CA API, issue_many({args.batch}), one transaction",
        "batch_files": f"CA API, issue_many({args.batch}) + service files",
    }
    for key, label in labels.items():
        ratio = "  1.00x (baseline)" if key == "raw" else f"  {ratios[key]:.2f}x"
        print(f"{label:<48} {best[key]:9.1f} certs/s{ratio}")
    print(f"one ca-issue process, wall time (median of {args.runs}): "
          f"{figures['ca_issue_wall_ms_median']} ms "
          f"(python -c pass: {figures['python_startup_ms_median']} ms)")
    shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
