"""The CLI without surprises: one serial format, one way to name things, --ca-dir anywhere,
'-' for stdin, --json for data, defaults in --help, one-sentence usage errors, no traceback on
a closed pipe, and the root fingerprint a node pins."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca import authority
from ca.cli import build_issue_parser, build_parser, issue_main, main
from ca.crl import REASONS

BIN = Path(sys.executable).parent
# First byte zero: 32 digits here; openssl prints whole bytes, so 30 digits for this one.
LOW = 0x00AB_CDEF_0123_4567_89AB_CDEF_0123_4567
LOW_HEX = "00abcdef0123456789abcdef01234567"


@pytest.fixture
def ca_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("MESH_CA_DIR", raising=False)
    folder = tmp_path / "ca"
    assert main(["init", "--ca-dir", str(folder), "--intermediate"]) == 0
    return folder


def _json(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out  # exactly one line: one JSON object
    doc = json.loads(out)
    assert isinstance(doc, dict)
    return doc


def test_serial_prints_one_way_everywhere(
    ca_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    d = ["--ca-dir", str(ca_dir)]
    monkeypatch.setattr(authority, "new_serial", lambda: LOW)
    assert issue_main(["low", "--out", str(out), *d]) == 0
    monkeypatch.undo()
    monkeypatch.delenv("MESH_CA_DIR", raising=False)
    assert f"serial {LOW_HEX}," in capsys.readouterr().out

    assert main(["list", *d]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith(f"{LOW_HEX}  low")
    assert main(["list", "--json", *d]) == 0
    assert [c["serial"] for c in _json(capsys)["certificates"]] == [LOW_HEX]  # type: ignore[index,union-attr]
    assert main(["inspect", "--leaf", str(out / "low" / "svid.pem")]) == 0
    assert f"serial:        {LOW_HEX}\n" in capsys.readouterr().out
    assert main(["inspect", "--leaf", "--json", str(out / "low" / "svid.pem")]) == 0
    assert _json(capsys)["certificates"][0]["serial"] == LOW_HEX  # type: ignore[index]
    assert main(["revoke", "low", *d]) == 0
    assert f"revoked {LOW_HEX} (low)" in capsys.readouterr().out
    assert main(["crl", "--json", *d]) == 0
    assert _json(capsys)["revoked"] == [LOW_HEX]
    assert main(["revoke", "--serial", "ab", *d]) == 2
    assert f"serial {'ab':0>32}" in capsys.readouterr().err

    # openssl prints this serial as whole bytes (30 digits, upper case): accepted as it is.
    printed = subprocess.run(
        ["openssl", "x509", "-noout", "-serial", "-in", str(out / "low" / "svid.pem")],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert printed == "serial=" + LOW_HEX[2:].upper()
    assert main(["revoke", "--serial", printed.removeprefix("serial="), "--json", *d]) == 0
    assert [r["serial"] for r in _json(capsys)["already_revoked"]] == [LOW_HEX]  # type: ignore[index,union-attr]


@pytest.mark.parametrize("spelling", [
    LOW_HEX, LOW_HEX.upper(), LOW_HEX.lstrip("0"), "0000" + LOW_HEX, "0x" + LOW_HEX,
    "0X" + LOW_HEX.lstrip("0").upper(), ":".join(re.findall("..", LOW_HEX)), f" {LOW_HEX} ",
])
def test_serial_spellings_name_one_certificate(
    ca_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    spelling: str,
) -> None:
    monkeypatch.setattr(authority, "new_serial", lambda: LOW)
    assert main(["issue", "low", "--ca-dir", str(ca_dir), "--out", str(ca_dir.parent)]) == 0
    capsys.readouterr()
    assert main(["revoke", "--serial", spelling, "--json", "--ca-dir", str(ca_dir)]) == 0
    assert [r["serial"] for r in _json(capsys)["revoked"]] == [LOW_HEX]  # type: ignore[index,union-attr]


def test_ca_dir_before_or_after_the_command_or_from_the_environment(
    ca_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    d = ["--ca-dir", str(ca_dir)]
    for argv in ([*d, "fingerprint"], ["fingerprint", *d]):
        assert main(argv) == 0
    monkeypatch.setenv("MESH_CA_DIR", str(ca_dir))
    assert main(["fingerprint"]) == 0
    prints = capsys.readouterr().out.splitlines()
    assert len(prints) == 3 and len(set(prints)) == 1
    monkeypatch.delenv("MESH_CA_DIR")
    assert main(["fingerprint"]) == 2
    assert "pass --ca-dir DIR or set MESH_CA_DIR" in capsys.readouterr().err


def test_one_way_to_name_a_service(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = ["--ca-dir", str(ca_dir), "--out", str(tmp_path / "o")]
    assert issue_main(["a", "b", *d]) == 0
    assert main(["renew", "a", *d]) == 0
    assert main(["renew", "--name", "b", *d]) == 0
    assert main(["revoke", "a", "--ca-dir", str(ca_dir)]) == 0
    assert main(["revoke", "--name", "b", "--ca-dir", str(ca_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("renewed ") == 2 and out.count("revoked ") == 4
    with pytest.raises(SystemExit) as info:
        main(["revoke", "a", "--name", "b", "--ca-dir", str(ca_dir)])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_repeated_revoke_republishes_and_says_so(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = ["--ca-dir", str(ca_dir)]
    assert issue_main(["b", "--out", str(tmp_path), *d]) == 0
    assert main(["revoke", "b", *d]) == 0
    first = capsys.readouterr().out
    assert main(["revoke", "b", *d]) == 0
    again = capsys.readouterr().out.splitlines()
    assert again[0] == "every certificate of 'b' was already revoked"
    assert re.fullmatch(r"crl.pem \(CRL number (\d+)\) and bundle.spiffe.json republished",
                        again[1])
    before = re.search(r"CRL number (\d+)", first)
    after = re.search(r"CRL number (\d+)", again[1])
    assert before and after and int(after[1]) == int(before[1]) + 1


def _csr_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_dash_reads_stdin(
    ca_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    _stdin(monkeypatch, _csr_pem())
    assert issue_main(["svc", "--csr", "-", "--out", str(out), "--ca-dir", str(ca_dir)]) == 0
    assert not (out / "svc" / "svid_key.pem").exists()
    _stdin(monkeypatch, _csr_pem())
    # A new key for the same service: the CSR key is not the one in the folder (there is none).
    assert main(["renew", "svc", "--csr", "-", "--out", str(out), "--ca-dir", str(ca_dir)]) == 0
    capsys.readouterr()
    _stdin(monkeypatch, (out / "svc" / "svid.pem").read_bytes())
    assert main(["inspect", "-", "--json"]) == 0
    assert _json(capsys)["file"] == "stdin"
    _stdin(monkeypatch, b"garbage")
    assert main(["inspect", "-"]) == 2
    assert capsys.readouterr().err == (
        "mesh-ca: error: stdin holds no readable certificate (PEM or DER)\n"
    )


def test_every_data_command_has_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ca, out = str(tmp_path / "ca"), str(tmp_path / "out")
    assert main(["init", "--json", "--ca-dir", ca]) == 0
    init = _json(capsys)
    assert init["trust_domain"] == "mesh.internal" and len(str(init["root_fingerprint"])) == 64
    assert issue_main(["a", "b", "--json", "--out", out, "--ca-dir", ca]) == 0
    assert [i["name"] for i in _json(capsys)["issued"]] == ["a", "b"]  # type: ignore[union-attr]
    assert main(["renew", "a", "--json", "--out", out, "--ca-dir", ca]) == 0
    assert _json(capsys)["renewed"]["folder"] == f"{out}/a"  # type: ignore[index]
    assert main(["revoke", "b", "--json", "--ca-dir", ca]) == 0
    assert [r["name"] for r in _json(capsys)["revoked"]] == ["b"]  # type: ignore[union-attr]
    for argv in (["crl"], ["list"], ["fingerprint"]):
        assert main([*argv, "--json", "--ca-dir", ca]) == 0
        _json(capsys)
    assert main(["inspect", "--json", f"{out}/a/svid.pem"]) == 0
    _json(capsys)


def _parsers() -> Iterator[argparse.ArgumentParser]:
    yield build_issue_parser()
    top = build_parser()
    yield top
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.values()


def test_help_shows_every_default() -> None:
    for parser in _parsers():
        text = parser.format_help()
        required_choice = {
            a for g in parser._mutually_exclusive_groups if g.required for a in g._group_actions
        }
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            if action in required_choice:
                continue  # NAME, --name or --serial: one must be given, none has a default
            shown = formatter._get_help_string(action) or ""
            assert "default" in shown, f"{parser.prog} {action.option_strings[-1]}: {shown}"
        if parser.prog != "mesh-ca inspect":
            assert "(default: $MESH_CA_DIR)" in " ".join(text.split()), parser.prog
    flat = {p.prog: " ".join(p.format_help().split()) for p in _parsers()}
    assert all(reason in flat["mesh-ca revoke"] for reason in REASONS)
    assert "(default: unspecified)" in flat["mesh-ca revoke"]
    assert "(default: 24h)" in flat["ca-issue"] and "(default: 24h)" in flat["mesh-ca issue"]
    assert "--json print one JSON object instead of text (default: off)" in flat["mesh-ca list"]


def test_a_bad_reason_lists_the_good_ones(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert issue_main(["b", "--out", str(tmp_path), "--ca-dir", str(ca_dir)]) == 0
    assert main(["revoke", "b", "--reason", "bored", "--ca-dir", str(ca_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(reason in err for reason in REASONS)


USAGE_ERRORS = [
    ["mesh-ca"],
    ["mesh-ca", "bogus"],
    ["mesh-ca", "revoke"],
    ["mesh-ca", "renew"],
    ["mesh-ca", "revoke", "a", "--serial", "1"],
    ["mesh-ca", "list", "--bogus"],
    ["mesh-ca", "issue", "a", "--ttl"],
    ["mesh-ca", "inspect"],
    ["ca-issue"],
    ["ca-issue", "a", "--dns"],
]


@pytest.mark.parametrize("argv", USAGE_ERRORS, ids=[" ".join(a) for a in USAGE_ERRORS])
def test_usage_errors_exit_2_with_one_sentence(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    entry = issue_main if argv[0] == "ca-issue" else main
    with pytest.raises(SystemExit) as info:
        entry(argv[1:])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith(f"{argv[0]}")
    assert ": error: " in captured.err and "usage:" not in captured.err


def _closed_pipe_run(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    """Run with stdout a pipe whose reader is already gone, as after `| head -1`: the first
    write fails, every time (no race with a reader)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [str(BIN / argv[0]), *argv[1:]], stdout=write, stderr=subprocess.PIPE,
            check=False, timeout=60,
        )
    finally:
        os.close(write)


@pytest.mark.slow
def test_no_traceback_when_the_reader_goes_away(ca_dir: Path, tmp_path: Path) -> None:
    d = ["--ca-dir", str(ca_dir)]
    runs = {
        "list": (["mesh-ca", "list", *d], 141),
        "issue": (["ca-issue", "a", "--out", str(tmp_path / "o"), *d], 141),
        "inspect": (["mesh-ca", "inspect", str(ca_dir / "root_cert.pem")], 141),
        # argparse itself swallows the failed write of --help and exits 0.
        "help": (["mesh-ca", "--help"], 0),
    }
    for what, (argv, code) in runs.items():
        res = _closed_pipe_run(argv)
        assert (res.returncode, res.stderr) == (code, b""), what
    control = subprocess.run([str(BIN / "mesh-ca"), "list", *d], capture_output=True, check=False)
    assert control.returncode == 0 and control.stdout.startswith(b"SERIAL")
    # The issue itself went through: only its report was lost.
    assert (tmp_path / "o" / "a" / "svid.pem").is_file()


def test_fingerprint_is_what_openssl_and_step_expect(
    ca_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["fingerprint", "--ca-dir", str(ca_dir)]) == 0
    ours = capsys.readouterr().out.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", ours)
    theirs = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256",
         "-in", str(ca_dir / "root_cert.pem")],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert theirs.split("=", 1)[1].replace(":", "").lower() == ours
    assert main(["init", "--ca-dir", str(tmp_path / "other")]) == 0
    other = capsys.readouterr().out
    match = re.search(r"root fingerprint \(SHA-256\): ([0-9a-f]{64})\n", other)
    assert match and match[1] != ours
