"""Unix socket paths longer than the kernel's ``sockaddr_un`` holds.

``sun_path`` is 108 bytes with its NUL, so ``bind()`` and ``connect()`` refuse a longer path
("AF_UNIX path too long"), and a socket in a state folder under a deep working directory goes
past that easily. Linux resolves ``/proc/self/fd/<fd>/<name>`` like any other path, so a
descriptor open on the socket's folder gives a short alias that works for ``bind`` and
``connect`` alike, in every thread of this process (gRPC's included), for as long as the
descriptor stays open. A path that fits is used as it is and opens nothing.
"""

from __future__ import annotations

import os
from types import TracebackType

from mesh.errors import ConfigError

#: the longest path ``sun_path`` holds (108 bytes, one of them the terminating NUL)
SUN_PATH_MAX = 107


class SocketPathError(ConfigError):
    """A Unix socket path that cannot be reached even through a short alias."""


class SocketPath:
    """``address``: what to bind or connect to for the socket at ``path``; keep the object
    open while the socket is in use (a long path's alias needs its folder descriptor)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd: int | None = None
        if len(os.fsencode(self.path)) <= SUN_PATH_MAX:
            self.address = self.path
            return
        folder, name = os.path.split(self.path)
        try:
            fd = os.open(folder or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise SocketPathError(
                f"the socket path {self.path} is longer than the {SUN_PATH_MAX} bytes a Unix "
                f"socket address holds, and its folder cannot be opened to reach it another "
                f"way ({err.strerror or err})"
            ) from err
        alias = f"/proc/self/fd/{fd}/{name}"
        if len(os.fsencode(alias)) > SUN_PATH_MAX or not os.path.isdir(f"/proc/self/fd/{fd}"):
            os.close(fd)
            raise SocketPathError(
                f"the socket path {self.path} is longer than the {SUN_PATH_MAX} bytes a Unix "
                "socket address holds: choose a shorter path (or a shorter file name, with "
                "/proc mounted)"
            )
        self._fd = fd
        self.address = alias

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> SocketPath:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
