"""A minimal agent-side client of the CA service, built from the generated stubs only.

It does what a node agent must (docs/agent.md, "Bootstrapping trust"): read the chain the
attestation port serves with a plain TLS client (pyOpenSSL, verifying nothing yet), keep the
certificate whose SHA-256 fingerprint was pinned, check that the served leaf chains to it as
``ca.svc.<td>``, then talk gRPC with that root. The real agent is ``mesh agent``; this is the
tests' stand-in.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from OpenSSL import SSL

from mesh.ca.v1 import ca_pb2, ca_pb2_grpc


def served_chain(address: str, server_name: str) -> list[x509.Certificate]:
    """The certificates a TLS server sends, as sent (nothing verified)."""
    host, _, port = address.rpartition(":")
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_verify(SSL.VERIFY_NONE, lambda *_: True)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.settimeout(None)  # pyOpenSSL needs a blocking socket (a timeout makes it non-blocking)
        conn = SSL.Connection(ctx, sock)
        conn.set_tlsext_host_name(server_name.encode())
        conn.set_connect_state()
        conn.do_handshake()
        chain = conn.get_peer_cert_chain(as_cryptography=True) or []
        conn.shutdown()
    return list(chain)


def roots_by_fingerprint(address: str, fingerprint: str, server_name: str) -> bytes:
    """The pinned root (PEM), found among the served chain, after checking the leaf chains to
    it under ``server_name``. Raises ValueError if not."""
    want = fingerprint.replace(":", "").lower()
    chain = served_chain(address, server_name)
    roots = [c for c in chain if c.fingerprint(hashes.SHA256()).hex() == want]
    if not roots:
        raise ValueError("no certificate with the pinned fingerprint was served")
    verifier = (
        PolicyBuilder()
        .store(Store(roots))
        .build_server_verifier(x509.DNSName(server_name))
    )
    verifier.verify(chain[0], chain[1:])
    return roots[0].public_bytes(serialization.Encoding.PEM)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def csr_for(key: ec.EllipticCurvePrivateKey, cn: str = "anything") -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _options(server_name: str) -> Sequence[tuple[str, object]]:
    return [("grpc.ssl_target_name_override", server_name), ("grpc.enable_http_proxy", 0)]


@dataclass
class CAEndpoint:
    agent_address: str
    attest_address: str
    server_name: str
    roots_pem: bytes

    def attestation(self) -> tuple[grpc.Channel, ca_pb2_grpc.NodeAttestationStub]:
        channel = grpc.secure_channel(
            self.attest_address, grpc.ssl_channel_credentials(self.roots_pem),
            options=_options(self.server_name),
        )
        return channel, ca_pb2_grpc.NodeAttestationStub(channel)

    def attest(self, node: str, token: str, key: ec.EllipticCurvePrivateKey,
               csr: bytes | None = None) -> ca_pb2.AttestNodeResponse:
        channel, stub = self.attestation()
        with channel:
            return stub.AttestNode(
                ca_pb2.AttestNodeRequest(node=node, join_token=token,
                                         csr_pem=csr if csr is not None else csr_for(key)),
                timeout=30,
            )

    def agent(self, key: ec.EllipticCurvePrivateKey, chain_pem: bytes) -> AgentSession:
        channel = grpc.secure_channel(
            self.agent_address,
            grpc.ssl_channel_credentials(self.roots_pem, key_pem(key), chain_pem),
            options=_options(self.server_name),
        )
        return AgentSession(channel, ca_pb2_grpc.NodeAgentServiceStub(channel), key, chain_pem)


@dataclass
class AgentSession:
    channel: grpc.Channel
    stub: ca_pb2_grpc.NodeAgentServiceStub
    key: ec.EllipticCurvePrivateKey
    chain_pem: bytes

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> AgentSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def issue(self, service: str, key: ec.EllipticCurvePrivateKey | None = None,
              csr: bytes | None = None) -> ca_pb2.IssueWorkloadSvidResponse:
        if csr is None:
            csr = csr_for(key or new_key())
        return self.stub.IssueWorkloadSvid(
            ca_pb2.IssueWorkloadSvidRequest(service=service, csr_pem=csr), timeout=30
        )

    def renew(self, csr: bytes) -> ca_pb2.RenewAgentResponse:
        return self.stub.RenewAgent(ca_pb2.RenewAgentRequest(csr_pem=csr), timeout=30)

    def registrations(self) -> ca_pb2.ListRegistrationsResponse:
        return self.stub.ListRegistrations(ca_pb2.ListRegistrationsRequest(), timeout=30)
