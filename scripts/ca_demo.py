"""The CA part of the demo: a fresh CA, one X.509-SVID per demo service, a readable summary.

The CA-only demo (./scripts/demo now runs the whole mesh, which makes its own CA); run it
with ``.venv/bin/python scripts/ca_demo.py``. Everything goes under ./demo-state/ (git-ignored;
``--state DIR`` picks another folder): the CA folder STATE/ca and the services' identity
folders STATE/svids/NAME/.
Every step runs the real command (mesh-ca / ca-issue from .venv), exactly as a person would
type it. Exits non-zero as soon as a step fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ["auth", "gateway", "orders", "inventory", "payments", "reporting"]
BIN = Path(sys.executable).parent


def run(*argv: str) -> None:
    shown = " ".join(argv)
    print(f"\n$ {shown}", flush=True)
    result = subprocess.run([str(BIN / argv[0]), *argv[1:]], check=False)
    if result.returncode != 0:
        print(f"demo: '{shown}' failed with exit status {result.returncode}", file=sys.stderr)
        sys.exit(result.returncode)


def main() -> int:
    ap = argparse.ArgumentParser(description="The CA part of the meshid demo.")
    ap.add_argument("--state", default=str(ROOT / "demo-state"), help="state folder")
    state = Path(ap.parse_args().state).resolve()
    state.mkdir(parents=True, exist_ok=True)
    # Commands run from the state folder so they, and what they print, use short paths.
    os.chdir(state)
    ca_dir, svids = "ca", "svids"
    # Only the demo's own CA and SVID folders are reset; nothing else in the state folder.
    for folder in (ca_dir, svids):
        shutil.rmtree(folder, ignore_errors=True)
    print(f"demo state: {state}")

    print("== 1. a fresh certificate authority (root + intermediate, ECDSA P-256)")
    run("mesh-ca", "init", "--ca-dir", ca_dir, "--trust-domain", "mesh.internal",
        "--intermediate")

    print("\n== 2. one X.509-SVID per service, in one transaction")
    run("ca-issue", *SERVICES, "--ca-dir", ca_dir, "--out", svids, "--ttl", "24h")

    print("\n== 3. what each service received (summary + lint against the X.509-SVID rules)")
    for name in SERVICES:
        run("mesh-ca", "inspect", "--leaf", f"{svids}/{name}/svid.pem")

    print("\n== 4. the registry")
    run("mesh-ca", "list", "--ca-dir", ca_dir)

    print(f"\nidentity folders: {state / svids}/NAME/{{svid,svid_key,svid_bundle}}.pem")
    print(f"trust bundle:     {state / ca_dir}/bundle.spiffe.json (crl.pem beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
