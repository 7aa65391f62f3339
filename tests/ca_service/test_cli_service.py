"""The operator's commands: join-token, register, unregister, nodes, evict, serve; bad input
exits 2 with one sentence and changes nothing."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import ca_service_client as cc
import pytest
from cryptography import x509

from ca.cli import issue_main
from ca.cli import main as mesh_ca
from ca.service import admin
from ca.service.jointokens import PREFIX

MESH_CA = Path(sys.executable).parent / "mesh-ca"


def _run(capsys, *argv: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    code = mesh_ca(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_join_token_prints_the_token_alone_and_stores_only_its_hash(mesh_ca_dir, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, err = _run(capsys, "join-token", "node-1", "--ttl", "5m", "--ca-dir", mesh_ca_dir)
    assert code == 0
    token = out.strip()
    assert token.startswith(PREFIX) and "\n" not in token
    assert "usable once" in err and "fingerprint" in err and token not in err
    for f in Path(mesh_ca_dir).glob("registry.db*"):
        assert token.encode() not in f.read_bytes()
        assert token[len(PREFIX):].encode() not in f.read_bytes()
    code, out, _ = _run(capsys, "nodes", "--json", "--ca-dir", mesh_ca_dir)
    node = json.loads(out)["nodes"][0]
    assert (node["node"], node["attested"], node["evicted"]) == ("node-1", False, False)


def test_register_unregister_nodes(mesh_ca_dir, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = _run(capsys, "register", "orders", "--node", "node-1", "--uid", "1001",
                        "--ttl", "30m", "--ca-dir", mesh_ca_dir)
    assert code == 0
    assert out.strip() == ("registered orders (spiffe://mesh.internal/svc/orders) on node "
                           "node-1: run by uid 1001, SVIDs valid 30m")
    _run(capsys, "register", "payments", "--node", "node-1", "--uid", "1002",
         "--ca-dir", mesh_ca_dir)
    code, out, _ = _run(capsys, "nodes", "--ca-dir", mesh_ca_dir)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["NODE", "ATTESTED"]
    assert lines[1].split() == ["node-1", "no", "-", "-", "-", "orders:1001:30m",
                                "payments:1002:1h"]
    code, out, _ = _run(capsys, "unregister", "orders", "--node", "node-1",
                        "--ca-dir", mesh_ca_dir)
    assert code == 0 and "stay valid until they expire" in out
    code, out, _ = _run(capsys, "nodes", "--json", "--ca-dir", mesh_ca_dir)
    regs = json.loads(out)["nodes"][0]["registrations"]
    assert regs == [{"service": "payments", "uid": 1002, "ttl_seconds": 3600}]


def test_allow_short_ttl_lowers_the_floor_to_ten_seconds(mesh_ca_dir, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = _run(capsys, "register", "orders", "--node", "node-1", "--uid", "1001",
                        "--ttl", "10s", "--allow-short-ttl", "--ca-dir", mesh_ca_dir)
    assert code == 0 and "SVIDs valid 10s" in out, out
    code, out, _ = _run(capsys, "nodes", "--json", "--ca-dir", mesh_ca_dir)
    assert json.loads(out)["nodes"][0]["registrations"][0]["ttl_seconds"] == 10


def test_nodes_on_a_ca_that_never_served(mesh_ca_dir, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = _run(capsys, "nodes", "--ca-dir", mesh_ca_dir)
    assert code == 0 and "no nodes yet" in out
    assert issue_main(["orders", "--ca-dir", mesh_ca_dir, "--out", mesh_ca_dir + "-out"]) == 0
    capsys.readouterr()
    code, out, _ = _run(capsys, "list", "--ca-dir", mesh_ca_dir)
    assert code == 0 and "NODE" not in out.splitlines()[0]  # no service, no NODE column
    code, out, _ = _run(capsys, "list", "--json", "--ca-dir", mesh_ca_dir)
    row = json.loads(out)["certificates"][0]
    assert (row["kind"], row["node"]) == ("service", None)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["join-token", "Node_1"], "node name 'Node_1' is invalid"),
        (["join-token", "node-1", "--ttl", "8d"], "between 1 second and 7 days"),
        (["join-token", "node-1", "--ttl", "soon"], "lifetime 'soon' is invalid"),
        (["register", "orders", "--node", "node-1", "--uid", "-1"], "uid -1 is invalid"),
        (["register", "ca", "--node", "node-1", "--uid", "1"], "'ca' is reserved"),
        (["register", "orders", "--node", "node-1", "--uid", "1", "--ttl", "30s"],
         "between 1 minute and 30 days (--allow-short-ttl lowers the floor to 10 seconds"),
        (["register", "orders", "--node", "node-1", "--uid", "1", "--ttl", "9s",
          "--allow-short-ttl"], "between 10 seconds and 30 days"),
        (["unregister", "orders", "--node", "node-1"], "not registered to node node-1"),
        (["evict", "node-9"], "knows no node node-9"),
        (["evict", "node-1", "--reason", "bored"], "revocation reason 'bored' is unknown"),
        (["serve", "--listen", "nowhere"], "--listen 'nowhere' is invalid"),
    ],
)
def test_bad_input_exits_2_with_one_sentence_and_changes_nothing(
    mesh_ca_dir, capsys, snapshot, argv, words  # type: ignore[no-untyped-def]
) -> None:
    _run(capsys, "join-token", "node-1", "--ca-dir", mesh_ca_dir)
    before = snapshot(Path(mesh_ca_dir))
    code, _, err = _run(capsys, *argv, "--ca-dir", mesh_ca_dir)
    assert code == 2
    assert words in err, err
    assert err.startswith("mesh-ca: error: ") and err.count("\n") == 1
    assert snapshot(Path(mesh_ca_dir)) == before


def test_evicting_twice_and_joining_after_eviction_are_refused(mesh_ca_dir, capsys) -> None:  # type: ignore[no-untyped-def]
    _run(capsys, "join-token", "node-1", "--ca-dir", mesh_ca_dir)
    code, out, _ = _run(capsys, "evict", "node-1", "--ca-dir", mesh_ca_dir)
    assert code == 0 and "revoked 0 certificate(s)" in out
    for argv in (["evict", "node-1"], ["join-token", "node-1"],
                 ["register", "orders", "--node", "node-1", "--uid", "1"]):
        code, _, err = _run(capsys, *argv, "--ca-dir", mesh_ca_dir)
        assert code == 2 and "evicted" in err


def test_ca_issue_refuses_the_reserved_name(mesh_ca_dir, capsys) -> None:  # type: ignore[no-untyped-def]
    assert issue_main(["ca", "--ca-dir", mesh_ca_dir, "--out", mesh_ca_dir + "-out"]) == 2
    assert "reserved" in capsys.readouterr().err
    assert issue_main(["cab", "--ca-dir", mesh_ca_dir, "--out", mesh_ca_dir + "-out"]) == 0


def test_serve_refuses_a_ca_that_has_a_valid_service_named_ca(ca_factory, capsys) -> None:  # type: ignore[no-untyped-def]
    """A certificate for svc/ca made before the name was reserved could answer agents as the
    CA (they pin ca.svc.<td>); serve refuses until it is revoked."""
    ca = ca_factory()
    td = ca.trust_domain
    _, rec = ca.sign_leaf(td.service("ca"), cc.new_key().public_key(), name="ca",
                          ttl=timedelta(hours=1), dns=[td.service_dns_name("ca")])
    ca.change(lambda reg: reg.insert(rec))
    code, _, err = _run(capsys, "serve", "--listen", "127.0.0.1:0", "--ca-dir", str(ca.ca_dir))
    assert code == 2
    assert f"revoke it first (mesh-ca revoke --serial {rec.serial:032x})" in err
    ca.revoke(serial=rec.serial)
    # control: once revoked, serve starts (run as a process, stopped at once)
    proc = subprocess.Popen([str(MESH_CA), "serve", "--listen", "127.0.0.1:0",
                             "--ca-dir", str(ca.ca_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert "serving the CA of trust domain mesh.internal" in proc.stdout.readline()
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_serve_on_a_port_in_use_exits_2(mesh_ca_dir, capsys) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = _run(capsys, "serve", "--listen", f"127.0.0.1:{port}",
                            "--attest-listen", "127.0.0.1:0", "--ca-dir", mesh_ca_dir)
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port} for the agent port" in err


def test_serving_certificate_renews_without_a_restart(svc) -> None:  # type: ignore[no-untyped-def]
    first = cc.served_chain(svc.endpoint.attest_address, "ca.svc.mesh.internal")[0]
    current = svc.service.identity.current
    assert current is not None and current.serial == first.serial_number
    assert svc.service.identity._renew_at == (current.not_before + current.not_after) / 2
    renewed = svc.service.identity.renew()
    second = cc.served_chain(svc.endpoint.attest_address, "ca.svc.mesh.internal")[0]
    assert second.serial_number == renewed.serial != first.serial_number
    assert second.public_key() != first.public_key()  # a new key each time
    # agents keep working across the switch, on both ports
    agent = svc.agent("node-1")
    assert list(agent.registrations().registrations) == []
    names = {r.name for r in svc.ca.records()}
    assert "ca" in names
    leaf = x509.load_pem_x509_certificates(agent.chain_pem)[0]
    assert admin.issued_through(svc.ca.ca_dir)[leaf.serial_number] == ("node-1", "agent")
    assert admin.issued_through(svc.ca.ca_dir)[second.serial_number] == (None, "ca")


@pytest.fixture
def mesh_ca_dir(ca_factory) -> str:  # type: ignore[no-untyped-def]
    ca = ca_factory()
    ca.close()
    return str(ca.ca_dir)
