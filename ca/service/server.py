"""``mesh-ca serve``: the two gRPC ports of the CA service (protos/mesh/ca/v1/ca.proto).

- the **attestation port** serves ``NodeAttestation`` over server TLS only: a joining agent has
  no certificate yet, and a Python gRPC server cannot ask for a client certificate without
  requiring one. The join token in the request is the authentication;
- the **agent port** serves ``NodeAgentService`` over mutual TLS: the TLS layer requires a
  client certificate chaining to this CA's roots, then every call is checked against the
  registry (:meth:`ca.service.issuer.NodeIssuer.authenticate`) BEFORE its request is parsed
  (handlers receive raw bytes; a message that does not parse gets ``INVALID_ARGUMENT``
  ``REQUEST_INVALID``).

Both are ``grpc.aio`` servers on one event loop thread, so a ``WatchTrust`` stream per agent
costs no thread. The work of each call (registry reads, CSR checks, signing, waiting for the
writer) runs in a thread pool per port: a flood on the attestation port queues in its own small
pool and never delays agents. The attestation port also caps concurrent calls; beyond the cap
gRPC answers ``RESOURCE_EXHAUSTED`` at once.

Refusals are gRPC statuses with a ``google.rpc.ErrorInfo`` (domain ``meshid``, the reason of
:class:`mesh.errors.Reason`), as everywhere in meshid.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import grpc
import grpc.aio
from cryptography import x509
from google.protobuf.message import DecodeError

from ca.authority import CertificateAuthority
from ca.parsing import format_serial
from ca.service import store
from ca.service.errors import Refused, ServeError
from ca.service.ids import ca_id
from ca.service.issuer import (
    DEFAULT_AGENT_TTL,
    DEFAULT_MAX_VALID,
    DEFAULT_SERVER_TTL,
    Agent,
    Issued,
    NodeIssuer,
)
from ca.service.serving import ServingIdentity
from ca.service.trust import TrustState, TrustWatcher
from mesh.ca.v1 import ca_pb2
from mesh.errors import Reason
from mesh.transport.status import rejection

_log = logging.getLogger(__name__)

T = TypeVar("T")
ATTESTATION = "mesh.ca.v1.NodeAttestation"
AGENT_SERVICE = "mesh.ca.v1.NodeAgentService"
MAX_MESSAGE_BYTES = 64 * 1024
#: how often a WatchTrust stream re-checks its caller when nothing changes (an eviction also
#: republishes the CRL, which wakes every stream at once)
RECHECK_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Addresses:
    agent: str
    attestation: str


def _bound(address: str, port: int) -> str:
    host = address.rsplit(":", 1)[0]
    return f"{host}:{port}"


def svid_message(issued: Issued) -> ca_pb2.X509Svid:
    return ca_pb2.X509Svid(
        spiffe_id=issued.spiffe_id,
        cert_chain_pem=issued.chain_pem(),
        not_before=issued.not_before,
        not_after=issued.not_after,
        serial=format_serial(issued.serial),
    )


def trust_message(state: TrustState) -> ca_pb2.TrustState:
    return ca_pb2.TrustState(
        roots_pem=state.roots_pem,
        bundle_json=state.bundle_json,
        crl_pem=state.crl_pem,
        sequence=state.sequence,
    )


class CAService:
    """The CA service over one open CA. ``start()`` binds and serves; ``stop()`` ends it all."""

    def __init__(
        self,
        ca: CertificateAuthority,
        *,
        listen: str,
        attest_listen: str,
        agent_ttl: timedelta = DEFAULT_AGENT_TTL,
        server_ttl: timedelta = DEFAULT_SERVER_TTL,
        trust_interval: float = 0.25,
        recheck_seconds: float = RECHECK_SECONDS,
        agent_workers: int = 16,
        attest_workers: int = 2,
        max_attest_calls: int = 64,
        max_valid: int = DEFAULT_MAX_VALID,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ca = ca
        self._listen = listen
        self._attest_listen = attest_listen
        self._recheck = recheck_seconds
        self._max_attest_calls = max_attest_calls
        self._service_id = str(ca_id(ca.trust_domain))
        _refuse_impostor(ca)
        self.watcher = TrustWatcher(ca.ca_dir, interval=trust_interval)
        self.issuer = NodeIssuer(
            ca, agent_ttl=agent_ttl, server_ttl=server_ttl, on_commit=self._published,
            clock=clock, max_valid=max_valid,
        )
        self.identity = ServingIdentity(self.issuer)
        self._agent_pool = concurrent.futures.ThreadPoolExecutor(
            agent_workers, thread_name_prefix="ca-agent"
        )
        self._attest_pool = concurrent.futures.ThreadPoolExecutor(
            attest_workers, thread_name_prefix="ca-attest"
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[grpc.aio.Server] = []
        self.addresses: Addresses | None = None

    def _published(self) -> None:
        # Our own commit: tell WatchTrust streams now rather than at the watcher's next tick.
        self.watcher.refresh()

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Addresses:
        """Issue the serving certificate, bind both ports, serve. Returns the bound addresses."""
        try:
            self.identity.start()
            self.watcher.start()
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._thread = threading.Thread(
                target=loop.run_forever, name="ca-service-loop", daemon=True
            )
            self._thread.start()
            self.addresses = asyncio.run_coroutine_threadsafe(self._start(), loop).result()
        except BaseException:
            self.stop()
            raise
        return self.addresses

    def stop(self, grace: float | None = 1.0) -> None:
        loop = self._loop
        if loop is not None:
            if loop.is_running():
                asyncio.run_coroutine_threadsafe(self._stop(grace), loop).result()
                loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join()
            loop.close()
            self._loop = None
        self.identity.stop()
        self.watcher.stop()
        self._agent_pool.shutdown(wait=True, cancel_futures=True)
        self._attest_pool.shutdown(wait=True, cancel_futures=True)
        self.issuer.close()

    async def _start(self) -> Addresses:
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
        agent = grpc.aio.server(options=options)
        agent.add_generic_rpc_handlers([self._agent_handlers()])
        attest = grpc.aio.server(
            options=options, maximum_concurrent_rpcs=self._max_attest_calls
        )
        attest.add_generic_rpc_handlers([self._attest_handlers()])
        self._servers = [agent, attest]
        agent_port = self._bind(agent, self._listen, client_auth=True)
        attest_port = self._bind(attest, self._attest_listen, client_auth=False)
        await agent.start()
        await attest.start()
        return Addresses(_bound(self._listen, agent_port), _bound(self._attest_listen, attest_port))

    def _bind(self, server: grpc.aio.Server, address: str, *, client_auth: bool) -> int:
        what = "agent" if client_auth else "attestation"
        try:
            port = server.add_secure_port(
                address, self.identity.credentials(client_auth=client_auth)
            )
        except RuntimeError as err:
            raise ServeError(f"cannot listen on {address} for the {what} port: {err}") from err
        if port == 0:
            raise ServeError(f"cannot listen on {address} for the {what} port")
        return port

    async def _stop(self, grace: float | None) -> None:
        await asyncio.gather(*(s.stop(grace) for s in self._servers))

    # ---- plumbing ------------------------------------------------------------------------------

    def _status(self, method: str, err: Refused) -> grpc.Status:
        extra = None if err.retry_after is None else {"retry_after": str(err.retry_after)}
        return rejection(err.wire.status, err.message, err.wire, service=self._service_id,
                         method=method, extra=extra)

    async def _abort(self, context: grpc.aio.ServicerContext[Any, Any], method: str,
                     err: Refused) -> None:
        await context.abort_with_status(self._status(method, err))

    async def _run(self, pool: concurrent.futures.Executor, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, fn)

    @staticmethod
    def _parse(message: type[T], raw: bytes) -> T:
        try:
            return message.FromString(raw)  # type: ignore[attr-defined, no-any-return]
        except DecodeError as err:
            raise Refused(Reason.REQUEST_INVALID,
                          f"the request is not a valid {message.__name__} message") from err

    # ---- attestation port ----------------------------------------------------------------------

    def _attest_handlers(self) -> grpc.GenericRpcHandler:
        method = f"/{ATTESTATION}/AttestNode"

        async def attest_node(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
                              ) -> ca_pb2.AttestNodeResponse:
            def work() -> ca_pb2.AttestNodeResponse:
                req = self._parse(ca_pb2.AttestNodeRequest, raw)
                issued = self.issuer.attest(req.node, req.join_token, req.csr_pem)
                return ca_pb2.AttestNodeResponse(
                    agent_svid=svid_message(issued), trust=trust_message(self.watcher.current)
                )

            try:
                return await self._run(self._attest_pool, work)
            except Refused as err:
                await self._abort(context, method, err)
                raise AssertionError("abort returned") from None  # pragma: no cover

        return grpc.method_handlers_generic_handler(ATTESTATION, {
            "AttestNode": grpc.unary_unary_rpc_method_handler(
                attest_node, response_serializer=ca_pb2.AttestNodeResponse.SerializeToString
            ),
        })

    # ---- agent port ----------------------------------------------------------------------------

    def _peer(self, context: grpc.aio.ServicerContext[Any, Any]) -> x509.Certificate | None:
        pems = list(context.auth_context().get("x509_pem_cert") or ())
        if len(pems) != 1:
            return None
        try:
            return x509.load_pem_x509_certificate(pems[0])
        except ValueError:
            return None

    def _authenticate(self, cert: x509.Certificate | None) -> Agent:
        if cert is None:
            raise Refused(Reason.NOT_AN_AGENT, "no client certificate was presented")
        return self.issuer.authenticate(cert)

    def _agent_handlers(self) -> grpc.GenericRpcHandler:
        def unary(name: str, body: Callable[[Agent, bytes], Any],
                  response: type[Any]) -> grpc.RpcMethodHandler[Any, Any]:
            method = f"/{AGENT_SERVICE}/{name}"

            async def handler(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                cert = self._peer(context)

                def work() -> Any:
                    # Authentication before the request is even parsed.
                    return body(self._authenticate(cert), raw)

                try:
                    return await self._run(self._agent_pool, work)
                except Refused as err:
                    await self._abort(context, method, err)
                    raise AssertionError("abort returned") from None  # pragma: no cover

            return grpc.unary_unary_rpc_method_handler(
                handler, response_serializer=response.SerializeToString
            )

        def renew(agent: Agent, raw: bytes) -> ca_pb2.RenewAgentResponse:
            req = self._parse(ca_pb2.RenewAgentRequest, raw)
            return ca_pb2.RenewAgentResponse(
                agent_svid=svid_message(self.issuer.renew_agent(agent, req.csr_pem))
            )

        def list_registrations(agent: Agent, raw: bytes) -> ca_pb2.ListRegistrationsResponse:
            self._parse(ca_pb2.ListRegistrationsRequest, raw)
            return ca_pb2.ListRegistrationsResponse(registrations=[
                ca_pb2.Registration(
                    service=r.service,
                    spiffe_id=str(self.ca.trust_domain.service(r.service)),
                    uid=r.uid,
                    ttl_seconds=r.ttl,
                )
                for r in self.issuer.registrations(agent)
            ])

        def issue(agent: Agent, raw: bytes) -> ca_pb2.IssueWorkloadSvidResponse:
            req = self._parse(ca_pb2.IssueWorkloadSvidRequest, raw)
            return ca_pb2.IssueWorkloadSvidResponse(
                svid=svid_message(self.issuer.issue_workload(agent, req.service, req.csr_pem))
            )

        return grpc.method_handlers_generic_handler(AGENT_SERVICE, {
            "RenewAgent": unary("RenewAgent", renew, ca_pb2.RenewAgentResponse),
            "ListRegistrations": unary(
                "ListRegistrations", list_registrations, ca_pb2.ListRegistrationsResponse
            ),
            "IssueWorkloadSvid": unary("IssueWorkloadSvid", issue,
                                       ca_pb2.IssueWorkloadSvidResponse),
            "WatchTrust": grpc.unary_stream_rpc_method_handler(
                self._watch_trust, response_serializer=ca_pb2.TrustState.SerializeToString
            ),
        })

    async def _watch_trust(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
                           ) -> AsyncIterator[ca_pb2.TrustState]:
        method = f"/{AGENT_SERVICE}/WatchTrust"
        cert = self._peer(context)

        def check() -> ca_pb2.WatchTrustRequest:
            self._authenticate(cert)
            return self._parse(ca_pb2.WatchTrustRequest, raw)

        try:
            request = await self._run(self._agent_pool, check)
        except Refused as err:
            await self._abort(context, method, err)
            return
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def listener(_: TrustState) -> None:
            loop.call_soon_threadsafe(changed.set)

        self.watcher.subscribe(listener)
        try:
            known = request.known_sequence
            while True:
                changed.clear()
                state = self.watcher.current
                if state.sequence > known or known == 0:
                    known = state.sequence
                    yield trust_message(state)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=self._recheck)
                try:
                    # Still an agent in good standing? An eviction or revocation ends the stream.
                    await self._run(self._agent_pool, lambda: self._authenticate(cert))
                except Refused as err:
                    await self._abort(context, method, err)
                    return
        finally:
            self.watcher.unsubscribe(listener)


def _refuse_impostor(ca: CertificateAuthority) -> None:
    """Refuse to serve while a valid certificate for a service named ``ca`` exists (issued
    before the name was reserved): its DNS name ``ca.svc.<td>`` is the one agents pin."""
    serials = store.valid_serials_of(ca.ca_dir, str(ca.trust_domain.service("ca")))
    if serials:
        serial = format_serial(serials[0])
        raise ServeError(
            f"the registry holds a valid certificate for a service named ca (serial {serial}), "
            f"whose DNS name ca.svc.{ca.trust_domain} is the CA service's own; revoke it first "
            f"(mesh-ca revoke --serial {serial})"
        )
