"""The SQLite registry of every certificate the CA issued.

WAL mode so readers (``mesh-ca list``) never block writers; every change runs in ONE
``BEGIN IMMEDIATE`` transaction, so a failed or interrupted operation leaves no trace. Serials
are stored as lowercase hex text because a 128-bit serial does not fit SQLite's INTEGER.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ca.errors import CorruptCA

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS certs (
    serial      TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    spiffe_id   TEXT NOT NULL,
    not_before  INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    issued_at   INTEGER NOT NULL,
    thumbprint  TEXT NOT NULL UNIQUE,
    status      TEXT NOT NULL CHECK (status IN ('valid', 'revoked')),
    revoked_at  INTEGER,
    reason      TEXT,
    dns         TEXT NOT NULL,
    ips         TEXT NOT NULL,
    ttl         INTEGER NOT NULL,
    own_key     INTEGER NOT NULL,
    der         BLOB NOT NULL,
    jwk_x       TEXT NOT NULL,
    jwk_y       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS certs_by_name ON certs (name);
"""

# The SVID folders a change is writing (docs/ca.md, "Safety under failure and concurrency").
# A row is recorded, and committed, before its hidden set folder is written; the change's own
# transaction then sets ``generation`` (its CRL number). After a crash the next command
# removes the sets of rows without a generation (never committed) and installs those whose
# generation crl.pem does not show yet. Added without a schema version bump: a CA made before
# it gains the table on first open.
_PENDING_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending_svid_sets (
    folder     TEXT NOT NULL,
    set_dir    TEXT NOT NULL,
    generation INTEGER,
    PRIMARY KEY (folder, set_dir)
);
"""

_COLUMNS = (
    "serial, name, spiffe_id, not_before, not_after, issued_at, thumbprint, status, "
    "revoked_at, reason, dns, ips, ttl, own_key, der, jwk_x, jwk_y"
)


class PendingSet(NamedTuple):
    """An SVID set being written: ``folder`` (absolute) and the hidden ``set_dir`` in it."""

    folder: str
    set_dir: str
    generation: int | None


class BundleKeyRow(NamedTuple):
    thumbprint: str
    der: bytes
    jwk_x: str
    jwk_y: str


@dataclass(frozen=True, slots=True)
class CertRecord:
    """One row of the registry. Times are UTC seconds since the epoch."""

    serial: int
    name: str
    spiffe_id: str
    not_before: int
    not_after: int
    issued_at: int
    thumbprint: str
    status: str
    revoked_at: int | None
    reason: str | None
    dns: tuple[str, ...]
    ips: tuple[str, ...]
    ttl: int
    own_key: bool
    der: bytes
    jwk_x: str
    jwk_y: str

    def state(self, now: int) -> str:
        """``valid``, ``revoked`` or ``expired`` as of ``now``."""
        if self.status == "revoked":
            return "revoked"
        return "expired" if self.not_after <= now else "valid"

    def _row(self) -> tuple[object, ...]:
        return (
            format(self.serial, "x"),
            self.name,
            self.spiffe_id,
            self.not_before,
            self.not_after,
            self.issued_at,
            self.thumbprint,
            self.status,
            self.revoked_at,
            self.reason,
            json.dumps(list(self.dns)),
            json.dumps(list(self.ips)),
            self.ttl,
            int(self.own_key),
            self.der,
            self.jwk_x,
            self.jwk_y,
        )


def _blob(value: object) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview) or not value:
        raise CorruptCA("the registry holds a certificate row without its DER encoding")
    return bytes(value)


def _record(row: sqlite3.Row | tuple[object, ...]) -> CertRecord:
    (serial, name, sid, nb, na, ia, tp, status, rat, reason, dns, ips, ttl, own, der, x, y) = row
    return CertRecord(
        serial=int(str(serial), 16),
        name=str(name),
        spiffe_id=str(sid),
        not_before=int(str(nb)),
        not_after=int(str(na)),
        issued_at=int(str(ia)),
        thumbprint=str(tp),
        status=str(status),
        revoked_at=None if rat is None else int(str(rat)),
        reason=None if reason is None else str(reason),
        dns=tuple(json.loads(str(dns))),
        ips=tuple(json.loads(str(ips))),
        ttl=int(str(ttl)),
        own_key=bool(own),
        der=_blob(der),
        jwk_x=str(x),
        jwk_y=str(y),
    )


class Registry:
    """A connection to ``registry.db``. Not shared across processes; one per CA object."""

    FILE = "registry.db"

    def __init__(self, path: Path, *, create: bool = False) -> None:
        if not create and not path.is_file():
            raise CorruptCA(f"the registry {path.name} is missing from the CA folder")
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves.
            self._db = sqlite3.connect(
                path, isolation_level=None, timeout=60.0, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            if create:
                self._db.executescript(_SCHEMA + _PENDING_SCHEMA)
            else:
                version = self.get_meta("schema_version")
                if version != SCHEMA_VERSION:
                    raise CorruptCA(
                        f"the registry {path.name} has schema version {version!r}, "
                        f"expected {SCHEMA_VERSION!r}"
                    )
                self._add_pending_table()
        except sqlite3.Error as err:
            raise CorruptCA(f"the registry {path.name} cannot be read: {err}") from err

    def _add_pending_table(self) -> None:
        exists = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'pending_svid_sets'"
        ).fetchone()
        if exists is None:  # a CA made before the table existed: one write, once
            self._db.executescript(_PENDING_SCHEMA)

    def close(self) -> None:
        self._db.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """The connection, for the tables other CA modules own (``ca/service``). Write only
        inside :meth:`ca.authority.CertificateAuthority.change`, which holds the lock and the
        transaction."""
        return self._db

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction; rolled back on any exception, including KeyboardInterrupt."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def bump(self, key: str) -> int:
        """Increment an integer meta counter and return its new value."""
        value = int(self.get_meta(key) or "0") + 1
        self.set_meta(key, str(value))
        return value

    def insert(self, record: CertRecord) -> None:
        self._db.execute(
            f"INSERT INTO certs ({_COLUMNS}) VALUES ({', '.join('?' * 17)})",  # noqa: S608
            record._row(),
        )

    def by_serial(self, serial: int) -> CertRecord | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM certs WHERE serial = ?",  # noqa: S608
            (format(serial, "x"),),
        ).fetchone()
        return None if row is None else _record(row)

    def by_name(self, name: str) -> list[CertRecord]:
        """Every certificate of ``name`` in commit order, the latest last.

        Commit order, not ``issued_at``: racing processes take their timestamps before the
        lock, so the one that commits last (whose files are on disk) may have the earlier time.
        """
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM certs WHERE name = ? ORDER BY rowid",  # noqa: S608
            (name,),
        ).fetchall()
        return [_record(r) for r in rows]

    def all(self) -> list[CertRecord]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM certs ORDER BY rowid"  # noqa: S608
        ).fetchall()
        return [_record(r) for r in rows]

    def bundle_keys(self, now: int) -> list[BundleKeyRow]:
        """(thumbprint, DER, x, y) of every unrevoked, unexpired service certificate, by name:
        just what the bundle needs, without building full records (it runs on every change).

        Only ``spiffe://<td>/svc/NAME`` identities sign tokens: the CA's own serving
        certificate and node agents' certificates (``/ca``, ``/agent/NODE``) stay out of the
        jwt-svid keys (spec 8; a trust domain has no '/', so the first one starts the path).
        """
        rows = self._db.execute(
            "SELECT thumbprint, der, jwk_x, jwk_y FROM certs "
            "WHERE status = 'valid' AND not_after > ? AND spiffe_id GLOB 'spiffe://*/svc/*' "
            "ORDER BY name, rowid",
            (now,),
        ).fetchall()
        return [BundleKeyRow(str(t), _blob(d), str(x), str(y)) for t, d, x, y in rows]

    def revoked(self) -> list[CertRecord]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM certs WHERE status = 'revoked' "  # noqa: S608
            "ORDER BY revoked_at, rowid"
        ).fetchall()
        return [_record(r) for r in rows]

    def mark_revoked(self, serial: int, at: int, reason: str) -> None:
        self._db.execute(
            "UPDATE certs SET status = 'revoked', revoked_at = ?, reason = ? "
            "WHERE serial = ? AND status = 'valid'",
            (at, reason, format(serial, "x")),
        )

    # ---- the SVID sets being written -----------------------------------------------------

    def pending_sets(self) -> list[PendingSet]:
        rows = self._db.execute(
            "SELECT folder, set_dir, generation FROM pending_svid_sets ORDER BY rowid"
        ).fetchall()
        return [PendingSet(str(f), str(d), None if g is None else int(g)) for f, d, g in rows]

    def add_pending_sets(self, sets: list[tuple[str, str]]) -> None:
        self._db.executemany(
            "INSERT INTO pending_svid_sets (folder, set_dir, generation) VALUES (?, ?, NULL)",
            sets,
        )

    def commit_pending_sets(self, sets: list[tuple[str, str]], generation: int) -> None:
        self._db.executemany(
            "UPDATE pending_svid_sets SET generation = ? WHERE folder = ? AND set_dir = ?",
            [(generation, f, d) for f, d in sets],
        )

    def drop_pending_sets(self, sets: list[tuple[str, str]]) -> None:
        self._db.executemany(
            "DELETE FROM pending_svid_sets WHERE folder = ? AND set_dir = ?", sets
        )

    def drop_installed_sets(self, published: int) -> None:
        """Forget the sets of every publication up to ``published``: they are installed."""
        self._db.execute(
            "DELETE FROM pending_svid_sets WHERE generation IS NOT NULL AND generation <= ?",
            (published,),
        )
