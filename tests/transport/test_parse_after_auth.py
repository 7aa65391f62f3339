"""Authentication before parsing (spec 5): an unauthenticated caller never reaches the protobuf
parser, and an authenticated caller's bytes that do not parse get INVALID_ARGUMENT, a plain
message and no traceback, on sync and aio servers and for streamed requests too."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from mesh.policy import Policy, Rule
from mesh.transport.server import AioMeshServer, MeshServer
from mesh.transport.status import error_info

SERVICE = "test.v1.Typed"
UNARY = f"/{SERVICE}/Unary"
BIDI = f"/{SERVICE}/Bidi"
GOOD = health_pb2.HealthCheckRequest(service="x").SerializeToString()
GARBAGE = b"\xff\xff\xff\xff\x0f not protobuf"


class CountingParser:
    """The handlers' request deserializer: a real protobuf parser that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, raw: bytes) -> Any:
        self.calls += 1
        return health_pb2.HealthCheckRequest.FromString(raw)


def _handlers(parse: CountingParser, *, aio: bool) -> grpc.GenericRpcHandler:
    if aio:
        async def unary(request: Any, context: Any) -> bytes:
            return request.service.encode()

        async def bidi(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[bytes]:
            async for r in requests:
                yield r.service.encode()
        handlers = {"Unary": grpc.unary_unary_rpc_method_handler(unary, parse),
                    "Bidi": grpc.stream_stream_rpc_method_handler(bidi, parse)}
    else:
        def unary_s(request: Any, context: Any) -> bytes:
            return request.service.encode()  # type: ignore[no-any-return]

        def bidi_s(requests: Iterator[Any], context: Any) -> Iterator[bytes]:
            for r in requests:
                yield r.service.encode()
        handlers = {"Unary": grpc.unary_unary_rpc_method_handler(unary_s, parse),
                    "Bidi": grpc.stream_stream_rpc_method_handler(bidi_s, parse)}
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def _serve(mesh: Any, parse: CountingParser, *, aio: bool) -> int:
    policy = Policy([Rule(methods=("*",), peers=("gateway",), require_user=False)],
                    trust_domain=mesh.td)
    source = mesh.identity("orders")
    if not aio:
        server = MeshServer(source, policy, mesh.trust)
        server.add_generic_rpc_handlers([_handlers(parse, aio=False)])
        port = server.add_port("127.0.0.1:0")
        server.start()
        mesh._servers.append(server)
        return port

    async def start() -> int:
        server = AioMeshServer(source, policy, mesh.trust)
        server.add_generic_rpc_handlers([_handlers(parse, aio=True)])
        p = server.add_port("127.0.0.1:0")
        await server.start()
        mesh._aio_servers.append(server)
        return p

    port: int = mesh.aio.run(start())
    return port


def _raw_channel(mesh: Any, port: int) -> grpc.Channel:
    """Mutual TLS as gateway with a valid certificate, and NO token."""
    svid = mesh.identity("gateway").current()
    return grpc.secure_channel(
        f"127.0.0.1:{port}",
        grpc.ssl_channel_credentials(svid.roots_pem, svid.key_pem, svid.chain_pem),
        options=[("grpc.ssl_target_name_override", mesh.td.service_dns_name("orders"))])


def _no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info], "a traceback reached the log"
    assert "DecodeError" not in caplog.text and "Traceback" not in caplog.text


@pytest.mark.parametrize("aio", [False, True], ids=["sync", "aio"])
def test_an_unauthenticated_caller_never_reaches_the_parser(
        mesh: Any, aio: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    parse = CountingParser()
    port = _serve(mesh, parse, aio=aio)
    with _raw_channel(mesh, port) as raw, pytest.raises(grpc.RpcError) as info:
        raw.unary_unary(UNARY)(GARBAGE, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(info.value).reason == "TOKEN_MISSING"
    assert parse.calls == 0
    _no_traceback(caplog)


@pytest.mark.parametrize("aio", [False, True], ids=["sync", "aio"])
def test_an_authenticated_request_that_does_not_parse_is_invalid_argument(
        mesh: Any, aio: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    parse = CountingParser()
    port = _serve(mesh, parse, aio=aio)
    channel = mesh.channel(port, "orders", mesh.identity("gateway"))
    assert channel.unary_unary(UNARY)(GOOD, timeout=10) == b"x"  # control
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(UNARY)(GARBAGE, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(info.value).reason == "REQUEST_INVALID"
    details = info.value.details() or ""
    assert UNARY in details and "could not be parsed" in details
    assert "DecodeError" not in details and "Exception" not in details
    assert parse.calls == 2
    _no_traceback(caplog)


@pytest.mark.parametrize("aio", [False, True], ids=["sync", "aio"])
def test_a_streamed_request_that_does_not_parse_is_invalid_argument(
        mesh: Any, aio: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    parse = CountingParser()
    port = _serve(mesh, parse, aio=aio)
    channel = mesh.channel(port, "orders", mesh.identity("gateway"))
    bidi = channel.stream_stream(BIDI)
    assert list(bidi(iter([GOOD, GOOD]), timeout=10)) == [b"x", b"x"]  # control
    with pytest.raises(grpc.RpcError) as info:
        list(bidi(iter([GOOD, GARBAGE, GOOD]), timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(info.value).reason == "REQUEST_INVALID"
    _no_traceback(caplog)
