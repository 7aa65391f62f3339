"""Every script in scripts/, run through the script itself, with arguments, on a fresh clone.

What "fresh clone" means here, and why it stays honest while costing one install:

- The clone is a copy of every file git tracks or would track in this checkout
  (``git ls-files --cached --others --exclude-standard``), as the working tree holds it: what
  a ``git clone`` of the committed tree gives, so uncommitted edits are tested too. No
  ``.venv``, no state folder, no caches.
- The first step, ``./scripts/demo --help``, finds no ``.venv`` and makes it: ``python -m venv``
  and ``pip install -e .`` from the clone, with this machine's pip configuration (its local
  wheel directory, ``PIP_FIND_LINKS``). That is the truly fresh install.
- Every later step uses that venv: made by the clone's own scripts, holding the clone's own
  code (an editable install of the clone). No venv is shared with or copied from the checkout
  running the tests: its editable install points at that checkout, so the clone's code would
  never run. ``--system-site-packages`` was rejected too: it would hide a dependency
  pyproject.toml forgot.
- The steps that must go through ``_venv.sh`` again (``ca-issue`` on a venv without its entry
  point) remove just that file first, as a fresh clone lacks it.

Each step runs from a folder outside the clone, so relative paths must stay relative to the
caller. The last check says every script in scripts/ was run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _fresh_clone(dest: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.split(b"\0")
    archive = dest.parent / "clone.tar"
    with tarfile.open(archive, "w") as tar:
        for name in filter(None, files):
            path = ROOT / os.fsdecode(name)
            if path.exists():  # a file deleted in the working tree but not yet in git
                tar.add(path, arcname=os.fsdecode(name), recursive=False)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="tar")
    archive.unlink()
    return dest


def _env(home: Path) -> dict[str, str]:
    # Whatever venv runs the tests must not leak into the clone's scripts.
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "MESH_CA_DIR", "PYTHONHOME")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p != venv_bin)
    env["HOME"] = str(home)
    return env


@dataclass
class Runner:
    clone: Path
    cwd: Path
    env: dict[str, str]
    ran: set[str] = field(default_factory=set)

    def __call__(self, script: str, *args: str, code: int = 0,
                 timeout: float = 300) -> subprocess.CompletedProcess[str]:
        self.ran.add(script)
        path = self.clone / "scripts" / script
        argv = [str(path), *args]
        if script.endswith(".py"):
            argv = [str(self.clone / ".venv" / "bin" / "python"), *argv]
        res = subprocess.run(argv, cwd=self.cwd, env=self.env, capture_output=True, text=True,
                             timeout=timeout, check=False)
        shown = f"scripts/{script} {' '.join(args)}"
        assert res.returncode == code, f"{shown}: exit {res.returncode}\n{res.stdout[-3000:]}" \
                                       f"\n{res.stderr[-3000:]}"
        for stream in (res.stdout, res.stderr):
            assert "Traceback" not in stream, f"{shown}:\n{stream[-3000:]}"
            assert "InvalidRequirement" not in stream and "does not provide the extra" not in \
                stream, f"{shown} handed its arguments to pip:\n{stream[-3000:]}"
        return res


def test_every_script_runs_on_a_fresh_clone(tmp_path: Path) -> None:
    clone = _fresh_clone(tmp_path / "clone")
    assert not (clone / ".venv").exists()
    work = tmp_path / "work"
    work.mkdir()
    run = Runner(clone, work, _env(tmp_path))

    # 1. The truly fresh install, through the first command the README shows.
    res = run("demo", "--help")
    assert "--keep-running" in res.stdout and "(default: ./demo-state)" in res.stdout
    assert (clone / ".venv" / "bin" / "mesh").is_file()
    stamps = sorted(p.name for p in (clone / ".venv").glob(".meshid-installed*"))
    assert stamps == [".meshid-installed"]

    # 2. The launcher's own flags, before and after --help; a bad one is one sentence.
    assert "--state" in run("demo", "--keep-running", "--state", "elsewhere", "--help").stdout
    bad = run("demo", "--bogus", code=2)
    assert bad.stderr.count("\n") == 1 and "unrecognized arguments: --bogus" in bad.stderr
    assert not (work / "elsewhere").exists() and not (work / "demo-state").exists()

    # 3. ca-issue, as on a fresh clone (no entry point yet): _venv.sh must not take the
    # service name or --ca-dir for an extra; paths stay relative to the caller.
    mesh_ca = clone / ".venv" / "bin" / "mesh-ca"
    subprocess.run([str(mesh_ca), "init", "--ca-dir", "ca"], cwd=work, env=run.env,
                   check=True, capture_output=True)
    (clone / ".venv" / "bin" / "ca-issue").unlink()
    res = run("ca-issue", "--ca-dir", "ca", "orders", "--out", "svids", "--json")
    assert json.loads(res.stdout)["issued"][0]["name"] == "orders"
    assert (work / "svids" / "orders" / "svid.pem").is_file()
    res = run("ca-issue", "payments", "--ca-dir", "ca", "--out", "svids")
    assert res.stdout.startswith("issued payments: spiffe://mesh.internal/svc/payments")
    assert "--ca-dir DIR" in run("ca-issue", "--help").stdout
    stamps = sorted(p.name for p in (clone / ".venv").glob(".meshid-installed*"))
    assert stamps == [".meshid-installed"]

    # 4. The whole demo, through the script, in a state folder named from here.
    res = run("demo", "--state", "my-demo", timeout=240)
    done = re.search(r"^(\d+) of (\d+) steps as expected$", res.stdout, re.M)
    assert done is not None and done.group(1) == done.group(2), res.stdout[-2000:]
    summary = json.loads((work / "my-demo" / "summary.json").read_text())
    assert summary["ok"] is True
    assert not (work / "my-demo" / "endpoints.json").exists()

    # 5. The generators, into folders named from here.
    assert "--out DIR" in run("gen-protos", "--help").stdout
    run("gen-protos", "--out", "gen")
    assert (work / "gen" / "mesh" / "demo" / "v1" / "orders_pb2.py").is_file()
    assert run("gen-protos", "--out", code=2).stderr.count("\n") == 1
    assert "--out DIR" in run("gen-vectors", "--help").stdout
    run("gen-vectors", "--out", "vectors")
    assert len(list((work / "vectors").glob("*.json"))) > 50
    assert "--out" in run("gen_vectors.py", "--help").stdout
    assert "--state" in run("ca_demo.py", "--help").stdout
    run("ca_demo.py", "--state", "ca-demo")
    assert (work / "ca-demo" / "svids" / "orders" / "svid.pem").is_file()

    # 6. scripts/test --help answers without installing the dev extra.
    assert "PYTEST_ARGS" in run("test", "--help").stdout
    assert not list((clone / ".venv").glob(".meshid-installed-*"))

    # 7. _venv.sh is sourced, never run: with an extra it does not know, it says so.
    res = subprocess.run(["bash", "-c", f"VENV_EXTRA=bogus source {clone}/scripts/_venv.sh"],
                         cwd=work, env=run.env, capture_output=True, text=True, check=False)
    assert res.returncode == 2 and "is not an extra of pyproject.toml" in res.stderr
    run.ran.add("_venv.sh")

    every = {p.name for p in (clone / "scripts").iterdir() if p.is_file()}
    assert every == run.ran, f"scripts not run by this test: {sorted(every - run.ran)}"
