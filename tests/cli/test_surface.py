"""One command-line surface across mesh-ca, ca-issue, mesh (token, agent, demo) and the demo's
own commands: every --help answers and shows every option's default; usage errors are one
sentence and exit 2; a reader that goes away ends no command in a traceback; '-' reads stdin
where a file or token is read; --ca-dir goes before or after the subcommand; serials print one
way."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ca import cli as ca_cli
from mesh import cli as mesh_cli
from mesh.demo.orchestration import launcher
from mesh.demo.services import serve

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PY = sys.executable

# Each command line: how to run it, and its parser.
ENTRIES: list[tuple[list[str], argparse.ArgumentParser]] = [
    ([str(BIN / "mesh-ca")], ca_cli.build_parser()),
    ([str(BIN / "ca-issue")], ca_cli.build_issue_parser()),
    ([str(BIN / "mesh")], mesh_cli.build_parser()),
    ([PY, "-m", "mesh.demo.orchestration.launcher"], launcher.parser()),
    ([PY, "-m", "mesh.demo"], serve.parser()),
]


def _walk(path: list[str], parser: argparse.ArgumentParser
          ) -> Iterator[tuple[list[str], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk([*path, name], sub)


COMMANDS = [(entry, path, parser) for entry, top in ENTRIES for path, parser in _walk([], top)]
IDS = [" ".join([Path(e[-1]).name, *p]) for e, p, _ in COMMANDS]


def test_the_walk_reaches_every_group() -> None:
    names = set(IDS)
    for expected in ("mesh-ca revoke", "mesh-ca serve", "mesh-ca evict", "ca-issue",
                     "mesh token verify", "mesh token inspect", "mesh agent",
                     "mesh agent status", "mesh demo call", "mesh demo call order",
                     "mesh demo call list", "mesh demo call token",
                     "mesh.demo.orchestration.launcher", "mesh.demo"):
        assert expected in names, sorted(names)


@pytest.mark.parametrize(("entry", "path", "parser"), COMMANDS, ids=IDS)
def test_every_option_shows_its_default(
    entry: list[str], path: list[str], parser: argparse.ArgumentParser
) -> None:
    required_choice = {
        a for g in parser._mutually_exclusive_groups if g.required for a in g._group_actions
    }
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        if action in required_choice:
            continue  # one of them must be given; none has a default
        shown = formatter._get_help_string(action) or ""
        assert "default" in shown or "required" in shown, (
            f"{parser.prog} {action.option_strings[-1]}: {shown!r}")


@pytest.mark.slow
@pytest.mark.parametrize(("entry", "path", "parser"), COMMANDS, ids=IDS)
def test_every_help_answers(
    entry: list[str], path: list[str], parser: argparse.ArgumentParser
) -> None:
    res = subprocess.run([*entry, *path, "--help"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert (res.returncode, res.stderr) == (0, "")
    assert res.stdout.startswith("usage: ")
    assert " ".join(res.stdout.split()).count("(default:") >= sum(
        1 for a in parser._actions if a.option_strings and a.default not in (None, [])
        and not isinstance(a, argparse._HelpAction) and a.default is not argparse.SUPPRESS)


def test_lists_of_values_are_spelled_out() -> None:
    flat = {" ".join(p): " ".join(parser.format_help().split())
            for _, p, parser in COMMANDS}
    from ca.crl import REASONS

    for command in ("revoke", "evict"):
        assert all(reason in flat[command] for reason in REASONS), command
    assert "KIND=SECONDS" in flat["token verify"] and "app-asserted=600" in flat["token verify"]
    assert "DEBUG, INFO, WARNING or ERROR" in flat["agent"]


USAGE_ERRORS = [
    ["mesh"], ["mesh", "bogus"], ["mesh", "token"], ["mesh", "token", "verify", "x"],
    ["mesh", "token", "verify", "x", "--audience", "spiffe://mesh.internal/svc/a",
     "--max-size", "0"],
    ["mesh", "token", "inspect"], ["mesh", "agent", "status"],
    ["mesh", "agent", "--retry-max"], ["mesh", "demo"], ["mesh", "demo", "call", "fly"],
    ["mesh", "demo", "call", "--timeout", "soon", "list"],
]


@pytest.mark.parametrize("argv", USAGE_ERRORS, ids=[" ".join(a) for a in USAGE_ERRORS])
def test_usage_errors_exit_2_with_one_sentence(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        mesh_cli.main(argv[1:])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("mesh")
    assert ": error: " in captured.err and "usage:" not in captured.err


def test_errors_found_after_parsing_are_one_sentence_too(
    mesh: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aud = ["--audience", "spiffe://mesh.internal/svc/orders"]
    cases = [
        (["token", "verify", "x", *aud], "give --bundle FILE or --ca-dir DIR"),
        (["token", "verify", "x", *aud, "--bundle", str(tmp_path / "none.json")],
         "cannot read the trust bundle"),
        (["token", "verify", "-", *aud, "--peer-cert", "-", "--bundle",
          str(mesh.ca.bundle_path)], "TOKEN and --peer-cert both name stdin"),
        (["token", "verify", "x", *aud, "--bundle", str(mesh.ca.bundle_path), "--peer-cert",
          str(tmp_path / "none.pem")], "cannot read the peer certificate"),
        (["agent", "status", "--state", str(tmp_path / "none")], "mesh agent: error: "),
        # A port of non-ASCII digits ('²'.isdigit() is true, int('²') raises).
        (["agent", "--ca", "h:\u00b2", "--ca-fingerprint", "a" * 64, "--node", "n", "--state",
          str(tmp_path / "s"), "--socket", str(tmp_path / "a.sock")], "is not HOST:PORT"),
    ]
    for argv, words in cases:
        assert mesh_cli.main(argv) == 2, argv
        captured = capsys.readouterr()
        assert captured.err.count("\n") == 1 and words in captured.err, (argv, captured.err)


def test_mesh_ca_serve_refuses_a_port_of_other_digits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ca_cli.main(["init", "--ca-dir", str(tmp_path / "ca")]) == 0
    capsys.readouterr()
    assert ca_cli.main(["serve", "--ca-dir", str(tmp_path / "ca"), "--listen", "h:\u00b2"]) == 2
    assert capsys.readouterr().err == (
        "mesh-ca: error: --listen 'h:\u00b2' is invalid: write HOST:PORT, e.g. 0.0.0.0:8443\n")


def _closed_pipe_run(argv: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run with stdout a pipe whose reader is already gone, as after `| head -1`."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(argv, input=stdin, stdout=write, stderr=subprocess.PIPE,
                              check=False, timeout=60)
    finally:
        os.close(write)


@pytest.mark.slow
def test_no_traceback_when_the_reader_goes_away(mesh: Any, tmp_path: Path) -> None:
    peer = tmp_path / "orders.pem"
    peer.write_bytes(mesh.svids["orders"].chain_pem())
    token = mesh.chain("gateway", "orders", "payments").encode()
    verify = [str(BIN / "mesh"), "token", "verify", "-", "--bundle", str(mesh.ca.bundle_path),
              "--crl", str(mesh.ca.crl_path), "--audience", str(mesh.id("payments")),
              "--peer-cert", str(peer)]
    runs = {
        "verify": (verify, token, 141),
        "verify --json": ([*verify, "--json"], token, 141),
        "rejected": ([*verify[:-2]], token, 141),  # no peer: an edge port refuses it (exit 1)
        "inspect": ([str(BIN / "mesh"), "token", "inspect", "-"], token, 141),
        "inspect --json": ([str(BIN / "mesh"), "token", "inspect", "--json", "-"], token, 141),
        "help": ([str(BIN / "mesh"), "token", "verify", "--help"], b"", 0),
    }
    for what, (argv, stdin, code) in runs.items():
        res = _closed_pipe_run(argv, stdin)
        assert (res.returncode, res.stderr) == (code, b""), what
    control = subprocess.run(verify, input=token, capture_output=True, check=False)
    assert control.returncode == 0 and control.stdout.startswith(b"VERIFIED")


def test_dash_reads_the_peer_certificate_from_stdin(
    mesh: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    token = mesh.chain("gateway", "orders")
    chain = mesh.svids["gateway"].chain_pem()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(chain)))
    assert mesh_cli.main(["token", "verify", token, "--peer-cert", "-", "--bundle",
                          str(mesh.ca.bundle_path), "--audience", str(mesh.id("orders")),
                          "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["peer"] == str(mesh.id("gateway"))


def test_ca_dir_before_or_after_the_action_or_from_the_environment(
    mesh: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = mesh.user_token("gateway")
    ca_dir = str(mesh.ca.ca_dir)
    tail = ["--audience", str(mesh.id("gateway")), "--json"]
    monkeypatch.delenv("MESH_CA_DIR", raising=False)
    for argv in (["token", "--ca-dir", ca_dir, "verify", token, *tail],
                 ["token", "verify", token, "--ca-dir", ca_dir, *tail]):
        assert mesh_cli.main(argv) == 0, argv
        doc = json.loads(capsys.readouterr().out)
        assert doc["result"] == "accept" and doc["revocation_checked"] is True
    monkeypatch.setenv("MESH_CA_DIR", ca_dir)
    assert mesh_cli.main(["token", "verify", token, *tail]) == 0
    capsys.readouterr()
    # The flag wins over the environment.
    assert mesh_cli.main(["token", "verify", token, "--ca-dir", "/nonexistent", *tail]) == 2
    assert "/nonexistent/crl.pem is missing (--ca-dir /nonexistent)" in capsys.readouterr().err


def test_inspect_json_decodes_every_layer_and_says_it_verified_nothing(
    mesh: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    token = mesh.chain("gateway", "orders", "payments")
    assert mesh_cli.main(["token", "inspect", "--json", token]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verified"] is False and "WITHOUT" in doc["warning"]
    assert [h["header"]["typ"] for h in doc["hops"]] == [
        "app-asserted+jwt", "app-asserted+jwt", "user+jwt"]
    assert doc["hops"][0]["claims"]["upstream"]["wrapped_token_bytes"] > 500
    assert doc["hops"][2]["claims"]["sub"] == "alice"
    text = json.dumps(doc)
    for part in token.split("."):
        assert part[-40:] not in text  # no signature, no raw token
    assert mesh_cli.main(["token", "inspect", "--json", "not-a-token"]) == 1
    bad = json.loads(capsys.readouterr().out)
    assert bad["hops"] == [] and bad["undecodable"]["hop"] == 0


# Every place that prints a serial calls format_serial (mesh.identity.certs): no hand-made
# hex formatting of a serial anywhere in ca/ or mesh/.
_HAND_MADE = re.compile(r"serial[\w.()\[\]]*:0?\d*x\}|\bhex\(\s*[\w.]*serial")


def test_serials_are_formatted_in_one_place() -> None:
    offenders = []
    for package in ("ca", "mesh"):
        for path in (ROOT / package).rglob("*.py"):
            if "/v1/" in path.as_posix():
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if _HAND_MADE.search(line) and "SET_PREFIX" not in line:
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []
    from ca.parsing import format_serial as ca_format
    from mesh.identity.certs import format_serial

    assert ca_format is format_serial
    assert format_serial(0xABC) == "00000000000000000000000000000abc"
