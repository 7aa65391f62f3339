"""Files: PEM encoding of keys and certificates, and crash-safe atomic writes.

Every output goes to a temporary file in the destination folder, is fsynced, then moved into
place with ``os.replace``: a reader sees the old file or the new one, never half of either.
Every temporary file is created 0600 (``O_EXCL``) and only widened, to a public file's mode,
once its content is written: key material never sits in a file another user may open.

Temporary names follow one pattern, ``.<final name>.<8 random characters>.tmp``, so the next
run can remove what a killed one left behind (:func:`remove_stale_temps`) without touching any
file that is not ours.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Iterable
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


def _temp_name(final: str) -> str:
    # 8 characters of [0-9a-f]: within the [a-z0-9_]{8} that mkstemp uses and TEMP_NAME matches.
    return f".{final}.{secrets.token_hex(4)}.tmp"


TEMP_NAME = re.compile(r"\.(?P<final>.+)\.[a-z0-9_]{8}\.tmp")


def _fill(fd: int, name: str | Path, data: bytes, mode: int) -> None:
    """Write and fsync ``data`` into the new 0600 file open on ``fd``, then set ``mode``; on
    any failure, ``name`` (that file) is removed."""
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            if mode != 0o600:
                os.fchmod(fh.fileno(), mode)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise


def write_new(path: Path, data: bytes, mode: int = PUBLIC_MODE) -> None:
    """Create ``path`` (it must not exist) 0600, write and fsync ``data``, then set ``mode``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    _fill(fd, path, data, mode)


def _write_temp(path: Path, data: bytes, mode: int) -> Path:
    # mkstemp: O_CREAT | O_EXCL, mode 0600, name ".<final>.<8 random>.tmp" (TEMP_NAME).
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    _fill(fd, tmp, data, mode)
    return Path(tmp)


def replace_symlink(folder: Path, name: str, target: str) -> None:
    """Make ``folder/name`` a symlink to ``target`` in one ``rename`` (never absent meanwhile)."""
    tmp = folder / _temp_name(name)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, folder / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_stale_temps(folder: Path, finals: Iterable[str]) -> int:
    """Delete the temporary files a killed run left in ``folder`` for the names in ``finals``.

    Only names of our pattern whose final name is one we write are touched; callers hold the
    lock that serialises every writer of ``folder``, so none of them is in use.
    """
    wanted = set(finals)
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        match = TEMP_NAME.fullmatch(entry.name)
        if match is None or match["final"] not in wanted:
            continue
        if entry.is_dir(follow_symlinks=False):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed += 1
    return removed


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

    def commit(
        self, after_each: Callable[[Path], None] | None = None, *, sync_dirs: bool = True
    ) -> None:
        """Move every file into place in the order staged, then fsync their folders (unless
        ``sync_dirs`` is False: a later commit to the same folders fsyncs them).

        ``after_each(path)`` runs after each replace (the crash tests stop there).
        """
        dirs: set[Path] = set()
        try:
            for tmp, path in self._pending:
                os.replace(tmp, path)
                dirs.add(path.parent)
                if after_each is not None:
                    after_each(path)
            for d in dirs if sync_dirs else ():
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
