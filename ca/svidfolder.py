"""A service's identity folder, switched from one complete set of files to the next at once.

Three files cannot be replaced together, so the folder holds each set in a hidden folder of
its own and one symlink says which set is current (the layout Kubernetes uses for Secret
volumes)::

    OUT/NAME/svid.pem         -> ..data/svid.pem
    OUT/NAME/svid_key.pem     -> ..data/svid_key.pem
    OUT/NAME/svid_bundle.pem  -> ..data/svid_bundle.pem
    OUT/NAME/..data           -> ..svid-<serial>-<random>
    OUT/NAME/..svid-<serial>-<random>/   svid.pem, svid_key.pem (0600), svid_bundle.pem

Readers open the usual names (spiffe-helper compatible). Replacing ``..data`` with one
``rename`` switches all three names from the old set to the new one: at every instant each
name resolves into one complete, fsynced set whose key matches its certificate.

A set is staged (written and fsynced) before the CA commits, and installed after:
:func:`install` is idempotent, so a command that finds a committed set not yet installed
(its predecessor was killed) simply runs it again. A folder of plain files (written before
this layout, or by another tool) is first turned into links to a copy of its own set, so the
switch stays atomic there too.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ca import crashpoints, fsio
from ca.errors import OutputError

SVID_PEM = "svid.pem"
SVID_KEY_PEM = "svid_key.pem"
SVID_BUNDLE_PEM = "svid_bundle.pem"
# Link order: the certificate last, so a watcher reloading on svid.pem finds the rest there.
FILES = (SVID_BUNDLE_PEM, SVID_KEY_PEM, SVID_PEM)
DATA_LINK = "..data"
SET_PREFIX = "..svid-"
_MODES = {
    SVID_PEM: fsio.PUBLIC_MODE,
    SVID_KEY_PEM: fsio.KEY_MODE,
    SVID_BUNDLE_PEM: fsio.PUBLIC_MODE,
}


@dataclass(frozen=True, slots=True)
class SetPlan:
    """One new set for one folder: its hidden folder's name and the files it will hold."""

    folder: Path  # absolute
    set_dir: str
    files: tuple[tuple[str, bytes], ...] = field(repr=False)  # (name, content), FILES order

    @property
    def key(self) -> tuple[str, str]:
        return str(self.folder), self.set_dir


def new_set_name(serial: int) -> str:
    return f"{SET_PREFIX}{serial:032x}-{secrets.token_hex(4)}"


def our_link(path: Path) -> bool:
    """Whether ``path`` is the link this layout makes for its name."""
    try:
        return os.readlink(path) == f"{DATA_LINK}/{path.name}"
    except OSError:
        return False


def current_set(folder: Path) -> str | None:
    try:
        target = os.readlink(folder / DATA_LINK)
    except OSError:
        return None
    return target if target.startswith(SET_PREFIX) and "/" not in target else None


def stage(plan: SetPlan) -> None:
    """Write the set into its hidden folder and fsync it; the folder's files are untouched."""
    target = plan.folder / plan.set_dir
    try:
        os.mkdir(target, 0o700)
        for name, data in plan.files:
            fsio.write_new(target / name, data, _MODES[name])
        os.chmod(target, _set_mode(plan.folder))  # the key inside stays 0600
        fsio.fsync_dir(target)
        fsio.fsync_dir(plan.folder)
    except OSError as err:
        discard(plan.folder, plan.set_dir)
        raise OutputError(f"cannot write the new files in {plan.folder}: {err.strerror}") from err


def discard(folder: Path, set_dir: str) -> None:
    """Remove a set that will never be installed (its change was not committed)."""
    if current_set(folder) == set_dir:
        return  # installed after all: never remove what the links point at
    shutil.rmtree(folder / set_dir, ignore_errors=True)
    fsio.remove_stale_temps(folder, (*FILES, DATA_LINK))
    with contextlib.suppress(OSError):
        fsio.fsync_dir(folder)


def install(folder: Path, set_dir: str) -> bool:
    """Make ``set_dir`` the folder's current set; idempotent. False if the set is gone."""
    target = folder / set_dir
    if not target.is_dir():
        return False
    names = [n for n in FILES if (target / n).is_file()]
    try:
        if current_set(folder) != set_dir:
            if _migrate(folder, names):
                crashpoints.reached("svid-migrated")
            fsio.replace_symlink(folder, DATA_LINK, set_dir)
            crashpoints.reached("svid-switched")
        for name in names:
            if not our_link(folder / name):
                fsio.replace_symlink(folder, name, f"{DATA_LINK}/{name}")
        crashpoints.reached("svid-linked")
        _clean(folder, keep=set_dir)
        # One fsync for the switch, the links and the removal, before the caller publishes
        # anything saying they are done (crl.pem).
        fsio.fsync_dir(folder)
        crashpoints.reached("svid-cleaned")
    except OSError as err:
        raise OutputError(
            f"cannot switch {folder} to its new files ({err.strerror or err}): make it "
            "writable again, or remove it to leave it out"
        ) from err
    return True


def _migrate(folder: Path, names: list[str]) -> bool:
    """Turn the plain files among ``names`` into links to a copy of the folder's current set.

    Each link shows the content of the file it replaces, so readers see the same old set
    throughout; then a single ``..data`` switch can change all names together.
    """
    plain = [n for n in names if os.path.lexists(folder / n) and not our_link(folder / n)]
    if not plain:
        return False
    copy = folder / f"{SET_PREFIX}migrated-{secrets.token_hex(4)}"
    os.mkdir(copy, 0o700)
    # The copy holds what the links will show: the plain files about to become links and
    # whatever already links into ..data (it will point at the copy). Nothing else: a key the
    # service keeps as a plain file of its own is never duplicated.
    for name in FILES:
        if name in plain or our_link(folder / name):
            data = shown(folder, name)
            if data is not None:
                fsio.write_new(copy / name, data, _MODES[name])
    os.chmod(copy, _set_mode(folder))
    fsio.fsync_dir(copy)
    fsio.replace_symlink(folder, DATA_LINK, copy.name)
    for name in plain:
        fsio.replace_symlink(folder, name, f"{DATA_LINK}/{name}")
    fsio.fsync_dir(folder)
    return True


def shown(folder: Path, name: str) -> bytes | None:
    """What a reader of ``folder/name`` sees, read without following any link we did not make
    (a link planted elsewhere is not copied: it could make us publish a file it points at)."""
    path = folder / name
    if our_link(path):
        current = current_set(folder)
        if current is None or not (folder / current).is_dir() or (folder / current).is_symlink():
            return None
        path = folder / current / name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None  # absent, or a link of someone else's
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        return fh.read()


def _set_mode(folder: Path) -> int:
    # The mode of the folder holding the set, never writable by group or other.
    return stat.S_IMODE(os.stat(folder).st_mode) & 0o755


def _clean(folder: Path, keep: str) -> None:
    """Remove every set but ``keep`` and the temporary files a killed run left (ours only)."""
    for entry in os.scandir(folder):
        if (
            entry.name.startswith(SET_PREFIX)
            and entry.name != keep
            and entry.is_dir(follow_symlinks=False)
        ):
            shutil.rmtree(entry.path)
    fsio.remove_stale_temps(folder, (*FILES, DATA_LINK))
