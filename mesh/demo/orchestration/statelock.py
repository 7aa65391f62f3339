"""One launcher per state folder: ``STATE/launcher.lock``, held with ``flock`` for the launcher's
whole life and holding its pid.

A second launcher on the same folder would delete the files a running mesh serves from, so it
refuses and names the pid that holds the folder. The lock is the kernel's: it goes when the
launcher's process ends, however it ends (a crashed or SIGKILLed launcher blocks nobody), and
the file itself is never deleted, since deleting a lock file lets two processes each lock a
different file of the same name. Children never hold it: they are started with every inherited
descriptor closed.

``mesh demo call`` asks :func:`holder` whether a launcher still runs on the folder before it
trusts ``endpoints.json``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from mesh.demo.errors import DemoConfigError

LOCK_FILE = "launcher.lock"
# A probe by `mesh demo call` holds a shared lock for a moment; a launcher starting just then
# tries again for this long before it concludes the folder is taken.
_RETRY_FOR = 1.0
_RETRY_EVERY = 0.05


class StateInUse(DemoConfigError):
    """Another launcher holds the state folder."""

    reason = "DEMO_STATE_IN_USE"


class StateLock:
    """The held lock of one state folder; released by :meth:`release` or at process exit."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops the flock


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    return None


def acquire(state: Path) -> StateLock:
    """Lock ``state`` (an existing folder) for this process, or raise :class:`StateInUse`."""
    path = state / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + _RETRY_FOR
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                pid = _read_pid(fd)
                os.close(fd)
                who, stop = ((f"the demo launcher pid {pid}", f"kill {pid}") if pid
                             else ("another demo launcher, just starting", "kill it"))
                raise StateInUse(
                    f"{state} is in use by {who} (a mesh kept running with "
                    f"--keep-running?): stop it first (Ctrl-C in its terminal, or {stop}), or "
                    "give this run another --state folder"
                ) from None
            time.sleep(_RETRY_EVERY)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return StateLock(path, fd)


def holder(state: Path) -> int | None:
    """The pid of the live launcher holding ``state`` (0 if it wrote none yet), or None when no
    launcher holds it."""
    try:
        fd = os.open(state / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
