"""A spiffe-helper folder whose five files switch together, as one, at every instant.

``DIR/svid.pem``, ``svid_key.pem``, ``svid_bundle.pem``, ``bundle.spiffe.json`` and ``crl.pem``
are symbolic links that never change: each points to ``.current/<same name>``. ``.current`` is
itself a link to a hidden generation folder (``.gen-<time>-<random>``) that holds the five real
files. A new set is written into a fresh generation folder, made durable, and published by
replacing ``.current`` with ``rename(2)`` of a prepared link: one atomic step. So at every instant
every name resolves into one complete generation, whatever was killed when (``kill -9``
included); files of a generation are never rewritten, and the previous generation is kept so
a reader that resolved ``.current`` a moment ago still finds its files.

A reader that opens the names one by one may still straddle a swap (old certificate, new key);
:class:`mesh.identity.svid.X509SvidFolder` already stats before and after reading and checks
that the key matches the leaf, so it never installs such a mix.

A folder first written by something else (``ca-issue``, spiffe-helper) holds regular files. The
first write moves them into generation folder ``.gen-0-imported`` *with their content
unchanged*, turns each name into a link one at a time (each swap changes no byte a reader sees),
then publishes the new generation with the single ``.current`` swap.

Crash proof: ``MESH_AGENT_KILL_AT=<step>[@N]`` makes the writing process ``SIGKILL`` itself at
that step (the N-th time it is reached; see :data:`STEPS`); tests kill at every step and check
the folder still loads as a matching set, and that the next write repairs the leftovers.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mesh.identity.svid import BUNDLE_FILE, KEY_FILE, SVID_FILE

SPIFFE_BUNDLE_FILE = "bundle.spiffe.json"
CRL_FILE = "crl.pem"
#: the five names, in the order a first-time write links them (svid.pem last: its presence
#: means the others are there)
FILES = (BUNDLE_FILE, SPIFFE_BUNDLE_FILE, CRL_FILE, KEY_FILE, SVID_FILE)
CURRENT = ".current"
_NEXT = ".current.next"
_GEN_PREFIX = ".gen-"
_IMPORTED = ".gen-0-imported"
KILL_ENV = "MESH_AGENT_KILL_AT"

#: every step of a write, in order; ``MESH_AGENT_KILL_AT`` names one of them
STEPS = (
    "mkdir",
    *(f"write:{name}" for name in FILES),
    "fsync-gen",
    "import",
    *(f"link:{name}" for name in FILES),
    "prepare-swap",
    "swap",
    "fsync-dir",
    "cleanup",
)


_reached: dict[str, int] = {}


def _step(name: str) -> None:
    """Die here if the kill switch names this step (crash tests only): ``STEP`` kills the
    first time the step is reached in this process, ``STEP@N`` the N-th time (a kill in the
    middle of a later renewal, not of the first issuance)."""
    want = os.environ.get(KILL_ENV)
    if not want:
        return
    step, _, nth = want.partition("@")
    if step != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] >= (int(nth) if nth.isdigit() else 1):
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class FolderContent:
    """One complete set of the five files (bytes, as written)."""

    chain_pem: bytes
    key_pem: bytes
    roots_pem: bytes
    bundle_json: bytes
    crl_pem: bytes

    def files(self) -> Mapping[str, tuple[bytes, int]]:
        """name -> (content, mode)."""
        return {
            BUNDLE_FILE: (self.roots_pem, 0o644),
            SPIFFE_BUNDLE_FILE: (self.bundle_json, 0o644),
            CRL_FILE: (self.crl_pem, 0o644),
            KEY_FILE: (self.key_pem, 0o600),
            SVID_FILE: (self.chain_pem, 0o644),
        }


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> None:
    # O_EXCL on a fresh name in a fresh folder: nothing else can have opened it, and the mode
    # is the final one from the first byte (a key is never briefly world-readable).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not loosen or tighten what was asked
        if owner is not None:
            os.fchown(fd, *owner)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_link(folder: Path, name: str, target: str) -> None:
    """Make ``folder/name`` a link to ``target`` with one rename (atomic for readers)."""
    tmp = folder / f".{name}.link-{secrets.token_hex(4)}"
    os.symlink(target, tmp)
    try:
        os.replace(tmp, folder / name)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class SvidFolderWriter:
    """Keeps one spiffe-helper folder current; every :meth:`write` switches all five files.

    ``owner`` (uid, gid): the files of each generation are given to that user (the service
    reading them; its key must be readable by it alone). Writes to one folder are serialised
    (a thread lock, and ``flock`` on the folder against another process): two interleaved
    writes could otherwise clean up each other's fresh generation.
    """

    def __init__(self, folder: Path | str, *, owner: tuple[int, int] | None = None) -> None:
        self.folder = Path(folder)
        self.owner = owner
        self._lock = threading.Lock()

    def write(self, content: FolderContent) -> Path:
        """Publish ``content``; returns the new generation folder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                return self._write_locked(content)
            finally:
                os.close(fd)  # releases the flock

    def _write_locked(self, content: FolderContent) -> Path:
        folder = self.folder
        gen = folder / f"{_GEN_PREFIX}{time.time_ns()}-{secrets.token_hex(4)}"
        os.mkdir(gen, 0o755)
        os.chmod(gen, 0o755)  # noqa: S103 (readers need to enter; the key file is 0600)
        _step("mkdir")
        for name, (data, mode) in content.files().items():
            _write_file(gen / name, data, mode, self.owner)
            _step(f"write:{name}")
        _fsync_dir(gen)
        _step("fsync-gen")
        self._adopt(folder)
        previous = os.readlink(folder / CURRENT)
        _replace_link(folder, _NEXT, gen.name)
        _step("prepare-swap")
        os.replace(folder / _NEXT, folder / CURRENT)
        _step("swap")
        _fsync_dir(folder)
        _step("fsync-dir")
        self._cleanup(folder, keep={gen.name, previous})
        _step("cleanup")
        return gen

    def current(self) -> Path | None:
        """The generation folder in force, or None before the first write."""
        try:
            target = os.readlink(self.folder / CURRENT)
        except OSError:
            return None
        return self.folder / target

    def _adopt(self, folder: Path) -> None:
        """Make every name a link through ``.current`` without changing what a reader sees."""
        link_target = {name: f"{CURRENT}/{name}" for name in FILES}
        if all(
            (folder / n).is_symlink() and os.readlink(folder / n) == link_target[n] for n in FILES
        ) and (folder / CURRENT).is_symlink():
            return  # the usual case: already ours
        if not (folder / CURRENT).is_symlink():
            # Nothing of ours yet: freeze what is there (maybe nothing, maybe another writer's
            # files) into a generation of its own, then point .current at it.
            imported = folder / _IMPORTED
            if imported.exists():
                shutil.rmtree(imported)  # a previous import that was killed before its link
            os.mkdir(imported, 0o755)
            for name in FILES:
                src = folder / name
                if src.is_file():  # follows a link: what a reader sees now is what we keep
                    shutil.copy2(src, imported / name)
            _fsync_dir(imported)
            _replace_link(folder, CURRENT, imported.name)
            _fsync_dir(folder)
        _step("import")
        for name in FILES:
            path = folder / name
            if not (path.is_symlink() and os.readlink(path) == link_target[name]):
                _replace_link(folder, name, link_target[name])
            _step(f"link:{name}")

    @staticmethod
    def _cleanup(folder: Path, keep: set[str]) -> None:
        """Remove every generation but the current and the previous one (a reader that
        resolved ``.current`` just before the swap still finds its files), and stray links:
        the leftovers of writes killed before their swap."""
        for p in folder.iterdir():
            if p.name.startswith(_GEN_PREFIX) and p.name not in keep and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
        for p in folder.iterdir():
            if p.name.startswith(".") and ".link-" in p.name and p.is_symlink():
                with contextlib.suppress(OSError):
                    p.unlink()
        with contextlib.suppress(FileNotFoundError):
            (folder / _NEXT).unlink()
