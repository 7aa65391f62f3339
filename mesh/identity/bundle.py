"""Where verifiers find trust anchors, token-signing keys and revocations.

:class:`FileBundleSource` reads the trust domain's ``bundle.spiffe.json`` (spec 2.2: SPIFFE Trust
Domain and Bundle format) and, optionally, a PEM CRL. Nothing in the bundle is taken on faith:

- ``x509-svid`` entries are the trust anchors (one certificate each, whose key is the entry's);
- every ``jwt-svid`` entry must carry ``x5c = [leaf, intermediates...]`` whose leaf chains to an
  anchor now (client-certificate profile: EKU clientAuth, SAN, AKI), holds exactly one SPIFFE ID
  in the trust domain, has the entry's public key and the thumbprint the entry's ``kid`` claims.
  An entry that fails is left out (and logged), never "mostly" trusted;
- the CRL must be signed by an anchor or by an intermediate seen on a valid key's chain, and
  must not be older than the one in force for its issuer (RFC 5280 5.2.3: a lower CRL number,
  or without numbers an earlier thisUpdate, would un-revoke certificates); nor may a bundle
  with a lower ``spiffe_sequence`` replace the one in force.

Snapshots are immutable and swapped atomically, so readers never lock. The files are re-read when
their identity (inode, size, mtime) changes, checked at most once per ``check_interval``, and, at
most once per ``unknown_kid_interval``, when a token names a ``kid`` we do not know: a key
rotation then never needs a restart. A file that fails to load, or is older than what is in
force, keeps the previous snapshot (logged, and named by ``update_refused``).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from mesh.errors import InvalidSpiffeIdError
from mesh.identity.certs import (
    format_serial,
    is_es256_key,
    not_es256_reason,
    spiffe_id_of,
    thumbprint,
    uri_sans,
)
from mesh.identity.errors import BundleError, CertificateRevoked, CertificateUntrusted
from mesh.identity.spiffeid import SpiffeId, TrustDomain

_log = logging.getLogger(__name__)
_PEM_CRL_RE = re.compile(
    rb"-----BEGIN X509 CRL-----\r?\n.+?\r?\n-----END X509 CRL-----", re.DOTALL
)
_MAX_BUNDLE_BYTES = 4 * 1024 * 1024
_SHA256 = hashes.SHA256()


@dataclass(frozen=True, slots=True)
class BundleKey:
    """A token-signing key of the bundle whose certificate chain was validated at load time."""

    kid: str
    spiffe_id: SpiffeId
    public_key: ec.EllipticCurvePublicKey = field(repr=False)
    certificate: x509.Certificate = field(repr=False)
    #: leaf + intermediates, as validated (the anchor excluded)
    chain: tuple[x509.Certificate, ...] = field(repr=False)
    not_before: int
    not_after: int


@runtime_checkable
class BundleSource(Protocol):
    """What a verifier needs from the trust domain's published state."""

    @property
    def trust_domain(self) -> TrustDomain: ...

    @property
    def anchors(self) -> tuple[x509.Certificate, ...]: ...

    @property
    def generation(self) -> int:
        """Changes whenever keys, anchors or revocations change (verifiers drop derived state)."""
        ...

    @property
    def checks_revocation(self) -> bool:
        """Whether a CRL is consulted at all (False: spec 4.1's "not revoked" is unchecked)."""
        ...

    def key_for(self, kid: str) -> BundleKey | None: ...

    def keys(self) -> Mapping[str, BundleKey]:
        """Every valid token-signing key of the current state, by ``kid`` (read-only)."""
        ...

    def is_revoked(self, cert: x509.Certificate) -> bool: ...

    def verify_chain(self, chain: Sequence[x509.Certificate]) -> SpiffeId: ...


@dataclass(frozen=True, slots=True)
class _Snapshot:
    trust_domain: TrustDomain
    anchors: tuple[x509.Certificate, ...]
    store: Store
    intermediates: tuple[x509.Certificate, ...]
    keys: Mapping[str, BundleKey]
    rejected: Mapping[str, str]
    revoked: frozenset[tuple[bytes, int]]
    pending_crls: tuple[x509.CertificateRevocationList, ...]
    crl_next_update: datetime | None
    #: per verified CRL issuer (subject DER): the newest CRL in force, for rollback checks
    crl_versions: Mapping[bytes, _CrlVersion]
    sequence: int | None
    generation: int
    file_ids: tuple[tuple[int, ...] | None, ...]


def _file_id(path: Path | None) -> tuple[int, ...] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return ()
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _b64std(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"{what} is not valid base64 (RFC 7517 4.7)") from err


def _b64url_int(value: Any, what: str) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", value):
        raise ValueError(f"{what} is not base64url")
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    return int.from_bytes(raw, "big")


def _jwk_matches(entry: Mapping[str, Any], key: object) -> bool:
    if entry.get("kty") != "EC" or entry.get("crv") != "P-256":
        return False
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return False
    numbers = key.public_numbers()
    return (
        _b64url_int(entry.get("x"), "x") == numbers.x
        and _b64url_int(entry.get("y"), "y") == numbers.y
    )


def _x5c(entry: Mapping[str, Any]) -> list[x509.Certificate]:
    chain = entry.get("x5c")
    if not isinstance(chain, list) or not chain:
        raise ValueError("has no x5c certificate chain")
    try:
        return [
            x509.load_der_x509_certificate(_b64std(c, "x5c entry")) for c in chain
        ]
    except ValueError as err:
        raise ValueError(f"has an unreadable x5c certificate ({err})") from err


def _revocation_id(cert: x509.Certificate) -> tuple[bytes, int]:
    return cert.issuer.public_bytes(), cert.serial_number


def _trust_domain_of(anchors: Sequence[x509.Certificate]) -> TrustDomain | None:
    found: set[TrustDomain] = set()
    for anchor in anchors:
        for uri in uri_sans(anchor):
            try:
                found.add(SpiffeId.parse(uri).trust_domain)
            except InvalidSpiffeIdError:
                continue
    if len(found) > 1:
        names = ", ".join(sorted(td.name for td in found))
        raise BundleError(f"the bundle's anchors name several trust domains ({names})")
    return found.pop() if found else None


def _verify_leaf(
    store: Store, leaf: x509.Certificate, intermediates: Sequence[x509.Certificate], now: datetime
) -> list[x509.Certificate]:
    verifier = PolicyBuilder().store(store).time(now).build_client_verifier()
    return list(verifier.verify(leaf, list(intermediates)).chain)


@dataclass(frozen=True, slots=True)
class _CrlVersion:
    """What orders two CRLs of one issuer (RFC 5280 5.2.3), and what the newer one revokes."""

    issuer: str
    number: int | None
    this_update: datetime
    serials: frozenset[int]

    @staticmethod
    def of(crl: x509.CertificateRevocationList) -> _CrlVersion:
        try:
            number: int | None = crl.extensions.get_extension_for_class(
                x509.CRLNumber
            ).value.crl_number
        except x509.ExtensionNotFound:
            number = None
        return _CrlVersion(
            crl.issuer.rfc4514_string(),
            number,
            crl.last_update_utc,
            frozenset(entry.serial_number for entry in crl),
        )

    def older_than(self, other: _CrlVersion) -> bool:
        if self.number is not None and other.number is not None:
            return self.number < other.number
        return self.this_update < other.this_update

    def newest(self, other: _CrlVersion) -> _CrlVersion:
        return other if self.older_than(other) else self


@dataclass(frozen=True, slots=True)
class _Crls:
    revoked: frozenset[tuple[bytes, int]]
    #: CRLs whose issuer is not (yet) known to be valid: an intermediate that no key of the
    #: bundle uses. They are applied in verify_chain once a validated path shows their issuer.
    pending: tuple[x509.CertificateRevocationList, ...]
    next_update: datetime | None
    versions: Mapping[bytes, _CrlVersion] = field(default_factory=dict)


def _read_crl_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise BundleError(f"cannot read the CRL file {path}: {err.strerror}") from err


def _load_crls(data: bytes, path: Path, issuers: Sequence[x509.Certificate]) -> _Crls:
    """The CRLs in ``data`` (PEM); ``path`` names where they came from in messages."""
    blocks = _PEM_CRL_RE.findall(data)
    if not blocks:
        raise BundleError(f"the CRL file {path} holds no PEM 'X509 CRL' block")
    revoked: set[tuple[bytes, int]] = set()
    pending: list[x509.CertificateRevocationList] = []
    next_update: datetime | None = None
    versions: dict[bytes, _CrlVersion] = {}
    for block in blocks:
        try:
            crl = x509.load_pem_x509_crl(block)
        except ValueError as err:
            raise BundleError(f"the CRL file {path} holds an unreadable CRL") from err
        candidates = [c for c in issuers if c.subject == crl.issuer]
        if not candidates:
            pending.append(crl)
            continue
        if not any(_crl_signed_by(crl, c) for c in candidates):
            raise BundleError(
                f"the CRL in {path} claims issuer {crl.issuer.rfc4514_string()} but its "
                "signature does not verify with that CA's key; refusing to use it"
            )
        issuer_der = crl.issuer.public_bytes()
        revoked.update((issuer_der, entry.serial_number) for entry in crl)
        version = _CrlVersion.of(crl)
        seen = versions.get(issuer_der)
        versions[issuer_der] = version if seen is None else seen.newest(version)
        nu = crl.next_update_utc
        if nu is not None and (next_update is None or nu < next_update):
            next_update = nu
    return _Crls(frozenset(revoked), tuple(pending), next_update, versions)


def _check_crl_rollback(
    path: Path,
    previous: Mapping[bytes, _CrlVersion],
    current: Mapping[bytes, _CrlVersion],
    issuers: Sequence[x509.Certificate],
) -> None:
    """Refuse CRLs older than those in force: replaying an old, validly signed CRL (an old copy,
    a lagging sync job) would otherwise un-revoke what was revoked since (RFC 5280 5.2.3)."""
    still_issuers = {c.subject.public_bytes() for c in issuers}
    for issuer_der, old in previous.items():
        new = current.get(issuer_der)
        who = old.issuer
        if new is None:
            if issuer_der in still_issuers:
                raise BundleError(
                    f"the CRL file {path} no longer holds a CRL of {who}, which is still a CA "
                    "of the bundle; dropping it would un-revoke its certificates, so the CRLs "
                    "in force are kept"
                )
            continue
        if new.older_than(old):
            what = (
                f"CRL number {new.number}, lower than {old.number}"
                if new.number is not None and old.number is not None
                else f"thisUpdate {new.this_update.isoformat()}, earlier than "
                f"{old.this_update.isoformat()}"
            )
            raise BundleError(
                f"the CRL of {who} in {path} is older than the one in force ({what}); an old "
                "CRL would un-revoke certificates (RFC 5280 5.2.3), so the newer one is kept"
            )
        if not old.older_than(new) and not old.serials <= new.serials:
            raise BundleError(
                f"the CRL of {who} in {path} has the same number as the one in force but "
                "leaves out certificates it revokes; a CRL number must change with the content "
                "(RFC 5280 5.2.3), so the one in force is kept"
            )



def _crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    key = issuer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    return crl.is_signature_valid(key)


class FileBundleSource:
    """A :class:`BundleSource` backed by ``bundle.spiffe.json`` (and ``crl.pem``) on disk."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        crl_path: str | os.PathLike[str] | None = None,
        *,
        trust_domain: TrustDomain | str | None = None,
        fallback_trust_domain: TrustDomain | None = None,
        check_interval: float = 1.0,
        unknown_kid_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = Path(path)
        # The time certificate chains are validated at (Unix seconds). A verifier on a fake or
        # fixed clock (tests, conformance vectors) must give its bundle source the same one.
        self._clock = clock
        self._crl_path = Path(crl_path) if crl_path is not None else None
        # trust_domain overrides what the anchors say; fallback_trust_domain only stands in
        # for anchors that carry no SPIFFE ID.
        self._td_hint = TrustDomain(trust_domain) if isinstance(trust_domain, str) else trust_domain
        self._td_fallback = fallback_trust_domain
        self._check_interval = check_interval
        self._unknown_kid_interval = unknown_kid_interval
        self._lock = threading.Lock()
        self._last_check = time.monotonic()
        self._last_forced = float("-inf")
        self._generation = 0
        self._update_refused: str | None = None
        # The first load must succeed: a service must not start without its trust anchors.
        self._snap = self._load(self._current_file_ids(), None)

    # --- BundleSource -------------------------------------------------------------------------

    @property
    def trust_domain(self) -> TrustDomain:
        return self._snap.trust_domain

    @property
    def checks_revocation(self) -> bool:
        return self._crl_path is not None

    @property
    def anchors(self) -> tuple[x509.Certificate, ...]:
        return self._snapshot().anchors

    @property
    def generation(self) -> int:
        return self._snapshot().generation

    @property
    def sequence(self) -> int | None:
        """The bundle's ``spiffe_sequence``, if it has one."""
        return self._snapshot().sequence

    @property
    def rejected(self) -> Mapping[str, str]:
        """kid -> why that jwt-svid entry was left out (for diagnostics; never trusted)."""
        return self._snapshot().rejected

    @property
    def update_refused(self) -> str | None:
        """Why the files on disk were not applied (unreadable, invalid, or older than the state
        in force), or None when the snapshot in force is the files' current content."""
        self._snapshot()
        return self._update_refused

    def kids(self) -> tuple[str, ...]:
        return tuple(self._snapshot().keys)

    def keys(self) -> Mapping[str, BundleKey]:
        return self._snapshot().keys

    def key_for(self, kid: str) -> BundleKey | None:
        key = self._snapshot().keys.get(kid)
        if key is None:
            # Maybe the key was rotated in since we last looked; look again, but rate-limited so
            # a stream of made-up kids cannot make us re-read the file on every call.
            now = time.monotonic()
            if now - self._last_forced >= self._unknown_kid_interval:
                with self._lock:
                    if now - self._last_forced >= self._unknown_kid_interval:
                        self._last_forced = now
                        # An entry refused at load may have been refused for time (a
                        # certificate not valid yet under clock skew): re-validate it even if
                        # the files did not change.
                        self._reload_locked(force=kid in self._snap.rejected)
                key = self._snap.keys.get(kid)
        return key

    def rejection_reason(self, kid: str) -> str | None:
        return self._snap.rejected.get(kid)

    def is_revoked(self, cert: x509.Certificate) -> bool:
        revoked = self._snapshot().revoked
        return bool(revoked) and _revocation_id(cert) in revoked

    def verify_chain(self, chain: Sequence[x509.Certificate]) -> SpiffeId:
        """Check a certificate chain (leaf first) against the anchors and the CRL, now.

        Intermediates missing from ``chain`` are taken from the bundle's validated keys. Returns
        the leaf's SPIFFE ID; raises CertificateUntrusted or CertificateRevoked.
        """
        if not chain:
            raise CertificateUntrusted("no certificate was presented (spec 4.1)")
        snap = self._snapshot()
        leaf = chain[0]
        try:
            spiffe_id = spiffe_id_of(leaf)
        except InvalidSpiffeIdError as err:
            raise CertificateUntrusted(
                f"the certificate does not carry exactly one valid SPIFFE ID ({err}) (spec 4.1)"
            ) from err
        if not spiffe_id.member_of(snap.trust_domain):
            raise CertificateUntrusted(
                f"the certificate's SPIFFE ID {spiffe_id} is not in the trust domain "
                f"{snap.trust_domain} (spec 4.1)", presented=spiffe_id
            )
        try:
            path = _verify_leaf(
                snap.store, leaf, [*chain[1:], *snap.intermediates], self._now()
            )
        except VerificationError as err:
            raise CertificateUntrusted(
                f"the certificate of {spiffe_id} does not chain to the trust anchors of "
                f"{snap.trust_domain} or is not valid now ({_short(err)}) (spec 4.1)",
                presented=spiffe_id,
            ) from err
        for i, cert in enumerate(path[:-1]):  # the anchor itself is trusted by configuration
            if (snap.revoked and _revocation_id(cert) in snap.revoked) or _pending_revokes(
                snap.pending_crls, cert, path[i + 1]
            ):
                what = "certificate" if cert is path[0] else "issuing CA certificate"
                raise CertificateRevoked(
                    f"the {what} of {spiffe_id} (serial {format_serial(cert.serial_number)}) is "
                    "revoked by the CRL (spec 4.1)", presented=spiffe_id
                )
        return spiffe_id

    # --- loading ------------------------------------------------------------------------------

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def refresh(self) -> bool:
        """Re-read the files now if they changed; True if a new snapshot was installed."""
        with self._lock:
            return self._reload_locked()

    def _current_file_ids(self) -> tuple[tuple[int, ...] | None, ...]:
        return (_file_id(self._path), _file_id(self._crl_path))

    def _snapshot(self) -> _Snapshot:
        now = time.monotonic()
        if now - self._last_check >= self._check_interval:
            self._last_check = now
            if self._current_file_ids() != self._snap.file_ids and self._lock.acquire(
                blocking=False
            ):
                # Another thread already reloading: keep serving the current snapshot.
                try:
                    self._reload_locked()
                finally:
                    self._lock.release()
        return self._snap

    def _reload_locked(self, *, force: bool = False) -> bool:
        ids = self._current_file_ids()
        if ids == self._snap.file_ids and not force:
            return False
        try:
            snap = self._load(ids, self._snap)
        except BundleError as err:
            _log.warning("keeping the previous trust bundle: %s", err)
            self._update_refused = str(err)
            # Remember the broken files' identity so we do not re-parse them on every check.
            self._snap = _replace_ids(self._snap, ids)
            return False
        self._snap = snap
        self._update_refused = None
        _log.info(
            "trust bundle reloaded: %d signing keys, %d anchors, %d revoked serials",
            len(snap.keys), len(snap.anchors), len(snap.revoked),
        )
        return True

    def _read_bundle(self) -> bytes:
        """The bundle document's bytes (at most 4 MiB + 1); overridden by in-memory sources."""
        try:
            with open(self._path, "rb") as fh:
                return fh.read(_MAX_BUNDLE_BYTES + 1)
        except OSError as err:
            raise BundleError(
                f"cannot read the trust bundle {self._path}: {err.strerror}"
            ) from err

    def _read_crl(self) -> bytes:
        """The CRL PEM's bytes (only called when a CRL is configured)."""
        assert self._crl_path is not None
        return _read_crl_file(self._crl_path)

    def _load(
        self, file_ids: tuple[tuple[int, ...] | None, ...], previous: _Snapshot | None
    ) -> _Snapshot:
        path = self._path
        data = self._read_bundle()
        if len(data) > _MAX_BUNDLE_BYTES:
            raise BundleError(f"the trust bundle {path} is larger than 4 MiB")
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, ValueError) as err:
            raise BundleError(f"the trust bundle {path} is not JSON") from err
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise BundleError(
                f"the trust bundle {path} is not a SPIFFE bundle (a JWKS object with 'keys')"
            )
        sequence = doc.get("spiffe_sequence")
        if not isinstance(sequence, int) or isinstance(sequence, bool):
            sequence = None
        entries = [e for e in doc["keys"] if isinstance(e, dict)]

        anchors: list[x509.Certificate] = []
        for n, entry in enumerate(e for e in entries if e.get("use") == "x509-svid"):
            try:
                certs = _x5c(entry)
                if len(certs) != 1:
                    raise ValueError("must hold exactly one certificate in x5c")
                if not _jwk_matches(entry, certs[0].public_key()):
                    raise ValueError("has a key that is not its certificate's P-256 key")
            except ValueError as err:
                _log.warning("trust bundle %s: x509-svid entry %d %s; ignored", path, n, err)
                continue
            anchors.append(certs[0])
        if not anchors:
            raise BundleError(f"the trust bundle {path} has no usable x509-svid trust anchor")
        td = self._td_hint or _trust_domain_of(anchors) or self._td_fallback
        if td is None:
            raise BundleError(
                f"the trust bundle {path}'s anchors carry no SPIFFE ID: pass the trust domain "
                "explicitly"
            )
        if (
            previous is not None
            and previous.trust_domain == td
            and previous.sequence is not None
            and sequence is not None
            and sequence < previous.sequence
        ):
            raise BundleError(
                f"the trust bundle {path} has spiffe_sequence {sequence}, lower than the "
                f"{previous.sequence} in force for {td}: it is an older bundle (it could bring "
                "back removed keys or anchors), so the newer one is kept"
            )
        store = Store(anchors)
        now = self._now()

        keys: dict[str, BundleKey] = {}
        rejected: dict[str, str] = {}
        intermediates: dict[bytes, x509.Certificate] = {}
        for n, entry in enumerate(e for e in entries if e.get("use") == "jwt-svid"):
            kid = entry.get("kid")
            label = kid if isinstance(kid, str) and len(kid) <= 64 else f"#{n}"
            try:
                key = self._validate_jwt_key(entry, td, store, now, intermediates)
            except ValueError as err:
                rejected[label] = str(err)
                _log.warning("trust bundle %s: jwt-svid key %s %s; ignored", path, label, err)
                continue
            if key.kid in keys:
                rejected[label] = "appears twice"
                continue
            keys[key.kid] = key

        issuers = [*anchors, *intermediates.values()]
        crls = _Crls(frozenset(), (), None)
        if self._crl_path is not None:
            crls = _load_crls(self._read_crl(), self._crl_path, issuers)
            if previous is not None:
                _check_crl_rollback(self._crl_path, previous.crl_versions, crls.versions, issuers)
            if crls.next_update is not None and crls.next_update < now:
                _log.warning(
                    "the CRL %s is stale (next update was due %s); still applying it",
                    self._crl_path, crls.next_update.isoformat(),
                )
        self._generation += 1
        return _Snapshot(
            trust_domain=td,
            anchors=tuple(anchors),
            store=store,
            intermediates=tuple(intermediates.values()),
            keys=keys,
            rejected=rejected,
            revoked=crls.revoked,
            pending_crls=crls.pending,
            crl_next_update=crls.next_update,
            crl_versions=crls.versions,
            sequence=sequence,
            generation=self._generation,
            file_ids=file_ids,
        )

    @staticmethod
    def _validate_jwt_key(
        entry: Mapping[str, Any],
        td: TrustDomain,
        store: Store,
        now: datetime,
        intermediates: dict[bytes, x509.Certificate],
    ) -> BundleKey:
        kid = entry.get("kid")
        if not isinstance(kid, str):
            raise ValueError("has no kid")
        chain = _x5c(entry)
        leaf = chain[0]
        if thumbprint(leaf) != kid:
            raise ValueError("has a kid that is not its certificate's x5t#S256 thumbprint")
        public_key = leaf.public_key()
        if not is_es256_key(public_key):
            raise ValueError(f"has a certificate with {not_es256_reason(public_key)}")
        if not _jwk_matches(entry, public_key):
            raise ValueError("has a JWK that is not its certificate's P-256 public key")
        try:
            spiffe_id = spiffe_id_of(leaf)
        except InvalidSpiffeIdError as err:
            raise ValueError(f"has a certificate without exactly one SPIFFE ID ({err})") from err
        if not spiffe_id.member_of(td):
            raise ValueError(f"belongs to {spiffe_id}, outside the trust domain {td}")
        if (role := spiffe_id.reserved_role) is not None:
            raise ValueError(
                f"belongs to {spiffe_id}, the identity of {role}, which may not sign tokens "
                "(spec 8)"
            )
        try:
            path = _verify_leaf(store, leaf, chain[1:], now)
        except VerificationError as err:
            raise ValueError(
                f"of {spiffe_id} does not chain to the trust anchors ({_short(err)})"
            ) from err
        for cert in path[1:-1]:
            intermediates.setdefault(cert.fingerprint(_SHA256), cert)
        return BundleKey(
            kid=kid,
            spiffe_id=spiffe_id,
            public_key=public_key,
            certificate=leaf,
            chain=tuple(path[:-1]),
            not_before=int(leaf.not_valid_before_utc.timestamp()),
            not_after=int(leaf.not_valid_after_utc.timestamp()),
        )


def _pending_revokes(
    crls: Sequence[x509.CertificateRevocationList],
    cert: x509.Certificate,
    issuer: x509.Certificate,
) -> bool:
    return any(
        crl.issuer == issuer.subject
        and _crl_signed_by(crl, issuer)
        and crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
        for crl in crls
    )


def _replace_ids(snap: _Snapshot, ids: tuple[tuple[int, ...] | None, ...]) -> _Snapshot:
    return replace(snap, file_ids=ids)


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:160]
