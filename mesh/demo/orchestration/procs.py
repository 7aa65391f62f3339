"""Child processes of the demo launcher: each service in its own process group, all stopped on
exit, on Ctrl-C, on SIGTERM and when a step fails, so no process outlives the demo.

Three layers make sure of that: :meth:`Supervisor.stop_all` runs from ``finally`` and ``atexit``;
SIGTERM/SIGHUP are turned into ``SystemExit`` so those run; and on Linux every child asks the
kernel for SIGTERM when the launcher dies (``PR_SET_PDEATHSIG``, via
:mod:`mesh.demo.orchestration.pdeathsig`), which covers even SIGKILL.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from mesh.demo.errors import DemoError
from mesh.demo.orchestration import pdeathsig


class ProcessFailed(DemoError):
    """A child process exited or did not become ready in time."""

    reason = "PROCESS_FAILED"


@dataclass(frozen=True, slots=True)
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Supervisor:
    """Starts named children and guarantees they are stopped."""

    def __init__(self, state_dir: Path) -> None:
        self._state = state_dir
        self._logs = state_dir / "logs"
        self._children: dict[str, Child] = {}
        self._lock = threading.Lock()
        self._installed = False

    @property
    def pid_file(self) -> Path:
        return self._state / "pids.json"

    def install_handlers(self) -> None:
        """Make SIGTERM and SIGHUP unwind like Ctrl-C (so ``finally`` runs) and stop at exit."""
        if self._installed:
            return
        self._installed = True
        atexit.register(self.stop_all)

        def _unwind(signum: int, _frame: FrameType | None) -> None:
            raise SystemExit(128 + signum)

        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _unwind)
        # A shell starts background jobs with SIGINT ignored, and Python then leaves it so:
        # restore Ctrl-C (KeyboardInterrupt) so `kill -INT` stops the demo there too.
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def start(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> Child:
        with self._lock:
            if name in self._children and self._children[name].alive():
                raise ProcessFailed(f"{name} is already running")
            self._logs.mkdir(parents=True, exist_ok=True)
            log_path = self._logs / f"{name}.log"
            with log_path.open("ab") as log:
                popen = subprocess.Popen(
                    pdeathsig.wrap(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(env) if env is not None else None,
                    start_new_session=True,
                )
            child = Child(name, popen, log_path)
            self._children[name] = child
            self._write_pids()
            return child

    def get(self, name: str) -> Child:
        return self._children[name]

    def children(self) -> list[Child]:
        with self._lock:
            return list(self._children.values())

    def stop(self, name: str, *, timeout: float = 5.0) -> int | None:
        """SIGTERM the child's process group, then SIGKILL after ``timeout``; its exit code."""
        with self._lock:
            child = self._children.get(name)
        if child is None:
            return None
        self._finish([child], timeout)
        return child.popen.returncode

    def stop_all(self, *, timeout: float = 5.0) -> None:
        self._finish(self.children(), timeout)

    def _finish(self, children: Sequence[Child], timeout: float) -> None:
        # Signal everyone first, then wait, so shutdown costs one timeout, not one per child.
        # A group is signalled only while its leader is alive and not yet collected: once a
        # pid is collected the kernel may hand the number to an unrelated process.
        live = [c for c in children if c.popen.poll() is None]
        for child in live:
            _killpg(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in live:
            try:
                child.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _killpg(child.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.popen.wait(5)
            # Just collected by us: sweep what the leader may have left in its group.
            _killpg(child.pid, signal.SIGKILL)
        with self._lock:
            self._write_pids()

    def _write_pids(self) -> None:
        doc: dict[str, Any] = {
            "launcher": os.getpid(),
            "children": {
                c.name: {"pid": c.pid, "running": c.popen.poll() is None}
                for c in self._children.values()
            },
        }
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, self.pid_file)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_for_file(path: Path, child: Child, *, timeout: float) -> dict[str, Any]:
    """Wait until ``child`` wrote its JSON ready file; fail early if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            with contextlib.suppress(ValueError):
                doc = json.loads(path.read_text())
                if isinstance(doc, dict):
                    return doc
        if not child.alive():
            raise ProcessFailed(
                f"{child.name} exited with code {child.popen.returncode} before it was ready; "
                f"last lines of {child.log_path}:\n{child.log_tail()}"
            )
        time.sleep(0.05)
    raise ProcessFailed(
        f"{child.name} was not ready after {timeout:.0f} s; last lines of {child.log_path}:\n"
        f"{child.log_tail()}"
    )
