"""The operator's side of the CA service: join tokens, registrations, eviction, the node list.

These run in the ``mesh-ca`` process (a server may be running at the same time): every change
is one CA change (lock + transaction; eviction also republishes the CRL), and a running server
sees it at its next registry read.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from ca.authority import CertificateAuthority
from ca.crl import parse_reason
from ca.errors import CorruptCA, InvalidValidity
from ca.registry import Registry
from ca.service import store
from ca.service.crash import crash_point
from ca.service.errors import InvalidUid, NodeEvicted, UnknownNode, UnknownRegistration
from ca.service.ids import check_node
from ca.service.jointokens import new_token, token_hash
from ca.validate import check_name

DEFAULT_TOKEN_TTL = timedelta(minutes=10)
MAX_TOKEN_TTL = timedelta(days=7)
DEFAULT_SVID_TTL = timedelta(hours=1)
MIN_SVID_TTL = timedelta(minutes=1)
#: the floor of ``mesh-ca register --allow-short-ttl``: demos that show several renewals in a
#: minute (a 20 s SVID renews about every 6 s)
SHORT_SVID_TTL = timedelta(seconds=10)
#: the lowest ``min_ttl`` a caller of :func:`register` may lower the floor to
SHORTEST_SVID_TTL = timedelta(seconds=2)
MAX_SVID_TTL = timedelta(days=30)
DEFAULT_EVICT_REASON = "privilegeWithdrawn"
_MAX_UID = 2**32 - 2  # (uid_t)-1 means "no user" to the kernel


@dataclass(frozen=True, slots=True)
class JoinToken:
    token: str
    node: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class NodeView:
    node: str
    attested_at: int | None
    agent_serial: int | None
    agent_not_after: int | None
    registrations: tuple[store.RegistrationRow, ...]
    evicted_at: int | None
    evict_reason: str | None


def _now() -> int:
    return int(time.time())


def _evicted(node: str) -> NodeEvicted:
    return NodeEvicted(
        f"node {node} was evicted; an evicted node never comes back under the same name "
        "(give the host a new node name)"
    )


def make_join_token(
    ca: CertificateAuthority, node: str, ttl: timedelta = DEFAULT_TOKEN_TTL
) -> JoinToken:
    """A one-time join token for ``node``; only its SHA-256 is stored."""
    node = check_node(node)
    if not timedelta(seconds=1) <= ttl <= MAX_TOKEN_TTL:
        raise InvalidValidity("a join token lives between 1 second and 7 days")
    store.ensure_schema(ca)
    token = new_token()
    now = _now()
    expires = now + int(ttl.total_seconds())

    def apply(reg: Registry) -> None:
        db = reg.connection
        row = store.node(db, node)
        if row is not None and row.evicted_at is not None:
            raise _evicted(node)
        store.ensure_node(db, node, now)
        store.insert_token(db, token_hash(token), node, now, expires)

    ca.change(apply, publish=False)
    return JoinToken(token, node, expires)


def check_uid(uid: int) -> int:
    if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid <= _MAX_UID:
        raise InvalidUid(f"uid {uid!r} is invalid: a Unix user id is a number from 0 to {_MAX_UID}")
    return uid


def register(
    ca: CertificateAuthority,
    service: str,
    node: str,
    uid: int,
    ttl: timedelta = DEFAULT_SVID_TTL,
    *,
    min_ttl: timedelta = MIN_SVID_TTL,
) -> store.RegistrationRow:
    """Let ``node``'s agent obtain SVIDs for ``service``, run there by Unix user ``uid``.

    Registering again replaces the uid and lifetime. ``min_ttl`` is the floor of the lifetime:
    one minute for operators (``mesh-ca register``); code that must watch several rotations in
    a bounded time (tests, benchmarks) may lower it, to :data:`SHORTEST_SVID_TTL` at least.
    """
    service = check_name(service)
    node = check_node(node)
    uid = check_uid(uid)
    if min_ttl < SHORTEST_SVID_TTL:
        raise InvalidValidity("a registration's SVID lifetime floor is at least 2 seconds")
    if not min_ttl <= ttl <= MAX_SVID_TTL:
        floor = "1 minute" if min_ttl == MIN_SVID_TTL else f"{min_ttl.total_seconds():g} seconds"
        hint = (" (--allow-short-ttl lowers the floor to 10 seconds, for demos and tests)"
                if min_ttl == MIN_SVID_TTL and ttl < min_ttl else "")
        raise InvalidValidity(
            f"a registration's SVID lifetime is between {floor} and 30 days{hint}")
    seconds = int(ttl.total_seconds())
    store.ensure_schema(ca)

    wanted = store.RegistrationRow(node, service, uid, seconds)

    def apply(reg: Registry) -> None:
        db = reg.connection
        row = store.node(db, node)
        if row is not None and row.evicted_at is not None:
            raise _evicted(node)
        store.ensure_node(db, node, _now())
        store.put_registration(db, wanted, _now())

    ca.change(apply, publish=False)
    return wanted


def unregister(ca: CertificateAuthority, service: str, node: str) -> None:
    """Stop ``node``'s agent obtaining SVIDs for ``service`` (those issued stay valid until they
    expire; revoke them by serial to end them sooner)."""
    service = check_name(service)
    node = check_node(node)
    store.ensure_schema(ca)

    def apply(reg: Registry) -> None:
        if not store.delete_registration(reg.connection, node, service):
            raise UnknownRegistration(f"service {service} is not registered to node {node}")

    ca.change(apply, publish=False)


def evict(ca: CertificateAuthority, node: str, reason: str = DEFAULT_EVICT_REASON) -> list[int]:
    """Evict ``node``: revoke its agent's certificates and every certificate issued through
    it, void its unused join tokens, refuse it forever. One transaction; CRL republished.

    Returns the revoked serials.
    """
    node = check_node(node)
    canonical = parse_reason(reason)
    store.ensure_schema(ca)
    now = _now()

    def apply(reg: Registry) -> list[int]:
        db = reg.connection
        row = store.node(db, node)
        if row is None:
            raise UnknownNode(f"this CA knows no node {node}")
        if row.evicted_at is not None:
            raise NodeEvicted(f"node {node} is already evicted")
        serials = store.mark_evicted(db, node, now, canonical)
        for serial in serials:
            reg.mark_revoked(serial, now, canonical)
        crash_point("evict.before-commit")
        return serials

    return ca.change(apply)


def _read(ca_dir: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(ca_dir / Registry.FILE, isolation_level=None, timeout=10.0)
    conn.execute("PRAGMA query_only = ON")
    return conn


def node_views(ca_dir: Path) -> list[NodeView]:
    """Every node the CA knows, for ``mesh-ca nodes`` (read-only; empty before any node)."""
    try:
        conn = _read(ca_dir)
        try:
            if not store.has_schema(conn):
                return []
            # One read transaction: nodes, registrations and certificates of one instant.
            conn.execute("BEGIN")
            regs: dict[str, list[store.RegistrationRow]] = {}
            for r in store.registrations(conn):
                regs.setdefault(r.node, []).append(r)
            out = []
            for n in store.nodes(conn):
                not_after = (
                    None if n.agent_serial is None else store.cert_not_after(conn, n.agent_serial)
                )
                out.append(NodeView(n.node, n.attested_at, n.agent_serial, not_after,
                                    tuple(regs.get(n.node, ())), n.evicted_at, n.evict_reason))
            conn.execute("COMMIT")
            return out
        finally:
            conn.close()
    except sqlite3.Error as err:
        raise CorruptCA(f"the registry {Registry.FILE} cannot be read: {err}") from err


def issued_through(ca_dir: Path) -> dict[int, tuple[str | None, str]]:
    """serial -> (node, kind) for ``mesh-ca list``: the node each certificate was issued
    through (kind ``agent`` or ``workload``), or the CA's own (kind ``ca``, no node)."""
    try:
        conn = _read(ca_dir)
        try:
            return store.issued_via(conn)
        finally:
            conn.close()
    except sqlite3.Error as err:
        raise CorruptCA(f"the registry {Registry.FILE} cannot be read: {err}") from err
