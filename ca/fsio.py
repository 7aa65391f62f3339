"""Files: PEM encoding of keys and certificates, and crash-safe atomic writes.

Every output goes to a temporary file in the destination folder, is fsynced, then moved into
place with ``os.replace``: a reader sees the old file or the new one, never half of either.
Private keys are created 0600 from the start (``mkstemp``), never widened later.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca.errors import CorruptCA, InsecureCAKey, OutputError

KEY_MODE = 0o600
PUBLIC_MODE = 0o644


def cert_pem(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8, unencrypted: the file mode protects it (spec 2.1)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load a CA key, refusing one that other users could read or replace (like ssh does)."""
    try:
        with path.open("rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode & 0o777
            data = fh.read()
    except OSError as err:
        raise CorruptCA(f"cannot read the CA key {path.name}: {err.strerror}") from err
    if mode & 0o077:
        raise InsecureCAKey(
            f"the CA key {path.name} is open to other users (mode {mode:04o}); "
            f"run chmod 600 on it"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise CorruptCA(f"the CA key {path.name} is not a readable PEM private key") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
        key.curve, ec.SECP256R1
    ):
        raise CorruptCA(f"the CA key {path.name} is not an ECDSA P-256 key")
    return key


def load_cert(path: Path) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CorruptCA(f"cannot read the CA certificate {path.name}: {err.strerror}") from err
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as err:
        raise CorruptCA(
            f"the CA certificate {path.name} is not a readable PEM certificate"
        ) from err


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(path: Path, data: bytes, mode: int) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp)


class StagedFiles:
    """A set of files written now and moved into place together later (or thrown away).

    Staging happens while a registry transaction is still open, so a disk or permission
    problem aborts the transaction before anything is committed or replaced.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []

    def add(self, path: Path, data: bytes, mode: int = PUBLIC_MODE) -> None:
        try:
            tmp = _write_temp(path, data, mode)
        except OSError as err:
            raise OutputError(f"cannot write {path}: {err.strerror or err}") from err
        self._pending.append((tmp, path))

    def commit(self) -> None:
        dirs: set[Path] = set()
        try:
            for tmp, path in self._pending:
                os.replace(tmp, path)
                dirs.add(path.parent)
            for d in dirs:
                fsync_dir(d)
        except OSError as err:
            self.discard()
            raise OutputError(f"cannot move a new file into place: {err.strerror or err}") from err
        self._pending.clear()

    def discard(self) -> None:
        for tmp, _ in self._pending:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._pending.clear()


def atomic_write(path: Path, data: bytes, mode: int = PUBLIC_MODE) -> None:
    staged = StagedFiles()
    staged.add(path, data, mode)
    staged.commit()
