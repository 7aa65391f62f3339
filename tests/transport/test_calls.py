"""The four call kinds through real mesh servers, sync and aio, allowed and denied."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from mesh.policy import Policy, Rule
from mesh.tokens.verify import ChainVerifier
from mesh.transport.context import enter_call, leave_call
from mesh.transport.status import error_info

SVC = "/test.v1.Echo/"


def call_all(channel: Any) -> dict[str, list[dict[str, Any]]]:
    """Make one call of each kind; return what the handler saw, per kind."""
    unary = channel.unary_unary(SVC + "Unary")(b"x", timeout=10)
    server_stream = list(channel.unary_stream(SVC + "ServerStream")(b"x", timeout=10))
    client_stream = channel.stream_unary(SVC + "ClientStream")(iter([b"a", b"b"]), timeout=10)
    bidi = list(channel.stream_stream(SVC + "Bidi")(iter([b"a", b"b"]), timeout=10))
    return {
        "unary": [json.loads(unary)],
        "server_stream": [json.loads(m) for m in server_stream],
        "client_stream": [json.loads(client_stream)],
        "bidi": [json.loads(m) for m in bidi],
    }


async def acall_all(channel: Any) -> dict[str, list[dict[str, Any]]]:
    async def two() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    unary = await channel.unary_unary(SVC + "Unary")(b"x", timeout=10)
    server_stream = [m async for m in channel.unary_stream(SVC + "ServerStream")(b"x", timeout=10)]
    client_stream = await channel.stream_unary(SVC + "ClientStream")(two(), timeout=10)
    bidi = [m async for m in channel.stream_stream(SVC + "Bidi")(two(), timeout=10)]
    return {
        "unary": [json.loads(unary)],
        "server_stream": [json.loads(m) for m in server_stream],
        "client_stream": [json.loads(client_stream)],
        "bidi": [json.loads(m) for m in bidi],
    }


def each_kind_fails(channel: Any) -> list[tuple[grpc.StatusCode, str]]:
    out = []
    calls: list[Callable[[], Any]] = [
        lambda: channel.unary_unary(SVC + "Unary")(b"x", timeout=10),
        lambda: list(channel.unary_stream(SVC + "ServerStream")(b"x", timeout=10)),
        lambda: channel.stream_unary(SVC + "ClientStream")(iter([b"a"]), timeout=10),
        lambda: list(channel.stream_stream(SVC + "Bidi")(iter([b"a"]), timeout=10)),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as exc:
            call()
        info = error_info(exc.value)
        out.append((exc.value.code(), info.reason if info else ""))
    return out


def test_sync_four_kinds_app_token_allowed(mesh: Any) -> None:
    port = mesh.serve("orders", Policy([Rule(methods=("/test.v1.Echo/*",), peers=("gateway",),
                                            require_user=False)]))
    seen = call_all(mesh.channel(port, "orders", mesh.identity("gateway")))
    assert len(seen["server_stream"]) == 3 and seen["client_stream"][0]["n"] == 2
    assert len(seen["bidi"]) == 2
    for messages in seen.values():
        for m in messages:
            assert m["peer"] == "spiffe://mesh.internal/svc/gateway"
            assert m["kind"] == "service" and m["user"] is None and m["chain"] == ["gateway"]


def test_sync_four_kinds_user_call_allowed(mesh: Any) -> None:
    port = mesh.serve("orders", Policy([Rule(methods=("*",), chains=(("gateway",),),
                                            scopes=("orders:read",))]))
    channel = mesh.channel(port, "orders", mesh.identity("gateway"))
    with mesh.as_user_call("gateway", mesh.user_token(sub="alice", scope="orders:read")):
        seen = call_all(channel)
    for messages in seen.values():
        for m in messages:
            assert (m["user"], m["kind"], m["chain"]) == ("alice", "user", ["gateway"])


def test_sync_four_kinds_denied(mesh: Any) -> None:
    port = mesh.serve("orders", Policy([Rule(methods=("*",), peers=("inventory",),
                                            require_user=False)]))
    results = each_kind_fails(mesh.channel(port, "orders", mesh.identity("gateway")))
    assert results == [(grpc.StatusCode.PERMISSION_DENIED, "PEER_NOT_ALLOWED")] * 4


def test_sync_app_token_refused_where_user_required(mesh: Any) -> None:
    port = mesh.serve("orders", Policy([Rule(methods=("*",), peers=("gateway",))]))
    results = each_kind_fails(mesh.channel(port, "orders", mesh.identity("gateway")))
    assert results == [(grpc.StatusCode.PERMISSION_DENIED, "USER_REQUIRED")] * 4


def test_aio_four_kinds_allowed_and_user_propagated(mesh: Any) -> None:
    port = mesh.serve_aio("orders", Policy([Rule(methods=("*",), peers=("gateway",),
                                                require_user=False)]))
    gateway = mesh.identity("gateway")
    channel = mesh.aio_channel(port, "orders", gateway)
    seen = mesh.aio.run(acall_all(channel))
    for messages in seen.values():
        for m in messages:
            assert (m["kind"], m["chain"]) == ("service", ["gateway"])

    token = mesh.user_token(sub="bob")
    verifier = ChainVerifier(mesh.td.service("gateway"), mesh.trust)

    async def as_user() -> dict[str, list[dict[str, Any]]]:
        handle = enter_call(verifier.verify(token, None))
        try:
            return await acall_all(channel)
        finally:
            leave_call(handle)

    seen = mesh.aio.run(as_user())
    assert len(seen["server_stream"]) == 3 and len(seen["bidi"]) == 2
    for messages in seen.values():
        for m in messages:
            assert (m["user"], m["chain"]) == ("bob", ["gateway"])
    mesh.aio.run(channel.close())


def test_aio_four_kinds_denied(mesh: Any) -> None:
    port = mesh.serve_aio("orders", Policy([Rule(methods=("/other.Svc/*",), peers=("*",),
                                                require_user=False)]))
    channel = mesh.aio_channel(port, "orders", mesh.identity("gateway"))

    async def each() -> list[tuple[grpc.StatusCode, str]]:
        async def one() -> AsyncIterator[bytes]:
            yield b"a"

        out = []
        for kind, arg in (("unary_unary", b"x"), ("unary_stream", b"x"),
                          ("stream_unary", None), ("stream_stream", None)):
            method = {"unary_unary": "Unary", "unary_stream": "ServerStream",
                      "stream_unary": "ClientStream", "stream_stream": "Bidi"}[kind]
            call = getattr(channel, kind)(SVC + method)(arg if arg else one(), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                if kind.endswith("stream") and kind.startswith(("unary_stream", "stream_stream")):
                    _ = [m async for m in call]
                else:
                    await call
            info = error_info(exc.value)
            out.append((exc.value.code(), info.reason if info else ""))
        await channel.close()
        return out

    assert mesh.aio.run(each()) == [(grpc.StatusCode.PERMISSION_DENIED, "NO_POLICY_RULE")] * 4


def test_aio_plain_def_handler_sees_the_caller(mesh: Any) -> None:
    """grpc/grpc#37881: a plain def handler on an aio server still sees current_call()."""
    import grpc.aio

    from mesh.transport.context import current_call
    from mesh.transport.server import AioMeshServer

    source = mesh.identity("orders")

    def plain(request: bytes, context: Any) -> bytes:
        call = current_call()
        return (call.chain[0].service_name or "").encode() if call else b"none"

    async def run() -> bytes:
        server = AioMeshServer(source, Policy([Rule(methods=("*",), peers=("*",),
                                                    require_user=False)]), mesh.trust)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "p.P", {"M": grpc.unary_unary_rpc_method_handler(plain)})])
        port = server.add_port("127.0.0.1:0")
        await server.start()
        try:
            from mesh.transport.channel import AioMeshChannel
            channel = AioMeshChannel(f"127.0.0.1:{port}", "orders", mesh.identity("gateway"))
            result: bytes = await channel.unary_unary("/p.P/M")(b"", timeout=10)
            await channel.close()
            return result
        finally:
            await server.stop(None)

    assert mesh.aio.run(run()) == b"gateway"
