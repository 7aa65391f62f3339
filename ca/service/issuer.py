"""What the CA service decides and issues: node attestation, agent renewal, workload SVIDs.

Every method here is plain synchronous code (the gRPC layer in :mod:`ca.service.server` only
moves bytes). Each request is checked in this order, and refused at the first rule it breaks
with a :class:`~ca.service.errors.Refused` naming a :class:`mesh.errors.Reason`:

1. who is asking: a join token (attestation) or the agent certificate the TLS layer verified;
2. what is asked: the registration, the CSR (:func:`ca.service.csr.parse_csr`);
3. the certificate is signed, outside any lock;
4. the writer (:class:`~ca.service.batch.BatchWriter`) re-checks, inside the transaction,
   everything another process may have changed since step 1 (the token used by a concurrent
   request, the node evicted, the agent certificate revoked, the registration removed), then
   writes the certificate row, the node it was issued through and, for an attestation, the
   token's consumption: all in one transaction with the bundle and CRL publication.

Steps 1 and 2 read the registry on a connection of their own and never take the CA's lock, so
a flood of wrong join tokens or unregistered requests changes nothing and waits for no writer.

Join tokens and crashes: consuming a token and recording the agent certificate it bought are
one transaction, so a crash leaves either both or neither. If the process dies after the commit
but before the answer reaches the agent, the token is spent; the agent then retries with the
SAME key (its CSR proves it holds the key that used the token) and gets the same certificate
back, until the token's expiry. A different key gets JOIN_TOKEN_USED.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca.authority import CertificateAuthority
from ca.errors import InvalidServiceName
from ca.parsing import format_serial
from ca.registry import Registry
from ca.service import store
from ca.service.batch import BatchWriter
from ca.service.crash import crash_point
from ca.service.csr import parse_csr, spki
from ca.service.errors import Refused
from ca.service.ids import (
    CA_RECORD_NAME,
    InvalidNodeName,
    agent_id,
    agent_record_name,
    ca_dns_name,
    ca_id,
    check_node,
)
from ca.service.jointokens import same_hash, token_hash, well_formed
from ca.svid import IssuedSVID
from ca.validate import check_name
from mesh.errors import Reason

DEFAULT_AGENT_TTL = timedelta(hours=1)
DEFAULT_SERVER_TTL = timedelta(hours=1)
#: At most this many valid SVIDs per (node, service) and valid agent SVIDs per node. A renewing
#: agent holds two or three (old and new overlap); the cap stops a compromised agent from
#: growing the registry and, for services, the trust bundle every verifier loads (FileBundleSource
#: refuses a bundle over 4 MiB, about 2,500 keys) without end.
DEFAULT_MAX_VALID = 10


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Agent:
    """A caller on the agent port, authenticated: its node and the certificate it presented."""

    node: str
    serial: int
    public_key: ec.EllipticCurvePublicKey


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate as the service answers it: leaf + intermediates, never a key."""

    spiffe_id: str
    chain: tuple[x509.Certificate, ...]
    serial: int
    not_before: int
    not_after: int

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    @staticmethod
    def of(svid: IssuedSVID) -> Issued:
        return Issued(
            str(svid.spiffe_id),
            svid.chain,
            svid.serial,
            int(svid.not_before.timestamp()),
            int(svid.not_after.timestamp()),
        )


class NodeIssuer:
    """The decisions of the CA service over one open CA. Thread-safe."""

    def __init__(
        self,
        ca: CertificateAuthority,
        *,
        agent_ttl: timedelta = DEFAULT_AGENT_TTL,
        server_ttl: timedelta = DEFAULT_SERVER_TTL,
        on_commit: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        max_valid: int = DEFAULT_MAX_VALID,
    ) -> None:
        store.ensure_schema(ca)
        self.max_valid = max_valid
        self.ca = ca
        self.td = ca.trust_domain
        self.agent_ttl = agent_ttl
        self.server_ttl = server_ttl
        self._clock = clock
        self._reads = store.ReadConnections(ca.ca_dir / Registry.FILE)
        self.writer = BatchWriter(ca, on_commit=on_commit)
        ca_keys = [c.public_key() for c in (*ca.roots, ca.issuer_cert)]
        self._ca_keys = [
            (k, "the CSR carries one of the CA's own keys; an agent or workload needs a key "
                "of its own")
            for k in ca_keys
            if isinstance(k, ec.EllipticCurvePublicKey)
        ]

    def close(self) -> None:
        self.writer.close()
        self._reads.close()

    def _now(self) -> int:
        return int(self._clock())

    # ---- attestation (server-TLS port) -------------------------------------------------------

    def attest(self, node: str, token: str, csr_pem: bytes) -> Issued:
        """Trade a join token and a CSR for the node's agent SVID (``spiffe://td/agent/NODE``)."""
        if not well_formed(token):
            raise Refused(Reason.JOIN_TOKEN_UNKNOWN,
                          "the join token is not one this CA made (mesh-ca join-token NODE)")
        digest = token_hash(token)
        conn = self._reads.get()
        found = store.token_by_hash(conn, digest)
        if found is None or not same_hash(found[0], digest):
            raise Refused(Reason.JOIN_TOKEN_UNKNOWN,
                          "the join token is not one this CA made (mesh-ca join-token NODE)")
        row = found[1]
        try:
            node = check_node(node)
        except InvalidNodeName as err:
            raise Refused(
                Reason.JOIN_TOKEN_NODE_MISMATCH,
                f"the join token was made for node {row.node}, and the node name given is not "
                "a valid node name",
            ) from err
        if row.node != node:
            raise Refused(
                Reason.JOIN_TOKEN_NODE_MISMATCH,
                f"the join token was made for node {row.node}, not {node}; a token admits "
                "only the node it names",
            )
        node_row = store.node(conn, node)
        if node_row is not None and node_row.evicted_at is not None:
            raise self._evicted(node, node_row.evicted_at)
        now = self._now()
        if row.used_at is not None:
            earlier = self._earlier_answer(row, csr_pem, now)
            if earlier is not None:
                return earlier
            raise Refused(
                Reason.JOIN_TOKEN_USED,
                f"the join token for node {node} was already used at {_when(row.used_at)}; "
                f"make a new one with mesh-ca join-token {node}",
            )
        if row.expires_at <= now:
            raise Refused(
                Reason.JOIN_TOKEN_EXPIRED,
                f"the join token for node {node} expired at {_when(row.expires_at)}; make a new "
                f"one with mesh-ca join-token {node}",
            )
        key = parse_csr(csr_pem, refused_keys=self._ca_keys)
        crash_point("attest.checked")
        svid, rec = self.ca.sign_leaf(
            agent_id(self.td, node), key, name=agent_record_name(node), ttl=self.agent_ttl
        )
        key_digest = hashlib.sha256(spki(key)).digest()

        def apply(reg: Registry) -> Issued:
            db = reg.connection
            now = self._now()
            self._check_not_evicted(db, node)
            current = store.token_by_hash(db, digest)
            if current is None or current[1].used_at is not None:
                raise Refused(Reason.JOIN_TOKEN_USED,
                              f"the join token for node {node} was used by another request "
                              "at the same moment")
            if current[1].expires_at <= now:
                raise Refused(Reason.JOIN_TOKEN_EXPIRED,
                              f"the join token for node {node} expired while it was checked")
            reg.insert(rec)
            store.record_issuance(db, rec.serial, node, store.AGENT)
            if not store.consume_token(db, digest, now, rec.serial, key_digest):
                raise Refused(Reason.JOIN_TOKEN_USED, "the join token was used meanwhile")
            store.set_agent(db, node, rec.serial, now, attested=True)
            return Issued.of(svid)

        return self.writer.run(apply, "attest")

    def _earlier_answer(self, row: store.TokenRow, csr_pem: bytes, now: int) -> Issued | None:
        """The agent certificate a used token bought, if this CSR proves the same key asks
        again before the token's expiry and that certificate is still good; else None."""
        if row.expires_at <= now or row.used_serial is None or row.used_key is None:
            return None
        try:
            key = parse_csr(csr_pem, refused_keys=self._ca_keys)
        except Refused:
            return None
        if not same_hash(hashlib.sha256(spki(key)).digest(), row.used_key):
            return None
        cert_row = store.peer_cert(self._reads.get(), row.used_serial)
        if (
            cert_row is None
            or cert_row.status != "valid"
            or cert_row.evicted_at is not None
            or cert_row.not_after <= now
        ):
            return None
        cert = x509.load_der_x509_certificate(cert_row.der)
        return Issued(
            cert_row.spiffe_id,
            (cert, *self.ca.intermediates),
            cert_row.serial,
            int(cert.not_valid_before_utc.timestamp()),
            cert_row.not_after,
        )

    # ---- the agent port (mutual TLS) ---------------------------------------------------------

    def authenticate(self, cert: x509.Certificate) -> Agent:
        """The agent behind a client certificate the TLS layer verified against our roots.

        The registry decides, not the certificate: it must be a row of this CA byte for byte,
        issued to a node agent, not revoked, its node not evicted.
        """
        row = store.peer_cert(self._reads.get(), cert.serial_number)
        if row is None or row.der != cert.public_bytes(serialization.Encoding.DER):
            raise Refused(
                Reason.NOT_AN_AGENT,
                "the client certificate is not one this CA's registry issued to a node agent",
            )
        if row.kind != store.AGENT or row.node is None:
            raise Refused(
                Reason.NOT_AN_AGENT,
                f"{row.spiffe_id} is not a node agent: only agent SVIDs "
                f"(spiffe://{self.td}/agent/NODE) may call the agent service",
            )
        if row.evicted_at is not None:
            raise self._evicted(row.node, row.evicted_at)
        if row.status != "valid":
            raise Refused(
                Reason.CERT_REVOKED,
                f"the agent certificate {format_serial(row.serial)} of node {row.node} is revoked; "
                f"the agent must join again with a new join token (mesh-ca join-token "
                f"{row.node})",
            )
        if row.not_after <= self._now():
            raise Refused(Reason.CERT_UNTRUSTED,
                          f"the agent certificate {format_serial(row.serial)} of node {row.node} "
                          "has expired")
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)  # this CA signs P-256 keys only
        return Agent(row.node, row.serial, key)

    def renew_agent(self, agent: Agent, csr_pem: bytes) -> Issued:
        """A new agent SVID for a NEW key; the presented certificate stays valid until it
        expires (the agent switches over when it has the new one)."""
        key = parse_csr(
            csr_pem,
            refused_keys=[
                *self._ca_keys,
                (agent.public_key, "RenewAgent needs a CSR for a new key; this CSR carries the "
                                   "key of the certificate being renewed"),
            ],
        )
        name = agent_record_name(agent.node)
        self._check_limit(self._reads.get(), agent.node, name)
        svid, rec = self.ca.sign_leaf(
            agent_id(self.td, agent.node), key, name=name, ttl=self.agent_ttl
        )

        def apply(reg: Registry) -> Issued:
            db = reg.connection
            self._recheck_agent(db, agent)
            self._check_limit(db, agent.node, name)
            reg.insert(rec)
            store.record_issuance(db, rec.serial, agent.node, store.AGENT)
            store.set_agent(db, agent.node, rec.serial, self._now(), attested=False)
            return Issued.of(svid)

        return self.writer.run(apply, "renew")

    def registrations(self, agent: Agent) -> list[store.RegistrationRow]:
        return store.registrations(self._reads.get(), agent.node)

    def issue_workload(self, agent: Agent, service: str, csr_pem: bytes) -> Issued:
        """An X.509-SVID for ``service``, which must be registered to the agent's node."""
        try:
            service = check_name(service)
        except InvalidServiceName as err:
            # The caller's text is not repeated: it may be up to a message's size.
            raise Refused(
                Reason.REQUEST_INVALID,
                "the service name is invalid: use 1 to 63 characters of a-z, 0-9 and '-' "
                "(and not the reserved name ca)",
            ) from err
        reg_row = store.registration(self._reads.get(), agent.node, service)
        if reg_row is None:
            raise Refused(
                Reason.NOT_REGISTERED,
                f"service {service} is not registered to node {agent.node} (mesh-ca register "
                f"{service} --node {agent.node} --uid UID)",
            )
        key = parse_csr(csr_pem, refused_keys=self._ca_keys)
        self._check_limit(self._reads.get(), agent.node, service)
        svid, rec = self.ca.sign_leaf(
            self.td.service(service), key, name=service,
            dns=[self.td.service_dns_name(service)], ttl=timedelta(seconds=reg_row.ttl),
        )

        def apply(reg: Registry) -> Issued:
            db = reg.connection
            self._recheck_agent(db, agent)
            if store.registration(db, agent.node, service) is None:
                raise Refused(Reason.NOT_REGISTERED,
                              f"service {service} was unregistered from node {agent.node}")
            self._check_limit(db, agent.node, service)
            reg.insert(rec)
            store.record_issuance(db, rec.serial, agent.node, store.WORKLOAD)
            return Issued.of(svid)

        return self.writer.run(apply, "issue")

    # ---- the service's own serving identity --------------------------------------------------

    def issue_server_identity(self, key: ec.EllipticCurvePrivateKey) -> Issued:
        """The CA's serving certificate ``spiffe://td/ca``, DNS ``ca.svc.<td>``, for ``key``
        (made and kept in this process)."""
        svid, rec = self.ca.sign_leaf(
            ca_id(self.td), key.public_key(), name=CA_RECORD_NAME,
            dns=[ca_dns_name(self.td)], ttl=self.server_ttl,
        )

        def apply(reg: Registry) -> Issued:
            reg.insert(rec)
            store.record_issuance(reg.connection, rec.serial, None, store.CA)
            return Issued.of(svid)

        return self.writer.run(apply, "serving")

    # ---- re-checks inside the transaction ------------------------------------------------------

    def _check_not_evicted(self, db: sqlite3.Connection, node: str) -> None:
        row = store.node(db, node)
        if row is not None and row.evicted_at is not None:
            raise self._evicted(node, row.evicted_at)

    def _recheck_agent(self, db: sqlite3.Connection, agent: Agent) -> None:
        self._check_not_evicted(db, agent.node)
        row = store.peer_cert(db, agent.serial)
        if row is None or row.status != "valid":
            raise Refused(Reason.CERT_REVOKED,
                          f"the agent certificate {format_serial(agent.serial)} of node "
                          f"{agent.node} was revoked meanwhile")

    def _check_limit(self, db: sqlite3.Connection, node: str, name: str) -> None:
        now = self._now()
        held, soonest = store.count_valid(db, node, name, now)
        if held >= self.max_valid:
            # When a slot frees: the agent keeps what it holds and asks again then (a relative
            # delay, so the agent's clock does not matter), rather than retrying at once.
            retry_after = max(1, (soonest or now) - now + 1)
            raise Refused(
                Reason.SVID_LIMIT,
                f"node {node} already holds {held} valid certificates for {name}, the most "
                f"this CA allows ({self.max_valid}); use the ones it has (the next expires in "
                f"{retry_after - 1} s), or revoke some",
                retry_after=retry_after,
            )

    @staticmethod
    def _evicted(node: str, at: int) -> Refused:
        return Refused(
            Reason.NODE_EVICTED,
            f"node {node} was evicted at {_when(at)}: it gets no certificate from this CA again",
        )
