"""The launcher end to end, as a subprocess: every step's outcome, checked twice (the launcher's
own summary and the services' own records), and no process left behind."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mesh.demo.orchestration.stage import processes_mentioning

pytestmark = pytest.mark.slow

EXPECTED_STEPS = [
    "0 CA service and agents",
    "0 six services healthy",
    "1 alice logs in at auth's edge",
    "1 alice places an order",
    "1 each hop verified the chain",
    "1 two-line order (client stream)",
    "1 list orders (server stream)",
    "1 reporting job, app token",
    "2a stolen token replayed",
    "2b inventory called, orders skipped",
    "2c user without the scope",
    "2d expired user token",
    "2e no client certificate",
    "2f lifted user token replayed",
    "2g captured proof replayed",
    "3 login while auth is down",
    "3 orders while auth is down",
    "4 every SVID renewed by its agent",
    "4 calls during the renewals",
    "5 reporting refused after the eviction",
    "5 node-a's services unaffected",
    "6 clean shutdown",
]
RENEWED = ("gateway", "orders", "inventory", "payments", "reporting")
TD = "spiffe://mesh.internal/svc/"


def _launcher(state: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mesh.demo.orchestration.launcher", "--state", str(state), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _audit(state: Path, service: str) -> list[dict[str, Any]]:
    path = state / "logs" / f"{service}.audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _ca(state: Path, *args: str) -> str:
    return subprocess.run([str(Path(sys.executable).parent / "mesh-ca"), *args, "--ca-dir",
                           str(state / "ca")], capture_output=True, text=True,
                          check=True).stdout


def _assert_nothing_left(state: Path) -> None:
    deadline = time.monotonic() + 10
    while processes_mentioning(state) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_mentioning(state) == []
    pids = json.loads((state / "pids.json").read_text())["children"]
    assert set(pids) == {"auth", "gateway", "orders", "inventory", "payments", "reporting",
                         "ca", "agent-node-a", "agent-node-b"}
    for child in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(child["pid"], 0)


def test_the_whole_story(tmp_path: Path) -> None:
    state = tmp_path / "demo-state"
    run = subprocess.run(_launcher(state), cwd=tmp_path, env=_env(), capture_output=True,
                         text=True, timeout=100, check=False)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]

    summary = json.loads((state / "summary.json").read_text())
    steps = summary["steps"]
    assert [s["step"] for s in steps] == EXPECTED_STEPS
    assert summary["ok"] is True and all(s["ok"] for s in steps)
    observed = {s["step"]: s["observed"] for s in steps}
    assert observed["2a stolen token replayed"] == "UNAUTHENTICATED PEER_MISMATCH at inventory"
    assert observed["2b inventory called, orders skipped"] == (
        "PERMISSION_DENIED CHAIN_NOT_ALLOWED at inventory")
    assert observed["2c user without the scope"] == "PERMISSION_DENIED SCOPE_MISSING at inventory"
    assert observed["2d expired user token"] == "UNAUTHENTICATED TOKEN_EXPIRED at gateway"
    assert observed["2e no client certificate"] == "UNAVAILABLE"
    assert observed["2f lifted user token replayed"] == (
        "UNAUTHENTICATED DPOP_KEY_MISMATCH at gateway")
    assert observed["2g captured proof replayed"] == "UNAUTHENTICATED DPOP_REPLAYED at gateway"
    assert "sent as it is, without a proof: UNAUTHENTICATED DPOP_MISSING at gateway" in run.stdout
    assert observed["4 every SVID renewed by its agent"].startswith("5 of 5 renewed")
    assert observed["4 calls during the renewals"].endswith(" succeeded, 0 failed")
    assert observed["5 reporting refused after the eviction"].startswith(
        "reporting -> inventory Stock: deny CERT_REVOKED")

    # The chain each hop printed comes from the services' audit logs.
    out = run.stdout
    assert "what each hop verified, from its own audit log:" in out
    for hop in ("gateway    PlaceOrder", "orders     CreateOrder", "inventory  Reserve",
                "payments   Charge"):
        assert hop in out

    # Independent evidence, from what the services themselves recorded.
    inventory = _audit(state, "inventory")
    assert any(line["decision"] == "deny" and line["reason"] == "PEER_MISMATCH"
               and line["peer"] == TD + "payments" for line in inventory)
    assert any(line["decision"] == "deny" and line["reason"] == "CHAIN_NOT_ALLOWED"
               and line["chain"] == [TD + "gateway"] and line["user"] == "alice"
               for line in inventory)
    assert any(line["decision"] == "deny" and line["reason"] == "SCOPE_MISSING"
               and line["user"] == "bob" and line["chain"] == [TD + "gateway", TD + "orders"]
               for line in inventory)
    assert any(line["method"].endswith("/Stock") and line["decision"] == "allow"
               and line["user"] is None and line["peer"] == TD + "reporting"
               for line in inventory)
    gateway = _audit(state, "gateway")
    assert any(line["decision"] == "deny" and line["reason"] == "TOKEN_EXPIRED"
               for line in gateway)
    # the edge refused alice's own token twice: lifted by orders, and with a replayed proof
    for reason in ("DPOP_MISSING", "DPOP_KEY_MISMATCH", "DPOP_REPLAYED"):
        assert any(line["decision"] == "deny" and line["reason"] == reason
                   and line["user"] == "alice" and line["peer"] is None for line in gateway)
    assert not [line for line in _audit(state, "payments") if line["user"] == "bob"]
    assert all(line["decision"] == "allow" for line in _audit(state, "payments"))
    assert not any("eyJ" in line for line in
                   (state / "logs" / "inventory.audit.jsonl").read_text().splitlines())

    with sqlite3.connect(state / "data" / "orders" / "orders.sqlite") as db:
        users = dict(db.execute("SELECT user, COUNT(*) FROM orders GROUP BY user").fetchall())
    assert set(users) == {"alice"} and users["alice"] >= 6

    # reporting, once node-b was evicted: refused for its revoked certificate, named in the
    # audit as presented, not as an established peer
    assert any(line["decision"] == "deny" and line["reason"] == "CERT_REVOKED"
               and line["peer"] is None and line["presented"] == TD + "reporting"
               for line in inventory)

    # Every SVID came from an agent through the CA service's registry, and was renewed there.
    certs = json.loads(_ca(state, "list", "--json"))["certificates"]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for cert in certs:
        by_name.setdefault(cert["name"], []).append(cert)
    for name in RENEWED:
        assert len(by_name[name]) >= 2, name  # the first SVID and at least one renewal
    assert {c["node"] for name in RENEWED for c in by_name[name]} == {"node-a", "node-b"}
    assert all(c["node"] == "node-b" for c in by_name["reporting"])
    revoked = [c for c in by_name["reporting"] if c["status"] == "revoked"]
    assert revoked, by_name["reporting"]
    nodes = json.loads(_ca(state, "nodes", "--json"))["nodes"]
    assert {n["node"]: n["evicted_at"] is not None for n in nodes} == {
        "node-a": False, "node-b": True}

    _assert_nothing_left(state)


def test_keep_running_then_call_by_hand_then_ctrl_c(tmp_path: Path) -> None:
    state = tmp_path / "demo-state"
    proc = subprocess.Popen(_launcher(state, "--keep-running"), cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops every service." in line:
                break
        else:
            pytest.fail("the launcher ended before the mesh was up:\n" + "".join(lines[-60:]))
        assert "== The mesh is up" in "".join(lines)

        def call(*args: str) -> subprocess.CompletedProcess[str]:
            # `mesh demo call`, through the mesh command's own entry point
            return subprocess.run([sys.executable, "-m", "mesh.cli", "demo", "call", "--state",
                                   str(state), *args], capture_output=True, text=True,
                                  timeout=60, check=False)

        order = call("--user", "alice", "order", "grinder=1", "mug=2")
        assert order.returncode == 0, order.stderr
        assert "for alice: 1 x grinder, 2 x mug, 63.00 EUR" in order.stdout
        refused = call("--user", "bob", "order", "mug=1")
        assert refused.returncode == 1
        assert "PERMISSION_DENIED SCOPE_MISSING at inventory" in refused.stderr
        wrong = call("--user", "alice", "--password", "not-it", "list")
        assert wrong.returncode == 1
        assert "UNAUTHENTICATED INVALID_CREDENTIALS at auth" in wrong.stderr
        listing = call("--user", "alice", "list", "--limit", "1")
        assert listing.returncode == 0 and listing.stdout.count("\n") == 1
        assert "1 x grinder, 2 x mug" in listing.stdout
        as_json = call("--json", "--user", "alice", "order", "sencha=3")
        assert as_json.returncode == 0, as_json.stderr
        order = json.loads(as_json.stdout)["order"]
        assert order["user"] == "alice" and order["lines"] == [{"sku": "sencha", "quantity": 3}]
        refused = call("--json", "--user", "bob", "order", "mug=1")
        assert refused.returncode == 1
        assert json.loads(refused.stdout)["refused"]["reason"] == "SCOPE_MISSING"

        # A second launcher on the same folder refuses, names the holder, and leaves the
        # running mesh alone.
        second = subprocess.run(_launcher(state), cwd=tmp_path, env=_env(), capture_output=True,
                                text=True, timeout=60, check=False)
        assert second.returncode == 2, second.stdout[-2000:] + second.stderr
        assert f"in use by the demo launcher pid {proc.pid}" in second.stderr
        assert second.stderr.count("\n") == 1 and second.stdout == ""
        assert call("--user", "alice", "list", "--limit", "1").returncode == 0

        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(lines[-40:]) + rest
    assert "6 clean shutdown: " in rest and ", 0 left" in rest
    _assert_nothing_left(state)
    # Stopped: nothing tells a caller the mesh is still there.
    assert not (state / "endpoints.json").exists()
    after = call("--user", "alice", "list")
    assert after.returncode == 2
    assert after.stderr.startswith(f"mesh demo call: error: no demo is running in {state}")


def test_refuses_a_state_folder_it_did_not_make(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    run = subprocess.run(_launcher(precious), cwd=tmp_path, capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 2
    assert "was not made by the demo" in run.stderr
    assert [p.name for p in precious.iterdir()] == ["notes.txt"]
