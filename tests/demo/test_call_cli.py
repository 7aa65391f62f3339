"""``mesh demo call``: argument handling and the errors it gives before any network call.
(Calls against a running mesh are in test_launcher_e2e.py.)"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from mesh.demo.client import cli
from mesh.demo.client.stubs import parse_line


def _parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mesh")
    cli.register(p.add_subparsers(dest="command", required=True))
    return p.parse_args(list(argv))


def test_no_running_demo_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _parse("demo", "call", "--state", str(tmp_path), "list")
    assert args.handler(args) == 2
    assert "no running demo in" in capsys.readouterr().err


def test_bad_order_line_is_refused_before_logging_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    roots = tmp_path / "roots.pem"
    roots.write_text("unused")
    # Port 9 (discard) is never dialled: the line is checked first.
    (tmp_path / "endpoints.json").write_text(json.dumps({
        "trust_domain": "mesh.internal", "roots": str(roots), "auth": "127.0.0.1:9",
        "gateway": "127.0.0.1:9"}))
    args = _parse("demo", "call", "--state", str(tmp_path), "order", "mug=lots")
    assert args.handler(args) == 2
    assert "quantity must be a whole number" in capsys.readouterr().err


def test_action_is_required() -> None:
    with pytest.raises(SystemExit):
        _parse("demo", "call")


@pytest.mark.parametrize(("text", "line"), [("mug=2", ("mug", 2)), ("mug", ("mug", 1))])
def test_parse_line(text: str, line: tuple[str, int]) -> None:
    assert parse_line(text) == line


@pytest.mark.parametrize("text", ["=2", "mug=", "mug=two"])
def test_parse_line_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="order line"):
        parse_line(text)
