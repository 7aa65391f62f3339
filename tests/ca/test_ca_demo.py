"""scripts/ca_demo.py (the CA-only demo) works end to end in a scratch state folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from ca.lint import lint, violations

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ca_demo.py"
SERVICES = ["auth", "gateway", "orders", "inventory", "payments", "reporting"]


@pytest.mark.slow
def test_ca_demo_issues_every_service(tmp_path: Path) -> None:
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "stale").write_text("left over from an earlier run")
    (tmp_path / "keep.txt").write_text("not the demo's")
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--state", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("lint: conforms to the X.509-SVID rules") == len(SERVICES)
    table = res.stdout.split("== 4. the registry", 1)[1]
    for name in SERVICES:
        assert f"  {name}  " in table
        leaf = x509.load_pem_x509_certificates(
            (tmp_path / "svids" / name / "svid.pem").read_bytes()
        )[0]
        assert violations(lint(leaf)) == []
    assert (tmp_path / "keep.txt").exists()  # only its own folders are reset
    assert not (tmp_path / "ca" / "stale").exists()


def test_ca_demo_fails_loudly(tmp_path: Path) -> None:
    # A file where the CA folder goes: `mesh-ca init` fails and the script says so.
    (tmp_path / "ca").write_text("a file, not a folder")
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--state", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert res.returncode == 2
    assert "ca exists and is not a folder" in res.stderr
    assert "demo: 'mesh-ca init --ca-dir ca" in res.stderr
    assert "failed with exit status 2" in res.stderr
    assert "== 2." not in res.stdout
