"""The SPIFFE Workload API (``SpiffeWorkloadAPI``, spec "The SPIFFE Workload API"), one view per
caller uid.

A :class:`WorkloadApi` servicer is bound to the uid the accept loop read with ``SO_PEERCRED``
(:mod:`mesh.agent.peercred`); it never learns anything from the caller but the request. In
order, every call:

1. must carry ``workload.spiffe.io: true`` (else ``INVALID_ARGUMENT``, reason
   ``WORKLOAD_HEADER_MISSING``; the header proves the caller meant to reach a Workload API, so
   a confused HTTP client cannot be used against it);
2. must come from a uid that runs a service registered to this node (else
   ``PERMISSION_DENIED``, ``WORKLOAD_UNKNOWN``, and nothing else: no bundle either);
3. gets its answer: ``FetchX509SVID`` (that uid's SVIDs, default first, the roots, the CRLs),
   ``FetchX509Bundles`` and ``FetchJWTBundles`` stream a full message at once and again on every
   change of what that caller sees; ``FetchJWTSVID`` and ``ValidateJWTSVID`` are
   ``UNIMPLEMENTED`` (``WORKLOAD_API_UNIMPLEMENTED``): meshid services sign their own tokens
   with their X.509-SVID key.

While a registered uid has no valid SVID (none issued yet, or all expired while the CA was
unreachable), ``FetchX509SVID`` ends with ``UNAVAILABLE`` (``CA_UNAVAILABLE``): clients retry.

The agent's own status (``/mesh.agent.v1.AgentStatus/Status``, JSON) is a separate service on
the same socket, as the Workload Endpoint spec asks of extensions: root sees everything, a
registered uid its own services, anyone else ``PERMISSION_DENIED``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from spiffe._proto import workload_pb2, workload_pb2_grpc

from mesh.agent.model import TrustState
from mesh.agent.store import IdentityStore
from mesh.errors import Reason
from mesh.transport.status import rejection

HEADER = "workload.spiffe.io"
STATUS_SERVICE = "mesh.agent.v1.AgentStatus"
STATUS_METHOD = f"/{STATUS_SERVICE}/Status"
_SERVICE_NAME = "spiffe-workload-api"

StatusFn = Callable[[int | None], dict[str, Any]]


async def _refuse(
    context: grpc.aio.ServicerContext[Any, Any], reason: Reason, message: str, method: str
) -> None:
    status = rejection(reason.status, message, str(reason), service=_SERVICE_NAME, method=method)
    await context.abort_with_status(status)


class WorkloadApi(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    """The Workload API as seen by one uid (``None``: a uid this node does not know)."""

    def __init__(self, store: IdentityStore, uid: int | None) -> None:
        self._store = store
        self._uid = uid

    # --- checks ---------------------------------------------------------------------------

    async def _admit(self, context: grpc.aio.ServicerContext[Any, Any], method: str) -> int:
        metadata = context.invocation_metadata() or ()
        if not any(k == HEADER and v == "true" for k, v in metadata):
            await _refuse(
                context, Reason.WORKLOAD_HEADER_MISSING,
                f"a Workload API call must carry the metadata header '{HEADER}: true' "
                "(SPIFFE Workload Endpoint spec)", method,
            )
        uid = self._uid
        if uid is None or not self._store.entitled(uid):
            await _refuse(
                context, Reason.WORKLOAD_UNKNOWN,
                f"no service registered to this node runs as uid {uid}: this agent has no "
                "identity for the calling process", method,
            )
        assert uid is not None  # abort raised otherwise
        return uid

    # --- X.509 ----------------------------------------------------------------------------

    def _x509_response(self, uid: int) -> workload_pb2.X509SVIDResponse | None:
        trust = self._store.trust
        svids = self._store.svids_for(uid)
        if trust is None or not svids:
            return None
        roots = trust.roots_der
        return workload_pb2.X509SVIDResponse(
            svids=[
                workload_pb2.X509SVID(
                    spiffe_id=s.spiffe_id,
                    x509_svid=s.chain_der,
                    x509_svid_key=s.key_der,
                    bundle=roots,
                )
                for s in svids
            ],
            crl=trust.crls_der(),
        )

    async def FetchX509SVID(
        self, request: workload_pb2.X509SVIDRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[workload_pb2.X509SVIDResponse]:
        method = "FetchX509SVID"
        uid = await self._admit(context, method)
        last: bytes | None = None
        while True:
            seen = self._store.version
            await self._still_entitled(context, uid, method)
            resp = self._x509_response(uid)
            if resp is None:
                await _refuse(
                    context, Reason.CA_UNAVAILABLE,
                    f"the agent holds no valid SVID for uid {uid} yet (or any more): it is "
                    "waiting for the CA; retry", method,
                )
            assert resp is not None
            wire = resp.SerializeToString(deterministic=True)
            if wire != last:
                last = wire
                yield resp
            await self._wait(seen)

    async def _still_entitled(self, context: grpc.aio.ServicerContext[Any, Any], uid: int,
                              method: str) -> None:
        """End a stream (WORKLOAD_UNKNOWN) once the caller's uid has no service here."""
        if not self._store.entitled(uid):
            await _refuse(
                context, Reason.WORKLOAD_UNKNOWN,
                f"the services of uid {uid} are no longer registered to this node", method,
            )

    async def _wait(self, seen: int) -> None:
        now = time.time()
        expiry = self._store.next_expiry(now)
        await self._store.wait_change(seen, None if expiry is None else max(0.0, expiry - now))

    def _bundles_key(self) -> str:
        return f"spiffe://{self._store.trust_domain}"

    async def _trust_changes(
        self, context: grpc.aio.ServicerContext[Any, Any], method: str
    ) -> AsyncIterator[TrustState]:
        """The trust state now and at every change of its sequence, while the caller's uid
        stays entitled (refused with WORKLOAD_UNKNOWN once it is not)."""
        uid = await self._admit(context, method)
        last = -1
        while True:
            seen = self._store.version
            await self._still_entitled(context, uid, method)
            trust = self._store.trust
            if trust is not None and trust.sequence != last:
                last = trust.sequence
                yield trust
            await self._store.wait_change(seen)

    async def FetchX509Bundles(
        self,
        request: workload_pb2.X509BundlesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[workload_pb2.X509BundlesResponse]:
        async for trust in self._trust_changes(context, "FetchX509Bundles"):
            yield workload_pb2.X509BundlesResponse(
                bundles={self._bundles_key(): trust.roots_der}, crl=trust.crls_der()
            )

    # --- JWT ------------------------------------------------------------------------------

    async def FetchJWTBundles(
        self, request: workload_pb2.JWTBundlesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[workload_pb2.JWTBundlesResponse]:
        async for trust in self._trust_changes(context, "FetchJWTBundles"):
            yield workload_pb2.JWTBundlesResponse(bundles={self._bundles_key(): trust.jwks_json})

    async def FetchJWTSVID(
        self, request: workload_pb2.JWTSVIDRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> workload_pb2.JWTSVIDResponse:
        await self._admit(context, "FetchJWTSVID")
        await _refuse(
            context, Reason.WORKLOAD_API_UNIMPLEMENTED,
            "this agent issues no JWT-SVIDs: meshid services sign their tokens with their "
            "X.509-SVID key (FetchX509SVID)", "FetchJWTSVID",
        )
        raise AssertionError("unreachable")

    async def ValidateJWTSVID(
        self,
        request: workload_pb2.ValidateJWTSVIDRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> workload_pb2.ValidateJWTSVIDResponse:
        await self._admit(context, "ValidateJWTSVID")
        await _refuse(
            context, Reason.WORKLOAD_API_UNIMPLEMENTED,
            "this agent validates no JWT-SVIDs: verify meshid tokens with mesh.tokens",
            "ValidateJWTSVID",
        )
        raise AssertionError("unreachable")


def status_handler(uid: int | None, status: StatusFn, entitled: Callable[[int], bool]) -> (
    grpc.GenericRpcHandler
):
    """``/mesh.agent.v1.AgentStatus/Status``: the agent's status as JSON, for ``mesh agent
    status --socket``. Root sees all services; a registered uid its own."""

    async def handler(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        if uid != 0 and (uid is None or not entitled(uid)):
            await _refuse(
                context, Reason.WORKLOAD_UNKNOWN,
                f"uid {uid} runs no service registered to this node", "Status",
            )
        return json.dumps(status(None if uid == 0 else uid), sort_keys=True).encode()

    return grpc.method_handlers_generic_handler(
        STATUS_SERVICE,
        {
            "Status": grpc.unary_unary_rpc_method_handler(
                handler, request_deserializer=None, response_serializer=None
            )
        },
    )


def add_views(
    server: grpc.aio.Server, store: IdentityStore, uid: int | None, status: StatusFn
) -> None:
    workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(  # type: ignore[no-untyped-call]
        WorkloadApi(store, uid), server
    )
    server.add_generic_rpc_handlers((status_handler(uid, status, store.entitled),))
