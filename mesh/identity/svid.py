"""Where a service's own identity comes from: an X.509-SVID, its key and the trust anchors.

A source hands out immutable :class:`Svid` snapshots. :class:`X509SvidFolder` reads the three
spiffe-helper files (spec 2.1) and swaps in a new snapshot when they change on disk, but
only once the new key matches the new leaf: writers replace the files one by one, so a reader
can see a new certificate next to the old key for a moment, and serving that pair would break
every handshake. :class:`StaticSvid` never changes (tests, or identities held in memory).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mesh.errors import MeshError
from mesh.identity.certs import load_pem_chain, spiffe_id_of, thumbprint
from mesh.identity.errors import (
    SvidError,
    SvidFileError,
    SvidIdentityChanged,
    SvidKeyMismatchError,
    SvidKeyPermissionError,
    SvidNotSpiffeError,
    SvidNotValidNow,
)
from mesh.identity.spiffeid import SpiffeId

_log = logging.getLogger(__name__)

SVID_FILE = "svid.pem"
KEY_FILE = "svid_key.pem"
BUNDLE_FILE = "svid_bundle.pem"


@dataclass(frozen=True, slots=True)
class Svid:
    """One consistent identity: leaf + intermediates, the leaf's key and the trust anchors."""

    spiffe_id: SpiffeId
    chain: tuple[x509.Certificate, ...]
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    roots: tuple[x509.Certificate, ...]
    chain_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    roots_pem: bytes = field(repr=False)
    thumbprint: str
    generation: int

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def build_svid(chain_pem: bytes, key_pem: bytes, roots_pem: bytes, generation: int = 0) -> Svid:
    """Parse and cross-check the three PEM blobs; raise an :class:`SvidError` subclass."""
    try:
        chain = tuple(load_pem_chain(chain_pem))
    except MeshError as err:
        raise SvidFileError(f"{SVID_FILE} holds no readable certificate") from err
    try:
        roots = tuple(load_pem_chain(roots_pem))
    except MeshError as err:
        raise SvidFileError(f"{BUNDLE_FILE} holds no readable certificate") from err
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as err:
        raise SvidFileError(f"{KEY_FILE} is not an unencrypted PEM private key") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SvidFileError(f"{KEY_FILE} must hold an EC key (gRPC's TLS needs ECDSA P-256)")
    leaf_pub = chain[0].public_key()
    if not isinstance(leaf_pub, ec.EllipticCurvePublicKey) or leaf_pub.public_numbers() != (
        key.public_key().public_numbers()
    ):
        raise SvidKeyMismatchError(
            f"{KEY_FILE} does not belong to the leaf certificate in {SVID_FILE}"
        )
    try:
        sid = spiffe_id_of(chain[0])
    except MeshError as err:
        raise SvidNotSpiffeError(f"the leaf in {SVID_FILE} is not an X.509-SVID: {err}") from err
    return Svid(
        spiffe_id=sid,
        chain=chain,
        private_key=key,
        roots=roots,
        chain_pem=chain_pem,
        key_pem=key_pem,
        roots_pem=roots_pem,
        thumbprint=thumbprint(chain[0]),
        generation=generation,
    )


Listener = Callable[[Svid], None]


class SvidSource(Protocol):
    """Anything that hands out the current identity and says when it changed."""

    def current(self) -> Svid:
        """The identity to use now (cheap: callers ask on every call or connection)."""
        ...

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(new_svid)`` after each swap."""
        ...


class StaticSvid:
    """An identity that never changes."""

    def __init__(self, chain: Sequence[x509.Certificate], private_key: ec.EllipticCurvePrivateKey,
                 roots: Sequence[x509.Certificate]) -> None:
        pem = serialization.Encoding.PEM
        self._svid = build_svid(
            b"".join(c.public_bytes(pem) for c in chain),
            private_key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            b"".join(c.public_bytes(pem) for c in roots),
        )

    @classmethod
    def from_pem(cls, chain_pem: bytes, key_pem: bytes, roots_pem: bytes) -> StaticSvid:
        self = cls.__new__(cls)
        self._svid = build_svid(chain_pem, key_pem, roots_pem)
        return self

    def current(self) -> Svid:
        return self._svid

    def subscribe(self, listener: Listener) -> None:
        """Nothing ever changes; the listener is never called."""


Fingerprint = tuple[int, int, int, int, int]


def _fingerprint(path: Path) -> Fingerprint:
    # The mode too: a chmod alone (loosening the key, or fixing it) must be looked at again.
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev, st.st_mode)


def _read_key(path: Path) -> bytes:
    """Read the key file, refusing one that group or other may access (like ssh does).

    A key another local user can read lets them be this service: its TLS identity and every
    token it signs. The mode is taken from the open file, so it is the mode of what was read.
    """
    with path.open("rb") as fh:
        mode = os.fstat(fh.fileno()).st_mode & 0o777
        data = fh.read()
    if mode & 0o077:
        raise SvidKeyPermissionError(
            f"{path} is open to other users (mode {mode:04o}); a service key must be "
            f"readable by its owner only (spec 2: 0600): run chmod 600 on it"
        )
    return data


class X509SvidFolder:
    """Reads ``svid.pem``, ``svid_key.pem`` and ``svid_bundle.pem`` from a folder and reloads them.

    Changes are noticed lazily: ``current()`` stats the three files at most once per
    ``poll_interval`` seconds (mtime, size, inode and mode, so an ``os.replace`` with an
    unchanged mtime is still seen). ``start()`` adds a daemon thread doing the same, so
    listeners hear of a rotation even while no call asks.

    A new set is swapped in only when it is one consistent identity this service may take:
    the key matches the leaf, the leaf is an X.509-SVID for the SAME SPIFFE ID the folder
    started with (a service never silently becomes another), its certificate is valid now, and
    ``svid_key.pem`` is closed to group and other (no bit of ``0o077``; spec 2 says 0600, 0400
    is fine too). Anything else keeps the current identity and logs one WARNING naming the
    rule, once per distinct bad state (a missing file, or a half-written set caught
    mid-rotation, is retried on every poll but not logged again until it changes). The first
    load must pass the same checks.
    """

    def __init__(self, path: Path | str, *, poll_interval: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._dir = Path(path)
        self._poll = poll_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._next_check = 0.0
        self._bad_fp: tuple[Fingerprint, ...] | None = None
        self._warned: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        fp = self._fingerprints()
        self._svid = self._load(generation=0)
        self._check_valid_now(self._svid)
        self._fp = fp
        self._next_check = time.monotonic() + self._poll

    @property
    def path(self) -> Path:
        return self._dir

    @property
    def spiffe_id(self) -> SpiffeId:
        """The identity this folder serves; it never changes (a set for another is refused)."""
        return self._svid.spiffe_id

    def _fingerprints(self) -> tuple[Fingerprint, ...]:
        try:
            return tuple(_fingerprint(self._dir / n) for n in (SVID_FILE, KEY_FILE, BUNDLE_FILE))
        except OSError as err:
            raise SvidFileError(
                f"cannot stat the SVID files in {self._dir}: {err.strerror}"
            ) from err

    def _load(self, generation: int) -> Svid:
        blobs = []
        for name in (SVID_FILE, KEY_FILE, BUNDLE_FILE):
            path = self._dir / name
            try:
                blobs.append(_read_key(path) if name == KEY_FILE else path.read_bytes())
            except OSError as err:
                raise SvidFileError(f"cannot read {path}: {err.strerror}") from err
        return build_svid(blobs[0], blobs[1], blobs[2], generation)

    def _check_valid_now(self, svid: Svid) -> None:
        now = self._clock()
        leaf = svid.leaf
        if not leaf.not_valid_before_utc.timestamp() <= now < leaf.not_valid_after_utc.timestamp():
            raise SvidNotValidNow(
                f"the certificate in {self._dir / SVID_FILE} ({svid.spiffe_id}) is not valid "
                f"now: valid from {leaf.not_valid_before_utc.isoformat()} to "
                f"{leaf.not_valid_after_utc.isoformat()} (spec 2)"
            )

    def _warn_once(self, message: str) -> None:
        if message != self._warned:
            self._warned = message
            _log.warning("%s", message)

    def current(self) -> Svid:
        if time.monotonic() >= self._next_check:
            self.refresh()
        return self._svid

    def refresh(self) -> bool:
        """Check the files now; return True when a new snapshot was swapped in."""
        with self._lock:
            self._next_check = time.monotonic() + self._poll
            try:
                fp = self._fingerprints()
            except SvidError as err:
                self._warn_once(f"SVID reload skipped, keeping {self._svid.spiffe_id}: {err}")
                return False
            if fp in (self._fp, self._bad_fp):
                return False
            try:
                new = self._load(self._svid.generation + 1)
                if new.spiffe_id != self._svid.spiffe_id:
                    raise SvidIdentityChanged(
                        f"the SVID in {self._dir} is for {new.spiffe_id}, but this folder "
                        f"serves {self._svid.spiffe_id}; a service never changes who it is "
                        "(spec 2)"
                    )
                self._check_valid_now(new)
            except SvidError as err:
                # Maybe caught mid-rotation: keep the current identity and look again once the
                # files change (a writer finishing changes them).
                self._warn_once(f"SVID reload refused, keeping {self._svid.spiffe_id}: {err}")
                self._bad_fp = fp
                return False
            if fp != self._fingerprints():
                return False  # changed while we read: read again next time
            self._fp = fp
            self._warned = None
            changed = new.chain_pem != self._svid.chain_pem or new.roots_pem != self._svid.roots_pem
            if not changed:
                return False
            self._svid = new
            listeners = list(self._listeners)
        _log.info("SVID reloaded: %s, thumbprint %s", new.spiffe_id, new.thumbprint)
        for listener in listeners:
            try:
                listener(new)
            except Exception:
                _log.exception("SVID listener failed")
        return True

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def start(self) -> X509SvidFolder:
        """Poll in a daemon thread as well (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="svid-watch", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            self.refresh()
