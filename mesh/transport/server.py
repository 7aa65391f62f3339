"""Mesh servers: mutual TLS only, every call verified, health checking built in.

:class:`MeshServer` (sync) and :class:`AioMeshServer` (``grpc.aio``) wrap a gRPC server and
look like one to generated ``add_XServicer_to_server`` functions. They bind ports only with
credentials from the SVID source, requiring a client certificate; ``add_insecure_port`` and
foreign credentials are refused, and ``start()`` refuses a server with no port. An edge server
(``edge=True``) serves TLS without client certificates and accepts only user tokens
(spec 4.8) bound to the caller's DPoP key, each call with a fresh proof (spec 4.7; ``dpop=``
configures it); it must be asked for explicitly.

``grpc.health.v1.Health`` is served on every mesh server; it needs mutual TLS (the peer is
checked like any caller's) but no token. ``tokenless_methods=`` names further methods that take
no token (a password login at an edge port): they get the transport checks of their port kind
(the peer's certificate on a mutual-TLS port, server TLS alone on an edge port) but no token
check and no policy, and their audit line says ``TOKENLESS_METHOD``.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from typing import Any, TypeAlias

import grpc
import grpc.aio
from grpc_health.v1 import (  # type: ignore[import-untyped]
    health,
    health_pb2,
    health_pb2_grpc,
)

from mesh.identity.bundle import BundleSource
from mesh.identity.svid import SvidSource
from mesh.policy import Policy
from mesh.tokens.dpop import DpopSettings, ProofVerifier
from mesh.tokens.verify import ChainVerifier
from mesh.transport.address import listen_address
from mesh.transport.aio_handlers import wrap_handler as wrap_aio
from mesh.transport.audit import AuditLog
from mesh.transport.credentials import server_credentials
from mesh.transport.errors import InsecureServerError, ServerConfigError
from mesh.transport.guard import CALL_CACHE_MAX, HEALTH_METHODS, CallGuard
from mesh.transport.handlers import GuardedGenericHandler
from mesh.transport.handlers import wrap_handler as wrap_sync
from mesh.transport.options import server_options

_log = logging.getLogger(__name__)

Options = Sequence[tuple[str, Any]]

_EXACT_METHOD = re.compile(r"/[A-Za-z_][A-Za-z0-9_.]*/[A-Za-z_][A-Za-z0-9_]*")


def _tokenless(methods: Iterable[str]) -> frozenset[str]:
    """Health plus ``methods``, each one exact method: a door without a token is never a
    pattern (a wildcard would open methods added later)."""
    if isinstance(methods, str):
        raise ServerConfigError("tokenless_methods must be a list of method names, not a string")
    out = set(HEALTH_METHODS)
    for method in methods:
        if not isinstance(method, str) or not _EXACT_METHOD.fullmatch(method):
            raise ServerConfigError(
                f"tokenless method {method!r} must be one full method name "
                "'/pkg.Service/Method' (no wildcard)")
        out.add(method)
    return frozenset(out)


Trust = ChainVerifier | BundleSource


def build_guard(source: SvidSource, policy: Policy, trust: Trust, *, edge: bool = False,
                audit: AuditLog | None = None, caches: bool = True,
                tokenless_methods: Iterable[str] = (),
                dpop: DpopSettings | None = None) -> CallGuard:
    """The per-service checker both server flavours use.

    ``trust`` is the :class:`ChainVerifier` to check tokens with, or the bundle source to build
    the default one from (with its caches unless ``caches=False``). Health methods are always
    tokenless; ``tokenless_methods`` adds exact method names that take no token and no policy
    (see the module docstring). ``dpop``: an edge port's DPoP settings (default
    ``DpopSettings()``: bound user tokens only, spec 4.7); refused on a mutual-TLS port.
    """
    own = source.current().spiffe_id
    if own.trust_domain != policy.trust_domain:
        raise ServerConfigError(
            f"the policy is written for trust domain {policy.trust_domain}, but this service "
            f"is {own}"
        )
    if isinstance(trust, ChainVerifier):
        verifier = trust
        if verifier.own_id != own:
            raise ServerConfigError(f"the verifier checks tokens for {verifier.own_id}, but "
                                    f"this service is {own}")
    else:
        verifier = ChainVerifier(own, trust) if caches else ChainVerifier(own, trust, cache=None)
    if verifier.bundle.trust_domain != own.trust_domain:
        raise ServerConfigError(
            f"the trust bundle is for {verifier.bundle.trust_domain}, but this service is {own}"
        )
    return CallGuard(verifier=verifier, policy=policy, audit=audit or AuditLog(own), edge=edge,
                     tokenless_methods=_tokenless(tokenless_methods),
                     call_cache_size=CALL_CACHE_MAX if caches else 0, dpop=dpop)


class _Ports:
    def __init__(self, source: SvidSource, edge: bool) -> None:
        self._source = source
        self._edge = edge
        self.count = 0

    def credentials(self) -> grpc.ServerCredentials:
        return server_credentials(self._source, require_client_auth=not self._edge)

    def bound(self, address: str, port: int) -> int:
        if port == 0:
            raise ServerConfigError(f"could not bind {address}")
        self.count += 1
        return port

    def refuse(self, what: str) -> InsecureServerError:
        return InsecureServerError(
            f"a mesh server refuses {what}: it serves only mutual TLS with its SVID; "
            "use add_port(address) (or MeshServer(edge=True) for an edge port)"
        )

    def check_start(self) -> None:
        if self.count == 0:
            raise InsecureServerError("the mesh server has no port; call add_port(address) "
                                      "before start()")


MethodHandler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the stubs


class _GuardedServer:
    """What both flavours share: the guard, handler registration (each handler wrapped with the
    guard by the flavour's wrapper) and ports bound only with credentials from the SVID."""

    _server: grpc.Server | grpc.aio.Server

    def __init__(self, source: SvidSource, policy: Policy, trust: Trust, *,
                 edge: bool, audit: AuditLog | None, caches: bool,
                 tokenless_methods: Iterable[str], dpop: DpopSettings | None,
                 wrap_generic: Callable[[grpc.GenericRpcHandler, CallGuard],
                                        grpc.GenericRpcHandler],
                 wrap_method: Callable[[MethodHandler, str, CallGuard], MethodHandler]) -> None:
        bundle = trust.bundle if isinstance(trust, ChainVerifier) else trust
        if not bundle.checks_revocation:
            # Allowed (tests, an issuer that publishes no CRL) but never silent.
            _log.warning("this server's trust bundle has no CRL: revoked certificates are "
                         "accepted until they expire (spec 4.1); give the bundle source a "
                         "crl_path to check revocation")
        self.guard = build_guard(source, policy, trust, edge=edge, audit=audit, caches=caches,
                                 tokenless_methods=tokenless_methods, dpop=dpop)
        self._ports = _Ports(source, edge)
        self._wrap_generic = wrap_generic
        self._wrap_method = wrap_method

    @property
    def dpop(self) -> ProofVerifier | None:
        """An edge port's DPoP proof checker (None on a mutual-TLS port): a login method that
        issues bound user tokens checks its caller's proof with it (``check_login``), sharing
        the port's replay cache."""
        return self.guard.proofs

    def _starting(self) -> None:
        self._ports.check_start()
        proofs = self.guard.proofs
        if proofs is not None and proofs.settings.accept_bearer:
            _log.warning(
                "BEARER USER TOKENS ACCEPTED at the edge port of %s (DpopSettings(accept_bearer="
                "True)): a user token without a DPoP binding is accepted from anyone who holds "
                "it, so a service that received it can replay it here until it expires; turn "
                "this off once every client sends DPoP proofs (spec 4.7)", self.guard.own_id)

    # what generated add_XServicer_to_server() calls
    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            [self._wrap_generic(h, self.guard) for h in handlers])

    def add_registered_method_handlers(self, service_name: str,
                                       method_handlers: dict[str, Any]) -> None:
        self._server.add_registered_method_handlers(service_name, {
            name: self._wrap_method(h, f"/{service_name}/{name}", self.guard)
            for name, h in method_handlers.items()
        })

    def add_port(self, address: str) -> int:
        """Bind ``address`` (``HOST:PORT``, e.g. ``127.0.0.1:0``) with the SVID; return the port.
        An address without a port is refused (:mod:`mesh.transport.address`)."""
        address = listen_address(address)
        return self._ports.bound(address, self._server.add_secure_port(
            address, self._ports.credentials()))

    def add_insecure_port(self, address: str) -> int:
        raise self._ports.refuse("plaintext ports")

    def add_secure_port(self, address: str, credentials: grpc.ServerCredentials) -> int:
        raise self._ports.refuse("credentials it did not build")


class MeshServer(_GuardedServer):
    """A sync gRPC server for one mesh service. Register servicers on it, then ``add_port``.

    ``tokenless_methods``: exact method names served without a token or policy, with only the
    transport checks of the port kind (a login taking a password at an edge port). Use it for
    methods that authenticate their caller themselves; every call is audited as
    ``TOKENLESS_METHOD``. ``dpop``: an edge port's :class:`DpopSettings` (proof window, replay
    cache bound, ``accept_bearer`` for migration, which logs a warning at start).
    """

    _server: grpc.Server

    def __init__(self, source: SvidSource, policy: Policy, trust: Trust, *,
                 edge: bool = False, max_workers: int = 16, options: Options = (),
                 audit: AuditLog | None = None,
                 interceptors: Iterable[grpc.ServerInterceptor] = (),
                 caches: bool = True, tokenless_methods: Iterable[str] = (),
                 dpop: DpopSettings | None = None) -> None:
        super().__init__(source, policy, trust, edge=edge, audit=audit,
                         caches=caches, tokenless_methods=tokenless_methods, dpop=dpop,
                         wrap_generic=GuardedGenericHandler, wrap_method=wrap_sync)
        # Handlers are wrapped at registration, not by a server interceptor: the same checks
        # without gRPC's per-call interceptor pipeline. Extra interceptors run first.
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers,
                                       thread_name_prefix=f"mesh-{source.current().spiffe_id}"),
            interceptors=list(interceptors),
            options=server_options(options, max_token_size=self.guard.max_token_size),
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self)

    def start(self) -> None:
        self._starting()
        self._server.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None) -> threading.Event:
        self.health.enter_graceful_shutdown()
        return self._server.stop(grace)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout)

    def __enter__(self) -> MeshServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(None)


class AioMeshServer(_GuardedServer):
    """The ``grpc.aio`` flavour of :class:`MeshServer`; handlers should be ``async def``."""

    _server: grpc.aio.Server

    def __init__(self, source: SvidSource, policy: Policy, trust: Trust, *,
                 edge: bool = False, options: Options = (), audit: AuditLog | None = None,
                 interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
                 caches: bool = True, tokenless_methods: Iterable[str] = (),
                 dpop: DpopSettings | None = None) -> None:
        super().__init__(source, policy, trust, edge=edge, audit=audit,
                         caches=caches, tokenless_methods=tokenless_methods, dpop=dpop,
                         wrap_generic=lambda h, g: GuardedGenericHandler(h, g, wrap_aio),
                         wrap_method=wrap_aio)
        self._server = grpc.aio.server(
            interceptors=list(interceptors),
            options=server_options(options, max_token_size=self.guard.max_token_size))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self)

    async def start(self) -> None:
        self._starting()
        await self._server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None) -> None:
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        return await self._server.wait_for_termination(timeout)
