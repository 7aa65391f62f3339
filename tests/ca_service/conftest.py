"""Fixtures for the CA service tests: a real CA, the real service on 127.0.0.1 port 0, and a
client that bootstraps trust from the root fingerprint like an agent must.

``svc`` (a :class:`ServiceKit`) starts :class:`ca.service.server.CAService` in-process over a
fresh CA with an intermediate, makes join tokens and registrations with the operator functions
(:mod:`ca.service.admin`), attests agents, and snapshots everything the CA keeps (files and
every registry table) to prove a refusal changed nothing. Test modules import the client
(``ca_service_client``, beside this file) by name; helpers are fixtures (``refused``,
``snapshot``).
"""

from __future__ import annotations

import hashlib
import sqlite3
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from ca.authority import CertificateAuthority
from ca.service import admin
from ca.service.ids import ca_dns_name
from ca.service.server import CAService
from mesh.transport.status import error_info

sys.path.insert(0, str(Path(__file__).parent))
from ca_service_client import (
    AgentSession,
    CAEndpoint,
    new_key,
    roots_by_fingerprint,
)

TABLES = ("certs", "meta", "nodes", "join_tokens", "registrations", "issued_via")


def _snapshot(ca_dir: Path) -> dict[str, str]:
    """Content hash of every published file and of every registry table (WAL-proof)."""
    out: dict[str, str] = {}
    for path in sorted(ca_dir.glob("*")):
        if path.is_file() and not path.name.startswith("registry.db") and path.name != ".lock":
            out[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    con = sqlite3.connect(ca_dir / "registry.db")
    try:
        for table in TABLES:
            try:
                rows = con.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
            except sqlite3.OperationalError:
                rows = []
            out[f"registry:{table}"] = hashlib.sha256(repr(rows).encode()).hexdigest()
    finally:
        con.close()
    return out


def _refused(call: Callable[[], Any], code: grpc.StatusCode, reason: str) -> grpc.RpcError:
    """Run ``call``, which must fail with ``code`` and an ErrorInfo carrying ``reason``."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    err = caught.value
    info = error_info(err)
    assert (err.code(), info.reason if info else None) == (code, reason), err.details()
    assert info.domain == "meshid"
    return err


@dataclass
class ServiceKit:
    ca: CertificateAuthority
    service: CAService
    endpoint: CAEndpoint
    fingerprint: str
    sessions: list[AgentSession] = field(default_factory=list)

    @property
    def td(self) -> str:
        return str(self.ca.trust_domain)

    def token(self, node: str, ttl: timedelta = admin.DEFAULT_TOKEN_TTL) -> str:
        return admin.make_join_token(self.ca, node, ttl).token

    def register(self, service: str, node: str, uid: int = 1000,
                 ttl: timedelta = admin.DEFAULT_SVID_TTL) -> None:
        admin.register(self.ca, service, node, uid, ttl)

    def agent(self, node: str) -> AgentSession:
        """A freshly attested agent of ``node`` with an open session on the agent port."""
        key = new_key()
        resp = self.endpoint.attest(node, self.token(node), key)
        return self.session(key, resp.agent_svid.cert_chain_pem)

    def session(self, key: Any, chain_pem: bytes) -> AgentSession:
        session = self.endpoint.agent(key, chain_pem)
        self.sessions.append(session)
        return session

    def snapshot(self) -> dict[str, str]:
        return _snapshot(self.ca.ca_dir)


class FakeClock:
    """Real time plus an offset the test moves (certificates are checked at real time)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        import time

        return time.time() + self.offset


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def start_service(ca_factory: Any, clock: FakeClock) -> Iterator[Callable[..., ServiceKit]]:
    started: list[ServiceKit] = []

    def start(**options: Any) -> ServiceKit:
        ca = ca_factory(intermediate=True)
        options.setdefault("trust_interval", 0.05)
        options.setdefault("recheck_seconds", 0.2)
        service = CAService(ca, listen="127.0.0.1:0", attest_listen="127.0.0.1:0",
                            clock=clock, **options)
        addresses = service.start()
        fingerprint = ca.root_fingerprint
        server_name = ca_dns_name(ca.trust_domain)
        roots = roots_by_fingerprint(addresses.attestation, fingerprint, server_name)
        kit = ServiceKit(ca, service, CAEndpoint(addresses.agent, addresses.attestation,
                                                 server_name, roots), fingerprint)
        started.append(kit)
        return kit

    yield start
    for kit in started:
        for session in kit.sessions:
            session.close()
        kit.service.stop(grace=None)


@pytest.fixture
def svc(start_service: Callable[..., ServiceKit]) -> ServiceKit:
    return start_service()


@pytest.fixture
def refused() -> Callable[[Callable[[], Any], grpc.StatusCode, str], grpc.RpcError]:
    """``refused(call, code, reason)``: ``call`` must fail with that status and ErrorInfo."""
    return _refused


@pytest.fixture
def snapshot() -> Callable[[Path], dict[str, str]]:
    """``snapshot(ca_dir)``: hashes of the published files and of every registry table."""
    return _snapshot
