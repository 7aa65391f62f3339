"""Kill every CA command at every step of its commit and publication, then check that the
next command leaves registry, bundle, CRL and SVID folders consistent, with no stray key.

The kill is deterministic: ``MESH_CA_CRASH_AT=<step>`` makes the process SIGKILL itself at
that point (ca/crashpoints.py lists the steps). Each case asserts that the process really died
there (exit -9), that the change is in the registry exactly when the kill came after COMMIT,
then runs ``mesh-ca list`` (a command that changes nothing: opening the CA repairs), checks
everything, runs the killed command again and checks again.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from ca import crashpoints
from ca.authority import CertificateAuthority

BIN = Path(sys.executable).parent
STEPS = list(crashpoints.STEPS)
INIT_STEPS = [s for s in STEPS if s.startswith("init-")]
CHANGE_STEPS = [s for s in STEPS if s not in INIT_STEPS]
# Commands that write no SVID folder never pass these.
SVID_STEPS = ["intent-committed", "svid-staged", "svid-migrated", "svid-switched",
              "svid-linked", "svid-cleaned"]
NO_SVID_STEPS = [s for s in CHANGE_STEPS if s not in SVID_STEPS]
COMMITTED_FROM = STEPS.index("after-commit")

Check = Callable[..., None]


@dataclass
class World:
    root: Path
    ca_dir: Path
    out: Path
    csr: Path

    def run(self, argv: list[str], crash: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in (crashpoints.ENV, "MESH_CA_DIR")}
        if crash is not None:
            env[crashpoints.ENV] = crash
        tool, *args = [a.format(out=self.out, csr=self.csr) for a in argv]
        return subprocess.run(
            [str(BIN / tool), *args, "--ca-dir", str(self.ca_dir)],
            env=env, capture_output=True, text=True, check=False, timeout=60,
        )

    def certs(self) -> list[tuple[str, str, str]]:
        con = sqlite3.connect(f"file:{self.ca_dir / 'registry.db'}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT serial, name, status FROM certs ORDER BY rowid").fetchall()
        finally:
            con.close()
        return [(str(s), str(n), str(st)) for s, n, st in rows]


def _write_plain(folder: Path, chain: bytes, key: bytes, bundle: bytes) -> None:
    """A folder as earlier versions (and other tools) write it: three plain files."""
    folder.mkdir(parents=True)
    for name, data, mode in (("svid.pem", chain, 0o644), ("svid_key.pem", key, 0o600),
                             ("svid_bundle.pem", bundle, 0o644)):
        (folder / name).write_bytes(data)
        (folder / name).chmod(mode)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A CA with: a (written in the link layout), b and c (plain-file folders), e (revoked),
    and a CSR for a's current key."""
    ca_dir, out = tmp_path / "ca", tmp_path / "out"
    with CertificateAuthority.init(ca_dir, intermediate=True) as ca:
        ca.issue("a", out_dir=out)
        for name in ("b", "c"):
            svid = ca.issue(name)
            _write_plain(out / name, svid.chain_pem(), svid.key_pem(), svid.bundle_pem())
        ca.issue("e")
        ca.revoke(name="e", reason="keyCompromise")
    key = serialization.load_pem_private_key((out / "a" / "svid_key.pem").read_bytes(), None)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a")]))
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    (tmp_path / "a.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    yield World(tmp_path, ca_dir, out, tmp_path / "a.csr")


COMMANDS: dict[str, tuple[list[str], list[str]]] = {
    # a: link layout, c: plain files (migrated), d: a new folder.
    "issue": (["ca-issue", "a", "c", "d", "--out", "{out}"], CHANGE_STEPS),
    "renew": (["mesh-ca", "renew", "b", "--out", "{out}"], CHANGE_STEPS),
    # The service keeps its key: the CA carries it into the new set (no migration: a's
    # folder is already in the link layout).
    "renew-csr": (
        ["mesh-ca", "renew", "a", "--csr", "{csr}", "--out", "{out}"],
        [s for s in CHANGE_STEPS if s != "svid-migrated"],
    ),
    "revoke": (["mesh-ca", "revoke", "a", "--reason", "keyCompromise"], NO_SVID_STEPS),
    "crl": (["mesh-ca", "crl"], NO_SVID_STEPS),
}
CASES = [(cmd, step) for cmd, (_, steps) in COMMANDS.items() for step in steps]


def test_every_step_is_listed_and_reached_somewhere() -> None:
    """The steps the code can reach are exactly STEPS (a typo would make a kill never fire)."""
    source = "".join(p.read_text() for p in Path(crashpoints.__file__).parent.glob("*.py"))
    named = set(re.findall(r'crashpoints\.reached\("([^"]+)"\)', source))
    published = {f"published:{n}" for n in ("bundle.spiffe.json", "svid_bundle.pem", "crl.pem")}
    assert named | published == set(STEPS)
    assert {step for _, step in CASES} | set(INIT_STEPS) == set(STEPS)


@pytest.mark.slow
@pytest.mark.parametrize(("command", "step"), CASES, ids=[f"{c}@{s}" for c, s in CASES])
def test_kill_at_every_step(world: World, consistent: Check, command: str, step: str) -> None:
    argv, _ = COMMANDS[command]
    consistent(world.ca_dir, [world.out])
    before = world.certs()

    killed = world.run(argv, crash=step)
    assert killed.returncode == -signal.SIGKILL, (killed.stdout, killed.stderr)
    committed = STEPS.index(step) >= COMMITTED_FROM
    if command != "crl":  # crl changes no certificate row
        assert (world.certs() != before) == committed

    listed = world.run(["mesh-ca", "list", "--json"])
    assert listed.returncode == 0, listed.stderr
    consistent(world.ca_dir, [world.out])

    again = world.run(argv)
    assert again.returncode == 0, again.stderr
    consistent(world.ca_dir, [world.out])
    if command == "revoke":
        assert "republished" in again.stdout
        if committed:
            assert "already revoked" in again.stdout
    assert not again.stderr  # the repair happened in `list`: nothing left to repair


@pytest.mark.slow
@pytest.mark.parametrize("step", INIT_STEPS)
def test_kill_init_at_every_step(tmp_path: Path, consistent: Check, step: str) -> None:
    w = World(tmp_path, tmp_path / "ca", tmp_path / "out", tmp_path / "none")
    killed = w.run(["mesh-ca", "init", "--intermediate"], crash=step)
    assert killed.returncode == -signal.SIGKILL, (killed.stdout, killed.stderr)
    exists = STEPS.index(step) >= STEPS.index("init-renamed")
    assert w.ca_dir.exists() == exists  # never half a CA under the final name
    if not exists:
        assert list(tmp_path.glob(".ca.init-*"))  # the killed run's folder, with its root key

    listed = w.run(["mesh-ca", "list"])
    assert listed.returncode == (0 if exists else 2), listed.stderr
    assert not list(tmp_path.glob(".ca.init-*"))  # removed by the next command

    again = w.run(["mesh-ca", "init", "--intermediate"])
    assert again.returncode == (2 if exists else 0), again.stderr
    consistent(w.ca_dir)
    issued = w.run(["ca-issue", "x", "--out", "{out}"])
    assert issued.returncode == 0, issued.stderr
    consistent(w.ca_dir, [w.out])


REPAIR_STEPS = [s for s in CHANGE_STEPS if s not in ("locked", "intent-committed", "svid-staged")]


@pytest.mark.slow
@pytest.mark.parametrize("second", REPAIR_STEPS)
@pytest.mark.parametrize("first", ["after-commit", "svid-switched"])
def test_kill_the_repair_too(world: World, consistent: Check, first: str, second: str) -> None:
    """A repair is a change like any other: killing it at any step is repaired in turn."""
    argv, _ = COMMANDS["issue"]
    assert world.run(argv, crash=first).returncode == -signal.SIGKILL
    repair = world.run(["mesh-ca", "list"], crash=second)
    assert repair.returncode == -signal.SIGKILL, (repair.stdout, repair.stderr)
    listed = world.run(["mesh-ca", "list"])
    assert listed.returncode == 0, listed.stderr
    if second == "published:crl.pem":  # killed after its last step: nothing left to do
        assert listed.stderr == ""
    else:
        assert "finished an interrupted publication" in listed.stderr
    consistent(world.ca_dir, [world.out])


def test_repair_says_what_it_did(world: World, consistent: Check) -> None:
    argv, _ = COMMANDS["revoke"]
    assert world.run(argv, crash="after-commit").returncode == -signal.SIGKILL
    crl = x509.load_pem_x509_crl((world.ca_dir / "crl.pem").read_bytes())
    assert len(crl) == 1  # e only: a's revocation is committed but not yet published
    repaired = world.run(["mesh-ca", "crl"])
    assert repaired.returncode == 0, repaired.stderr
    notes = repaired.stderr.splitlines()
    assert all(line.startswith("mesh-ca: note: ") for line in notes)
    # The killed run had staged bundle, roots and CRL as temporary files: removed, then the
    # publication was redone from the registry.
    assert "removed 3 temporary file(s) a killed command left" in notes[0]
    assert "finished an interrupted publication" in notes[-1]
    assert "revoked certificates: 2" in repaired.stdout
    consistent(world.ca_dir, [world.out])


def test_stale_temporary_files_are_removed_only_if_ours(world: World, consistent: Check) -> None:
    ours = [
        world.ca_dir / ".crl.pem.abcd1234.tmp",
        world.ca_dir / ".bundle.spiffe.json.x_y_z_12.tmp",
        world.out / "a" / ".svid_key.pem.0a1b2c3d.tmp",
        world.out / "a" / "...data.0a1b2c3d.tmp",
    ]
    not_ours = [
        world.ca_dir / ".notes.txt.abcd1234.tmp",  # a name we never write
        world.ca_dir / "crl.pem.tmp",
        world.out / "a" / ".svid_key.pem.short.tmp",  # not our random part
        world.out / "a" / "README",
    ]
    for path in ours + not_ours:
        path.write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
        path.chmod(0o600)
    res = world.run(["ca-issue", "a", "--out", "{out}"])
    assert res.returncode == 0, res.stderr
    assert [p for p in ours if p.exists()] == []
    assert [p for p in not_ours if not p.exists()] == []
    for path in not_ours:
        path.unlink()
    consistent(world.ca_dir, [world.out])


def test_key_material_is_written_only_into_0600_files(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file is fsynced with its content while still 0600; only then is a public file
    widened. Checked at each fsync of a regular file during an issue, a renew and a revoke."""
    seen: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        if st.st_mode & 0o170000 == 0o100000:  # regular files only (folders are fsynced too)
            seen.append((st.st_mode & 0o777, st.st_size))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with CertificateAuthority.open(world.ca_dir) as ca:
        ca.issue_many(["a", "c", "n"], out_dir=world.out)
        ca.renew("b", out_dir=world.out)
        ca.revoke(name="n")
    writes = [mode for mode, size in seen if size > 0]
    assert len(writes) >= 12
    assert set(writes) == {0o600}


def test_a_migrated_folder_keeps_its_set_until_the_switch(world: World) -> None:
    """Killed right after a plain-file folder was turned into links, the folder still shows
    the very same three files (now through ..data), byte for byte."""
    before = {n: (world.out / "c" / n).read_bytes() for n in ("svid.pem", "svid_key.pem",
                                                               "svid_bundle.pem")}
    assert not (world.out / "c" / "svid.pem").is_symlink()
    killed = world.run(["ca-issue", "c", "--out", "{out}"], crash="svid-migrated")
    assert killed.returncode == -signal.SIGKILL
    folder = world.out / "c"
    assert os.readlink(folder / "svid.pem") == "..data/svid.pem"
    assert {n: (folder / n).read_bytes() for n in before} == before


@pytest.mark.slow
def test_a_service_keeping_its_own_plain_key_keeps_it(world: World, consistent: Check) -> None:
    """A CSR renewal into a plain-file folder whose svid_key.pem is the service's own: the
    certificate and bundle become links, the key stays the very same plain file, and no copy
    of it lands in any set of ours, even when the command is killed halfway."""
    folder = world.out / "b"
    key = serialization.load_pem_private_key((folder / "svid_key.pem").read_bytes(), None)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "b")]))
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    (world.root / "b.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    own = (folder / "svid_key.pem").read_bytes()
    argv = ["mesh-ca", "renew", "b", "--csr", str(world.root / "b.csr"), "--out", "{out}"]
    assert world.run(argv, crash="svid-migrated").returncode == -signal.SIGKILL
    assert world.run(["mesh-ca", "list"]).returncode == 0
    consistent(world.ca_dir, [world.out])
    assert not (folder / "svid_key.pem").is_symlink()
    assert (folder / "svid_key.pem").read_bytes() == own
    assert os.readlink(folder / "svid.pem") == "..data/svid.pem"
    assert not list(folder.glob("..svid-*/svid_key.pem"))


def test_an_unpublished_change_still_repairs_first(world: World) -> None:
    """A registry-only change (publish=False, for tables nothing published depends on) runs
    after the repair of a killed command and leaves the publication marker where it is."""
    assert world.run(COMMANDS["revoke"][0], crash="after-commit").returncode == -signal.SIGKILL
    with CertificateAuthority.open(world.ca_dir) as ca:
        assert any("finished an interrupted publication" in n for n in ca.repairs)
        number = ca._registry.get_meta("crl_number")
        ca._publisher.change(
            lambda: ca._registry.set_meta("note", "x"), ca.root_cert.not_valid_before_utc,
            publish=False,
        )
        assert ca._registry.get_meta("crl_number") == number
        assert ca._registry.get_meta("note") == "x"
