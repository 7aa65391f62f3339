"""One launcher per state folder: the lock refuses a second one, names the holder's pid, and
goes away with its holder however it ends; the summary shows every failed step in full."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.demo.orchestration import statelock
from mesh.demo.orchestration.launcher import print_summary, write_summary
from mesh.demo.orchestration.stage import MARKER, claim_state
from mesh.demo.orchestration.story import Out, Report

HOLD = """
import sys, time
from pathlib import Path
from mesh.demo.orchestration.statelock import acquire
acquire(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(600)
"""


def _holder_process(state: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(state)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_a_second_launcher_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    proc = _holder_process(tmp_path)
    try:
        assert statelock.holder(tmp_path) == proc.pid
        with pytest.raises(statelock.StateInUse) as info:
            claim_state(tmp_path)
        assert f"in use by the demo launcher pid {proc.pid}" in str(info.value)
        assert f"kill {proc.pid}" in str(info.value)
        # Nothing in the folder was touched by the refused launcher.
        assert sorted(p.name for p in tmp_path.iterdir()) == [statelock.LOCK_FILE]
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_launcher_blocks_nobody(tmp_path: Path) -> None:
    proc = _holder_process(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert statelock.holder(tmp_path) is None
    lock = claim_state(tmp_path)
    try:
        assert statelock.holder(tmp_path) == os.getpid()
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MARKER, statelock.LOCK_FILE])
    finally:
        lock.release()
    assert statelock.holder(tmp_path) is None


def test_the_lock_file_survives_the_state_being_emptied(tmp_path: Path) -> None:
    lock = claim_state(tmp_path)
    (tmp_path / "logs").mkdir()
    lock.release()
    # A new run empties the folder but keeps the lock file (never deleted: see statelock).
    lock = claim_state(tmp_path)
    lock.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MARKER, statelock.LOCK_FILE])


def test_a_failed_step_is_shown_in_full_below_the_table_and_in_summary_json(
    tmp_path: Path,
) -> None:
    report = Report()
    report.add("1 alice places an order", "an order", "ok", True)
    long = ("StageError: orders did not pass its health check over mutual TLS: UNAVAILABLE: "
            "failed to connect to all addresses; last error: the end of this sentence matters")
    report.add("run to the end", "the whole story", long, False,
               detail="traceback in demo-state/logs/launcher-traceback.txt")
    buf = io.StringIO()
    print_summary(Out(buf), report)
    text = buf.getvalue()
    table, below = text.split("What did not go as expected, in full:")
    assert long not in table and "..." in table  # the table cell is cut to fit
    assert long in below and "launcher-traceback.txt" in below
    doc = json.loads(write_summary(tmp_path, report).read_text())
    failed = [s for s in doc["steps"] if not s["ok"]]
    assert failed == [{"step": "run to the end", "expected": "the whole story",
                       "observed": long, "ok": False,
                       "detail": "traceback in demo-state/logs/launcher-traceback.txt"}]
    assert doc["ok"] is False
