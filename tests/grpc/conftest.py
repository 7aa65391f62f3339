"""Fixtures for the gRPC tests: identities from our CA, echo services, sync and aio servers.

``kit`` (a :class:`MeshKit`) issues SVIDs from a fresh CA into per-service folders, mints user
tokens as the auth service, and starts real mesh servers on 127.0.0.1 port 0 that echo what the
handler saw through ``mesh.transport.context.current_call()``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import pytest

from ca.authority import CertificateAuthority
from mesh.identity.bundle import FileBundleSource
from mesh.identity.svid import X509SvidFolder
from mesh.policy import Policy, Rule
from mesh.tokens.signer import TokenSigner
from mesh.transport.channel import AioMeshChannel, MeshChannel
from mesh.transport.context import current_call
from mesh.transport.server import AioMeshServer, MeshServer

SERVICE = "test.v1.Echo"
UNARY = f"/{SERVICE}/Unary"
SERVER_STREAM = f"/{SERVICE}/ServerStream"
CLIENT_STREAM = f"/{SERVICE}/ClientStream"
BIDI = f"/{SERVICE}/Bidi"
METHODS = (UNARY, SERVER_STREAM, CLIENT_STREAM, BIDI)


def seen() -> dict[str, Any]:
    """What the handler sees of its caller (JSON-able)."""
    call = current_call()
    if call is None:
        return {"call": None}
    return {
        "peer": str(call.peer) if call.peer else None,
        "kind": call.kind,
        "user": call.user,
        "chain": [s.service_name for s in call.chain],
        "scope": call.user_claims.get("scope"),
    }


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def decode(data: bytes) -> Any:
    return json.loads(data)


Forward = Callable[[bytes], bytes] | None


def sync_handlers(forward: Forward = None) -> grpc.GenericRpcHandler:
    """Echo handlers; ``forward(request)`` (if given) is called from inside the unary handler."""

    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        out = seen()
        if forward is not None:
            out["downstream"] = decode(forward(request))
        return encode(out)

    def server_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for i in range(3):
            yield encode({**seen(), "i": i})

    def client_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return encode({**seen(), "n": sum(1 for _ in requests)})

    def bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for r in requests:
            yield encode({**seen(), "echo": r.decode()})

    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    })


def aio_handlers() -> grpc.GenericRpcHandler:
    async def unary(request: bytes, context: Any) -> bytes:
        return encode(seen())

    async def server_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for i in range(3):
            yield encode({**seen(), "i": i})

    async def client_stream(requests: AsyncIterator[bytes], context: Any) -> bytes:
        n = 0
        async for _ in requests:
            n += 1
        return encode({**seen(), "n": n})

    async def bidi(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for r in requests:
            yield encode({**seen(), "echo": r.decode()})

    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    })


class AioLoop:
    """One event loop in a background thread, so sync tests can drive aio servers/clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Any, timeout: float = 20) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class MeshKit:
    def __init__(self, ca: CertificateAuthority, root: Path) -> None:
        self.ca = ca
        self.root = root
        self.td = ca.trust_domain
        self.bundle = FileBundleSource(ca.bundle_path, ca.crl_path, check_interval=0.05,
                                       unknown_kid_interval=0.05)
        self._servers: list[MeshServer] = []
        self._channels: list[MeshChannel] = []
        self._aio: AioLoop | None = None
        self._aio_servers: list[AioMeshServer] = []
        auth = ca.issue("auth")
        assert auth.private_key is not None
        self.auth_signer = TokenSigner(auth.private_key, auth.chain)

    # identities
    def folder(self, name: str) -> Path:
        return self.root / "ids" / name

    def identity(self, name: str, poll: float = 0.05) -> X509SvidFolder:
        issued = self.ca.issue(name)
        issued.write_to(self.folder(name))
        return X509SvidFolder(self.folder(name), poll_interval=poll)

    def rotate(self, name: str) -> None:
        self.ca.renew(name).write_to(self.folder(name))

    def user_token(self, sub: str = "alice", aud: str = "gateway", **claims: Any) -> str:
        return self.auth_signer.user_token(sub, [self.td.service(aud)], **claims)

    # servers
    def serve(self, name: str, policy: Policy, *, forward: Forward = None,
              source: X509SvidFolder | None = None, edge: bool = False,
              bundle: FileBundleSource | None = None, **kw: Any) -> int:
        source = source or self.identity(name)
        server = MeshServer(source, policy, bundle or self.bundle, edge=edge, max_workers=8,
                            **kw)
        server.add_generic_rpc_handlers([sync_handlers(forward)])
        port = server.add_port("127.0.0.1:0")
        server.start()
        self._servers.append(server)
        return port

    def channel(self, port: int, callee: str, source: X509SvidFolder, **kw: Any) -> MeshChannel:
        channel = MeshChannel(f"127.0.0.1:{port}", callee, source, **kw)
        self._channels.append(channel)
        return channel

    @property
    def aio(self) -> AioLoop:
        if self._aio is None:
            self._aio = AioLoop()
        return self._aio

    def serve_aio(self, name: str, policy: Policy, **kw: Any) -> int:
        source = self.identity(name)

        async def start() -> int:
            server = AioMeshServer(source, policy, self.bundle, **kw)
            server.add_generic_rpc_handlers([aio_handlers()])
            port = server.add_port("127.0.0.1:0")
            await server.start()
            self._aio_servers.append(server)
            return port

        port: int = self.aio.run(start())
        return port

    def aio_channel(self, port: int, callee: str, source: X509SvidFolder, **kw: Any
                    ) -> AioMeshChannel:
        async def make() -> AioMeshChannel:
            return AioMeshChannel(f"127.0.0.1:{port}", callee, source, **kw)

        channel: AioMeshChannel = self.aio.run(make())
        return channel

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        for server in self._servers:
            server.stop(None)
        if self._aio is not None:
            for aio_server in self._aio_servers:
                self._aio.run(aio_server.stop(None))
            self._aio.close()


def allow_all(peers: tuple[str, ...] = ("*",), **kw: Any) -> Policy:
    return Policy([Rule(methods=("*",), peers=peers, **kw)])


@pytest.fixture
def kit(mesh_ca: CertificateAuthority, tmp_path: Path) -> Iterator[MeshKit]:
    k = MeshKit(mesh_ca, tmp_path)
    yield k
    k.close()


@pytest.fixture
def allow() -> Callable[..., Policy]:
    return allow_all


@pytest.fixture
def as_user_call(kit: MeshKit) -> Callable[..., Any]:
    """``with as_user_call("gateway", token):`` act as edge service gateway handling a user call.

    The token is verified exactly as an edge port would (``ChainVerifier.verify(token, None)``)
    and put in the context, so channels opened inside wrap it for the next hop.
    """
    import contextlib

    from mesh.tokens.verify import ChainVerifier
    from mesh.transport.context import enter_call, leave_call

    @contextlib.contextmanager
    def run(service: str, token: str) -> Iterator[None]:
        chain = ChainVerifier(kit.td.service(service), kit.bundle).verify(token, None)
        handle = enter_call(chain)
        try:
            yield
        finally:
            leave_call(handle)

    return run
