"""The five files of a written folder switch as one, whatever instant the writer dies at.

Each test runs a real writer process that SIGKILLs itself at one named step
(MESH_AGENT_KILL_AT), then checks: the folder loads with X509SvidFolder (unchanged reader) as a
matching set, all five names resolve into ONE generation, the set is the old one or the new
one (never a mix), and the next write repairs whatever the dead one left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from mesh.agent.folder import CURRENT, FILES, KILL_ENV, STEPS, FolderContent, SvidFolderWriter
from mesh.identity.bundle import FileBundleSource
from mesh.identity.svid import X509SvidFolder

_WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from mesh.agent.folder import FolderContent, SvidFolderWriter
    d = Path(sys.argv[2])
    parts = [(d / n).read_bytes() for n in ("chain", "key", "roots", "bundle", "crl")]
    SvidFolderWriter(sys.argv[1]).write(FolderContent(*parts))
""")


def _content(ca, name: str) -> FolderContent:
    svid = ca.issue(name, ttl=timedelta(hours=1))
    return FolderContent(svid.chain_pem(), svid.key_pem(), svid.bundle_pem(),
                         ca.bundle_path.read_bytes(), ca.crl_path.read_bytes())


def _write_in_child(folder: Path, content: FolderContent, tmp: Path, kill_at: str | None) -> int:
    src = tmp / "src"
    src.mkdir(exist_ok=True)
    for n, data in zip(("chain", "key", "roots", "bundle", "crl"),
                       (content.chain_pem, content.key_pem, content.roots_pem,
                        content.bundle_json, content.crl_pem), strict=True):
        (src / n).write_bytes(data)
    env = {**os.environ}
    env.pop(KILL_ENV, None)
    if kill_at:
        env[KILL_ENV] = kill_at
    return subprocess.run([sys.executable, "-c", _WRITER, str(folder), str(src)],
                          env=env, timeout=60, check=False).returncode


def _loaded_set(folder: Path) -> bytes | None:
    """The leaf PEM of the set the folder holds, after checking it is one matching set; None
    if the folder holds no set at all yet."""
    if not (folder / "svid.pem").exists():
        return None
    # What a reader reads under the five names is, byte for byte, one generation's set
    # (during a takeover some names are still the old regular files: same bytes as the
    # imported generation, which is the point).
    seen = {n: (folder / n).read_bytes() for n in FILES}
    gens = [g for g in folder.iterdir() if g.name.startswith(".gen-") and g.is_dir()]
    # takeover not begun: no name links through the agent's .current yet (ca-issue's own
    # folder layout links its three names into ..data, which is another writer's)
    untouched = not any(
        (folder / n).is_symlink() and os.readlink(folder / n).startswith(".current")
        for n in FILES)
    assert untouched or any(
        all((g / n).exists() and (g / n).read_bytes() == seen[n] for n in FILES) for g in gens
    ), "the five names do not hold one generation's set"
    svid = X509SvidFolder(folder).current()  # key matches leaf, key 0600, SPIFFE ID
    FileBundleSource(folder / "bundle.spiffe.json", folder / "crl.pem")  # bundle + CRL load
    assert (os.stat(folder / "svid_key.pem").st_mode & 0o777) == 0o600
    return svid.chain_pem


NORMAL_STEPS = [s for s in STEPS if s != "import" and not s.startswith("link:")]


@pytest.mark.parametrize("step", NORMAL_STEPS)
def test_kill_during_a_rotation_leaves_old_or_new_set(mesh_ca, tmp_path, step):
    folder = tmp_path / "orders"
    old, new = _content(mesh_ca, "orders"), _content(mesh_ca, "orders")
    assert _write_in_child(folder, old, tmp_path, None) == 0
    assert _loaded_set(folder) == old.chain_pem
    code = _write_in_child(folder, new, tmp_path, step)
    assert code == -signal.SIGKILL, f"the writer was not killed at {step}"
    seen = _loaded_set(folder)
    assert seen in (old.chain_pem, new.chain_pem)
    # after the swap the new set is in force; before it, the old one
    assert (seen == new.chain_pem) == (NORMAL_STEPS.index(step) >= NORMAL_STEPS.index("swap"))
    # the next write repairs: one current generation plus at most the previous one, no strays
    third = _content(mesh_ca, "orders")
    assert _write_in_child(folder, third, tmp_path, None) == 0
    assert _loaded_set(folder) == third.chain_pem
    hidden = sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
    assert len([h for h in hidden if h.startswith(".gen-")]) <= 2, hidden
    assert [h for h in hidden if not h.startswith(".gen-")] == [CURRENT], hidden


@pytest.mark.parametrize("step", STEPS)
def test_kill_while_taking_over_a_plain_folder(mesh_ca, tmp_path, step):
    """A folder ca-issue wrote (regular files) is taken over without a mixed instant."""
    folder = tmp_path / "orders"
    mesh_ca.issue("orders", out_dir=tmp_path)  # svid.pem, svid_key.pem, svid_bundle.pem
    (folder / "bundle.spiffe.json").write_bytes(mesh_ca.bundle_path.read_bytes())
    (folder / "crl.pem").write_bytes(mesh_ca.crl_path.read_bytes())
    old = (folder / "svid.pem").read_bytes()
    new = _content(mesh_ca, "orders")
    assert _write_in_child(folder, new, tmp_path, step) == -signal.SIGKILL
    seen = _loaded_set(folder)
    assert seen in (old, new.chain_pem)
    assert (seen == new.chain_pem) == (STEPS.index(step) >= STEPS.index("swap"))
    third = _content(mesh_ca, "orders")
    assert _write_in_child(folder, third, tmp_path, None) == 0
    assert _loaded_set(folder) == third.chain_pem


def test_negative_control_plain_rewrite_would_mix(mesh_ca, tmp_path):
    """Without the generation swap (files replaced one by one), a reader between two replaces
    sees a new certificate next to the old key: the check above would catch it."""
    folder = tmp_path / "orders"
    old, new = _content(mesh_ca, "orders"), _content(mesh_ca, "orders")
    folder.mkdir()
    for name, (data, mode) in old.files().items():
        (folder / name).write_bytes(data)
        os.chmod(folder / name, mode)
    (folder / "svid.pem").write_bytes(new.chain_pem)  # killed right after the first replace
    with pytest.raises(Exception, match="does not belong"):
        X509SvidFolder(folder)


def test_writer_gives_files_to_the_service_user(mesh_ca, tmp_path):
    folder = tmp_path / "orders"
    SvidFolderWriter(folder, owner=(65534, 65534)).write(_content(mesh_ca, "orders"))
    st = os.stat(folder / "svid_key.pem")
    assert (st.st_uid, st.st_mode & 0o777) == (65534, 0o600)
