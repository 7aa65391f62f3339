"""Tokens at meshid's size limit never meet gRPC's metadata limits (spec 5.2), and mesh
channels never dial through an HTTP proxy from the environment unless asked to."""

from __future__ import annotations

import socket
import threading
from concurrent import futures
from typing import Any

import grpc
import pytest
from support.minimesh import UNARY, decode, sync_handlers

from mesh.policy import Policy, Rule
from mesh.tokens.verify import DEFAULT_MAX_SIZE
from mesh.transport.options import channel_options, metadata_limits, server_options

ORDERS = Policy([Rule(methods=("*",), chains=(("gateway",),))])
# A caller's own metadata beside the token (a trace header, say): with it the whole header
# block sits well inside gRPC's default window of random refusals (8 to 16 KiB).
EXTRA = [("x-trace", "t" * 2000)]


def _user_token_filling(mesh: Any, target: int) -> str:
    """A user token for gateway whose wrap by gateway for orders is within 64 bytes under
    ``target`` bytes (the padding is the user's display name)."""
    low, high = 0, target
    while low < high:
        mid = (low + high + 1) // 2
        user = mesh.user_token("gateway", name="n" * mid)
        size = len(mesh.wrap(user, "gateway", "orders"))
        if size <= target:
            low = mid
        else:
            high = mid - 1
    user = mesh.user_token("gateway", name="n" * low)
    assert target - 64 <= len(mesh.wrap(user, "gateway", "orders")) <= target
    return user


def test_tokens_at_the_limit_pass_every_time(mesh: Any) -> None:
    port = mesh.serve("orders", ORDERS)
    channel = mesh.channel(port, "orders", mesh.identity("gateway"))
    user = _user_token_filling(mesh, DEFAULT_MAX_SIZE)
    call = channel.unary_unary(UNARY)
    failures = 0
    with mesh.as_user_call("gateway", user):
        for _ in range(200):
            try:
                assert decode(call(b"x", metadata=EXTRA, timeout=10))["chain"] == ["gateway"]
            except grpc.RpcError:
                failures += 1
    assert failures == 0


def test_the_same_metadata_on_grpc_defaults_is_refused(mesh: Any) -> None:
    """Control: what the limits above prevent. A plain server with gRPC's default limits
    refuses this header block (sometimes at random, here nearly always)."""
    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers([sync_handlers()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        token = mesh.wrap(_user_token_filling(mesh, DEFAULT_MAX_SIZE), "gateway", "orders")
        md = [("authorization", "Bearer " + token), *EXTRA]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as plain:
            codes = []
            for _ in range(50):
                try:
                    plain.unary_unary(UNARY)(b"x", metadata=md, timeout=10)
                except grpc.RpcError as err:
                    codes.append(err.code())
        assert codes and set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    finally:
        server.stop(None)


def test_limits_follow_the_token_limit_and_cannot_be_lowered() -> None:
    soft, hard = metadata_limits(DEFAULT_MAX_SIZE)
    assert soft >= DEFAULT_MAX_SIZE + 4096 and hard > soft
    opts = dict(server_options([("grpc.max_metadata_size", 4096), ("grpc.foo", 1)]))
    assert opts["grpc.max_metadata_size"] == soft and opts["grpc.foo"] == 1
    assert dict(server_options(max_token_size=64 * 1024))["grpc.max_metadata_size"] > 64 * 1024
    assert dict(channel_options())["grpc.enable_http_proxy"] == 0
    assert "grpc.enable_http_proxy" not in dict(channel_options(proxy=True))


class _FakeProxy:
    """A TCP listener standing in for an HTTP proxy: it records who connected, answers
    nothing, and closes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.mark.parametrize("var", ["https_proxy", "grpc_proxy"])
def test_mesh_channels_ignore_a_proxy_in_the_environment(
        mesh: Any, monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    port = mesh.serve("orders", Policy([Rule(methods=("*",), peers=("*",),
                                             require_user=False)]))
    proxy = _FakeProxy()
    try:
        monkeypatch.setenv(var, proxy.url)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        gateway = mesh.identity("gateway")
        channel = mesh.channel(port, "orders", gateway)
        for _ in range(20):
            assert decode(channel.unary_unary(UNARY)(b"x", timeout=10))["kind"] == "service"
        assert proxy.connections == 0
        # control: asked to use the proxy, the channel goes there (and fails: it is no proxy)
        via_proxy = mesh.channel(port, "orders", gateway, proxy=True)
        with pytest.raises(grpc.RpcError):
            via_proxy.unary_unary(UNARY)(b"x", timeout=5)
        assert proxy.connections > 0
    finally:
        proxy.close()
