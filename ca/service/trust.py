"""What agents are told to trust, kept current: the published roots, bundle and CRL.

The CA publishes ``svid_bundle.pem``, ``bundle.spiffe.json`` and ``crl.pem`` on every change,
from any process (this service, ``mesh-ca revoke``, ``mesh-ca evict``, cron running
``mesh-ca crl``). :class:`TrustWatcher` notices a change by the files' identity (inode, size,
mtime: every publication replaces them with ``os.replace``), checked every ``interval`` seconds
and at once when this process published (:meth:`TrustWatcher.refresh`). It reads the three
files under a shared lock on the CA's ``.lock``, which every writer holds exclusively from its
transaction until its files are in place: the triple read is always one publication, never a
new bundle with an old CRL.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ca.authority import BUNDLE_JSON, BUNDLE_PEM, CRL_PEM
from ca.publication import LOCK_FILE

_log = logging.getLogger(__name__)

Listener = Callable[["TrustState"], None]
_FileId = tuple[int, int, int] | None


@dataclass(frozen=True, slots=True)
class TrustState:
    roots_pem: bytes
    bundle_json: bytes
    crl_pem: bytes
    #: the bundle's spiffe_sequence: grows with every publication (bundle or CRL change)
    sequence: int


def _file_id(path: Path) -> _FileId:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class TrustWatcher:
    """The CA's published trust state, re-read when it changes; listeners hear of each change."""

    def __init__(self, ca_dir: Path, *, interval: float = 0.25) -> None:
        self._dir = Path(ca_dir)
        self._paths = (self._dir / BUNDLE_PEM, self._dir / BUNDLE_JSON, self._dir / CRL_PEM)
        self._interval = interval
        self._lock = threading.Lock()
        self._listeners: set[Listener] = set()
        self._ids: tuple[_FileId, ...] = ()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        state = self._read()
        if state is None:
            raise OSError(f"cannot read the CA's published trust bundle in {self._dir}")
        self._state = state

    @property
    def current(self) -> TrustState:
        return self._state

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.add(listener)

    def unsubscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.discard(listener)

    def start(self) -> TrustWatcher:
        self._thread = threading.Thread(target=self._loop, name="ca-trust-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def refresh(self) -> bool:
        """Re-read now if the files changed; True (and listeners told) if the state is newer."""
        ids = tuple(_file_id(p) for p in self._paths)
        if ids == self._ids:
            return False
        with self._lock:
            state = self._read()
            if state is None or state.sequence <= self._state.sequence:
                return False
            self._state = state
            listeners = list(self._listeners)
        for listener in listeners:
            listener(state)
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.refresh()
            except Exception:  # keep watching: a bad read now is retried next tick
                _log.exception("reading the CA's published trust state failed")

    def _read(self) -> TrustState | None:
        """The three files as one publication (shared lock against the CA's writers)."""
        try:
            fd = os.open(self._dir / LOCK_FILE, os.O_RDONLY)
        except OSError as err:
            _log.warning("cannot open the CA lock to read the trust state: %s", err.strerror)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            ids = tuple(_file_id(p) for p in self._paths)
            roots, bundle, crl = (p.read_bytes() for p in self._paths)
        except OSError as err:
            _log.warning("cannot read the CA's published trust state: %s", err.strerror)
            return None
        finally:
            os.close(fd)
        try:
            sequence = json.loads(bundle)["spiffe_sequence"]
        except (ValueError, KeyError, TypeError):
            _log.warning("the published bundle.spiffe.json is unreadable; keeping the last one")
            return None
        if type(sequence) is not int:
            return None
        self._ids = ids
        return TrustState(roots, bundle, crl, sequence)
