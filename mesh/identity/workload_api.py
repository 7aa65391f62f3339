"""An SVID and bundle source fed by a SPIFFE Workload API (meshid's agent, or SPIRE's).

    source = WorkloadApiSource.connect()          # $SPIFFE_ENDPOINT_SOCKET, or a path
    workload = mesh.Workload(source, source)      # it is both an SvidSource and a BundleSource

:class:`WorkloadApiSource` keeps two streams open to the Workload API on a Unix socket,
``FetchX509SVID`` (the SVIDs, the roots, the CRLs) and ``FetchJWTBundles`` (the token-signing
keys, ``jwt-svid`` entries with ``x5c``), each in a daemon thread that reconnects with capped
exponential backoff (one log line per state change). Every message is checked as the folder
sources check files, because it is the same code: the SVID goes through
:func:`mesh.identity.svid.build_svid` (key matches leaf, one SPIFFE ID) and must keep the
identity the source started with and be valid now; the roots, keys and CRLs go through
:class:`mesh.identity.bundle.FileBundleSource`'s loader (anchors, every key's chain, CRL
signatures, no bundle sequence or CRL number going backwards). A message that fails keeps the
current state (logged once).

A rotated SVID is used once the bundle carries its token-signing key (at most
:data:`ACTIVATION_WAIT` seconds later, and never past the current SVID's expiry): the agent
streams the new SVID and the new bundle separately, and a token signed with a key no verifier
knows yet would be refused, by this workload's own verifier first. Every verifier of the trust
domain hears of the new key from its agent at about the moment this one does.

The stubs are py-spiffe's (``spiffe._proto``): one registration of ``SpiffeWorkloadAPI`` per
process. py-spiffe's own ``WorkloadApiClient`` is not used here: it drops the ``crl`` field of
the responses, and a meshid service must check revocation.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from spiffe._proto import workload_pb2, workload_pb2_grpc

from mesh.errors import ConfigError, MeshError
from mesh.identity.bundle import BundleKey, FileBundleSource
from mesh.identity.errors import BundleError, SvidError, SvidIdentityChanged, SvidNotValidNow
from mesh.identity.spiffeid import SpiffeId, TrustDomain
from mesh.identity.svid import Listener, Svid, build_svid
from mesh.identity.unixsock import SocketPath, SocketPathError

_log = logging.getLogger(__name__)

ENDPOINT_ENV = "SPIFFE_ENDPOINT_SOCKET"
#: the longest a new SVID waits for its key to reach the bundle before it is used anyway
ACTIVATION_WAIT = 5.0
HEADER = ("workload.spiffe.io", "true")
_PEM = serialization.Encoding.PEM


class WorkloadApiError(ConfigError):
    """The Workload API could not be reached or gave nothing usable at start."""


def socket_target(value: str | os.PathLike[str] | None) -> str:
    """A gRPC target ``unix:/abs/path`` from a path, ``unix:/path``, ``unix:///path`` or, when
    None, ``$SPIFFE_ENDPOINT_SOCKET``."""
    raw = os.fspath(value) if value is not None else os.environ.get(ENDPOINT_ENV, "")
    if not raw:
        raise WorkloadApiError(
            f"no Workload API socket: pass its path or set {ENDPOINT_ENV} (e.g. "
            "unix:///run/mesh/agent.sock)"
        )
    path = raw[len("unix:"):] if raw.startswith("unix:") else raw
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    if not path.startswith("/"):
        raise WorkloadApiError(
            f"the Workload API socket {raw!r} must be an absolute Unix socket path (SPIFFE "
            "Workload Endpoint spec: unix:///path)"
        )
    return f"unix:{path}"


def split_der_certificates(data: bytes) -> list[x509.Certificate]:
    """Certificates concatenated as DER (the Workload API's ``bundle`` and chains)."""
    out: list[x509.Certificate] = []
    i = 0
    while i < len(data):
        if data[i] != 0x30 or i + 2 > len(data):
            raise ValueError("not a DER SEQUENCE")
        first = data[i + 1]
        if first < 0x80:
            length, head = first, 2
        else:
            n = first & 0x7F
            if n == 0 or n > 4 or i + 2 + n > len(data):
                raise ValueError("bad DER length")
            length = int.from_bytes(data[i + 2:i + 2 + n], "big")
            head = 2 + n
        end = i + head + length
        if end > len(data):
            raise ValueError("truncated DER certificate")
        out.append(x509.load_der_x509_certificate(data[i:end]))
        i = end
    if not out:
        raise ValueError("no certificate")
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _b64url_int(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()


def _anchor_entry(cert: x509.Certificate) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "use": "x509-svid", "x5c": [_b64(cert.public_bytes(serialization.Encoding.DER))],
    }
    pub = cert.public_key()
    if isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1":
        nums = pub.public_numbers()
        entry.update(kty="EC", crv="P-256", x=_b64url_int(nums.x), y=_b64url_int(nums.y))
    return entry


def _crl_pem(crls: Sequence[bytes]) -> bytes:
    out = []
    for der in crls:
        try:
            out.append(x509.load_der_x509_crl(der).public_bytes(_PEM))
        except ValueError:
            _log.warning("Workload API: an unreadable CRL was ignored")
    return b"".join(out)


class _MemoryBundle(FileBundleSource):
    """The bundle checks of :class:`FileBundleSource`, fed from Workload API messages instead of
    files: ``offer()`` installs a new document and CRL (the checks run at once; a document
    that fails them keeps the previous state)."""

    def __init__(self, label: str, doc: bytes, crl: bytes | None, td: TrustDomain) -> None:
        self._doc = doc
        self._crl = crl or b""
        self._version = 0
        super().__init__(Path(label), Path(label + " CRLs") if crl else None,
                         trust_domain=td, check_interval=0.0)

    def _read_bundle(self) -> bytes:
        return self._doc

    def _read_crl(self) -> bytes:
        return self._crl

    def _current_file_ids(self) -> tuple[tuple[int, ...] | None, ...]:
        return ((self._version,), None)

    def offer(self, doc: bytes | None = None, crl: bytes | None = None) -> bool:
        with self._lock:
            if doc is not None:
                self._doc = doc
            if crl is not None:
                self._crl = crl
            self._version += 1
            refused_before = self._update_refused
            changed = self._reload_locked()
            if self._update_refused and self._update_refused != refused_before:
                _log.warning("Workload API bundle update refused: %s", self._update_refused)
            return changed


class WorkloadApiSource:
    """This workload's SVID and its trust domain's bundle, from a Workload API socket.

    Satisfies :class:`mesh.identity.svid.SvidSource` and
    :class:`mesh.identity.bundle.BundleSource`. Build it with :meth:`connect`.
    """

    def __init__(self) -> None:  # use connect()
        self._lock = threading.Lock()
        # The two streams' handlers (and the held-back SVID's timer) run one at a time: each
        # reads what the other wrote (the JWT keys, the SVID's trust domain), and interleaved
        # they could build the bundle from a stale half (a bundle with no keys at all).
        self._update = threading.RLock()
        self._listeners: list[Listener] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._svid: Svid | None = None
        self._pending: Svid | None = None  # a new SVID waiting for its key in the bundle
        self._want: SpiffeId | None = None
        self._roots_der = b""
        self._crl: bytes | None = None
        self._jwks: dict[str, Any] = {"keys": []}
        self._bundle: _MemoryBundle | None = None
        self._first_x509 = threading.Event()
        self._first_jwt = threading.Event()
        self._first_error: str | None = None
        self._states: dict[str, str] = {}
        self._channel: grpc.Channel | None = None
        self._stub: Any = None
        self._calls: set[Any] = set()
        self._retry_max = 5.0
        self.target = ""
        self._address: SocketPath | None = None

    @classmethod
    def connect(
        cls,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        spiffe_id: str | SpiffeId | None = None,
        timeout: float = 10.0,
        retry_max: float = 5.0,
    ) -> WorkloadApiSource:
        """Connect, wait up to ``timeout`` seconds for the first SVID and bundles, and keep
        them current in the background.

        ``socket_path``: the socket (``/path``, ``unix:///path``); default
        ``$SPIFFE_ENDPOINT_SOCKET``. ``spiffe_id``: which of the caller's SVIDs to use when it
        has several (default: the first, the Workload API's default identity). Raises
        :class:`WorkloadApiError` when nothing usable arrived in time.
        """
        self = cls()
        self.target = socket_target(socket_path)
        self._want = SpiffeId.parse(spiffe_id) if isinstance(spiffe_id, str) else spiffe_id
        self._retry_max = retry_max
        # A path too long for sun_path is reached through its folder's descriptor, open until
        # stop().
        try:
            self._address = SocketPath(self.target[len("unix:"):])
        except SocketPathError as err:
            raise WorkloadApiError(str(err)) from err
        self._channel = grpc.insecure_channel(
            "unix:" + self._address.address, options=[("grpc.enable_http_proxy", 0)]
        )
        self._stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(  # type: ignore[no-untyped-call]
            self._channel
        )
        for name, fn in (("x509", self._run_x509), ("jwt", self._run_jwt)):
            t = threading.Thread(target=fn, name=f"workload-api-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        end = time.monotonic() + timeout
        ok = self._first_x509.wait(max(0.0, end - time.monotonic())) and self._first_jwt.wait(
            max(0.0, end - time.monotonic())
        )
        if not ok or self._svid is None or self._bundle is None:
            why = self._first_error or "no answer"
            self.stop()
            raise WorkloadApiError(
                f"the Workload API at {self.target} gave no usable SVID and bundle within "
                f"{timeout:g} s ({why})"
            )
        return self

    # --- SvidSource ---------------------------------------------------------------------------

    def current(self) -> Svid:
        svid = self._svid
        assert svid is not None
        return svid

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    @property
    def spiffe_id(self) -> SpiffeId:
        return self.current().spiffe_id

    # --- BundleSource -------------------------------------------------------------------------

    def _b(self) -> _MemoryBundle:
        assert self._bundle is not None
        return self._bundle

    @property
    def trust_domain(self) -> TrustDomain:
        return self._b().trust_domain

    @property
    def anchors(self) -> tuple[x509.Certificate, ...]:
        return self._b().anchors

    @property
    def generation(self) -> int:
        return self._b().generation

    @property
    def checks_revocation(self) -> bool:
        """True when the Workload API sends CRLs (meshid's agent does; SPIRE does not)."""
        return self._b().checks_revocation

    def key_for(self, kid: str) -> BundleKey | None:
        return self._b().key_for(kid)

    def keys(self) -> Mapping[str, BundleKey]:
        return self._b().keys()

    def is_revoked(self, cert: x509.Certificate) -> bool:
        return self._b().is_revoked(cert)

    def verify_chain(self, chain: Sequence[x509.Certificate]) -> SpiffeId:
        return self._b().verify_chain(chain)

    # --- lifetime -----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        for call in list(self._calls):
            call.cancel()
        if self._channel is not None:
            self._channel.close()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(5)
        if self._address is not None:
            self._address.close()
            self._address = None

    close = stop

    # --- the streams --------------------------------------------------------------------------

    def _state(self, stream: str, state: str, detail: str = "") -> None:
        if self._states.get(stream) != state:
            self._states[stream] = state
            if state == "ok":
                _log.info("Workload API %s stream at %s: receiving", stream, self.target)
            else:
                _log.warning("Workload API %s stream at %s: %s (%s); retrying with backoff",
                             stream, self.target, state, detail)

    def _stream(self, name: str, open_call: Callable[[], Any], handle: Callable[[Any], None],
                first: threading.Event) -> None:
        attempt = 0
        while not self._stop.is_set():
            call = open_call()
            self._calls = self._calls | {call}
            try:
                for msg in call:
                    handle(msg)
                    attempt = 0
                    self._state(name, "ok")
                    first.set()
                self._state(name, "ended", "the server closed the stream")
            except grpc.RpcError as err:
                if self._stop.is_set():
                    return
                code = err.code() if hasattr(err, "code") else None
                text = err.details() if hasattr(err, "details") else str(err)
                detail = f"{code.name if code else 'error'}: {text}"
                self._first_error = detail
                self._state(name, "failing", detail)
                if code is grpc.StatusCode.INVALID_ARGUMENT:
                    first.set()  # never retried (spec): fail connect() at once
            finally:
                self._calls = self._calls - {call}
            delay = min(self._retry_max, 0.1 * 2 ** min(attempt, 10))
            attempt += 1
            if self._stop.wait(delay):
                return

    def _run_x509(self) -> None:
        self._stream(
            "X.509",
            lambda: self._stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=(HEADER,)),
            self._on_x509, self._first_x509,
        )

    def _run_jwt(self) -> None:
        self._stream(
            "JWT bundle",
            lambda: self._stub.FetchJWTBundles(workload_pb2.JWTBundlesRequest(),
                                               metadata=(HEADER,)),
            self._on_jwt, self._first_jwt,
        )

    def _pick(self, svids: Sequence[Any]) -> Any:
        if not svids:
            raise SvidError("the Workload API sent no SVID")
        if self._want is None:
            return svids[0]
        for s in svids:
            if s.spiffe_id == str(self._want):
                return s
        raise SvidIdentityChanged(
            f"the Workload API offers no SVID for {self._want} to this process"
        )

    def _on_x509(self, msg: workload_pb2.X509SVIDResponse) -> None:
        with self._update:
            self._on_x509_locked(msg)

    def _on_x509_locked(self, msg: workload_pb2.X509SVIDResponse) -> None:
        try:
            entry = self._pick(msg.svids)
            chain = split_der_certificates(entry.x509_svid)
            roots = split_der_certificates(entry.bundle)
            key = serialization.load_der_private_key(entry.x509_svid_key, password=None)
            key_pem = key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
        except (ValueError, TypeError, MeshError) as err:
            self._refused("X.509-SVID", err)
            return
        prev = self._svid
        try:
            svid = build_svid(
                b"".join(c.public_bytes(_PEM) for c in chain), key_pem,
                b"".join(c.public_bytes(_PEM) for c in roots),
                0 if prev is None else prev.generation + 1,
            )
            if prev is not None and svid.spiffe_id != prev.spiffe_id:
                raise SvidIdentityChanged(
                    f"the Workload API now offers {svid.spiffe_id}, but this source serves "
                    f"{prev.spiffe_id}; a service never changes who it is (spec 2)"
                )
            now = time.time()
            leaf = svid.leaf
            start = leaf.not_valid_before_utc.timestamp()
            if not start <= now < leaf.not_valid_after_utc.timestamp():
                raise SvidNotValidNow(
                    f"the Workload API's SVID for {svid.spiffe_id} is not valid now"
                )
        except MeshError as err:
            self._refused("X.509-SVID", err)
            return
        roots_der = entry.bundle
        crl = _crl_pem(msg.crl) if msg.crl else None
        self._apply_bundle(svid.spiffe_id.trust_domain, roots_der=roots_der, crl=crl)
        if self._bundle is None:
            return
        if prev is not None and (prev.chain_pem, prev.roots_pem) == (svid.chain_pem,
                                                                     svid.roots_pem):
            return
        with self._lock:
            pending = self._pending
            if pending is not None and (pending.chain_pem, pending.roots_pem) == (
                    svid.chain_pem, svid.roots_pem):
                return  # already waiting for its key
            if prev is not None and self._key_not_out_yet(prev, svid):
                # Hold the new SVID until the bundle carries its key: switching now would
                # sign tokens no verifier (this one included) can check yet.
                self._pending = svid
                wait = min(ACTIVATION_WAIT,
                           prev.leaf.not_valid_after_utc.timestamp() - time.time() - 1.0)
                timer = threading.Timer(max(0.0, wait), self._activate_pending, (svid,))
                timer.daemon = True
                timer.start()
                _log.debug("new SVID %s waits for its key in the bundle", svid.thumbprint)
                return
            self._pending = None
        self._activate(svid)

    def _key_not_out_yet(self, prev: Svid, svid: Svid) -> bool:
        """True when the bundle carries the current SVID's token key but not the new one's
        (meshid's agent; a Workload API whose bundle carries no SVID keys, like SPIRE's, is
        never waited for), and the current SVID has more than a second to live."""
        bundle = self._bundle
        if bundle is None:
            return False
        keys = bundle.keys()
        return (prev.thumbprint in keys and svid.thumbprint not in keys
                and prev.leaf.not_valid_after_utc.timestamp() - time.time() > 1.0)

    def _activate_pending(self, svid: Svid | None = None) -> None:
        """Switch to the SVID held back (the one given, if it is still the one held back): its
        key arrived, or it waited long enough."""
        with self._update:
            with self._lock:
                pending = self._pending
                if pending is None or (svid is not None and pending is not svid):
                    return
                bundle = self._bundle
                if svid is None and bundle is not None and (
                        bundle.key_for(pending.thumbprint) is None):
                    return
                self._pending = None
            self._activate(pending)

    def _activate(self, svid: Svid) -> None:
        prev = self._svid
        self._svid = svid
        _log.info("SVID from the Workload API: %s, thumbprint %s", svid.spiffe_id,
                  svid.thumbprint)
        if prev is not None:
            with self._lock:
                listeners = list(self._listeners)
            for listener in listeners:
                try:
                    listener(svid)
                except Exception:
                    _log.exception("SVID listener failed")

    def _on_jwt(self, msg: workload_pb2.JWTBundlesResponse) -> None:
        with self._update:
            self._on_jwt_locked(msg)

    def _on_jwt_locked(self, msg: workload_pb2.JWTBundlesResponse) -> None:
        td = self._svid.spiffe_id.trust_domain if self._svid is not None else None
        raw = None
        for key, value in msg.bundles.items():
            if td is None or key in (f"spiffe://{td.name}", td.name):
                raw = value
                break
        if raw is None:
            self._first_jwt.set()
            return
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
                raise ValueError("not a JWKS")
        except ValueError as err:
            self._refused("JWT bundle", err)
            return
        self._jwks = doc
        if td is not None:
            self._apply_bundle(td)
            self._activate_pending()  # if the bundle now carries the held-back SVID's key

    def _apply_bundle(self, td: TrustDomain, *, roots_der: bytes | None = None,
                      crl: bytes | None = None) -> None:
        if roots_der is not None:
            self._roots_der = roots_der
        if crl is not None:
            self._crl = crl
        try:
            anchors = [_anchor_entry(c) for c in split_der_certificates(self._roots_der)]
        except ValueError as err:
            self._refused("bundle", err)
            return
        doc: dict[str, Any] = {
            "keys": anchors + [k for k in self._jwks.get("keys", []) if isinstance(k, dict)
                               and k.get("use", "jwt-svid") == "jwt-svid"],
        }
        if isinstance(self._jwks.get("spiffe_sequence"), int):
            doc["spiffe_sequence"] = self._jwks["spiffe_sequence"]
        data = json.dumps(doc).encode()
        if self._bundle is None:
            try:
                self._bundle = _MemoryBundle(f"<Workload API {self.target}>", data, self._crl, td)
            except BundleError as err:
                self._refused("bundle", err)
            return
        self._bundle.offer(data, self._crl)

    def _refused(self, what: str, err: Exception) -> None:
        self._first_error = f"{what} refused: {err}"
        _log.warning("Workload API %s refused, keeping the current one: %s", what, err)

