"""Orders kept in SQLite: one transaction per write, WAL so listings never block an insert."""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from mesh.demo.errors import DemoConfigError, InvalidRequest

DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL UNIQUE,
    user TEXT NOT NULL,
    lines TEXT NOT NULL,
    total_cents INTEGER NOT NULL CHECK (total_cents > 0),
    payment_id TEXT NOT NULL,
    reservation_ids TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_by_user ON orders (user, seq);
"""


@dataclass(frozen=True, slots=True)
class OrderLine:
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class StoredOrder:
    order_id: str
    user: str
    lines: tuple[OrderLine, ...]
    total_cents: int
    payment_id: str
    reservation_ids: tuple[str, ...]
    created_at: int


class OrdersStore:
    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # One connection shared by the server's threads, serialised by our own lock.
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise DemoConfigError(f"cannot open the orders database {path}: {err}") from err
        self._lock = threading.Lock()

    def add(self, order: StoredOrder) -> None:
        row = (
            order.order_id,
            order.user,
            json.dumps([[line.sku, line.quantity] for line in order.lines]),
            order.total_cents,
            order.payment_id,
            json.dumps(list(order.reservation_ids)),
            order.created_at,
        )
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO orders (order_id, user, lines, total_cents, payment_id,"
                    " reservation_ids, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError as err:
                self._db.execute("ROLLBACK")
                raise InvalidRequest(f"order {order.order_id} is already stored") from err
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def list_for(self, user: str, limit: int = 0) -> list[StoredOrder]:
        """``user``'s orders, newest first; limit 0 means the default."""
        if limit < 0 or limit > MAX_LIST_LIMIT:
            raise InvalidRequest(f"limit must be between 0 and {MAX_LIST_LIMIT}")
        with self._lock:
            rows = self._db.execute(
                "SELECT order_id, user, lines, total_cents, payment_id, reservation_ids,"
                " created_at FROM orders WHERE user = ? ORDER BY seq DESC LIMIT ?",
                (user, limit or DEFAULT_LIST_LIMIT),
            ).fetchall()
        return [
            StoredOrder(
                order_id=r[0],
                user=r[1],
                lines=tuple(OrderLine(sku, qty) for sku, qty in json.loads(r[2])),
                total_cents=r[3],
                payment_id=r[4],
                reservation_ids=tuple(json.loads(r[5])),
                created_at=r[6],
            )
            for r in rows
        ]

    def count(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM orders").fetchone()
        return int(n)

    def close(self) -> None:
        with self._lock:
            self._db.close()
