"""Run a command that the kernel stops when the launcher dies, even by SIGKILL.

``python -m mesh.demo.orchestration.pdeathsig PARENT_PID COMMAND...`` asks for SIGTERM on the
parent's death (``PR_SET_PDEATHSIG``, Linux; kept across ``execve``), checks the parent is
still the one that started it (it may have died before the request), then replaces itself with
the command.

This runs as its own process rather than as ``preexec_fn``: the launcher has gRPC threads, and a
``fork()`` in a threaded process that then runs Python code in the child (or gRPC's at-fork
handlers) can deadlock; without ``preexec_fn`` subprocess uses ``vfork`` + ``exec`` directly.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Sequence

_PR_SET_PDEATHSIG = 1


def wrap(argv: Sequence[str]) -> list[str]:
    """``argv`` prefixed so that it dies with this process (unchanged off Linux)."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-m", "mesh.demo.orchestration.pdeathsig", str(os.getpid()), *argv]


def main(argv: Sequence[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m mesh.demo.orchestration.pdeathsig PARENT_PID COMMAND...",
              file=sys.stderr)
        return 2
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(argv[0]):
        return 1  # the launcher is already gone: do not start an orphan
    command = list(argv[1:])
    os.execvp(command[0], command)  # noqa: S606 - argv from our own launcher, no shell
    return 127  # pragma: no cover - execvp does not return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
