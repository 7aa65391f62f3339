"""Helpers for the CA tests: snapshots of a CA folder to prove a failure changed nothing, and
the consistency check every crash test ends with."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import stat
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mesh.identity.bundle import FileBundleSource

Snapshot = dict[str, str]


def _snapshot(folder: Path) -> Snapshot:
    """Content hash of every file, plus the registry's logical content (WAL-proof)."""
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


# ---- the crash-safety invariant -------------------------------------------------------------
# Read straight from the files and the database: opening the CA would repair what it finds.

TEMP = re.compile(r"\.(?P<final>.+)\.[a-z0-9_]{8}\.tmp")
SVID_NAMES = {"svid.pem", "svid_key.pem", "svid_bundle.pem"}


def _registry(ca_dir: Path) -> tuple[list[tuple[str, str, str, int, str, bytes]], dict[str, str],
                                      list[tuple[str, str, int | None]]]:
    con = sqlite3.connect(f"file:{ca_dir / 'registry.db'}?mode=ro", uri=True)
    try:
        certs = con.execute(
            "SELECT serial, name, status, not_after, thumbprint, der FROM certs ORDER BY rowid"
        ).fetchall()
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        pending = con.execute(
            "SELECT folder, set_dir, generation FROM pending_svid_sets"
        ).fetchall()
    finally:
        con.close()
    return certs, meta, pending


def check_consistent(ca_dir: Path, out_dirs: Sequence[Path] = ()) -> None:
    """Registry, bundle, CRL and every SVID folder under ``out_dirs`` agree, and no stray
    temporary file or key material is left anywhere we write."""
    certs, meta, pending = _registry(ca_dir)
    now = time.time()
    valid = {tp for _, _, status, na, tp, _ in certs if status == "valid" and na > now}
    revoked = {int(s, 16) for s, _, status, *_ in certs if status == "revoked"}

    bundle = json.loads((ca_dir / "bundle.spiffe.json").read_text())
    assert {k["kid"] for k in bundle["keys"] if k["use"] == "jwt-svid"} == valid
    assert str(bundle["spiffe_sequence"]) == meta["spiffe_sequence"]
    roots = x509.load_pem_x509_certificates((ca_dir / "root_cert.pem").read_bytes())
    assert x509.load_pem_x509_certificates((ca_dir / "svid_bundle.pem").read_bytes()) == roots

    crl = x509.load_pem_x509_crl((ca_dir / "crl.pem").read_bytes())
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert str(number) == meta["crl_number"]
    issuer_file = "intermediate_cert.pem" if meta.get("intermediate") == "1" else "root_cert.pem"
    issuer = x509.load_pem_x509_certificate((ca_dir / issuer_file).read_bytes())
    assert crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    assert {e.serial_number for e in crl} == revoked
    # What a running service consults: every revoked certificate is refused.
    source = FileBundleSource(ca_dir / "bundle.spiffe.json", ca_dir / "crl.pem")
    for serial, _, status, _, _, der in certs:
        cert = x509.load_der_x509_certificate(der)
        assert source.is_revoked(cert) == (status == "revoked"), serial

    # The journal holds nothing unfinished (installed rows may linger until the next change).
    assert all(g is not None and g <= number for _, _, g in pending), pending

    assert not [e for e in ca_dir.iterdir() if TEMP.fullmatch(e.name)]
    assert not list(ca_dir.parent.glob(f".{ca_dir.name}.init-*"))
    keys_allowed = {(ca_dir / k).resolve() for k in ("root_key.pem", "intermediate_key.pem")}

    latest: dict[str, int] = {}
    for serial, name, *_ in certs:
        latest[name] = int(serial, 16)
    for out in out_dirs:
        for folder in sorted(p for p in out.iterdir() if p.is_dir() and not p.is_symlink()):
            keys_allowed |= _check_svid_folder(folder, roots, latest.get(folder.name))
    for root in (ca_dir, *out_dirs):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink() and b"PRIVATE KEY" in path.read_bytes():
                assert path.resolve() in keys_allowed, f"stray key material: {path}"


def _check_svid_folder(
    folder: Path, roots: list[x509.Certificate], latest: int | None
) -> set[Path]:
    """One complete set, the latest issued for the folder's name; returns its key's path."""
    entries = {e.name for e in folder.iterdir()}
    current = os.readlink(folder / "..data") if (folder / "..data").is_symlink() else None
    sets = {e for e in entries if e.startswith("..svid-")}
    assert sets == ({current} if current else set()), (folder, entries)
    assert entries - sets - {"..data"} <= SVID_NAMES, (folder, entries)
    if "svid.pem" not in entries:
        assert not (entries & SVID_NAMES), (folder, entries)  # the old set was "none"
        return set()
    chain = x509.load_pem_x509_certificates((folder / "svid.pem").read_bytes())
    assert chain[0].serial_number == latest, folder
    assert x509.load_pem_x509_certificates((folder / "svid_bundle.pem").read_bytes()) == roots
    for name in SVID_NAMES & entries:
        own_key = name == "svid_key.pem" and not (folder / name).is_symlink()
        if current is not None and not own_key:  # a service may keep its key as a plain file
            assert os.readlink(folder / name) == f"..data/{name}", (folder, name)
        mode = stat.S_IMODE((folder / name).stat().st_mode)
        assert mode == (0o600 if name == "svid_key.pem" else 0o644), (folder, name, oct(mode))
    key_path = folder / "svid_key.pem"
    if not key_path.exists():
        return set()
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert key.public_key() == chain[0].public_key(), f"{folder}: key and certificate differ"
    return {key_path.resolve()}


@pytest.fixture
def consistent() -> Callable[..., None]:
    return check_consistent
