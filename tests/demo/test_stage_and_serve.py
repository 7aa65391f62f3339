"""The state folder guard and a service's start-up checks (each refuses with the rule named)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mesh.demo.errors import DemoConfigError, UsersFileError
from mesh.demo.orchestration.stage import MARKER, prepare_state, processes_mentioning
from mesh.demo.services.serve import build, parser
from mesh.policy import PolicyFileError


def test_fresh_state_folder_is_made_and_marked(tmp_path: Path) -> None:
    state = tmp_path / "demo-state"
    prepare_state(state)
    assert [p.name for p in state.iterdir()] == [MARKER]
    (state / "logs").mkdir()
    (state / "logs" / "x.log").write_text("old run")
    prepare_state(state)
    assert [p.name for p in state.iterdir()] == [MARKER]


def test_a_ca_only_demo_folder_is_reused(tmp_path: Path) -> None:
    state = tmp_path / "demo-state"
    (state / "ca").mkdir(parents=True)
    (state / "svids").mkdir()
    prepare_state(state)
    assert [p.name for p in state.iterdir()] == [MARKER]


@pytest.mark.parametrize("foreign", ["notes.txt", "src"])
def test_a_foreign_folder_is_left_alone(tmp_path: Path, foreign: str) -> None:
    state = tmp_path / "elsewhere"
    state.mkdir()
    (state / "ca").mkdir()
    (state / foreign).write_text("mine")
    with pytest.raises(DemoConfigError, match="not made by the demo"):
        prepare_state(state)
    assert sorted(p.name for p in state.iterdir()) == sorted(["ca", foreign])
    file_state = tmp_path / "a-file"
    file_state.write_text("x")
    with pytest.raises(DemoConfigError, match="not a folder"):
        prepare_state(file_state)


@pytest.fixture
def orders_identity(mesh_ca, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    folder = tmp_path / "ids" / "orders"
    mesh_ca.issue("orders").write_to(folder)
    return folder


def _args(service: str, identity: Path, bundle: Path, *extra: str):  # type: ignore[no-untyped-def]
    return parser().parse_args([service, "--identity", str(identity), "--listen",
                                "127.0.0.1:0", "--bundle", str(bundle),
                                "--crl", str(bundle.with_name("crl.pem")), *extra])


@pytest.mark.parametrize(
    ("service", "extra", "message"),
    [
        ("orders", [], "orders calls inventory, payments: pass --peer"),
        ("orders", ["--peer", "inventory"], "must read NAME=HOST:PORT"),
        ("gateway", ["--peer", "orders=127.0.0.1:1"], "pass --edge-listen"),
        ("payments", ["--edge-listen", "127.0.0.1:0"], "has no edge port"),
        ("payments", [], "is spiffe://mesh.internal/svc/orders, not the payments service"),
    ],
)
def test_start_up_refusals(mesh_ca, orders_identity: Path, service: str,  # type: ignore[no-untyped-def]
                           extra: list[str], message: str) -> None:
    with pytest.raises(DemoConfigError, match=message):
        build(_args(service, orders_identity, mesh_ca.bundle_path, *extra))


def test_identity_from_a_folder_or_the_workload_api_never_both(  # type: ignore[no-untyped-def]
        mesh_ca, orders_identity: Path, tmp_path: Path, capsys) -> None:
    sock = tmp_path / "agent.sock"
    with pytest.raises(DemoConfigError, match="the Workload API sends the bundle and the CRL"):
        build(parser().parse_args(["inventory", "--workload-api", str(sock), "--listen",
                                   "127.0.0.1:0", "--bundle", str(mesh_ca.bundle_path)]))
    for argv in (["inventory", "--listen", "127.0.0.1:0"],
                 ["inventory", "--identity", str(orders_identity), "--workload-api", str(sock),
                  "--listen", "127.0.0.1:0"]):
        with pytest.raises(SystemExit) as exited:
            parser().parse_args(argv)
        assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "one of the arguments --identity --workload-api is required" in err
    assert "not allowed with argument --identity" in err


def test_a_folder_identity_finds_its_bundle_and_crl_inside(  # type: ignore[no-untyped-def]
        mesh_ca, tmp_path: Path) -> None:
    """What `mesh agent --write` keeps: the bundle and CRL beside the SVID, no --bundle."""
    folder = tmp_path / "ids" / "inventory"
    mesh_ca.issue("inventory").write_to(folder)
    (folder / "bundle.spiffe.json").write_bytes(mesh_ca.bundle_path.read_bytes())
    (folder / "crl.pem").write_bytes(mesh_ca.crl_path.read_bytes())
    running = build(parser().parse_args(["inventory", "--identity", str(folder), "--listen",
                                         "127.0.0.1:0"]))
    try:
        assert running.spiffe_id == "spiffe://mesh.internal/svc/inventory"
        assert running.ports["listen"] > 0
    finally:
        running.close()


def test_auth_needs_a_readable_users_file(mesh_ca, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "ids" / "auth"
    mesh_ca.issue("auth").write_to(folder)
    with pytest.raises(DemoConfigError, match="auth needs --users"):
        build(_args("auth", folder, mesh_ca.bundle_path, "--edge-listen", "127.0.0.1:0"))
    with pytest.raises(UsersFileError, match="cannot read the users file"):
        build(_args("auth", folder, mesh_ca.bundle_path, "--edge-listen", "127.0.0.1:0",
                    "--users", str(tmp_path / "absent.json")))


def test_a_bad_policy_file_stops_the_service_with_its_line(mesh_ca, orders_identity: Path,  # type: ignore[no-untyped-def]
                                                         tmp_path: Path) -> None:
    policy = tmp_path / "orders.toml"
    policy.write_text('[[rule]]\nmethods = ["/mesh.demo.v1.OrdersService/*"]\n'
                      'peers = ["gateway"]\nscopes = "orders:write"\n')
    with pytest.raises(PolicyFileError, match=r"orders.toml:4: scopes .* must be a list"):
        build(_args("orders", orders_identity, mesh_ca.bundle_path, "--policy", str(policy),
                    "--peer", "inventory=127.0.0.1:1", "--peer", "payments=127.0.0.1:1"))
    run = subprocess.run(
        [sys.executable, "-m", "mesh.demo", "orders", "--identity", str(orders_identity),
         "--listen", "127.0.0.1:0", "--bundle", str(mesh_ca.bundle_path),
         "--crl", str(mesh_ca.crl_path), "--policy",
         str(policy), "--peer", "inventory=127.0.0.1:1", "--peer", "payments=127.0.0.1:1"],
        capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2
    assert "orders: cannot start: " in run.stderr and "orders.toml:4" in run.stderr


def test_leftover_processes_are_found_by_what_they_name_inside_the_state(tmp_path: Path) -> None:
    """A previous run's services, agents and CA service are found (and only they): the
    launcher, whose command line names the state folder itself, is not."""
    state = (tmp_path / "state").resolve()
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    argv = {
        "service": ["--identity", f"{state}/identities/orders"],
        "agent": ["--write", f"orders={state}/identities/orders"],
        "socket": ["--workload-api", f"{state}/nodes/node-b/agent.sock"],
        "ca": ["--ca-dir", f"{state}/ca"],
        "launcher": ["--state", str(state)],
        "look-alike": ["--ca-dir", f"{state}/cabbage"],
    }
    procs = {name: subprocess.Popen([*sleeper, *args]) for name, args in argv.items()}
    try:
        found = set(processes_mentioning(state))
        assert {name for name, p in procs.items() if p.pid in found} == {
            "service", "agent", "socket", "ca"}
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
    assert not set(processes_mentioning(state)) & {p.pid for p in procs.values()}
