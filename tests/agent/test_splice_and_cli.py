"""The SO_PEERCRED accept loop under load and abuse, `mesh agent status`, the CLI's usage
errors, and `kill -9` of an agent in the middle of a renewal."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from spiffe._proto import workload_pb2, workload_pb2_grpc

from mesh.agent.folder import KILL_ENV
from mesh.identity.bundle import FileBundleSource
from mesh.identity.svid import X509SvidFolder
from mesh.identity.workload_api import WorkloadApiSource

from .conftest import short_dir, wait_for

MD = (("workload.spiffe.io", "true"),)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _fetch(sock: Path) -> int:
    with grpc.insecure_channel(f"unix:{sock}") as ch:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(ch)
        return len(next(stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=MD,
                                           timeout=20)).svids)


def test_many_concurrent_clients_then_no_leak(ca_service, agent_runner):
    ca_service.register("node-a", "orders", uid=0, ttl=3600)
    t = agent_runner()
    agent = t.wait_ready()
    wait_for(lambda: "orders" in agent.store.svids, what="orders")
    _fetch(t.config.socket)  # warm up: view servers, thread pools
    before = _fds()
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda _: _fetch(t.config.socket), range(200)))
    assert results == [1] * 200
    wait_for(lambda: t.call(lambda: agent._splicer.active) == 0, what="splices closed")
    # every spliced connection closed both its sockets (the process shares its fd table with
    # the agent thread): back to where we started, give or take gRPC's own pollers
    assert _fds() <= before + 4


def test_half_close_garbage_and_abrupt_close_end_cleanly(ca_service, agent_runner):
    t = agent_runner()
    agent = t.wait_ready()
    for mode in ("half-close", "garbage", "reset"):
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(t.config.socket))
        if mode == "half-close":
            s.shutdown(socket.SHUT_WR)
            s.settimeout(10)
            assert s.recv(1 << 16) is not None  # the server side ends the connection
        elif mode == "garbage":
            s.sendall(b"GET / HTTP/1.1\r\n\r\n" * 100)
            s.settimeout(10)
            while s.recv(1 << 16):
                pass
        else:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    wait_for(lambda: t.call(lambda: agent._splicer.active) == 0, what="splices closed")


def test_connection_limit_refuses_beyond_it(ca_service, agent_runner):
    t = agent_runner(max_connections=3)
    agent = t.wait_ready()
    held = []
    for _ in range(3):
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(t.config.socket))
        held.append(s)
    wait_for(lambda: t.call(lambda: agent._splicer.active) == 3, what="3 open")
    extra = socket.socket(socket.AF_UNIX)
    extra.connect(str(t.config.socket))
    extra.settimeout(10)
    assert extra.recv(10) == b""  # closed at accept
    extra.close()
    for s in held:
        s.close()
    wait_for(lambda: t.call(lambda: agent._splicer.active) == 0, what="closed")
    assert _fetch_count_ok(t.config.socket)


def _fetch_count_ok(sock: Path) -> bool:
    with grpc.insecure_channel(f"unix:{sock}") as ch:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(ch)
        try:
            next(stub.FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=MD,
                                       timeout=10))
        except grpc.RpcError as err:
            assert err.code() is grpc.StatusCode.PERMISSION_DENIED, err  # served, not refused
            return True
        return True


def _mesh(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh.cli", *args], capture_output=True,
                          text=True, timeout=60, check=False, **kw)


def test_status_by_socket_and_by_state(ca_service, agent_runner):
    ca_service.register("node-a", "orders", uid=0, ttl=3600)
    t = agent_runner()
    agent = t.wait_ready()
    wait_for(lambda: "orders" in agent.store.svids, what="orders")
    serial = agent.store.svids["orders"].serial
    out = _mesh("agent", "status", "--socket", str(t.config.socket))
    assert out.returncode == 0, out.stderr
    assert "orders" in out.stdout and serial in out.stdout and "agent" in out.stdout
    doc = json.loads(_mesh("agent", "status", "--socket", str(t.config.socket), "--json").stdout)
    [svc] = doc["services"]
    assert svc["serial"] == serial and svc["next_renewal"] and svc["not_after"]
    wait_for(lambda: json.loads(_mesh("agent", "status", "--state", str(t.config.state),
                                      "--json").stdout)["services"], what="status.json")


def test_cli_usage_errors_exit_2_with_one_sentence(tmp_path):
    cases = [
        ("agent", "--node", "n"),
        ("agent", "--ca", "127.0.0.1:1", "--ca-fingerprint", "zz", "--node", "n", "--state",
         str(tmp_path / "s"), "--socket", str(tmp_path / "a.sock")),
        ("agent", "--ca", "127.0.0.1:1", "--ca-fingerprint", "ab" * 32, "--node", "Bad_Name",
         "--state", str(tmp_path / "s"), "--socket", str(tmp_path / "a.sock")),
        ("agent", "--ca", "127.0.0.1:1", "--ca-fingerprint", "ab" * 32, "--node", "n",
         "--state", str(tmp_path / "s"), "--socket", str(tmp_path / "a.sock")),  # no token
        ("agent", "status", "--state", str(tmp_path / "nothing")),
        ("agent", "status", "--socket", str(tmp_path / "nothing.sock")),
    ]
    for args in cases:
        out = _mesh(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_kill_9_mid_renewal_leaves_consistent_files(ca_service, tmp_path):
    """A real `mesh agent` process dies (SIGKILL) half-way through writing an SVID folder (the
    fifth key it writes: after the first issuance, amid the renewals and the trust updates
    that follow); every folder it keeps still loads as a matching set, and a restart (no
    token) goes on renewing."""
    ca_service.register("node-a", "orders", uid=0, ttl=4)
    base = short_dir("k9-")
    out = base / "orders"
    argv = ["agent", "--ca", f"127.0.0.1:{ca_service.agent_port}",
            "--ca-attest", f"127.0.0.1:{ca_service.attest_port}",
            "--ca-fingerprint", ca_service.fingerprint, "--node", "node-a",
            "--state", str(base / "state"), "--socket", str(base / "a.sock"),
            "--write", f"orders={out}", "--sync-interval", "0.5", "--retry-max", "0.5"]
    env = {**os.environ, KILL_ENV: "write:svid_key.pem@5",
           "MESH_AGENT_JOIN_TOKEN": ca_service.join_token("node-a")}
    proc = subprocess.run([sys.executable, "-m", "mesh.cli", *argv], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    for folder in (out, base / "state" / "agent"):
        svid = X509SvidFolder(folder).current()
        FileBundleSource(folder / "bundle.spiffe.json", folder / "crl.pem")
        assert svid.spiffe_id
    # a service's folder in the state holds its SVID and key (the trust state is in agent/)
    assert X509SvidFolder(base / "state" / "svids" / "orders").current().spiffe_id
    env.pop(KILL_ENV)
    env.pop("MESH_AGENT_JOIN_TOKEN")
    agent = subprocess.Popen([sys.executable, "-m", "mesh.cli", *argv], env=env,
                             stderr=subprocess.PIPE, text=True)
    try:
        first = (out / "svid.pem").read_bytes()
        wait_for(lambda: (out / "svid.pem").read_bytes() != first, timeout=20,
                 what="a renewal after the restart")
        assert X509SvidFolder(out).current().spiffe_id  # valid now, matching set
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=20)
    assert agent.returncode == 0, err
    assert "restarted from" in err
    assert len(ca_service.issued("node-a", "agent")) == 1  # attested once, never again


def test_a_socket_path_longer_than_sun_path_works_for_agent_source_and_status(
        ca_service, agent_runner, tmp_path):
    """A state folder deep in a working tree: the agent binds, and meshid's Workload API source
    and `mesh agent status` connect, through the folder's descriptor (mesh.identity.unixsock)."""
    folder = tmp_path / ("deep-" * 12)
    folder.mkdir()
    sock = folder / "agent.sock"
    assert len(str(sock)) > 107
    ca_service.register("node-a", "orders", uid=os.geteuid(), ttl=3600)
    t = agent_runner(sock=sock)
    agent = t.wait_ready()
    wait_for(lambda: "orders" in agent.store.svids, what="orders")
    assert sock.is_socket()
    src = WorkloadApiSource.connect(sock, timeout=10)
    try:
        assert str(src.current().spiffe_id) == "spiffe://mesh.internal/svc/orders"
    finally:
        src.stop()
    out = _mesh("agent", "status", "--socket", str(sock))
    assert out.returncode == 0, out.stderr
    assert agent.store.svids["orders"].serial in out.stdout
