"""The command line: happy paths, file modes, and every bad input exiting 2 with one sentence
while the registry, the bundle and the output files stay exactly as they were."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ca import authority
from ca.cli import issue_main, main

Snap = Callable[[Path], dict[str, str]]


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "ca"
    assert main(["init", "--ca-dir", str(folder), "--intermediate"]) == 0
    return folder


def test_init_issue_modes_and_outputs(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _mode(ca_dir) == 0o700
    for key in ("root_key.pem", "intermediate_key.pem", "registry.db"):
        assert _mode(ca_dir / key) == 0o600, key
    for pub in ("root_cert.pem", "bundle.spiffe.json", "svid_bundle.pem", "crl.pem"):
        assert _mode(ca_dir / pub) == 0o644, pub
    capsys.readouterr()

    out = tmp_path / "svids"
    rc = issue_main(["auth", "orders", "--ca-dir", str(ca_dir), "--out", str(out), "--ttl", "2h"])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("issued auth: spiffe://mesh.internal/svc/auth")
    for name in ("auth", "orders"):
        folder = out / name
        assert _mode(folder / "svid_key.pem") == 0o600
        assert _mode(folder / "svid.pem") == 0o644
        assert _mode(folder / "svid_bundle.pem") == 0o644
        chain = x509.load_pem_x509_certificates((folder / "svid.pem").read_bytes())
        assert len(chain) == 2  # leaf + intermediate
        leaf = chain[0]
        assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == __import__(
            "datetime"
        ).timedelta(hours=2, minutes=1)
        key = serialization.load_pem_private_key((folder / "svid_key.pem").read_bytes(), None)
        assert key.public_key() == leaf.public_key()
        assert x509.load_pem_x509_certificates(
            (folder / "svid_bundle.pem").read_bytes()
        ) == x509.load_pem_x509_certificates((ca_dir / "root_cert.pem").read_bytes())
    assert not list(out.rglob("*.tmp")) and not list(ca_dir.glob("*.tmp"))


# Serials whose first hex digits are zero: printed with 31 or 30 digits, these moved the table
# columns (the test was flaky, 1 run in 16). Issued on purpose, never by chance.
LOW_SERIALS = (
    0x0ABC_DEF0_1234_5678_9ABC_DEF0_1234_5678,  # first hex digit 0 (openssl prints 32 digits)
    0x00AB_CDEF_0123_4567_89AB_CDEF_0123_4567,  # first byte 0 (openssl prints 30 digits)
)


def test_env_ca_dir_list_revoke_crl_renew(
    ca_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MESH_CA_DIR", str(ca_dir))
    monkeypatch.chdir(tmp_path)
    serials = iter(LOW_SERIALS)
    monkeypatch.setattr(authority, "new_serial", lambda: next(serials))
    assert issue_main(["orders", "payments"]) == 0
    monkeypatch.undo()
    monkeypatch.setenv("MESH_CA_DIR", str(ca_dir))
    monkeypatch.chdir(tmp_path)
    assert (tmp_path / "orders" / "svid.pem").is_file()  # default --out is the current folder
    issued = capsys.readouterr().out
    assert "serial 0abcdef0123456789abcdef012345678," in issued
    assert "serial 00abcdef0123456789abcdef01234567," in issued

    assert main(["list", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["trust_domain"] == "mesh.internal"
    by_name = {c["name"]: c for c in doc["certificates"]}
    assert set(by_name) == {"orders", "payments"}
    assert all(c["status"] == "valid" for c in doc["certificates"])
    serial = by_name["payments"]["serial"]
    assert serial == "00abcdef0123456789abcdef01234567"

    # Upper case, without the leading zeros (as openssl prints this one), with 0x: all one serial.
    assert main(["revoke", "--serial", "0xABCDEF0123456789ABCDEF01234567",
                 "--reason", "key-compromise"]) == 0
    assert f"revoked {serial} (payments), reason keyCompromise" in capsys.readouterr().out
    assert main(["list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["SERIAL", "NAME", "STATUS"]
    assert f"{serial}  payments  revoked (keyCompromise)" in "\n".join(table)
    # Every serial cell is 32 digits, so every column starts where the header's does.
    assert {row.index(" ") for row in table[1:]} == {32}
    name_at = table[0].index("NAME")
    assert all(row[name_at - 2:name_at] == "  " and row[name_at] != " " for row in table)

    assert main(["crl"]) == 0
    out = capsys.readouterr().out
    assert "revoked certificates: 1" in out and "next update:" in out
    crl = x509.load_pem_x509_crl((ca_dir / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None

    old = (tmp_path / "orders" / "svid.pem").read_bytes()
    assert main(["renew", "orders"]) == 0
    assert "renewed orders:" in capsys.readouterr().out
    assert (tmp_path / "orders" / "svid.pem").read_bytes() != old
    bundle = json.loads((ca_dir / "bundle.spiffe.json").read_text())
    jwt_names = [k for k in bundle["keys"] if k["use"] == "jwt-svid"]
    assert len(jwt_names) == 2  # both orders certificates; the revoked payments one is gone


def _csr_file(tmp_path: Path, key: object, name: str) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    path = tmp_path / name
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return str(path)


def test_csr_via_cli_writes_no_key(ca_dir: Path, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = _csr_file(tmp_path, key, "req.pem")
    out = tmp_path / "out"
    assert issue_main(["orders", "--ca-dir", str(ca_dir), "--out", str(out), "--csr", csr]) == 0
    assert not (out / "orders" / "svid_key.pem").exists()
    leaf = x509.load_pem_x509_certificates((out / "orders" / "svid.pem").read_bytes())[0]
    assert leaf.public_key() == key.public_key()


BAD_ARGS: list[tuple[str, list[str], str]] = [
    ("invalid name", ["issue", "Orders"], "service name 'Orders' is invalid"),
    ("one invalid name in a batch", ["issue", "ok", "a_b"], "service name 'a_b' is invalid"),
    ("bad ttl", ["issue", "a", "--ttl", "forever"], "lifetime 'forever' is invalid"),
    ("zero ttl", ["issue", "a", "--ttl", "0s"], "at least one second"),
    ("ttl beyond the CA", ["issue", "a", "--ttl", "3000d"], "outlive its issuing CA"),
    ("bad dns", ["issue", "a", "--dns=-x.org"], "DNS name '-x.org' is invalid"),
    ("bad ip", ["issue", "a", "--ip", "1.2.3"], "IP address '1.2.3' is invalid"),
    ("missing csr file", ["issue", "a", "--csr", "/nonexistent/req.pem"], "cannot read the CSR"),
    ("garbage csr", ["issue", "a", "--csr", "@junk"], "not a readable PEM certificate signing"),
    ("rsa csr", ["issue", "a", "--csr", "@rsa"], "not ECDSA P-256"),
    ("csr with two names", ["issue", "a", "b", "--csr", "@ec"], "one service per CSR"),
    ("unknown serial", ["revoke", "--serial", "abcdef"], "serial 00000000000000000000000000abcdef"),
    ("non-hex serial", ["revoke", "--serial", "xyz"], "not a hexadecimal number"),
    ("unknown name", ["revoke", "--name", "ghost"], "'ghost' has never been issued"),
    (
        "bad reason",
        ["revoke", "--name", "exists", "--reason", "bored"],
        "reason 'bored' is unknown",
    ),
    ("renew unknown", ["renew", "ghost"], "'ghost' has never been issued"),
    ("init over a CA", ["init"], "already holds a CA"),
    ("out is a file", ["issue", "a", "--out", "@file"], "cannot"),
]


@pytest.mark.parametrize(("what", "argv", "needle"), BAD_ARGS, ids=[b[0] for b in BAD_ARGS])
def test_bad_input_exits_2_and_changes_nothing(
    ca_dir: Path,
    tmp_path: Path,
    snapshot: Snap,
    capsys: pytest.CaptureFixture[str],
    what: str,
    argv: list[str],
    needle: str,
) -> None:
    out = tmp_path / "out"
    assert main(["issue", "exists", "--ca-dir", str(ca_dir), "--out", str(out)]) == 0
    (tmp_path / "junk").write_text("not a CSR")
    (tmp_path / "file").write_text("a file, not a folder")
    files = {
        "@junk": str(tmp_path / "junk"),
        "@rsa": _csr_file(tmp_path, rsa.generate_private_key(65537, 2048), "rsa.pem"),
        "@ec": _csr_file(tmp_path, ec.generate_private_key(ec.SECP256R1()), "ec.pem"),
        "@file": str(tmp_path / "file"),
    }
    argv = [files.get(a, a) for a in argv]
    if argv[0] == "issue" and "--out" not in argv:
        argv += ["--out", str(out)]
    before_ca, before_out = snapshot(ca_dir), snapshot(out)
    capsys.readouterr()

    assert main([*argv, "--ca-dir", str(ca_dir)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("mesh-ca: error: ") and captured.err.count("\n") == 1
    assert needle in captured.err
    assert snapshot(ca_dir) == before_ca
    assert snapshot(out) == before_out


def test_unusable_ca_folder_exits_2(
    ca_dir: Path, tmp_path: Path, snapshot: Snap, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MESH_CA_DIR", raising=False)
    assert issue_main(["a"]) == 2
    assert "pass --ca-dir DIR or set MESH_CA_DIR" in capsys.readouterr().err

    assert issue_main(["a", "--ca-dir", str(tmp_path / "nowhere")]) == 2
    assert "there is no CA folder" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()

    other = tmp_path / "other"
    assert main(["init", "--ca-dir", str(other)]) == 0
    (ca_dir / "root_key.pem").write_bytes((other / "root_key.pem").read_bytes())
    before = snapshot(ca_dir)
    capsys.readouterr()
    assert issue_main(["a", "--ca-dir", str(ca_dir), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "the CA key root_key.pem does not belong to root_cert.pem" in err
    assert snapshot(ca_dir) == before and not (tmp_path / "o").exists()

    (other / "registry.db").write_bytes(b"this is not sqlite" * 100)
    assert main(["list", "--ca-dir", str(other)]) == 2
    assert "registry" in capsys.readouterr().err

    assert main(["init", "--ca-dir", str(tmp_path / "x"), "--trust-domain", "Not Valid"]) == 2
    assert "trust domain 'Not Valid' is invalid" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_scripts_ca_issue_wrapper_keeps_relative_paths(ca_dir: Path, tmp_path: Path) -> None:
    import subprocess

    script = Path(__file__).resolve().parents[2] / "scripts" / "ca-issue"
    work = tmp_path / "elsewhere"
    work.mkdir()
    res = subprocess.run(
        [str(script), "orders", "--ca-dir", str(ca_dir), "--out", "rel-out"],
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert (work / "rel-out" / "orders" / "svid.pem").is_file()
    bad = subprocess.run(
        [str(script), "Bad_Name", "--ca-dir", str(ca_dir)],
        cwd=work, capture_output=True, text=True, check=False, timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("ca-issue: error: service name 'Bad_Name' is invalid")


def test_csr_next_to_a_foreign_key_file_is_refused(
    ca_dir: Path, tmp_path: Path, snapshot: Snap, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["issue", "orders", "--ca-dir", str(ca_dir), "--out", str(out)]) == 0
    key = ec.generate_private_key(ec.SECP256R1())
    csr = _csr_file(tmp_path, key, "renew.pem")
    before_ca, before_out = snapshot(ca_dir), snapshot(out)
    capsys.readouterr()
    # The folder still holds the CA-made key: the new certificate would be paired with it.
    argv = ["renew", "orders", "--ca-dir", str(ca_dir), "--out", str(out), "--csr", csr]
    assert main(argv) == 2
    assert "holds a key other than the CSR's" in capsys.readouterr().err
    assert snapshot(ca_dir) == before_ca and snapshot(out) == before_out

    # The service's own key in the folder: the CSR matches it, the renewal goes through.
    (out / "orders" / "svid_key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert main(argv) == 0
    leaf = x509.load_pem_x509_certificates((out / "orders" / "svid.pem").read_bytes())[0]
    assert leaf.public_key() == key.public_key()
