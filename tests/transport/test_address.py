"""Addresses without a port are refused everywhere one is taken (gRPC would quietly use 443):
the server's add_port, the channel's target, the demo service's --listen, --edge-listen and
--peer. Each refusal has its control: the same address with its port works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.minimesh import allow_all

from mesh.transport.address import AddressError, dial_address, listen_address, split_host_port
from mesh.transport.channel import MeshChannel
from mesh.transport.server import MeshServer

NO_PORT = ["0.0.0.0", "localhost", "10.0.0.7", "::1", "[::1]", "host:", "host:http",
           "host:65536", "host:-1", ":8443", "[::1:8443", "host:²", "host:\u0661"]


@pytest.mark.parametrize("address", NO_PORT)
def test_an_address_without_a_usable_port_is_refused(address: str) -> None:
    with pytest.raises(AddressError) as info:
        listen_address(address)
    assert repr(address) in str(info.value)


@pytest.mark.parametrize(("address", "host", "port"), [
    ("0.0.0.0:0", "0.0.0.0", 0), ("127.0.0.1:8443", "127.0.0.1", 8443),
    ("[::]:8443", "[::]", 8443), ("orders.svc.mesh.internal:65535", "orders.svc.mesh.internal",
                                  65535)])
def test_host_and_port(address: str, host: str, port: int) -> None:
    assert split_host_port(address) == (host, port)
    assert listen_address(address) == address


def test_schemes_pass_to_grpc_and_port_0_is_for_listening_only() -> None:
    for target in ("unix:/run/orders.sock", "dns:///orders:8443", "ipv4:10.0.0.7:8443"):
        assert dial_address(target) == target == listen_address(target)
    with pytest.raises(AddressError, match="port 0"):
        dial_address("127.0.0.1:0")


@given(st.text(max_size=30))
def test_the_parser_accepts_only_host_colon_port(text: str) -> None:
    try:
        host, port = split_host_port(text)
    except AddressError:
        return
    assert 0 <= port <= 65535 and host
    assert text == f"{host}:{text.rsplit(':', 1)[1]}" and int(text.rsplit(":", 1)[1]) == port


def test_a_mesh_server_refuses_to_bind_an_address_without_a_port(mesh: Any) -> None:
    server = MeshServer(mesh.identity("orders"), allow_all(), mesh.trust)
    try:
        with pytest.raises(AddressError, match=r"'0\.0\.0\.0' has no port"):
            server.add_port("0.0.0.0")  # gRPC alone would bind 443
        assert server.add_port("127.0.0.1:0") > 0  # control
    finally:
        server.stop(None)


def test_a_mesh_channel_refuses_a_target_without_a_port(mesh: Any) -> None:
    source = mesh.identity("gateway")
    with pytest.raises(AddressError, match=r"'10\.0\.0\.7' has no port"):
        MeshChannel("10.0.0.7", "orders", source)
    MeshChannel("10.0.0.7:8443", "orders", source).close()  # control


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--listen", "--edge-listen", "--peer"])
def test_the_demo_service_refuses_an_address_without_a_port(
    mesh: Any, tmp_path: Path, flag: str
) -> None:
    identity = mesh.folder("gateway")
    mesh.identity("gateway")
    argv = {"--listen": ["0.0.0.0"], "--edge-listen": ["0.0.0.0"],
            "--peer": ["orders=10.0.0.7"]}
    args = {"--listen": "127.0.0.1:0", "--edge-listen": "127.0.0.1:0", "--peer": "orders=x:1"}
    args[flag] = argv[flag][0]
    res = subprocess.run(
        [sys.executable, "-m", "mesh.demo", "gateway", "--identity", str(identity),
         "--bundle", str(mesh.ca.bundle_path), "--crl", str(mesh.ca.crl_path),
         *[part for name, value in args.items() for part in (name, value)]],
        capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1
    assert "has no port" in res.stderr
