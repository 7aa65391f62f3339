"""A stand-in for the CA service (protos/mesh/ca/v1), over a real CA from ``ca/``.

Used by the agent's single-host tests for what the real service does not let a test steer
(switching it off and on at will on the same ports, counting calls). It speaks the same proto,
serves the same identity (``spiffe://<td>/ca``, DNS ``ca.svc.<td>``, root included in the
served chain) and refuses with the same reason codes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.authority import CertificateAuthority
from ca.templates import build_leaf, new_key, new_serial
from mesh.ca.v1 import ca_pb2, ca_pb2_grpc
from mesh.errors import Reason
from mesh.identity.certs import spiffe_id_of
from mesh.identity.spiffeid import SpiffeId
from mesh.transport.status import rejection

PEM = serialization.Encoding.PEM


def pem(certs) -> bytes:
    return b"".join(c.public_bytes(PEM) for c in certs)


@dataclass
class Reg:
    service: str
    uid: int
    ttl: int


@dataclass
class FakeState:
    tokens: dict[str, tuple[str, float, bool]] = field(default_factory=dict)
    regs: dict[str, dict[str, Reg]] = field(default_factory=dict)
    evicted: set[str] = field(default_factory=set)
    revoked_agents: set[int] = field(default_factory=set)
    calls: dict[str, int] = field(default_factory=dict)


class FakeCA:
    def __init__(self, ca: CertificateAuthority, *, agent_ttl: int = 3600) -> None:
        self.ca = ca
        self.td = ca.trust_domain
        self.agent_ttl = agent_ttl
        self.state = FakeState()
        self.lock = threading.Lock()
        self.sequence = 1
        self.changed = threading.Condition(self.lock)
        self.attest_port = 0
        self.agent_port = 0
        self._servers: list[grpc.Server] = []
        key = new_key()
        now = datetime.now(UTC)
        leaf = build_leaf(
            spiffe_id=SpiffeId(self.td, "/ca"), name="ca", dns_names=[f"ca.svc.{self.td.name}"],
            ips=[], public_key=key.public_key(), serial=new_serial(),
            not_before=now - timedelta(minutes=1), not_after=now + timedelta(days=1),
            issuer_cert=ca.issuer_cert, issuer_key=ca._issuer_key,
        )
        self.serving_chain = pem([leaf, *ca.intermediates, *ca.roots])
        self.serving_key = key.private_bytes(
            PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def fingerprint(self) -> str:
        root = self.ca.roots[0]
        return hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).hexdigest()

    # --- operator side ----------------------------------------------------------------------

    def join_token(self, node: str, ttl: float = 600) -> str:
        token = secrets.token_urlsafe(24)
        with self.lock:
            self.state.tokens[token] = (node, time.time() + ttl, False)
        return token

    def register(self, node: str, service: str, uid: int, ttl: int = 3600) -> None:
        with self.lock:
            self.state.regs.setdefault(node, {})[service] = Reg(service, uid, ttl)

    def unregister(self, node: str, service: str) -> None:
        with self.lock:
            self.state.regs.get(node, {}).pop(service, None)

    def evict(self, node: str) -> None:
        with self.lock:
            self.state.evicted.add(node)

    def bump(self) -> None:
        with self.changed:
            self.sequence += 1
            self.changed.notify_all()

    def trust(self) -> ca_pb2.TrustState:
        bundle = self.ca.bundle_path.read_bytes()
        return ca_pb2.TrustState(
            roots_pem=pem(self.ca.roots), bundle_json=bundle,
            crl_pem=self.ca.crl_path.read_bytes(),
            sequence=json.loads(bundle).get("spiffe_sequence", self.sequence),
        )

    # --- servers ----------------------------------------------------------------------------

    def start(self) -> FakeCA:
        creds_attest = grpc.ssl_server_credentials([(self.serving_key, self.serving_chain)])
        creds_agent = grpc.ssl_server_credentials(
            [(self.serving_key, self.serving_chain)], root_certificates=pem(self.ca.roots),
            require_client_auth=True,
        )
        a = grpc.server(futures.ThreadPoolExecutor(8))
        ca_pb2_grpc.add_NodeAttestationServicer_to_server(_Attest(self), a)
        self.attest_port = a.add_secure_port(f"127.0.0.1:{self.attest_port}", creds_attest)
        b = grpc.server(futures.ThreadPoolExecutor(32))
        ca_pb2_grpc.add_NodeAgentServiceServicer_to_server(_Agent(self), b)
        self.agent_port = b.add_secure_port(f"127.0.0.1:{self.agent_port}", creds_agent)
        a.start()
        b.start()
        self._servers = [a, b]
        return self

    def stop(self) -> None:
        for s in self._servers:
            s.stop(grace=None).wait()
        self._servers = []

    def count(self, what: str) -> int:
        with self.lock:
            return self.state.calls.get(what, 0)

    def _count(self, what: str) -> None:
        with self.lock:
            self.state.calls[what] = self.state.calls.get(what, 0) + 1


def _refuse(context: grpc.ServicerContext, reason: Reason, message: str) -> None:
    context.abort_with_status(
        rejection(reason.status, message, str(reason), service="ca", method="x")
    )


class _Attest(ca_pb2_grpc.NodeAttestationServicer):
    def __init__(self, fake: FakeCA) -> None:
        self.fake = fake

    def AttestNode(self, request, context):
        f = self.fake
        f._count("attest")
        with f.lock:
            entry = f.state.tokens.get(request.join_token)
            if entry is None:
                _refuse(context, Reason.JOIN_TOKEN_UNKNOWN, "unknown join token")
            node, exp, used = entry
            if used:
                _refuse(context, Reason.JOIN_TOKEN_USED, "join token already used")
            if exp < time.time():
                _refuse(context, Reason.JOIN_TOKEN_EXPIRED, "join token expired")
            if node != request.node:
                _refuse(context, Reason.JOIN_TOKEN_NODE_MISMATCH, "join token for another node")
            if node in f.state.evicted:
                _refuse(context, Reason.NODE_EVICTED, "node evicted")
            f.state.tokens[request.join_token] = (node, exp, True)
        svid = _agent_svid(f, request.node, request.csr_pem, context)
        return ca_pb2.AttestNodeResponse(agent_svid=svid, trust=f.trust())


def _agent_svid(f: FakeCA, node: str, csr_pem: bytes, context) -> ca_pb2.X509Svid:
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        assert csr.is_signature_valid
    except (ValueError, AssertionError):
        _refuse(context, Reason.CSR_INVALID, "bad CSR")
    now = datetime.now(UTC)
    sid = SpiffeId(f.td, f"/agent/{node}")
    cert = build_leaf(
        spiffe_id=sid, name=node, dns_names=[], ips=[], public_key=csr.public_key(),
        serial=new_serial(), not_before=now - timedelta(seconds=5),
        not_after=now + timedelta(seconds=f.agent_ttl),
        issuer_cert=f.ca.issuer_cert, issuer_key=f.ca._issuer_key,
    )
    return ca_pb2.X509Svid(
        spiffe_id=str(sid), cert_chain_pem=pem([cert, *f.ca.intermediates]),
        not_before=int(cert.not_valid_before_utc.timestamp()),
        not_after=int(cert.not_valid_after_utc.timestamp()), serial=f"{cert.serial_number:032x}",
    )


class _Agent(ca_pb2_grpc.NodeAgentServiceServicer):
    def __init__(self, fake: FakeCA) -> None:
        self.fake = fake

    def _node(self, context) -> tuple[str, x509.Certificate]:
        f = self.fake
        pem_cert = context.auth_context().get("x509_pem_cert", [b""])[0]
        cert = x509.load_pem_x509_certificate(pem_cert)
        sid = spiffe_id_of(cert)
        if not sid.path.startswith("/agent/"):
            _refuse(context, Reason.NOT_AN_AGENT, f"{sid} is not an agent")
        node = sid.path.split("/")[2]
        with f.lock:
            if node in f.state.evicted:
                _refuse(context, Reason.NODE_EVICTED, f"node {node} is evicted")
            if cert.serial_number in f.state.revoked_agents:
                _refuse(context, Reason.CERT_REVOKED, "agent certificate revoked")
        return node, cert

    def RenewAgent(self, request, context):
        self.fake._count("renew_agent")
        node, cert = self._node(context)
        csr = x509.load_pem_x509_csr(request.csr_pem)
        if csr.public_key() == cert.public_key():
            _refuse(context, Reason.CSR_INVALID, "renewal needs a new key")
        return ca_pb2.RenewAgentResponse(
            agent_svid=_agent_svid(self.fake, node, request.csr_pem, context)
        )

    def ListRegistrations(self, request, context):
        self.fake._count("list")
        node, _ = self._node(context)
        f = self.fake
        with f.lock:
            regs = list(f.state.regs.get(node, {}).values())
        return ca_pb2.ListRegistrationsResponse(registrations=[
            ca_pb2.Registration(service=r.service, spiffe_id=str(f.td.service(r.service)),
                                uid=r.uid, ttl_seconds=r.ttl)
            for r in regs
        ])

    def IssueWorkloadSvid(self, request, context):
        self.fake._count("issue")
        node, _ = self._node(context)
        f = self.fake
        with f.lock:
            reg = f.state.regs.get(node, {}).get(request.service)
        if reg is None:
            _refuse(context, Reason.NOT_REGISTERED, f"{request.service} not on {node}")
        issued = f.ca.issue(request.service, csr_pem=request.csr_pem,
                            ttl=timedelta(seconds=reg.ttl))
        f.bump()
        return ca_pb2.IssueWorkloadSvidResponse(svid=ca_pb2.X509Svid(
            spiffe_id=str(issued.spiffe_id), cert_chain_pem=issued.chain_pem(),
            not_before=int(issued.not_before.timestamp()),
            not_after=int(issued.not_after.timestamp()), serial=f"{issued.serial:032x}",
        ))

    def WatchTrust(self, request, context):
        self._node(context)
        f = self.fake
        known = request.known_sequence
        while context.is_active():
            state = f.trust()
            if state.sequence != known:
                known = state.sequence
                yield state
            with f.changed:
                f.changed.wait(timeout=0.5)


__all__ = ["FakeCA", "asyncio"]
