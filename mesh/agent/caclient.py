"""The agent's side of the CA service (``protos/mesh/ca/v1/ca.proto``), over grpc.aio.

Two channels, both pinned to the CA's DNS name ``ca.svc.<td>`` (``grpc.ssl_target_name_override``:
Python gRPC cannot check a URI SAN) and trusting only the CA's roots:

- attestation (server TLS): ``AttestNode`` with the join token, before the agent has an SVID;
- agent (mutual TLS, as ``spiffe://<td>/agent/<NODE>``): everything else. It is rebuilt each
  time the agent's own SVID or the roots change (gRPC clients have no credential rotation).

Every failure becomes :class:`CAUnavailable` (retry later) or :class:`CARefused` carrying the
CA's reason code from the status's ``google.rpc.ErrorInfo``. Join tokens and keys never appear
in a message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from mesh.agent.errors import CARefused, CAUnavailable
from mesh.ca.v1 import ca_pb2, ca_pb2_grpc
from mesh.errors import Reason
from mesh.transport.status import DOMAIN, error_info

#: statuses that say "try again later", whatever the details
_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}


def translate(err: grpc.aio.AioRpcError, what: str) -> CARefused | CAUnavailable:
    """A CA call's failure as the agent's error (``what``: "renewing the agent SVID", ...)."""
    info = error_info(err)
    code = err.code()
    if info is not None and info.domain == DOMAIN:
        reason = Reason.__members__.get(info.reason)
        if reason is not None and reason is not Reason.CA_UNAVAILABLE:
            detail = (err.details() or "").strip()[:300]
            return CARefused(f"the CA refused {what}: {reason} ({detail})", reason,
                             retry_after=_retry_after(info))
    if code in _TRANSIENT or info is None:
        return CAUnavailable(
            f"the CA did not answer {what}: {code.name} ({(err.details() or '').strip()[:200]})"
        )
    return CAUnavailable(f"the CA failed {what}: {code.name}")


#: the longest wait a CA's retry_after hint is taken for (a longer one is capped, not trusted)
MAX_RETRY_AFTER = 7 * 24 * 3600.0


def _retry_after(info: Any) -> float | None:
    """The ErrorInfo's ``retry_after`` (seconds), if present and a sane number."""
    text = info.metadata.get("retry_after")
    if not text or not text.isdigit():
        return None
    return min(float(text), MAX_RETRY_AFTER)


def _options(ca_name: str, reconnect_max: float) -> list[tuple[str, object]]:
    return [
        ("grpc.ssl_target_name_override", ca_name),
        ("grpc.default_authority", ca_name),
        ("grpc.enable_http_proxy", 0),
        # Reconnect quickly once the CA is back (the agent paces its own retries): the other
        # agents' renewed keys reach this node only once its trust stream is back.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", int(1000 * min(2.0, max(0.2, reconnect_max)))),
    ]


class CAClient:
    """Channels to one CA service. ``timeout``: per unary call, seconds."""

    def __init__(
        self,
        agent_target: str,
        attest_target: str,
        ca_name: str,
        roots_pem: bytes,
        *,
        timeout: float = 10.0,
        reconnect_max: float = 2.0,
    ) -> None:
        self._options = _options(ca_name, reconnect_max)
        self._agent_target = agent_target
        self._attest_target = attest_target
        self._ca_name = ca_name
        self._roots_pem = roots_pem
        self._timeout = timeout
        self._channel: grpc.aio.Channel | None = None
        self._stub: ca_pb2_grpc.NodeAgentServiceStub | None = None
        self._retired: list[grpc.aio.Channel] = []

    async def attest(
        self, node: str, join_token: str, csr_pem: bytes
    ) -> ca_pb2.AttestNodeResponse:
        creds = grpc.ssl_channel_credentials(root_certificates=self._roots_pem)
        async with grpc.aio.secure_channel(
            self._attest_target, creds, options=self._options
        ) as channel:
            stub = ca_pb2_grpc.NodeAttestationStub(channel)  # type: ignore[no-untyped-call]
            try:
                resp: ca_pb2.AttestNodeResponse = await stub.AttestNode(
                    ca_pb2.AttestNodeRequest(node=node, join_token=join_token, csr_pem=csr_pem),
                    timeout=self._timeout,
                )
            except grpc.aio.AioRpcError as err:
                raise translate(err, f"the attestation of node {node}") from None
        return resp

    def use_identity(self, roots_pem: bytes, chain_pem: bytes, key_pem: bytes) -> None:
        """Build the mutual-TLS channel for this agent SVID (the previous one is closed once
        its calls finish: closing it here would cut a running WatchTrust)."""
        self._roots_pem = roots_pem
        creds = grpc.ssl_channel_credentials(
            root_certificates=roots_pem, private_key=key_pem, certificate_chain=chain_pem
        )
        old = self._channel
        self._channel = grpc.aio.secure_channel(
            self._agent_target, creds, options=self._options
        )
        self._stub = ca_pb2_grpc.NodeAgentServiceStub(  # type: ignore[no-untyped-call]
            self._channel
        )
        if old is not None:
            self._retired.append(old)

    def _agent_stub(self) -> ca_pb2_grpc.NodeAgentServiceStub:
        if self._stub is None:
            raise RuntimeError("use_identity() was not called")
        return self._stub

    async def close(self) -> None:
        channels = [c for c in (self._channel, *self._retired) if c is not None]
        self._retired = []
        self._channel = None
        self._stub = None
        for c in channels:
            await c.close(grace=None)

    async def close_retired(self, grace: float = 1.0) -> None:
        """Close the channels of earlier agent SVIDs, letting calls still running on them end
        (up to ``grace`` seconds)."""
        for c in list(self._retired):
            await c.close(grace=grace)
            if c in self._retired:  # close() may have taken it meanwhile
                self._retired.remove(c)

    async def renew_agent(self, csr_pem: bytes) -> ca_pb2.X509Svid:
        try:
            resp = await self._agent_stub().RenewAgent(
                ca_pb2.RenewAgentRequest(csr_pem=csr_pem), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as err:
            raise translate(err, "renewing the agent SVID") from None
        svid: ca_pb2.X509Svid = resp.agent_svid
        return svid

    async def registrations(self) -> list[ca_pb2.Registration]:
        try:
            resp = await self._agent_stub().ListRegistrations(
                ca_pb2.ListRegistrationsRequest(), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as err:
            raise translate(err, "listing this node's registrations") from None
        return list(resp.registrations)

    async def issue(self, service: str, csr_pem: bytes) -> ca_pb2.X509Svid:
        try:
            resp = await self._agent_stub().IssueWorkloadSvid(
                ca_pb2.IssueWorkloadSvidRequest(service=service, csr_pem=csr_pem),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as err:
            raise translate(err, f"issuing the SVID of {service}") from None
        svid: ca_pb2.X509Svid = resp.svid
        return svid

    async def watch_trust(self, known_sequence: int) -> AsyncIterator[ca_pb2.TrustState]:
        call = self._agent_stub().WatchTrust(
            ca_pb2.WatchTrustRequest(known_sequence=known_sequence)
        )
        try:
            async for state in call:
                yield state
        except grpc.aio.AioRpcError as err:
            raise translate(err, "the trust bundle stream") from None
        finally:
            call.cancel()
