"""The certificate authority: create or open a CA folder, issue, renew and revoke SVIDs.

Every change is ONE registry transaction followed by the publication of
``bundle.spiffe.json``, ``svid_bundle.pem`` and ``crl.pem`` (and, when asked, the services'
own files), all under an exclusive lock: :mod:`ca.publication` holds the protocol that keeps
them consistent even when the process is killed at any instant. Keys and certificates are
built before the lock is taken, so concurrent issuers only queue for the short write.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca import crashpoints, fsio
from ca.bundle import BundleRenderer, der_of, ec_coordinates, render_bundle
from ca.crl import build_crl, parse_reason
from ca.errors import (
    BadCSR,
    CAExists,
    CAKeyMismatch,
    CANotFound,
    CorruptCA,
    InvalidInput,
    InvalidSerial,
    InvalidValidity,
    OutputError,
    UnknownSerial,
    UnknownService,
)
from ca.parsing import format_serial
from ca.publication import LOCK_FILE, Publisher
from ca.registry import SCHEMA_VERSION, CertRecord, Registry
from ca.svid import IssuedSVID
from ca.svidfolder import SetPlan
from ca.templates import (
    INTERMEDIATE_LIFETIME,
    ROOT_LIFETIME,
    IPAddress,
    authority_key_id,
    build_intermediate,
    build_leaf,
    build_root,
    new_key,
    new_serial,
)
from ca.validate import (
    check_dns,
    check_dns_reserved,
    check_ips,
    check_name,
    check_trust_domain,
    same_key,
)
from mesh.errors import InvalidSpiffeIdError
from mesh.identity.certs import thumbprint, uri_sans
from mesh.identity.spiffeid import DEFAULT_TRUST_DOMAIN, SpiffeId, TrustDomain

__all__ = ["DEFAULT_TTL", "CertificateAuthority", "IssuedSVID"]

T = TypeVar("T")

DEFAULT_TTL = timedelta(hours=24)
# Leaves start a minute in the past so a peer whose clock lags slightly accepts them at once.
LEAF_BACKDATE = timedelta(seconds=60)

ROOT_CERT = "root_cert.pem"
ROOT_KEY = "root_key.pem"
INTERMEDIATE_CERT = "intermediate_cert.pem"
INTERMEDIATE_KEY = "intermediate_key.pem"
BUNDLE_JSON = "bundle.spiffe.json"
BUNDLE_PEM = "svid_bundle.pem"
CRL_PEM = "crl.pem"


def _now() -> datetime:
    # X.509 and the registry keep whole seconds; keep one clock value per operation.
    return datetime.now(UTC).replace(microsecond=0)


class CertificateAuthority:
    """A CA living in one folder. Build with :meth:`init` or :meth:`open`, not directly."""

    def __init__(
        self,
        ca_dir: Path,
        trust_domain: TrustDomain,
        root: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
        intermediate: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
        registry: Registry,
    ) -> None:
        self.ca_dir = ca_dir
        self.trust_domain = trust_domain
        self.root_cert, self._root_key = root
        self._intermediate = intermediate
        if intermediate is None:
            self.issuer_cert, self._issuer_key = root
        else:
            self.issuer_cert, self._issuer_key = intermediate
        self._issuer_aki = authority_key_id(self.issuer_cert)
        self._registry = registry
        self._thread_lock = threading.RLock()
        # Renders bundle.spiffe.json under the publication's lock (docs/architecture.md, caches).
        self._bundle_renderer = BundleRenderer()
        self._publisher = Publisher(
            ca_dir, registry, self._thread_lock, (BUNDLE_JSON, BUNDLE_PEM, CRL_PEM),
            self._render_publication,
        )
        # What opening this CA and its changes repaired after a killed command, in sentences.
        self.repairs: list[str] = []

    # ---- creation -------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        ca_dir: Path,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        intermediate: bool = False,
        *,
        root_lifetime: timedelta = ROOT_LIFETIME,
        intermediate_lifetime: timedelta = INTERMEDIATE_LIFETIME,
    ) -> CertificateAuthority:
        """Create a CA in ``ca_dir`` (missing or empty). Refuses to touch an existing CA.

        The folder is built under a temporary name beside it and renamed into place, so a
        crash or a concurrent ``init`` never leaves a half-made CA. The lifetimes default to
        10 years (root) and 1 year (intermediate, never past the root); long-lived test CAs
        (conformance vectors) ask for more.
        """
        td = check_trust_domain(trust_domain)
        for what, life in (("root", root_lifetime), ("intermediate", intermediate_lifetime)):
            if not isinstance(life, timedelta) or life < timedelta(days=1):
                raise InvalidValidity(f"the {what} CA lifetime must be at least one day")
        ca_dir = Path(ca_dir)
        if ca_dir.exists() or ca_dir.is_symlink():
            if not ca_dir.is_dir():
                raise CAExists(f"{ca_dir} exists and is not a folder")
            if (ca_dir / ROOT_CERT).exists() or (ca_dir / Registry.FILE).exists():
                raise CAExists(f"{ca_dir} already holds a CA; refusing to overwrite it")
            if any(ca_dir.iterdir()):
                raise CAExists(f"{ca_dir} is not empty; a CA needs a folder of its own")
        try:
            ca_dir.parent.mkdir(parents=True, exist_ok=True)
            _remove_abandoned_inits(ca_dir)
            tmp = Path(tempfile.mkdtemp(dir=ca_dir.parent, prefix=_init_prefix(ca_dir)))
            # Held until this process ends: tells a later init that the folder is in use.
            busy = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise OutputError(f"cannot create the CA folder {ca_dir}: {err.strerror}") from err
        try:
            fcntl.flock(busy, fcntl.LOCK_EX)
            crashpoints.reached("init-temp-dir")
            cls._populate(tmp, td, intermediate, root_lifetime, intermediate_lifetime)
            crashpoints.reached("init-populated")
            try:
                os.rename(tmp, ca_dir)
            except OSError as err:
                if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                    raise CAExists(f"{ca_dir} was created by someone else meanwhile") from err
                raise OutputError(f"cannot create {ca_dir}: {err.strerror}") from err
            crashpoints.reached("init-renamed")
            fsio.fsync_dir(ca_dir.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            os.close(busy)
        return cls.open(ca_dir)

    @staticmethod
    def _populate(
        folder: Path,
        td: TrustDomain,
        intermediate: bool,
        root_lifetime: timedelta = ROOT_LIFETIME,
        intermediate_lifetime: timedelta = INTERMEDIATE_LIFETIME,
    ) -> None:
        now = _now()
        root_key = new_key()
        root = build_root(
            root_key, td, now, path_length=1 if intermediate else 0, lifetime=root_lifetime
        )
        fsio.atomic_write(folder / ROOT_KEY, fsio.key_pem(root_key), fsio.KEY_MODE)
        crashpoints.reached("init-root-key")
        fsio.atomic_write(folder / ROOT_CERT, fsio.cert_pem([root]))
        chain: list[x509.Certificate] = []
        issuer, issuer_key = root, root_key
        if intermediate:
            issuer_key = new_key()
            issuer = build_intermediate(
                issuer_key, td, root, root_key, now, lifetime=intermediate_lifetime
            )
            fsio.atomic_write(folder / INTERMEDIATE_KEY, fsio.key_pem(issuer_key), fsio.KEY_MODE)
            fsio.atomic_write(folder / INTERMEDIATE_CERT, fsio.cert_pem([issuer]))
            chain.append(issuer)
        reg_path = folder / Registry.FILE
        reg_path.touch(mode=0o600)
        registry = Registry(reg_path, create=True)
        try:
            with registry.transaction():
                registry.set_meta("schema_version", SCHEMA_VERSION)
                registry.set_meta("trust_domain", td.name)
                registry.set_meta("intermediate", "1" if intermediate else "0")
                registry.set_meta("created_at", str(int(now.timestamp())))
                seq = registry.bump("spiffe_sequence")
                number = registry.bump("crl_number")
        finally:
            registry.close()
        fsio.atomic_write(folder / BUNDLE_JSON, render_bundle([root], chain, [], sequence=seq))
        fsio.atomic_write(folder / BUNDLE_PEM, fsio.cert_pem([root]))
        crl = build_crl(issuer, issuer_key, [], number=number, now=now)
        fsio.atomic_write(folder / CRL_PEM, crl.public_bytes(serialization.Encoding.PEM))
        (folder / LOCK_FILE).touch(mode=0o600)

    @classmethod
    def open(cls, ca_dir: Path) -> CertificateAuthority:
        """Open an existing CA; check that each key matches its certificate."""
        ca_dir = Path(ca_dir)
        if not ca_dir.is_dir():
            with contextlib.suppress(OSError):
                _remove_abandoned_inits(ca_dir)  # a killed init leaves its root key there
            raise CANotFound(f"there is no CA folder at {ca_dir}; create one with mesh-ca init")
        if not (ca_dir / ROOT_CERT).is_file():
            raise CANotFound(f"{ca_dir} holds no CA ({ROOT_CERT} is missing)")
        root = cls._load_pair(ca_dir, ROOT_CERT, ROOT_KEY)
        registry = Registry(ca_dir / Registry.FILE)
        try:
            td_name = registry.get_meta("trust_domain") or ""
            try:
                td = TrustDomain(td_name)
            except InvalidSpiffeIdError as err:
                raise CorruptCA(f"the registry names an invalid trust domain {td_name!r}") from err
            if uri_sans(root[0]) != [str(td.id)]:
                raise CorruptCA(
                    f"{ROOT_CERT} does not carry the trust domain {td.id} the registry names"
                )
            intermediate = None
            if registry.get_meta("intermediate") == "1":
                intermediate = cls._load_pair(ca_dir, INTERMEDIATE_CERT, INTERMEDIATE_KEY)
                try:
                    intermediate[0].verify_directly_issued_by(root[0])
                except (ValueError, TypeError, InvalidSignature) as err:
                    raise CorruptCA(f"{INTERMEDIATE_CERT} is not signed by {ROOT_CERT}") from err
        except BaseException:
            registry.close()
            raise
        ca = cls(ca_dir, td, root, intermediate, registry)
        try:
            ca.repairs.extend(ca._publisher.recover())
        except BaseException:
            ca.close()
            raise
        return ca

    @staticmethod
    def _load_pair(
        ca_dir: Path, cert_file: str, key_file: str
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        cert = fsio.load_cert(ca_dir / cert_file)
        if not (ca_dir / key_file).is_file():
            raise CorruptCA(f"the CA key {key_file} is missing from {ca_dir}")
        key = fsio.load_key(ca_dir / key_file)
        if not same_key(key.public_key(), cert.public_key()):
            raise CAKeyMismatch(f"the CA key {key_file} does not belong to {cert_file}")
        return cert, key

    def close(self) -> None:
        self._registry.close()

    def __enter__(self) -> CertificateAuthority:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- views ----------------------------------------------------------------------------

    @property
    def intermediates(self) -> tuple[x509.Certificate, ...]:
        return () if self._intermediate is None else (self._intermediate[0],)

    @property
    def roots(self) -> tuple[x509.Certificate, ...]:
        return (self.root_cert,)

    @property
    def bundle_path(self) -> Path:
        return self.ca_dir / BUNDLE_JSON

    @property
    def roots_path(self) -> Path:
        return self.ca_dir / BUNDLE_PEM

    @property
    def crl_path(self) -> Path:
        return self.ca_dir / CRL_PEM

    @property
    def root_fingerprint(self) -> str:
        """SHA-256 over the root certificate's DER, lowercase hex: what a node pins the root
        by (the form ``step ca bootstrap --fingerprint`` takes)."""
        return hashlib.sha256(der_of(self.root_cert)).hexdigest()

    def records(self) -> list[CertRecord]:
        """Every certificate in the registry, oldest first."""
        # The thread lock keeps a reader off the shared connection while another thread's
        # transaction is open (it would see uncommitted rows).
        with self._thread_lock:
            return self._registry.all()

    def record(self, serial: int) -> CertRecord:
        with self._thread_lock:
            rec = self._registry.by_serial(serial)
        if rec is None:
            raise UnknownSerial(
                f"no certificate with serial {format_serial(serial)} was issued by this CA"
            )
        return rec

    # ---- issuance -------------------------------------------------------------------------

    def issue(
        self,
        name: str,
        *,
        dns: Sequence[str] = (),
        ips: Sequence[str | IPAddress] = (),
        ttl: timedelta = DEFAULT_TTL,
        csr_pem: bytes | None = None,
        not_before: datetime | None = None,
        out_dir: Path | None = None,
    ) -> IssuedSVID:
        """Issue one X.509-SVID for service ``name``.

        ``out_dir``: also write ``out_dir/name/{svid,svid_key,svid_bundle}.pem`` inside the
        same transaction (a write failure leaves the registry unchanged).
        """
        return self.issue_many(
            [name],
            dns=dns,
            ips=ips,
            ttl=ttl,
            csr_pem=csr_pem,
            not_before=not_before,
            out_dir=out_dir,
        )[0]

    def issue_many(
        self,
        names: Sequence[str],
        *,
        dns: Sequence[str] = (),
        ips: Sequence[str | IPAddress] = (),
        ttl: timedelta = DEFAULT_TTL,
        csr_pem: bytes | None = None,
        not_before: datetime | None = None,
        out_dir: Path | None = None,
    ) -> list[IssuedSVID]:
        """Issue one SVID per name in ONE transaction and one publication: all or none."""
        if isinstance(names, str):
            raise InvalidInput("names must be a sequence of service names, not a single string")
        names = [check_name(n) for n in names]
        if not names:
            raise InvalidInput("no service name was given")
        seen: set[str] = set()
        for n in names:
            if n in seen:
                raise InvalidInput(f"service name {n!r} is given twice")
            seen.add(n)
        extra_dns = check_dns(dns)
        for n in names:
            check_dns_reserved(n, self.trust_domain, extra_dns)
        extra_ips = check_ips(ips)
        public_key = None
        if csr_pem is not None:
            if len(names) != 1:
                raise InvalidInput("a CSR carries one key: issue one service per CSR")
            public_key = self._csr_public_key(csr_pem)
        now = _now()
        nb, na = self._validity(now, ttl, not_before)
        svids: list[IssuedSVID] = []
        records: list[CertRecord] = []
        for n in names:
            svid, rec = self._build(
                n,
                extra_dns=extra_dns,
                extra_ips=extra_ips,
                public_key=public_key,
                nb=nb,
                na=na,
                now=now,
                ttl=ttl,
            )
            svids.append(svid)
            records.append(rec)

        def apply() -> None:
            for rec in records:
                self._registry.insert(rec)

        def plan_sets() -> list[SetPlan]:
            return [svid.plan_set(Path(str(out_dir)) / svid.name) for svid in svids]

        self._publisher.change(
            apply, now, plan_sets if out_dir is not None else None, self.repairs
        )
        return svids

    def renew(
        self, name: str, *, csr_pem: bytes | None = None, out_dir: Path | None = None
    ) -> IssuedSVID:
        """Issue a fresh SVID for ``name`` with the SANs and lifetime of its latest one.

        A new key is generated unless ``csr_pem`` is given. Earlier certificates stay valid
        until they expire (a rotating service needs the overlap); revoke them to end them.
        """
        name = check_name(name)
        with self._thread_lock:
            history = self._registry.by_name(name)
        if not history:
            raise UnknownService(f"service {name!r} has never been issued a certificate")
        last = history[-1]
        default_dns = self.trust_domain.service_dns_name(name)
        return self.issue(
            name,
            dns=[d for d in last.dns if d != default_dns],
            ips=list(last.ips),
            ttl=timedelta(seconds=last.ttl),
            csr_pem=csr_pem,
            out_dir=out_dir,
        )

    def revoke(
        self,
        *,
        serial: int | None = None,
        name: str | None = None,
        reason: str = "unspecified",
    ) -> list[int]:
        """Revoke one certificate by serial, or every unrevoked one of a service by name.

        Returns the serials revoked now: empty when every one named was revoked already. The
        CRL and the bundle are republished in either case, so repeating a revocation is how
        to make sure it is published.
        """
        if (serial is None) == (name is None):
            raise InvalidInput("revoke needs exactly one of a serial or a service name")
        if serial is not None and (
            isinstance(serial, bool) or not isinstance(serial, int) or serial <= 0
        ):
            raise InvalidSerial(f"serial {serial!r} is invalid: it must be a positive integer")
        if name is not None:
            name = check_name(name)
        canonical = parse_reason(reason)
        now = _now()

        def apply() -> list[int]:
            if serial is not None:
                rec = self._registry.by_serial(serial)
                if rec is None:
                    raise UnknownSerial(
                        f"no certificate with serial {format_serial(serial)} was issued by "
                        "this CA"
                    )
                targets = [rec]
            else:
                targets = self._registry.by_name(str(name))
                if not targets:
                    raise UnknownService(f"service {name!r} has never been issued a certificate")
            fresh = [rec for rec in targets if rec.status == "valid"]
            for rec in fresh:
                self._registry.mark_revoked(rec.serial, int(now.timestamp()), canonical)
            return [rec.serial for rec in fresh]

        return self._publisher.change(apply, now, notes=self.repairs)

    def publish(self) -> None:
        """Re-sign the CRL (fresh next-update) and rewrite the bundle from the registry."""
        self._publisher.change(lambda: None, _now(), notes=self.repairs)

    # ---- for the CA service (ca/service): other identities, extension tables ------------------

    def sign_leaf(
        self,
        spiffe_id: SpiffeId,
        public_key: ec.EllipticCurvePublicKey,
        *,
        name: str,
        ttl: timedelta,
        dns: Sequence[str] = (),
    ) -> tuple[IssuedSVID, CertRecord]:
        """Build and sign one X.509-SVID for any SPIFFE ID of this trust domain; record nothing.

        The registry row comes back for :meth:`change` to insert (the caller decides what else
        goes into that transaction). ``name`` is the registry's name for the identity and the
        certificate's CN; ``dns`` its DNS SANs (none by default). The lifetime is cut to the
        issuing CA's end instead of refused: a service answering agents has no one to ask for
        a shorter one.
        """
        if spiffe_id.trust_domain != self.trust_domain:
            raise InvalidInput(f"{spiffe_id} is not in this CA's trust domain {self.trust_domain}")
        now = _now()
        ttl = min(ttl, self.issuer_cert.not_valid_after_utc - now)
        nb, na = self._validity(now, ttl, None)
        return self._sign(
            spiffe_id,
            name=name,
            dns_names=list(check_dns(dns)),
            extra_ips=[],
            public_key=public_key,
            key=None,
            nb=nb,
            na=na,
            now=now,
            ttl=ttl,
        )

    def change(self, apply: Callable[[Registry], T], *, publish: bool = True) -> T:
        """Run ``apply(registry)`` as one CA change: under the CA's lock, in one registry
        transaction, followed (``publish``) by the publication of bundle, roots and CRL.

        Any exception from ``apply`` rolls everything back. This is how the CA service writes
        its own tables and inserts the rows :meth:`sign_leaf` returned.
        """
        return self._publisher.change(lambda: apply(self._registry), _now(), notes=self.repairs,
                                      publish=publish)

    # ---- internals ------------------------------------------------------------------------

    def _validity(
        self, now: datetime, ttl: timedelta, not_before: datetime | None
    ) -> tuple[datetime, datetime]:
        if not isinstance(ttl, timedelta) or ttl < timedelta(seconds=1):
            raise InvalidValidity(f"lifetime {ttl!r} is invalid: it must be at least one second")
        if not_before is None:
            nb, na = now - LEAF_BACKDATE, now + ttl
        else:
            if not isinstance(not_before, datetime) or not_before.tzinfo is None:
                raise InvalidValidity("not_before must be a timezone-aware datetime")
            nb = not_before.astimezone(UTC).replace(microsecond=0)
            na = nb + ttl
        issuer_end = self.issuer_cert.not_valid_after_utc
        if na > issuer_end:
            raise InvalidValidity(
                f"the certificate would outlive its issuing CA (valid until "
                f"{issuer_end:%Y-%m-%d %H:%M:%S}Z); ask for a shorter lifetime"
            )
        return nb, na

    def _csr_public_key(self, csr_pem: bytes) -> ec.EllipticCurvePublicKey:
        if not isinstance(csr_pem, bytes | bytearray):
            raise BadCSR("the CSR must be given as PEM bytes")
        try:
            csr = x509.load_pem_x509_csr(bytes(csr_pem))
        except (ValueError, x509.InvalidVersion) as err:  # InvalidVersion is no ValueError
            raise BadCSR("the CSR is not a readable PEM certificate signing request") from err
        try:
            public_key = csr.public_key()
            signed = csr.is_signature_valid
        except (ValueError, UnsupportedAlgorithm) as err:
            raise BadCSR("the CSR's key or signature algorithm is not supported") from err
        if not signed:
            raise BadCSR("the CSR's signature does not verify with the key it carries")
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
            public_key.curve, ec.SECP256R1
        ):
            raise BadCSR(
                "the CSR's key is not ECDSA P-256; this CA signs only P-256 keys "
                "(gRPC's TLS stack rejects others)"
            )
        if same_key(public_key, self.root_cert.public_key()) or same_key(
            public_key, self.issuer_cert.public_key()
        ):
            raise BadCSR("the CSR carries a CA key; a service must have a key of its own")
        return public_key

    def _build(
        self,
        name: str,
        *,
        extra_dns: list[str],
        extra_ips: list[IPAddress],
        public_key: ec.EllipticCurvePublicKey | None,
        nb: datetime,
        na: datetime,
        now: datetime,
        ttl: timedelta,
    ) -> tuple[IssuedSVID, CertRecord]:
        key = None
        if public_key is None:
            key = new_key()
            public_key = key.public_key()
        own_dns = self.trust_domain.service_dns_name(name)
        return self._sign(
            self.trust_domain.service(name),
            name=name,
            dns_names=[own_dns, *(d for d in extra_dns if d != own_dns)],
            extra_ips=extra_ips,
            public_key=public_key,
            key=key,
            nb=nb,
            na=na,
            now=now,
            ttl=ttl,
        )

    def _sign(
        self,
        sid: SpiffeId,
        *,
        name: str,
        dns_names: list[str],
        extra_ips: list[IPAddress],
        public_key: ec.EllipticCurvePublicKey,
        key: ec.EllipticCurvePrivateKey | None,
        nb: datetime,
        na: datetime,
        now: datetime,
        ttl: timedelta,
    ) -> tuple[IssuedSVID, CertRecord]:
        serial = new_serial()
        cert = build_leaf(
            spiffe_id=sid,
            name=name,
            dns_names=dns_names,
            ips=extra_ips,
            public_key=public_key,
            serial=serial,
            not_before=nb,
            not_after=na,
            issuer_cert=self.issuer_cert,
            issuer_key=self._issuer_key,
            issuer_aki=self._issuer_aki,
        )
        tp = thumbprint(cert)
        x, y = ec_coordinates(public_key)
        svid = IssuedSVID(
            name=name,
            spiffe_id=sid,
            serial=serial,
            certificate=cert,
            chain=(cert, *self.intermediates),
            private_key=key,
            thumbprint=tp,
            not_before=nb,
            not_after=na,
            bundle=self.roots,
        )
        rec = CertRecord(
            serial=serial,
            name=name,
            spiffe_id=str(sid),
            not_before=int(nb.timestamp()),
            not_after=int(na.timestamp()),
            issued_at=int(now.timestamp()),
            thumbprint=tp,
            status="valid",
            revoked_at=None,
            reason=None,
            dns=tuple(dns_names),
            ips=tuple(str(ip) for ip in extra_ips),
            ttl=int(ttl.total_seconds()),
            own_key=key is None,
            der=der_of(cert),
            jwk_x=x,
            jwk_y=y,
        )
        return svid, rec

    def _render_publication(self, now: datetime) -> tuple[int, list[tuple[Path, bytes]]]:
        """Inside the change's transaction: new counters, then every published file (crl.pem
        last: its CRL number marks the publication complete, see :mod:`ca.publication`)."""
        reg = self._registry
        sequence = reg.bump("spiffe_sequence")
        number = reg.bump("crl_number")
        active = reg.bundle_keys(int(now.timestamp()))
        crl = build_crl(self.issuer_cert, self._issuer_key, reg.revoked(), number=number, now=now)
        return number, [
            (
                self.ca_dir / BUNDLE_JSON,
                self._bundle_renderer.render(self.roots, self.intermediates, active,
                                             sequence=sequence),
            ),
            (self.ca_dir / BUNDLE_PEM, fsio.cert_pem(self.roots)),
            (self.ca_dir / CRL_PEM, crl.public_bytes(serialization.Encoding.PEM)),
        ]


def _init_prefix(ca_dir: Path) -> str:
    return f".{ca_dir.name}.init-"


def _remove_abandoned_inits(ca_dir: Path) -> None:
    """Remove the temporary folders of killed ``init`` runs for ``ca_dir`` (they may hold a
    root key). A running init holds an ``flock`` on its folder, so it is never touched."""
    prefix = _init_prefix(ca_dir)
    for entry in os.scandir(ca_dir.parent):
        if not entry.name.startswith(prefix) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its init is still running
        else:
            shutil.rmtree(entry.path, ignore_errors=True)
        finally:
            os.close(fd)
