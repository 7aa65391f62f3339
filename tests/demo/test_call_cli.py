"""``mesh demo call``: argument handling and the errors it gives before any network call, each
exit 2 with one sentence (calls against a running mesh are in test_launcher_e2e.py).

A running demo is stood for by holding its state folder's lock (what a launcher does) and
writing ``endpoints.json``; the addresses are never dialled, since each refusal comes first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.cli import main
from mesh.demo.client.stubs import parse_line
from mesh.demo.orchestration import statelock


def _call(state: Path, *argv: str) -> list[str]:
    return ["demo", "call", "--state", str(state), *argv]


def _one_sentence(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("mesh demo call: error: ")
    return captured.err


def _endpoints(state: Path) -> None:
    roots = state / "roots.pem"
    roots.write_text("unused")
    # Port 9 (discard) is never dialled: each check below comes first.
    (state / "endpoints.json").write_text(json.dumps({
        "trust_domain": "mesh.internal", "roots": str(roots), "auth": "127.0.0.1:9",
        "gateway": "127.0.0.1:9"}))


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Path]:
    """A state folder as a running --keep-running launcher keeps it: locked, endpoints.json."""
    lock = statelock.acquire(tmp_path)
    _endpoints(tmp_path)
    yield tmp_path
    lock.release()


def test_no_running_demo_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_call(tmp_path, "list")) == 2
    assert "no demo is running in" in _one_sentence(capsys)


def test_endpoints_left_by_a_launcher_that_is_gone_are_not_trusted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # What a launcher killed with SIGKILL leaves: endpoints.json, and a lock file nobody holds.
    _endpoints(tmp_path)
    (tmp_path / statelock.LOCK_FILE).write_text("4242\n")
    assert main(_call(tmp_path, "list")) == 2
    err = _one_sentence(capsys)
    assert "no demo is running" in err and "left from a launcher that is gone" in err


def test_a_launcher_that_serves_no_callers_yet_is_named(
    running: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (running / "endpoints.json").unlink()
    assert main(_call(running, "list")) == 2
    assert f"launcher pid {os.getpid()}) is not serving callers" in _one_sentence(capsys)


def test_bad_order_line_is_refused_before_logging_in(
    running: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_call(running, "order", "mug=lots")) == 2
    assert "quantity must be a whole number" in _one_sentence(capsys)


@pytest.mark.parametrize("argv", [[], ["--timeout", "0", "list"], ["list", "--limit", "-1"],
                                  ["order"], ["fly"]])
def test_usage_errors_are_one_sentence(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(_call(tmp_path, *argv))
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and ": error: " in captured.err
    assert "usage:" not in captured.err


@pytest.mark.slow
def test_a_user_without_a_password_and_no_terminal_is_told_what_to_do(running: Path) -> None:
    # No controlling terminal (a new session) and stdin at its end: getpass has nothing to read.
    env = {k: v for k, v in os.environ.items() if k != "MESH_DEMO_PASSWORD"}
    res = subprocess.run([sys.executable, "-m", "mesh.cli", *_call(running, "--user", "carol",
                                                                     "list")],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env,
                         start_new_session=True, timeout=60, check=False)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        "mesh demo call: error: no password for carol: give --password or set "
        "MESH_DEMO_PASSWORD (there is no terminal to ask on, and stdin ended)")


@pytest.mark.parametrize(("text", "line"), [("mug=2", ("mug", 2)), ("mug", ("mug", 1))])
def test_parse_line(text: str, line: tuple[str, int]) -> None:
    assert parse_line(text) == line


@pytest.mark.parametrize("text", ["=2", "mug=", "mug=two"])
def test_parse_line_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="order line"):
        parse_line(text)
