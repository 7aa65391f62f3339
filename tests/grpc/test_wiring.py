"""Wiring: servers you build yourself, registered handlers, channel rotation details."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.credentials import server_credentials
from mesh.interceptors.server_aio import AioMeshServerInterceptor
from mesh.interceptors.server_sync import MeshServerInterceptor
from mesh.policy import Policy, Rule
from mesh.server import build_guard
from mesh.status import error_info

SVC = "/test.v1.Echo/"
ANY_APP = Policy([Rule(methods=("*",), peers=("gateway",), require_user=False)])


def echo_handler() -> grpc.GenericRpcHandler:
    from mesh.context import current_call

    def unary(request: bytes, context: Any) -> bytes:
        call = current_call()
        return (call.chain[-1].service_name or "").encode() if call else b"none"

    return grpc.method_handlers_generic_handler(
        "test.v1.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(unary)})


def test_health_goes_through_the_guard_on_the_registered_path(kit: Any) -> None:
    port = kit.serve("orders", ANY_APP)
    kit.identity("gateway")
    folder = kit.folder("gateway")
    creds = grpc.ssl_channel_credentials((folder / "svid_bundle.pem").read_bytes(),
                                         (folder / "svid_key.pem").read_bytes(),
                                         (folder / "svid.pem").read_bytes())
    channel = grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[
        ("grpc.ssl_target_name_override", "orders.svc.mesh.internal")])
    stub = health_pb2_grpc.HealthStub(channel)
    assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == (
        health_pb2.HealthCheckResponse.SERVING)
    kit.ca.revoke(name="gateway")
    deadline = time.monotonic() + 5
    reason = ""
    while time.monotonic() < deadline and not reason:
        try:
            stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            time.sleep(0.05)
        except grpc.RpcError as err:
            info = error_info(err)
            reason = info.reason if info else err.code().name
    assert reason == "CERT_REVOKED"
    channel.close()


def test_interceptor_on_a_server_you_build(kit: Any) -> None:
    source = kit.identity("orders")
    guard = build_guard(source, ANY_APP, kit.bundle)
    server = grpc.server(futures.ThreadPoolExecutor(4),
                         interceptors=[MeshServerInterceptor(guard)])
    server.add_generic_rpc_handlers([echo_handler()])
    port = server.add_secure_port("127.0.0.1:0", server_credentials(source))
    server.start()
    try:
        ok = kit.channel(port, "orders", kit.identity("gateway"))
        assert ok.unary_unary(SVC + "Unary")(b"", timeout=5) == b"gateway"
        bad = kit.channel(port, "orders", kit.identity("inventory"))
        try:
            bad.unary_unary(SVC + "Unary")(b"", timeout=5)
            raise AssertionError("inventory was let in")
        except grpc.RpcError as err:
            assert error_info(err).reason == "PEER_NOT_ALLOWED"
    finally:
        server.stop(None)


def test_aio_interceptor_on_a_server_you_build(kit: Any) -> None:
    source = kit.identity("orders")
    gateway = kit.identity("gateway")

    async def run() -> bytes:
        from mesh.channel import AioMeshChannel

        guard = build_guard(source, ANY_APP, kit.bundle)
        server = grpc.aio.server(interceptors=[AioMeshServerInterceptor(guard)])
        server.add_generic_rpc_handlers([echo_handler()])
        port = server.add_secure_port("127.0.0.1:0", server_credentials(source))
        await server.start()
        try:
            channel = AioMeshChannel(f"127.0.0.1:{port}", "orders", gateway)
            reply: bytes = await channel.unary_unary(SVC + "Unary")(b"", timeout=5)
            await channel.close()
            return reply
        finally:
            await server.stop(None)

    assert kit.aio.run(run()) == b"gateway"


def test_stream_in_flight_survives_a_rotation(kit: Any) -> None:
    port = kit.serve("orders", ANY_APP)
    gateway = kit.identity("gateway", poll=0)
    channel = kit.channel(port, "orders", gateway)
    release = threading.Event()

    def requests() -> Iterator[bytes]:
        yield b"before"
        release.wait(10)
        yield b"after"

    stream = channel.stream_stream(SVC + "Bidi")(requests(), timeout=10)
    first = json.loads(next(stream))
    assert first["echo"] == "before"
    kit.rotate("gateway")
    # a new call rotates the channel; the stream keeps the old connection until it ends
    assert json.loads(channel.unary_unary(SVC + "Unary")(b"x", timeout=5))["chain"] == [
        "gateway"]
    assert channel.generation == 1
    release.set()
    rest = [json.loads(m)["echo"] for m in stream]
    assert rest == ["after"] and stream.code() == grpc.StatusCode.OK


def test_future_calls_are_tracked_and_complete(kit: Any) -> None:
    port = kit.serve("orders", ANY_APP)
    channel = kit.channel(port, "orders", kit.identity("gateway"))
    calls = [channel.unary_unary(SVC + "Unary").future(b"x", timeout=5) for _ in range(10)]
    assert all(json.loads(c.result())["peer"].endswith("/gateway") for c in calls)
    reply, call = channel.unary_unary(SVC + "Unary").with_call(b"x", timeout=5)
    assert call.code() == grpc.StatusCode.OK and json.loads(reply)["chain"] == ["gateway"]


def test_aio_channel_follows_rotation(kit: Any) -> None:
    port = kit.serve_aio("orders", ANY_APP)
    gateway = kit.identity("gateway", poll=0)
    channel = kit.aio_channel(port, "orders", gateway)

    async def call() -> dict[str, Any]:
        reply = await channel.unary_unary(SVC + "Unary")(b"x", timeout=5)
        return dict(json.loads(reply))

    before = kit.aio.run(call())
    kit.rotate("gateway")
    after = kit.aio.run(call())
    assert before["chain"] == after["chain"] == ["gateway"]
    assert gateway.current().generation == 1
    kit.aio.run(channel.close())


def test_client_interceptor_on_a_channel_you_build(kit: Any, as_user_call: Any) -> None:
    from mesh.interceptors.client_sync import MeshClientInterceptor
    from mesh.interceptors.minter import TokenMinter

    port = kit.serve("orders", Policy([Rule(methods=("*",), chains=(("gateway",),))]))
    gateway = kit.identity("gateway")
    folder = kit.folder("gateway")
    creds = grpc.ssl_channel_credentials((folder / "svid_bundle.pem").read_bytes(),
                                         (folder / "svid_key.pem").read_bytes(),
                                         (folder / "svid.pem").read_bytes())
    raw = grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[
        ("grpc.ssl_target_name_override", "orders.svc.mesh.internal")])
    minter = TokenMinter(gateway.current(), kit.td.service("orders"))
    channel = grpc.intercept_channel(raw, MeshClientInterceptor(minter))
    with as_user_call("gateway", kit.user_token("carol")):
        seen = json.loads(channel.unary_unary(SVC + "Unary")(b"x", timeout=5))
        streamed = [json.loads(m) for m in channel.unary_stream(SVC + "ServerStream")(
            b"x", timeout=5)]
    assert seen["user"] == "carol" and {m["user"] for m in streamed} == {"carol"}
    raw.close()


def test_asking_for_the_same_method_again_reuses_one_underlying_multicallable(kit: Any) -> None:
    port = kit.serve("orders", ANY_APP)
    channel = kit.channel(port, "orders", kit.identity("gateway"))
    for _ in range(20):
        channel.unary_unary(SVC + "Unary")(b"x", timeout=5)
    channel.unary_stream(SVC + "ServerStream")
    assert len(channel._entry.callables) == 1  # no growth per multicallable asked for


def test_registered_method_handlers_are_guarded_on_both_flavours(kit: Any) -> None:
    """What generated add_XServicer_to_server() uses (grpcio >= 1.62): both server flavours wrap
    each registered handler with the guard; health, registered the same way, answers."""
    from mesh.channel import AioMeshChannel
    from mesh.context import current_call
    from mesh.server import AioMeshServer, MeshServer

    def who(request: bytes, context: Any) -> bytes:
        call = current_call()
        return (call.chain[-1].service_name or "").encode() if call else b"none"

    async def awho(request: bytes, context: Any) -> bytes:
        return who(request, context)

    gateway, inventory = kit.identity("gateway"), kit.identity("inventory")
    sync_server = MeshServer(kit.identity("orders"), ANY_APP, kit.bundle, max_workers=4)
    sync_server.add_registered_method_handlers(
        "test.v1.Reg", {"Who": grpc.unary_unary_rpc_method_handler(who)})
    sync_port = sync_server.add_port("127.0.0.1:0")
    sync_server.start()

    async def run_aio() -> list[Any]:
        server = AioMeshServer(kit.identity("orders"), ANY_APP, kit.bundle)
        server.add_registered_method_handlers(
            "test.v1.Reg", {"Who": grpc.unary_unary_rpc_method_handler(awho)})
        port = server.add_port("127.0.0.1:0")
        await server.start()
        out: list[Any] = []
        try:
            for source in (gateway, inventory):
                channel = AioMeshChannel(f"127.0.0.1:{port}", "orders", source)
                try:
                    out.append(await channel.unary_unary("/test.v1.Reg/Who")(b"", timeout=5))
                except grpc.aio.AioRpcError as err:
                    out.append(error_info(err).reason)
                if source is gateway:
                    stub = health_pb2_grpc.HealthStub(channel)
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                    out.append(reply.status == health_pb2.HealthCheckResponse.SERVING)
                await channel.close()
        finally:
            await server.stop(None)
        return out

    try:
        results = []
        for source in (gateway, inventory):
            try:
                results.append(kit.channel(sync_port, "orders", source).unary_unary(
                    "/test.v1.Reg/Who")(b"", timeout=5))
            except grpc.RpcError as err:
                results.append(error_info(err).reason)
        assert results == [b"gateway", "PEER_NOT_ALLOWED"]
    finally:
        sync_server.stop(None)
    assert kit.aio.run(run_aio()) == [b"gateway", True, "PEER_NOT_ALLOWED"]
