"""mesh.Workload.from_workload_api: a service that gets its identity from a real node agent's
socket (the agent renewing through the real CA service), serves and makes calls, and follows
rotations of its own SVID and of its peers' without a restart."""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from support.caservice import AgentThread, RunningCA, agent_config, short_dir, wait_for
from support.minimesh import SERVICE, UNARY

import mesh as meshid
from mesh.errors import ConfigError
from mesh.policy import Policy, Rule
from mesh.transport.context import current_call

TD = "spiffe://mesh.internal"


def _handlers() -> grpc.GenericRpcHandler:
    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        call = current_call()
        assert call is not None
        # hop 0 is signed with the key of the certificate the caller presented
        return json.dumps({"peer": str(call.peer), "kid": call.hops[0].kid}).encode()

    return grpc.method_handlers_generic_handler(
        SERVICE, {"Unary": grpc.unary_unary_rpc_method_handler(unary)})


@pytest.fixture
def node(ca_factory: Any) -> Iterator[tuple[RunningCA, AgentThread]]:
    ca = RunningCA(ca_factory(intermediate=True)).start()
    uid = os.geteuid()
    ca.register("node-a", "orders", uid=uid, ttl=8)
    ca.register("node-a", "gateway", uid=uid, ttl=8)
    base = short_dir("wl-")
    agent = AgentThread(agent_config(ca, "node-a", base, join_token=ca.join_token("node-a")))
    running = agent.wait_ready()
    wait_for(lambda: {"orders", "gateway"} <= set(running.store.svids), what="both SVIDs")
    yield ca, agent
    agent.stop()
    ca.stop()


class Rotations:
    """Every SVID ``workload`` rotated to (its source's events), to wait on."""

    def __init__(self, workload: meshid.Workload) -> None:
        self.leaves: list[x509.Certificate] = []
        self._changed = threading.Condition()
        workload.svid_source.subscribe(self._on_rotation)

    def _on_rotation(self, svid: Any) -> None:
        with self._changed:
            self.leaves.append(svid.leaf)
            self._changed.notify_all()

    def wait(self, n: int, timeout: float = 20) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.leaves) >= n, timeout)


def _served_leaf(address: str, client: meshid.Workload, tmp: Path) -> x509.Certificate:
    """The certificate a mesh server presents to a new connection (TLS with ``client``'s
    SVID, verifying nothing: only reading)."""
    svid = client.svid_source.current()
    (tmp / "c.pem").write_bytes(svid.chain_pem)
    (tmp / "k.pem").write_bytes(svid.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    ctx.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_a_service_from_the_agent_socket_serves_and_follows_rotations(node, tmp_path) -> None:
    _, agent = node
    sock = agent.config.socket
    orders = meshid.Workload.from_workload_api(sock, spiffe_id=f"{TD}/svc/orders")
    gateway = meshid.Workload.from_workload_api(f"unix://{sock}",
                                                spiffe_id=f"{TD}/svc/gateway")
    try:
        assert str(orders.spiffe_id) == f"{TD}/svc/orders"
        assert orders.bundle_source.checks_revocation  # the agent sends the CA's CRL
        orders_rotated, gateway_rotated = Rotations(orders), Rotations(gateway)
        server = orders.server(Policy([Rule(methods=("*",), peers=("gateway",),
                                            require_user=False)], trust_domain=orders.trust_domain))
        server.add_generic_rpc_handlers([_handlers()])
        address = f"127.0.0.1:{server.add_port('127.0.0.1:0')}"
        server.start()
        calls: list[dict[str, Any] | str] = []
        stop = threading.Event()

        def caller() -> None:
            with gateway.channel("orders", address) as channel:
                while not stop.wait(0.05):
                    try:
                        calls.append(json.loads(channel.unary_unary(UNARY)(b"x", timeout=10)))
                    except grpc.RpcError as err:
                        # (with what the server's bundle held then, to diagnose a failure)
                        calls.append(f"{err.code().name}: {err.details()} [server bundle: "
                                     f"{len(orders.bundle_source.keys())} keys]")

        thread = threading.Thread(target=caller)
        thread.start()
        try:
            first_served = _served_leaf(address, gateway, tmp_path)
            assert first_served == orders.svid_source.current().leaf
            # SVIDs live 8 s: each side rotates at 3.2-4 s; wait for two rotations of each
            assert orders_rotated.wait(2) and gateway_rotated.wait(2), "no rotation came through"
            n = len(calls)
            wait_for(lambda: len(calls) > n + 3, what="calls after the rotations")
            # a new connection gets the server's rotated certificate, with no restart
            assert _served_leaf(address, gateway, tmp_path) in orders_rotated.leaves
        finally:
            stop.set()
            thread.join(30)
            server.stop(None)
        failures = [c for c in calls if isinstance(c, str)]
        assert failures == [], (len(failures), len(calls), failures[:2])
        kids = [c["kid"] for c in calls if isinstance(c, dict)]
        assert {c["peer"] for c in calls if isinstance(c, dict)} == {f"{TD}/svc/gateway"}
        # the caller's rotated certificates were the ones presented: at least three in turn,
        # the last being its current one
        assert len(set(kids)) >= 3 and kids[-1] == gateway.svid_source.current().thumbprint
    finally:
        orders.close()
        gateway.close()


def test_nothing_usable_on_the_socket_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"gave no usable SVID and bundle within 0\.5 s"):
        meshid.Workload.from_workload_api(tmp_path / "nobody.sock", timeout=0.5)
    with pytest.raises(ConfigError, match="absolute Unix socket path"):
        meshid.Workload.from_workload_api("relative.sock")


def test_the_socket_may_come_from_the_environment(node, monkeypatch) -> None:
    _, agent = node
    monkeypatch.setenv("SPIFFE_ENDPOINT_SOCKET", f"unix://{agent.config.socket}")
    with meshid.Workload.from_workload_api(spiffe_id=f"{TD}/svc/gateway") as gateway:
        assert str(gateway.spiffe_id) == f"{TD}/svc/gateway"
    with meshid.Workload.from_workload_api() as default:  # the agent's first: by name
        assert str(default.spiffe_id) == f"{TD}/svc/gateway"
