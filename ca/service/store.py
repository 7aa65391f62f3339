"""The CA service's tables in the CA's registry, and the queries on them.

Four tables beside ``certs`` in ``registry.db``, created by :func:`ensure_schema` in one CA
change (lock + transaction) the first time a service command writes:

- ``nodes``: every node the CA heard of (a join token or a registration named it), when it was
  attested, its latest agent certificate, whether and when it was evicted;
- ``join_tokens``: SHA-256 of each join token, its node, expiry, and once used: when, the agent
  certificate it bought and SHA-256 of that certificate's public key (SubjectPublicKeyInfo), so
  the same agent can retry after a lost answer (see :mod:`ca.service.issuer`);
- ``registrations``: which services a node's agent may obtain SVIDs for, the Unix user that
  runs each there, and the SVID lifetime;
- ``issued_via``: for each certificate the service issued, the node it was issued through and
  its kind (``agent``, ``workload``; ``ca`` for the service's own, with no node).

Writes happen only inside :meth:`ca.authority.CertificateAuthority.change`. Reads that serve
refusals use :class:`ReadConnections` (one read-only connection per thread, never the CA's
lock): in WAL mode they see the last committed state without waiting for a writer.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ca.authority import CertificateAuthority
from ca.errors import CorruptCA
from ca.registry import Registry

SCHEMA_KEY = "service_schema_version"
SCHEMA_VERSION = "1"

_TABLES = (
    """CREATE TABLE IF NOT EXISTS nodes (
        node         TEXT PRIMARY KEY,
        created_at   INTEGER NOT NULL,
        attested_at  INTEGER,
        agent_serial TEXT,
        evicted_at   INTEGER,
        evict_reason TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS join_tokens (
        token_sha256 BLOB PRIMARY KEY,
        node         TEXT NOT NULL REFERENCES nodes (node),
        created_at   INTEGER NOT NULL,
        expires_at   INTEGER NOT NULL,
        used_at      INTEGER,
        used_serial  TEXT,
        used_key     BLOB
    )""",
    """CREATE TABLE IF NOT EXISTS registrations (
        node       TEXT NOT NULL REFERENCES nodes (node),
        service    TEXT NOT NULL,
        uid        INTEGER NOT NULL CHECK (uid >= 0),
        ttl        INTEGER NOT NULL CHECK (ttl > 0),
        created_at INTEGER NOT NULL,
        PRIMARY KEY (node, service)
    )""",
    """CREATE TABLE IF NOT EXISTS issued_via (
        serial TEXT PRIMARY KEY REFERENCES certs (serial),
        node   TEXT REFERENCES nodes (node),
        kind   TEXT NOT NULL CHECK (kind IN ('agent', 'workload', 'ca'))
    )""",
    "CREATE INDEX IF NOT EXISTS issued_via_by_node ON issued_via (node)",
)

AGENT = "agent"
WORKLOAD = "workload"
CA = "ca"


def _hex(serial: int) -> str:
    return format(serial, "x")


# ---- schema ----------------------------------------------------------------------------------


def has_schema(conn: sqlite3.Connection) -> bool:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (SCHEMA_KEY,)).fetchone()
    if row is None:
        return False
    if str(row[0]) != SCHEMA_VERSION:
        raise CorruptCA(
            f"the registry's CA service tables have schema version {row[0]!r}, expected "
            f"{SCHEMA_VERSION!r}"
        )
    return True


def ensure_schema(ca: CertificateAuthority) -> None:
    """Create the service tables if this registry has none yet (one CA change, no publication).

    Checked again inside the change: two processes racing here create them once.
    """
    if schema_present(ca.ca_dir):
        return

    def create(reg: Registry) -> None:
        if has_schema(reg.connection):
            return
        for statement in _TABLES:
            reg.connection.execute(statement)
        reg.set_meta(SCHEMA_KEY, SCHEMA_VERSION)

    ca.change(create, publish=False)


def schema_present(ca_dir: Path) -> bool:
    """Whether the service tables exist, read on a connection of its own (no CA lock)."""
    conn = sqlite3.connect(ca_dir / Registry.FILE, isolation_level=None, timeout=10.0)
    try:
        conn.execute("PRAGMA query_only = ON")
        return has_schema(conn)
    except sqlite3.Error as err:
        raise CorruptCA(f"the registry {Registry.FILE} cannot be read: {err}") from err
    finally:
        conn.close()


def valid_serials_of(ca_dir: Path, spiffe_id: str) -> list[int]:
    """Serials of the unexpired, unrevoked certificates of ``spiffe_id`` (own connection)."""
    conn = sqlite3.connect(ca_dir / Registry.FILE, isolation_level=None, timeout=10.0)
    try:
        rows = conn.execute(
            "SELECT serial FROM certs WHERE status = 'valid' AND not_after > ? "
            "AND spiffe_id = ?",
            (int(time.time()), spiffe_id),
        ).fetchall()
    except sqlite3.Error as err:
        raise CorruptCA(f"the registry {Registry.FILE} cannot be read: {err}") from err
    finally:
        conn.close()
    return [int(str(r[0]), 16) for r in rows]


# ---- rows ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenRow:
    node: str
    created_at: int
    expires_at: int
    used_at: int | None
    used_serial: int | None
    used_key: bytes | None


@dataclass(frozen=True, slots=True)
class NodeRow:
    node: str
    created_at: int
    attested_at: int | None
    agent_serial: int | None
    evicted_at: int | None
    evict_reason: str | None


@dataclass(frozen=True, slots=True)
class RegistrationRow:
    node: str
    service: str
    uid: int
    ttl: int


@dataclass(frozen=True, slots=True)
class PeerRow:
    """What the CA knows of a certificate presented on the agent port."""

    serial: int
    status: str
    der: bytes
    spiffe_id: str
    not_after: int
    kind: str | None
    node: str | None
    evicted_at: int | None


def _opt_serial(value: object) -> int | None:
    return None if value is None else int(str(value), 16)


def _opt_int(value: object) -> int | None:
    return None if value is None else int(str(value))


# ---- reads (any connection) ------------------------------------------------------------------


def token_by_hash(conn: sqlite3.Connection, digest: bytes) -> tuple[bytes, TokenRow] | None:
    row = conn.execute(
        "SELECT token_sha256, node, created_at, expires_at, used_at, used_serial, used_key "
        "FROM join_tokens WHERE token_sha256 = ?",
        (digest,),
    ).fetchone()
    if row is None:
        return None
    stored, node, created, expires, used_at, used_serial, used_key = row
    return bytes(stored), TokenRow(
        node=str(node),
        created_at=int(created),
        expires_at=int(expires),
        used_at=_opt_int(used_at),
        used_serial=_opt_serial(used_serial),
        used_key=None if used_key is None else bytes(used_key),
    )


_NODE_COLUMNS = "node, created_at, attested_at, agent_serial, evicted_at, evict_reason"


def _node_row(row: tuple[object, ...]) -> NodeRow:
    node, created, attested, serial, evicted, reason = row
    return NodeRow(
        node=str(node),
        created_at=int(str(created)),
        attested_at=_opt_int(attested),
        agent_serial=_opt_serial(serial),
        evicted_at=_opt_int(evicted),
        evict_reason=None if reason is None else str(reason),
    )


def node(conn: sqlite3.Connection, name: str) -> NodeRow | None:
    row = conn.execute(
        f"SELECT {_NODE_COLUMNS} FROM nodes WHERE node = ?", (name,)  # noqa: S608
    ).fetchone()
    return None if row is None else _node_row(row)


def nodes(conn: sqlite3.Connection) -> list[NodeRow]:
    rows = conn.execute(f"SELECT {_NODE_COLUMNS} FROM nodes ORDER BY node").fetchall()  # noqa: S608
    return [_node_row(r) for r in rows]


def registration(conn: sqlite3.Connection, node_name: str, service: str) -> RegistrationRow | None:
    row = conn.execute(
        "SELECT node, service, uid, ttl FROM registrations WHERE node = ? AND service = ?",
        (node_name, service),
    ).fetchone()
    return None if row is None else RegistrationRow(str(row[0]), str(row[1]), int(row[2]),
                                                    int(row[3]))


def registrations(conn: sqlite3.Connection, node_name: str | None = None) -> list[RegistrationRow]:
    if node_name is None:
        rows = conn.execute(
            "SELECT node, service, uid, ttl FROM registrations ORDER BY node, service"
        ).fetchall()
    else:
        rows = conn.execute(
            "SELECT node, service, uid, ttl FROM registrations WHERE node = ? ORDER BY service",
            (node_name,),
        ).fetchall()
    return [RegistrationRow(str(n), str(s), int(u), int(t)) for n, s, u, t in rows]


def peer_cert(conn: sqlite3.Connection, serial: int) -> PeerRow | None:
    """The registry's view of certificate ``serial``: status, DER, and the node it is bound to."""
    row = conn.execute(
        "SELECT c.serial, c.status, c.der, c.spiffe_id, c.not_after, v.kind, v.node, n.evicted_at "
        "FROM certs c LEFT JOIN issued_via v ON v.serial = c.serial "
        "LEFT JOIN nodes n ON n.node = v.node WHERE c.serial = ?",
        (_hex(serial),),
    ).fetchone()
    if row is None:
        return None
    s, status, der, sid, not_after, kind, node_name, evicted = row
    return PeerRow(
        serial=int(str(s), 16),
        status=str(status),
        der=bytes(der),
        spiffe_id=str(sid),
        not_after=int(not_after),
        kind=None if kind is None else str(kind),
        node=None if node_name is None else str(node_name),
        evicted_at=_opt_int(evicted),
    )


def issued_via(conn: sqlite3.Connection) -> dict[int, tuple[str | None, str]]:
    """serial -> (node, kind) of every certificate the service issued (empty without tables)."""
    if not has_schema(conn):
        return {}
    rows = conn.execute("SELECT serial, node, kind FROM issued_via").fetchall()
    return {int(str(s), 16): (None if n is None else str(n), str(k)) for s, n, k in rows}


def count_valid(conn: sqlite3.Connection, node_name: str, name: str, now: int
                ) -> tuple[int, int | None]:
    """How many unrevoked, unexpired certificates named ``name`` (a service, or
    ``agent/NODE``) were issued through ``node_name``, and the soonest ``not_after`` among them
    (None when there is none): when the next one leaves the count."""
    row = conn.execute(
        "SELECT COUNT(*), MIN(c.not_after) FROM issued_via v JOIN certs c ON c.serial = v.serial "
        "WHERE v.node = ? AND c.name = ? AND c.status = 'valid' AND c.not_after > ?",
        (node_name, name, now),
    ).fetchone()
    return int(row[0]), _opt_int(row[1])


def cert_not_after(conn: sqlite3.Connection, serial: int) -> int | None:
    row = conn.execute("SELECT not_after FROM certs WHERE serial = ?", (_hex(serial),)).fetchone()
    return None if row is None else int(row[0])


# ---- writes (inside CertificateAuthority.change only) ----------------------------------------


def ensure_node(conn: sqlite3.Connection, name: str, now: int) -> None:
    conn.execute(
        "INSERT INTO nodes (node, created_at) VALUES (?, ?) ON CONFLICT (node) DO NOTHING",
        (name, now),
    )


def insert_token(
    conn: sqlite3.Connection, digest: bytes, node_name: str, now: int, expires_at: int
) -> None:
    conn.execute(
        "INSERT INTO join_tokens (token_sha256, node, created_at, expires_at) VALUES (?, ?, ?, ?)",
        (digest, node_name, now, expires_at),
    )


def consume_token(
    conn: sqlite3.Connection, digest: bytes, now: int, serial: int, key_sha256: bytes
) -> bool:
    """Mark an unused token used by agent certificate ``serial``; False if it was used already."""
    cur = conn.execute(
        "UPDATE join_tokens SET used_at = ?, used_serial = ?, used_key = ? "
        "WHERE token_sha256 = ? AND used_at IS NULL",
        (now, _hex(serial), key_sha256, digest),
    )
    return cur.rowcount == 1


def set_agent(conn: sqlite3.Connection, name: str, serial: int, now: int, *, attested: bool
              ) -> None:
    if attested:
        conn.execute(
            "UPDATE nodes SET agent_serial = ?, attested_at = ? WHERE node = ?",
            (_hex(serial), now, name),
        )
    else:
        conn.execute("UPDATE nodes SET agent_serial = ? WHERE node = ?", (_hex(serial), name))


def record_issuance(conn: sqlite3.Connection, serial: int, node_name: str | None, kind: str
                    ) -> None:
    conn.execute(
        "INSERT INTO issued_via (serial, node, kind) VALUES (?, ?, ?)",
        (_hex(serial), node_name, kind),
    )


def put_registration(
    conn: sqlite3.Connection, row: RegistrationRow, now: int
) -> None:
    conn.execute(
        "INSERT INTO registrations (node, service, uid, ttl, created_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (node, service) DO UPDATE SET uid = excluded.uid, ttl = excluded.ttl",
        (row.node, row.service, row.uid, row.ttl, now),
    )


def delete_registration(conn: sqlite3.Connection, node_name: str, service: str) -> bool:
    cur = conn.execute(
        "DELETE FROM registrations WHERE node = ? AND service = ?", (node_name, service)
    )
    return cur.rowcount == 1


def mark_evicted(conn: sqlite3.Connection, name: str, now: int, reason: str) -> list[int]:
    """Evict ``name`` (its join tokens stay, refused for the node); return the serials of its
    valid certificates (agent and workload) for the caller to revoke in the same transaction."""
    conn.execute(
        "UPDATE nodes SET evicted_at = ?, evict_reason = ? WHERE node = ?", (now, reason, name)
    )
    rows = conn.execute(
        "SELECT c.serial FROM issued_via v JOIN certs c ON c.serial = v.serial "
        "WHERE v.node = ? AND c.status = 'valid' ORDER BY c.rowid",
        (name,),
    ).fetchall()
    return [int(str(r[0]), 16) for r in rows]


# ---- read-only connections -------------------------------------------------------------------


class ReadConnections:
    """One read-only SQLite connection per thread to the CA's registry.

    Refusals are decided on these, so a flood of bad requests never takes the CA's lock or
    queues behind a writer (WAL readers do not block and are not blocked).
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def get(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self._path, isolation_level=None, timeout=10.0, check_same_thread=False
            )
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


def serials_text(serials: Iterable[int]) -> str:
    return ", ".join(_hex(s) for s in serials)
