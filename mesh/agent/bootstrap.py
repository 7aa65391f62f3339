"""Trust on first use, pinned: find the CA's root by its SHA-256 fingerprint, as
``step ca bootstrap --fingerprint`` does.

gRPC's Python TLS cannot connect without verifying the server, and the agent has nothing to
verify with yet. So the agent opens one TLS connection with pyOpenSSL, verification off, reads
the chain the CA serves, picks the certificate whose SHA-256 over DER equals the pinned
fingerprint (it must be a self-signed CA certificate), and only then verifies the served leaf
up to that root for the CA's DNS name ``ca.svc.<td>`` (web-PKI server profile). Nothing read on
that connection is trusted before the fingerprint matched; no request is sent on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import struct
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from OpenSSL import SSL

from mesh.agent.errors import AgentConfigError, BootstrapError, CAUnavailable
from mesh.errors import InvalidSpiffeIdError
from mesh.identity.certs import uri_sans
from mesh.identity.spiffeid import SpiffeId, TrustDomain

_FP_RE = re.compile(r"[0-9a-f]{64}")


def normalise_fingerprint(text: str) -> str:
    """Lowercase hex without separators; accepts ``AA:BB:..`` as openssl prints it."""
    fp = text.strip().lower().replace(":", "")
    if fp.startswith("sha256:"):
        fp = fp[len("sha256:"):]
    if not _FP_RE.fullmatch(fp):
        raise AgentConfigError(
            "--ca-fingerprint must be the SHA-256 of the root certificate's DER: 64 hex digits "
            "(mesh-ca prints it; `openssl x509 -noout -fingerprint -sha256` too)"
        )
    return fp


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def ca_dns_name(td: TrustDomain) -> str:
    """The DNS name the CA service's certificate carries and clients pin."""
    return f"ca.svc.{td.name}"


def trust_domain_of_root(root: x509.Certificate) -> TrustDomain:
    for uri in uri_sans(root):
        try:
            return SpiffeId.parse(uri).trust_domain
        except InvalidSpiffeIdError:
            continue
    raise BootstrapError(
        "the pinned root carries no SPIFFE trust domain URI SAN; it is not a meshid CA root"
    )


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """The pinned root and what follows from it."""

    root: x509.Certificate
    trust_domain: TrustDomain

    @property
    def root_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)

    @property
    def ca_dns_name(self) -> str:
        return ca_dns_name(self.trust_domain)


def split_host_port(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise AgentConfigError(f"{target!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def default_attest_target(agent_target: str) -> str:
    """The CA service's attestation port when not given: the agent port's host, port + 1
    (``mesh-ca serve``'s default)."""
    host, port = split_host_port(agent_target)
    if port == 65535:
        raise AgentConfigError("--ca has port 65535: give --ca-attest explicitly")
    return f"[{host}]:{port + 1}" if ":" in host else f"{host}:{port + 1}"


def fetch_served_chain(target: str, *, timeout: float = 5.0) -> list[x509.Certificate]:
    """The certificates the TLS server at ``target`` presents, unverified (read only)."""
    host, port = split_host_port(target)
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_verify(SSL.VERIFY_NONE)
    ctx.set_alpn_protos([b"h2"])  # gRPC servers refuse a handshake without h2
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        raise CAUnavailable(f"cannot connect to the CA at {target}: {err.strerror or err}") from err
    conn = SSL.Connection(ctx, sock)
    try:
        conn.set_connect_state()
        # pyOpenSSL needs a blocking socket (a Python-level timeout turns into WantReadError);
        # the kernel's receive/send timeouts bound the handshake instead.
        sock.settimeout(None)
        tv = struct.pack("ll", int(timeout), int((timeout % 1) * 1_000_000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        try:
            conn.do_handshake()
        except (SSL.Error, OSError) as err:
            raise CAUnavailable(
                f"the TLS handshake with the CA at {target} failed ({err!r:.160})"
            ) from err
        chain = conn.get_peer_cert_chain(as_cryptography=True) or []
    finally:
        with contextlib.suppress(SSL.Error, OSError):
            conn.shutdown()
        sock.close()
    if not chain:
        raise BootstrapError(f"the TLS server at {target} presented no certificate")
    return list(chain)


def pin_root(
    chain: list[x509.Certificate], pinned: str, *, now: datetime | None = None
) -> Bootstrap:
    """Find the root with fingerprint ``pinned`` in ``chain`` and verify the leaf up to it."""
    pinned = normalise_fingerprint(pinned)
    root = next((c for c in chain if fingerprint(c) == pinned), None)
    if root is None:
        raise BootstrapError(
            f"the CA presented {len(chain)} certificate(s) and none has the pinned SHA-256 "
            f"fingerprint {pinned}: wrong CA, wrong fingerprint, or a CA that does not serve "
            "its root in its chain; refusing to trust it"
        )
    if root.issuer != root.subject:
        raise BootstrapError(
            f"the certificate with fingerprint {pinned} is not a self-signed root CA"
        )
    td = trust_domain_of_root(root)
    leaf = chain[0]
    verifier = (
        PolicyBuilder()
        .store(Store([root]))
        .time(now or datetime.now(UTC))
        .build_server_verifier(x509.DNSName(ca_dns_name(td)))
    )
    try:
        verifier.verify(leaf, [c for c in chain[1:] if c is not root])
    except VerificationError as err:
        raise BootstrapError(
            f"the CA's served certificate does not verify up to the pinned root for the name "
            f"{ca_dns_name(td)} ({str(err).splitlines()[0][:160]}); refusing to trust it"
        ) from err
    return Bootstrap(root=root, trust_domain=td)


def bootstrap(target: str, pinned: str, *, timeout: float = 5.0) -> Bootstrap:
    """Connect to the CA at ``target`` and return the pinned, verified root."""
    pinned = normalise_fingerprint(pinned)
    return pin_root(fetch_served_chain(target, timeout=timeout), pinned)
