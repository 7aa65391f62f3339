"""Wiring: servers you build yourself, registered handlers, channel rotation details."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.calls import first_refusal

from mesh.policy import Policy, Rule
from mesh.transport.status import error_info

SVC = "/test.v1.Echo/"
ANY_APP = Policy([Rule(methods=("*",), peers=("gateway",), require_user=False)])


def echo_handler() -> grpc.GenericRpcHandler:
    from mesh.transport.context import current_call

    def unary(request: bytes, context: Any) -> bytes:
        call = current_call()
        return (call.chain[-1].service_name or "").encode() if call else b"none"

    return grpc.method_handlers_generic_handler(
        "test.v1.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(unary)})


def test_health_goes_through_the_guard_on_the_registered_path(mesh: Any) -> None:
    port = mesh.serve("orders", ANY_APP)
    mesh.identity("gateway")
    folder = mesh.folder("gateway")
    creds = grpc.ssl_channel_credentials((folder / "svid_bundle.pem").read_bytes(),
                                         (folder / "svid_key.pem").read_bytes(),
                                         (folder / "svid.pem").read_bytes())
    channel = grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[
        ("grpc.ssl_target_name_override", "orders.svc.mesh.internal")])
    stub = health_pb2_grpc.HealthStub(channel)
    assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == (
        health_pb2.HealthCheckResponse.SERVING)
    mesh.ca.revoke(name="gateway")
    assert first_refusal(lambda: stub.Check(health_pb2.HealthCheckRequest(), timeout=5)) == (
        grpc.StatusCode.UNAUTHENTICATED, "CERT_REVOKED")
    channel.close()






def test_stream_in_flight_survives_a_rotation(mesh: Any) -> None:
    port = mesh.serve("orders", ANY_APP)
    gateway = mesh.identity("gateway", poll=0)
    channel = mesh.channel(port, "orders", gateway)
    release = threading.Event()

    def requests() -> Iterator[bytes]:
        yield b"before"
        release.wait(10)
        yield b"after"

    stream = channel.stream_stream(SVC + "Bidi")(requests(), timeout=10)
    first = json.loads(next(stream))
    assert first["echo"] == "before"
    mesh.rotate("gateway")
    # a new call rotates the channel; the stream keeps the old connection until it ends
    assert json.loads(channel.unary_unary(SVC + "Unary")(b"x", timeout=5))["chain"] == [
        "gateway"]
    assert channel.generation == 1
    release.set()
    rest = [json.loads(m)["echo"] for m in stream]
    assert rest == ["after"] and stream.code() == grpc.StatusCode.OK


def test_future_calls_are_tracked_and_complete(mesh: Any) -> None:
    port = mesh.serve("orders", ANY_APP)
    channel = mesh.channel(port, "orders", mesh.identity("gateway"))
    calls = [channel.unary_unary(SVC + "Unary").future(b"x", timeout=5) for _ in range(10)]
    assert all(json.loads(c.result())["peer"].endswith("/gateway") for c in calls)
    reply, call = channel.unary_unary(SVC + "Unary").with_call(b"x", timeout=5)
    assert call.code() == grpc.StatusCode.OK and json.loads(reply)["chain"] == ["gateway"]


def test_aio_channel_follows_rotation(mesh: Any) -> None:
    port = mesh.serve_aio("orders", ANY_APP)
    gateway = mesh.identity("gateway", poll=0)
    channel = mesh.aio_channel(port, "orders", gateway)

    async def call() -> dict[str, Any]:
        reply = await channel.unary_unary(SVC + "Unary")(b"x", timeout=5)
        return dict(json.loads(reply))

    before = mesh.aio.run(call())
    mesh.rotate("gateway")
    after = mesh.aio.run(call())
    assert before["chain"] == after["chain"] == ["gateway"]
    assert gateway.current().generation == 1
    mesh.aio.run(channel.close())




def test_asking_for_the_same_method_again_reuses_one_underlying_multicallable(mesh: Any) -> None:
    port = mesh.serve("orders", ANY_APP)
    channel = mesh.channel(port, "orders", mesh.identity("gateway"))
    for _ in range(20):
        channel.unary_unary(SVC + "Unary")(b"x", timeout=5)
    channel.unary_stream(SVC + "ServerStream")
    assert len(channel._entry.callables) == 1  # no growth per multicallable asked for


def test_registered_method_handlers_are_guarded_on_both_flavours(mesh: Any) -> None:
    """What generated add_XServicer_to_server() uses (grpcio >= 1.62): both server flavours wrap
    each registered handler with the guard; health, registered the same way, answers."""
    from mesh.transport.channel import AioMeshChannel
    from mesh.transport.context import current_call
    from mesh.transport.server import AioMeshServer, MeshServer

    def who(request: bytes, context: Any) -> bytes:
        call = current_call()
        return (call.chain[-1].service_name or "").encode() if call else b"none"

    async def awho(request: bytes, context: Any) -> bytes:
        return who(request, context)

    gateway, inventory = mesh.identity("gateway"), mesh.identity("inventory")
    sync_server = MeshServer(mesh.identity("orders"), ANY_APP, mesh.trust, max_workers=4)
    sync_server.add_registered_method_handlers(
        "test.v1.Reg", {"Who": grpc.unary_unary_rpc_method_handler(who)})
    sync_port = sync_server.add_port("127.0.0.1:0")
    sync_server.start()

    async def run_aio() -> list[Any]:
        server = AioMeshServer(mesh.identity("orders"), ANY_APP, mesh.trust)
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
                results.append(mesh.channel(sync_port, "orders", source).unary_unary(
                    "/test.v1.Reg/Who")(b"", timeout=5))
            except grpc.RpcError as err:
                results.append(error_info(err).reason)
        assert results == [b"gateway", "PEER_NOT_ALLOWED"]
    finally:
        sync_server.stop(None)
    assert mesh.aio.run(run_aio()) == [b"gateway", True, "PEER_NOT_ALLOWED"]
