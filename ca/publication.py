"""One change of the CA, safe against a kill at any instant: the registry, then the files.

Every change runs, under the CA lock (a thread lock plus an ``flock`` on ``.lock``):

1. **repair** (:meth:`Publisher.recover`): finish what a killed command left undone;
2. when SVID folders are written: record each (folder, new hidden set folder) in
   ``pending_svid_sets`` and commit; then write every new set, fsynced, beside the folder's
   current one (:func:`ca.svidfolder.stage`);
3. ONE transaction: the change itself, a new CRL number (the publication's *generation*),
   the bundle, roots and CRL rendered from the registry into temporary files (fsynced), the
   pending sets tagged with the generation; ``COMMIT``;
4. **publication**: ``bundle.spiffe.json`` and ``svid_bundle.pem`` replaced, each SVID folder
   switched to its new set (:func:`ca.svidfolder.install`), ``crl.pem`` replaced *last*.

``crl.pem`` is the marker: its CRL number equals the registry's ``crl_number`` exactly when
the publication of that generation is complete. A failure before ``COMMIT`` rolls back and
removes what was staged. A failure or kill after it leaves the change committed and
``crl.pem`` behind; the next command, whatever it is (opening a CA repairs), sees the lag,
republishes from the registry under a new CRL number, installs the committed sets and removes
the sets that were never committed and our stale temporary files.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from cryptography import x509

from ca import crashpoints, fsio, svidfolder
from ca.errors import CAError, CorruptCA, OutputError
from ca.registry import PendingSet, Registry

T = TypeVar("T")

LOCK_FILE = ".lock"

# Renders the publication inside the open transaction: bumps the counters and returns the
# CRL number (the generation) and the files, in the order they go into place, crl.pem last.
Render = Callable[[datetime], tuple[int, list[tuple[Path, bytes]]]]


def published_generation(crl_path: Path) -> int | None:
    """The CRL number of ``crl_path``; None when it is missing or unreadable (republish)."""
    try:
        crl = x509.load_pem_x509_crl(crl_path.read_bytes())
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None


@contextlib.contextmanager
def _registry_errors() -> Iterator[None]:
    try:
        yield
    except sqlite3.IntegrityError as err:
        raise CAError(
            "the registry refused the change (duplicate serial or thumbprint); "
            "nothing was changed, try again"
        ) from err
    except sqlite3.Error as err:
        raise CorruptCA(f"the registry could not be updated: {err}") from err


class Publisher:
    """Runs changes of one CA folder by the protocol above."""

    def __init__(
        self,
        ca_dir: Path,
        registry: Registry,
        thread_lock: threading.RLock,
        files: Sequence[str],
        render: Render,
    ) -> None:
        self._dir = ca_dir
        self._registry = registry
        self._thread_lock = thread_lock
        self._files = tuple(files)  # the published names, crl.pem last
        self._render = render

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Serialise whole operations across threads (RLock) and processes (flock)."""
        with self._thread_lock:
            try:
                fd = os.open(self._dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as err:
                raise CorruptCA(f"cannot open the CA lock file: {err.strerror}") from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the lock

    # ---- repair --------------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Finish or undo what a killed command left; return what was done, in sentences."""
        with self.lock(), _registry_errors():
            return self._recover_locked()

    def _recover_locked(self) -> list[str]:
        notes: list[str] = []
        removed = fsio.remove_stale_temps(self._dir, self._files)
        if removed:
            notes.append(
                f"removed {removed} temporary file(s) a killed command left in {self._dir}"
            )
        reg = self._registry
        pending = reg.pending_sets()
        uncommitted = [p for p in pending if p.generation is None]
        if uncommitted:
            self._forget([(p.folder, p.set_dir) for p in uncommitted])
            notes.append(
                "removed the new SVID files of a command killed before it committed: "
                + ", ".join(p.folder for p in uncommitted)
            )
        generation = int(reg.get_meta("crl_number") or "0")
        published = published_generation(self._dir / self._files[-1])
        todo = [
            p for p in pending
            if p.generation is not None and (published is None or p.generation > published)
        ]
        missing = [n for n in self._files if not (self._dir / n).is_file()]
        if published == generation and not todo and not missing:
            return notes

        def catch_up() -> None:
            # A registry restored from a backup may lag crl.pem: never reuse a CRL number.
            if published is not None and published > generation:
                reg.set_meta("crl_number", str(published))

        sets = [(p.folder, p.set_dir) for p in todo]
        self._run(catch_up, datetime_now(), sets, notes, repairing=True)
        what = f"{len(todo)} SVID folder(s) and " if todo else ""
        notes.append(
            f"finished an interrupted publication: {what}"
            f"{', '.join(self._files)} republished from the registry"
        )
        return notes

    def _forget(self, sets: list[tuple[str, str]]) -> None:
        """Remove sets that will never be installed, then their journal rows."""
        for folder, set_dir in sets:
            svidfolder.discard(Path(folder), set_dir)
        with self._registry.transaction():
            self._registry.drop_pending_sets(sets)

    # ---- a change ------------------------------------------------------------------------

    def change(
        self,
        apply: Callable[[], T],
        now: datetime,
        plan_sets: Callable[[], list[svidfolder.SetPlan]] | None = None,
        notes: list[str] | None = None,
        *,
        publish: bool = True,
    ) -> T:
        """Apply ``apply`` (registry writes) and publish; ``plan_sets`` names SVID folders.

        ``publish=False``: a registry change that nothing published depends on (no new CRL
        number, no file written); it still runs after the repair, under the lock.
        """
        with self.lock(), _registry_errors():
            crashpoints.reached("locked")
            repairs = self._recover_locked()
            if notes is not None:
                notes.extend(repairs)
            if not publish:
                if plan_sets is not None:
                    raise ValueError("SVID folders are written only by a published change")
                with self._registry.transaction():
                    return apply()
            plans = plan_sets() if plan_sets is not None else []
            keys = [p.key for p in plans]
            if plans:
                with self._registry.transaction():
                    self._registry.add_pending_sets(keys)
                crashpoints.reached("intent-committed")
                try:
                    for plan in plans:
                        svidfolder.stage(plan)
                except BaseException:
                    with contextlib.suppress(Exception):
                        self._forget(keys)
                    raise
                crashpoints.reached("svid-staged")
            return self._run(apply, now, keys, notes, staged_sets=bool(plans))

    def _run(
        self,
        apply: Callable[[], T],
        now: datetime,
        sets: list[tuple[str, str]],
        notes: list[str] | None,
        *,
        staged_sets: bool = False,
        repairing: bool = False,
    ) -> T:
        """Steps 3 and 4. ``sets``: committed with this change (``staged_sets``), or by a
        killed one (``repairing``: their rows stay until crl.pem shows they are installed)."""
        front, last = fsio.StagedFiles(), fsio.StagedFiles()
        reg = self._registry
        try:
            with reg.transaction():
                result = apply()
                if not repairing:
                    # The repair that opened this change left crl.pem at the registry's
                    # number: every set committed up to it is installed.
                    reg.drop_installed_sets(int(reg.get_meta("crl_number") or "0"))
                generation, files = self._render(now)
                if staged_sets:
                    reg.commit_pending_sets(sets, generation)
                *head, crl = files
                for path, data in head:
                    front.add(path, data)
                last.add(*crl)
                crashpoints.reached("before-commit")
        except BaseException:
            front.discard()
            last.discard()
            if staged_sets:
                with contextlib.suppress(Exception):
                    self._forget(sets)
            raise
        crashpoints.reached("after-commit")
        try:
            # The bundle goes first: a service that picks up a new key must never sign with a
            # kid verifiers cannot find yet. crl.pem goes last: it marks the end.
            # Durable before any folder switches to a key it lists; with no folder to switch,
            # the fsync of the CA folder after crl.pem covers it.
            front.commit(after_each=_published, sync_dirs=bool(sets))
            for folder, set_dir in sets:
                if not svidfolder.install(Path(folder), set_dir) and notes is not None:
                    notes.append(f"the new files for {folder} were gone; it keeps its old set")
            last.commit(after_each=_published)
        except CAError as err:
            raise OutputError(
                f"the change is saved in the registry but its files could not all be "
                f"published ({err}); the next mesh-ca command, e.g. mesh-ca crl, finishes it"
            ) from err
        return result


def _published(path: Path) -> None:
    crashpoints.reached(f"published:{path.name}")


def datetime_now() -> datetime:
    # X.509 and the registry keep whole seconds.
    return datetime.now(UTC).replace(microsecond=0)


__all__ = ["LOCK_FILE", "PendingSet", "Publisher", "published_generation"]
