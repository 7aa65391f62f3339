"""Crash safety, proven by killing the real ``mesh-ca serve`` / ``mesh-ca evict`` process at each
step (``MESH_CA_SERVICE_CRASH_AT``, see ca/service/crash.py: ``os._exit``, no cleanup).

After each crash the registry, the published files and the join token agree, and the node can
still get in: before the commit nothing happened (the token is unused); after it, the token is
spent but the agent that used it gets its certificate again by retrying with the same key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import ca_service_client as cc
import grpc
import pytest
from cryptography import x509

from ca.authority import CertificateAuthority
from ca.service import admin
from ca.service.crash import ENV, EXIT_CODE

MESH_CA = Path(sys.executable).parent / "mesh-ca"


class Served:
    def __init__(self, ca_dir: Path, crash_at: str | None) -> None:
        env = {k: v for k, v in os.environ.items() if k != ENV}
        if crash_at:
            env[ENV] = crash_at
        self.proc = subprocess.Popen(
            [str(MESH_CA), "serve", "--ca-dir", str(ca_dir), "--listen", "127.0.0.1:0",
             "--ready-file", str(ca_dir.parent / "run" / "ready.json")],  # folder made
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        assert self.proc.stdout is not None
        lines = [self.proc.stdout.readline() for _ in range(4)]  # returns once it serves
        assert "root fingerprint" in lines[-1], (lines, self.proc.stderr)
        ready = json.loads((ca_dir.parent / "run" / "ready.json").read_text())
        roots = cc.roots_by_fingerprint(ready["attest_address"], ready["root_fingerprint"],
                                        ready["server_name"])
        self.endpoint = cc.CAEndpoint(ready["agent_address"], ready["attest_address"],
                                      ready["server_name"], roots)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def ca_dir(ca_factory) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    ca = ca_factory(intermediate=True)
    folder = ca.ca_dir
    ca.close()
    yield folder


@pytest.fixture
def serve() -> Iterator[type[Served]]:
    made: list[Served] = []

    class Tracked(Served):
        def __init__(self, ca_dir: Path, crash_at: str | None = None) -> None:
            super().__init__(ca_dir, crash_at)
            made.append(self)

    yield Tracked
    for s in made:
        s.stop()


def _consistent(ca_dir: Path) -> dict[str, object]:
    """Registry, bundle and CRL agree; returns what the tests look at."""
    with CertificateAuthority.open(ca_dir) as ca:
        records = ca.records()
    bundle = json.loads((ca_dir / "bundle.spiffe.json").read_text())
    kids = {k["kid"] for k in bundle["keys"] if k["use"] == "jwt-svid"}
    assert kids == {r.thumbprint for r in records if r.status == "valid" and "/svc/" in r.spiffe_id}
    crl = x509.load_pem_x509_crl((ca_dir / "crl.pem").read_bytes())
    assert {e.serial_number for e in crl} == {r.serial for r in records if r.status == "revoked"}
    assert not list(ca_dir.glob(".*.tmp"))
    via = admin.issued_through(ca_dir)
    assert set(via) <= {r.serial for r in records}
    agents = [r for r in records if r.name.startswith("agent/")]
    assert all(r.serial in via for r in agents)
    return {"agents": agents}


def _token(ca_dir: Path, node: str) -> str:
    with CertificateAuthority.open(ca_dir) as ca:
        return admin.make_join_token(ca, node).token


@pytest.mark.slow
@pytest.mark.parametrize("step", ["attest.checked", "attest.before-commit"])
def test_crash_before_the_commit_leaves_the_token_unused(ca_dir, serve, step) -> None:  # type: ignore[no-untyped-def]
    token = _token(ca_dir, "node-1")
    server = serve(ca_dir, crash_at=step)
    with pytest.raises(grpc.RpcError) as caught:
        server.endpoint.attest("node-1", token, cc.new_key())
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.proc.wait(timeout=30) == EXIT_CODE
    assert _consistent(ca_dir)["agents"] == []
    # after a restart the same token admits the node
    again = serve(ca_dir)
    resp = again.endpoint.attest("node-1", token, cc.new_key())
    assert resp.agent_svid.spiffe_id == "spiffe://mesh.internal/agent/node-1"
    assert len(_consistent(ca_dir)["agents"]) == 1  # type: ignore[arg-type]


@pytest.mark.slow
def test_crash_after_the_commit_lets_the_same_key_retry(ca_dir, serve, refused) -> None:  # type: ignore[no-untyped-def]
    token, key = _token(ca_dir, "node-1"), cc.new_key()
    server = serve(ca_dir, crash_at="attest.after-commit")
    with pytest.raises(grpc.RpcError) as caught:
        server.endpoint.attest("node-1", token, key)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # the answer never came
    assert server.proc.wait(timeout=30) == EXIT_CODE
    agents = _consistent(ca_dir)["agents"]
    assert len(agents) == 1  # type: ignore[arg-type]
    again = serve(ca_dir)
    # another key cannot use the spent token ...
    refused(lambda: again.endpoint.attest("node-1", token, cc.new_key()),
            grpc.StatusCode.UNAUTHENTICATED, "JOIN_TOKEN_USED")
    # ... the key that spent it gets the certificate the crash swallowed, and it works
    resp = again.endpoint.attest("node-1", token, key)
    assert int(resp.agent_svid.serial, 16) == agents[0].serial  # type: ignore[index]
    with again.endpoint.agent(key, resp.agent_svid.cert_chain_pem) as agent:
        assert list(agent.registrations().registrations) == []
    assert len(_consistent(ca_dir)["agents"]) == 1  # type: ignore[arg-type]


@pytest.mark.slow
def test_crash_inside_an_eviction_changes_nothing(ca_dir, serve, snapshot) -> None:  # type: ignore[no-untyped-def]
    server = serve(ca_dir)
    key = cc.new_key()
    resp = server.endpoint.attest("node-1", _token(ca_dir, "node-1"), key)
    before = snapshot(ca_dir)
    env = {**os.environ, ENV: "evict.before-commit"}
    crashed = subprocess.run([str(MESH_CA), "evict", "node-1", "--ca-dir", str(ca_dir)],
                             env=env, capture_output=True, text=True, check=False)
    assert crashed.returncode == EXIT_CODE
    assert snapshot(ca_dir) == before
    _consistent(ca_dir)
    with server.endpoint.agent(key, resp.agent_svid.cert_chain_pem) as agent:
        agent.registrations()  # still in good standing
        done = subprocess.run([str(MESH_CA), "evict", "node-1", "--ca-dir", str(ca_dir)],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        with pytest.raises(grpc.RpcError) as caught:
            agent.registrations()
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    _consistent(ca_dir)
