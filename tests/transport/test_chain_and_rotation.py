"""End to end: a three-service chain, certificate rotation under traffic, bundle updates."""

from __future__ import annotations

import json
import shutil
import threading
import time
from typing import Any

import grpc
import pytest

from mesh.dpop import DpopClient
from mesh.identity.bundle import FileBundleSource
from mesh.policy import Policy, Rule
from mesh.transport.status import error_info

UNARY = "/test.v1.Echo/Unary"


def test_three_service_chain_innermost_sees_user_and_full_chain(mesh: Any) -> None:
    """outside -> gateway (edge port) -> orders -> payments, each a real server."""
    payments_port = mesh.serve("payments", Policy([Rule(
        methods=("*",), chains=(("gateway", "orders"),), scopes=("pay",))]))
    orders_id = mesh.identity("orders")
    to_payments = mesh.channel(payments_port, "payments", orders_id, require_user=True)
    orders_port = mesh.serve(
        "orders", Policy([Rule(methods=("*",), chains=(("gateway",),))]), source=orders_id,
        forward=lambda req: to_payments.unary_unary(UNARY)(req, timeout=5))
    gateway_id = mesh.identity("gateway")
    to_orders = mesh.channel(orders_port, "orders", gateway_id)
    gateway_port = mesh.serve(
        "gateway", Policy([Rule(methods=("*",), peers=("*",))]), source=gateway_id, edge=True,
        forward=lambda req: to_orders.unary_unary(UNARY)(req, timeout=5))

    client = DpopClient()
    token = mesh.bound_user_token(client, sub="alice", aud="gateway", scope="pay",
                                  roles=["buyer"])
    outside = mesh.dpop_channel(gateway_port, "gateway", client, token)
    reply = json.loads(outside.unary_unary(UNARY)(b"x", timeout=10))
    assert (reply["user"], reply["chain"], reply["peer"]) == ("alice", [], None)
    mid = reply["downstream"]
    assert (mid["user"], mid["chain"]) == ("alice", ["gateway"])
    inner = mid["downstream"]
    assert inner["user"] == "alice" and inner["scope"] == "pay"
    assert inner["chain"] == ["gateway", "orders"]
    assert inner["peer"] == "spiffe://mesh.internal/svc/orders"
    # the DPoP binding travels inside the chain: every hop sees the key the user holds
    assert reply["jkt"] == mid["jkt"] == inner["jkt"] == client.jkt

    # negative control: the same user without the scope is stopped at payments, and the
    # refusal travels back up as the handler's error
    weak = mesh.bound_user_token(client, sub="mallory", aud="gateway", scope="browse")
    with pytest.raises(grpc.RpcError) as exc:
        mesh.dpop_channel(gateway_port, "gateway", client, weak).unary_unary(UNARY)(
            b"x", timeout=10)
    assert exc.value.code() == grpc.StatusCode.UNKNOWN  # raised inside gateway's handler
    outside.close()


def test_rotation_under_continuous_traffic_has_zero_failed_calls(mesh: Any) -> None:
    orders_id = mesh.identity("orders", poll=0.02).start()  # a server polls in the background
    port = mesh.serve("orders", Policy([Rule(methods=("*",), peers=("gateway",),
                                            require_user=False)]), source=orders_id)
    gateway_id = mesh.identity("gateway", poll=0.02)
    channel = mesh.channel(port, "orders", gateway_id)
    call = channel.unary_unary(UNARY)
    failures: list[BaseException] = []
    done = 0
    stop = threading.Event()

    def traffic() -> None:
        nonlocal done
        while not stop.is_set():
            try:
                call(b"x", timeout=10)
                done += 1
            except grpc.RpcError as err:  # pragma: no cover - what the test looks for
                failures.append(err)

    workers = [threading.Thread(target=traffic) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        thumbs = {gateway_id.current().thumbprint}
        for round_ in range(1, 4):
            before = done
            mesh.rotate("gateway")
            mesh.rotate("orders")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and (
                gateway_id.current().thumbprint in thumbs or done < before + 50
                or orders_id.current().generation < round_
            ):
                time.sleep(0.02)
            thumbs.add(gateway_id.current().thumbprint)
    finally:
        stop.set()
        for w in workers:
            w.join(10)
        orders_id.stop()
    assert failures == []
    assert len(thumbs) == 4 and channel.generation == 3 and orders_id.current().generation == 3
    # calls after the last rotation ran on a new connection with the new certificates
    seen = json.loads(call(b"x", timeout=5))
    assert seen["peer"] == "spiffe://mesh.internal/svc/gateway" and done > 150


def test_bundle_update_is_picked_up_without_restart(mesh: Any) -> None:
    """A service issued after its callee started is trusted at once (its key reaches the
    callee's bundle); a replica whose bundle never reloads is the negative control."""
    from mesh.tokens.signer import TokenSigner
    from mesh.tokens.verify import ChainVerifier
    from mesh.transport.context import enter_call, leave_call

    rule = Policy([Rule(methods=("*",), chains=(("gateway", "orders"),))])
    # the control reads a copy of today's bundle that nobody will update
    copy = mesh.root / "frozen"
    copy.mkdir()
    shutil.copy(mesh.ca.bundle_path, copy / "bundle.spiffe.json")
    shutil.copy(mesh.ca.crl_path, copy / "crl.pem")
    frozen = FileBundleSource(copy / "bundle.spiffe.json", copy / "crl.pem")
    fresh_port = mesh.serve("payments", rule)
    stale_port = mesh.serve("payments", rule, bundle=frozen)
    orders_id = mesh.identity("orders")
    to_fresh = mesh.channel(fresh_port, "payments", orders_id)
    to_stale = mesh.channel(stale_port, "payments", orders_id)

    # gateway joins the mesh only now, after both payments servers started
    gateway = mesh.ca.issue("gateway")
    hop1 = TokenSigner(gateway.private_key, gateway.chain).app_asserted_token(
        mesh.user_token(sub="alice", aud="gateway"), aud=mesh.td.service("orders"))
    # act as orders handling gateway's call (exactly what its server interceptor does)
    chain = ChainVerifier(mesh.td.service("orders"), mesh.trust).verify(hop1, gateway.certificate)
    handle = enter_call(chain)
    try:
        seen = json.loads(to_fresh.unary_unary(UNARY)(b"x", timeout=5))
        with pytest.raises(grpc.RpcError) as exc:
            to_stale.unary_unary(UNARY)(b"x", timeout=5)
    finally:
        leave_call(handle)
    assert (seen["user"], seen["chain"]) == ("alice", ["gateway", "orders"])
    info = error_info(exc.value)
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert info is not None and info.reason == "KEY_UNKNOWN"
