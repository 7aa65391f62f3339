"""Helpers for the CA tests: snapshots of a CA folder to prove a failure changed nothing."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

Snapshot = dict[str, str]


def _snapshot(folder: Path) -> Snapshot:
    """Content hash of every file, plus the registry's logical content (WAL-proof)."""
    import sqlite3

    out: Snapshot = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith("registry.db") and path.name != ".lock":
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    db = folder / "registry.db"
    if db.exists():
        con = sqlite3.connect(db)
        try:
            rows = con.execute("SELECT * FROM certs ORDER BY serial").fetchall()
            meta = con.execute("SELECT * FROM meta ORDER BY key").fetchall()
        finally:
            con.close()
        out["registry:certs"] = hashlib.sha256(repr(rows).encode()).hexdigest()
        out["registry:meta"] = hashlib.sha256(repr(meta).encode()).hexdigest()
    return out


@pytest.fixture
def snapshot() -> Callable[[Path], Snapshot]:
    return _snapshot
