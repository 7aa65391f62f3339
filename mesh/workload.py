"""One object for "this workload": its identity, its trust, and the servers and channels built
from them.

A :class:`Workload` pairs the service's own X.509-SVID source with the trust domain's bundle
source and checks, before anything is served, that they agree: the SVID is in the bundle's
trust domain, the TLS anchors (``svid_bundle.pem``) are the bundle's anchors, and the SVID
itself chains to them and is not revoked. Revocation is checked unless switched off by name
(``check_revocation=False``), which is logged as a warning at start.

It is the upper layer, as go-spiffe's ``spiffetls`` sits on ``tlsconfig``: every object it
hands out (:class:`~mesh.transport.server.MeshServer`, :class:`~mesh.transport.channel.
MeshChannel`, :class:`~mesh.tokens.verify.ChainVerifier`, ...) can also be built by hand.

    workload = mesh.Workload.from_folder("/run/mesh/orders")      # spiffe-helper files
    workload = mesh.Workload.from_workload_api("/run/mesh/agent.sock")  # or the agent's socket
    server = workload.server("orders-policy.toml")
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes

from mesh.errors import ConfigError
from mesh.identity.bundle import BundleSource, FileBundleSource
from mesh.identity.errors import CertificateError, TrustMismatch
from mesh.identity.spiffeid import SpiffeId, TrustDomain
from mesh.identity.svid import Svid, SvidSource, X509SvidFolder
from mesh.policy import Policy, load_policy
from mesh.tokens.signer import RotatingSigner
from mesh.tokens.verify import ChainVerifier, VerifyLimits
from mesh.transport.audit import AuditLog
from mesh.transport.channel import AioMeshChannel, MeshChannel
from mesh.transport.server import AioMeshServer, MeshServer

_log = logging.getLogger(__name__)

BUNDLE_FILE = "bundle.spiffe.json"
CRL_FILE = "crl.pem"

PolicyLike = Policy | str | os.PathLike[str]
_SHA256 = hashes.SHA256()


def check_trust(svid: Svid, bundle: BundleSource) -> None:
    """Raise :class:`TrustMismatch` unless ``svid`` and ``bundle`` describe one trust domain
    with the same anchors, and the SVID chains to them and is not revoked."""
    if svid.spiffe_id.trust_domain != bundle.trust_domain:
        raise TrustMismatch(
            f"this workload's SVID is {svid.spiffe_id}, but its trust bundle is for "
            f"{bundle.trust_domain}: they must name the same trust domain (spec 2)"
        )
    tls = {c.fingerprint(_SHA256) for c in svid.roots}
    anchors = {c.fingerprint(_SHA256) for c in bundle.anchors}
    if tls != anchors:
        raise TrustMismatch(
            f"the TLS trust anchors (svid_bundle.pem, {len(tls)} certificate(s)) and the trust "
            f"bundle's anchors ({len(anchors)}, {len(tls & anchors)} in common) differ: TLS and "
            "token checks would trust different CAs (spec 2); publish both from the same CA"
        )
    try:
        bundle.verify_chain(svid.chain)
    except CertificateError as err:
        raise TrustMismatch(
            f"this workload's own SVID ({svid.spiffe_id}) does not pass its trust bundle's "
            f"checks: {err}"
        ) from err


class Workload:
    """This service's identity and trust, checked to agree; builds servers and channels."""

    def __init__(self, svid: SvidSource, bundle: BundleSource, *,
                 check_revocation: bool = True) -> None:
        if check_revocation and not bundle.checks_revocation:
            raise ConfigError(
                "the trust bundle source checks no CRL, so revoked certificates would be "
                "accepted until they expire; give it the CA's crl.pem, or build the workload "
                "with check_revocation=False to accept that on purpose"
            )
        if not check_revocation:
            _log.warning(
                "REVOCATION CHECKING IS OFF for %s (check_revocation=False): revoked "
                "certificates and keys are accepted until they expire",
                svid.current().spiffe_id,
            )
        check_trust(svid.current(), bundle)
        self._svid = svid
        self._bundle = bundle
        self._signer = RotatingSigner(svid)
        svid.subscribe(self._on_rotation)

    @classmethod
    def from_folder(cls, path: str | os.PathLike[str], *,
                    bundle: str | os.PathLike[str] | None = None,
                    crl: str | os.PathLike[str] | None = None,
                    check_revocation: bool = True, poll_interval: float = 1.0) -> Workload:
        """A workload reading a spiffe-helper folder, kept current as files change.

        ``path`` holds ``svid.pem``, ``svid_key.pem`` (0600) and ``svid_bundle.pem``, and, unless
        ``bundle`` / ``crl`` name them elsewhere, ``bundle.spiffe.json`` and ``crl.pem`` (what
        ``mesh agent --write`` keeps there).
        """
        folder = Path(path)
        crl_path: Path | None = Path(crl) if crl is not None else folder / CRL_FILE
        if not check_revocation:
            crl_path = None
        elif crl_path is not None and not crl_path.exists():
            raise ConfigError(
                f"no CRL at {crl_path}: a workload checks revocation unless built with "
                "check_revocation=False"
            )
        source = X509SvidFolder(folder, poll_interval=poll_interval)
        bundle_path = Path(bundle) if bundle is not None else folder / BUNDLE_FILE
        # The bundle names its own trust domain (its anchors' SPIFFE IDs), so a bundle of
        # another domain shows as a mismatch; only anchors without one take the SVID's.
        trust = FileBundleSource(bundle_path, crl_path,
                                 fallback_trust_domain=source.spiffe_id.trust_domain)
        workload = cls(source, trust, check_revocation=check_revocation)
        source.start()
        return workload

    @classmethod
    def from_workload_api(cls, socket: str | os.PathLike[str] | None = None, *,
                          spiffe_id: str | SpiffeId | None = None, timeout: float = 10.0,
                          check_revocation: bool = True) -> Workload:
        """A workload fed by a SPIFFE Workload API (``mesh agent``, or SPIRE's agent), kept
        current as the agent rotates the SVID and the trust bundle.

        ``socket``: the agent's Unix socket (``/path`` or ``unix:///path``; default
        ``$SPIFFE_ENDPOINT_SOCKET``). ``spiffe_id``: which of this process's SVIDs to use when
        its user runs several services (default: the first the agent lists). Waits up to
        ``timeout`` seconds for the first SVID and bundle (:class:`WorkloadApiError` if none
        came). SPIRE sends no CRL: pass ``check_revocation=False`` to accept that on purpose.
        """
        # Imported here: the Workload API stubs are only loaded by services that use it.
        from mesh.identity.workload_api import WorkloadApiSource  # noqa: PLC0415

        source = WorkloadApiSource.connect(socket, spiffe_id=spiffe_id, timeout=timeout)
        try:
            return cls(source, source, check_revocation=check_revocation)
        except BaseException:
            source.stop()
            raise

    # --- what it is -----------------------------------------------------------------------------

    @property
    def spiffe_id(self) -> SpiffeId:
        return self._svid.current().spiffe_id

    @property
    def trust_domain(self) -> TrustDomain:
        return self._bundle.trust_domain

    @property
    def svid_source(self) -> SvidSource:
        return self._svid

    @property
    def bundle_source(self) -> BundleSource:
        return self._bundle

    @property
    def signer(self) -> RotatingSigner:
        """Mints user, app and app-asserted tokens with the SVID in force at each call."""
        return self._signer

    def _on_rotation(self, svid: Svid) -> None:
        try:
            check_trust(svid, self._bundle)
        except TrustMismatch as err:
            _log.error("after an SVID rotation: %s", err)

    # --- what it builds -------------------------------------------------------------------------

    def verifier(self, limits: VerifyLimits | None = None, *, cache: bool = True
                 ) -> ChainVerifier:
        """A token-chain verifier for this service (see :class:`ChainVerifier`)."""
        kwargs: dict[str, Any] = {} if cache else {"cache": None}
        return ChainVerifier(self.spiffe_id, self._bundle, limits=limits or VerifyLimits(),
                             **kwargs)

    def _policy(self, policy: PolicyLike) -> Policy:
        if isinstance(policy, Policy):
            if policy.trust_domain != self.trust_domain:
                raise ConfigError(f"the policy is for {policy.trust_domain}, this workload is "
                                  f"{self.spiffe_id}")
            return policy
        return load_policy(Path(policy), trust_domain=self.trust_domain)

    def server(self, policy: PolicyLike, *, edge: bool = False, limits: VerifyLimits | None = None,
               audit: AuditLog | None = None, **kwargs: Any) -> MeshServer:
        """A sync mesh server checking every call against ``policy`` (a :class:`Policy` or a
        TOML file). ``edge=True`` serves server TLS for clients outside the mesh (user tokens
        only). Further keywords go to :class:`MeshServer` (``tokenless_methods``,
        ``max_workers``, ``options``, ...)."""
        return MeshServer(self._svid, self._policy(policy), self.verifier(limits), edge=edge,
                          audit=audit, **kwargs)

    def aio_server(self, policy: PolicyLike, *, edge: bool = False,
                   limits: VerifyLimits | None = None, audit: AuditLog | None = None,
                   **kwargs: Any) -> AioMeshServer:
        """The ``grpc.aio`` flavour of :meth:`server`."""
        return AioMeshServer(self._svid, self._policy(policy), self.verifier(limits), edge=edge,
                             audit=audit, **kwargs)

    def channel(self, service: str | SpiffeId, address: str, **kwargs: Any) -> MeshChannel:
        """A channel to mesh service ``service`` (a name or SPIFFE ID) at ``address``; it pins
        ``<name>.svc.<trust domain>`` whatever address it dials and carries the caller's user
        onward. Further keywords go to :class:`MeshChannel` (``require_user``, ``options``...)."""
        return MeshChannel(address, service, self._svid, trust_domain=self.trust_domain,
                           **kwargs)

    def aio_channel(self, service: str | SpiffeId, address: str, **kwargs: Any
                    ) -> AioMeshChannel:
        """The ``grpc.aio`` flavour of :meth:`channel`."""
        return AioMeshChannel(address, service, self._svid, trust_domain=self.trust_domain,
                              **kwargs)

    # --- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop watching the identity files (servers and channels are closed by their owner)."""
        stop = getattr(self._svid, "stop", None)
        if callable(stop):
            stop()

    def __enter__(self) -> Workload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

