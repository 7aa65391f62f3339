"""A user token inside the verifier's clock-skew leeway is accepted for the call at hand, but
cannot be carried to another service: the hop that must call on refuses it as
UNAUTHENTICATED / TOKEN_EXPIRED (spec 4.4), never INTERNAL, and logs no error."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest
from support.minimesh import UNARY, decode

from mesh.dpop import DpopClient
from mesh.policy import Policy, Rule
from mesh.transport.status import error_info

EDGE = Policy([Rule(methods=("*",), peers=("*",))])
ORDERS = Policy([Rule(methods=("*",), chains=(("gateway",),))])


def _gateway_calling_orders(mesh: Any) -> int:
    orders_port = mesh.serve("orders", ORDERS)
    gateway = mesh.identity("gateway")
    orders = mesh.channel(orders_port, "orders", gateway)

    def forward(request: bytes) -> bytes:
        return orders.unary_unary(UNARY)(request, timeout=10)  # type: ignore[no-any-return]

    return mesh.serve("gateway", EDGE, edge=True, source=gateway, forward=forward)


def _user_token(mesh: Any, expired_ago: int, key: DpopClient) -> str:
    now = int(mesh.clock.now)
    return mesh.forge_user(mesh.user_claims(iat=now - 600, exp=now - expired_ago,
                                            cnf={"jkt": key.jkt}))


def test_a_token_inside_the_leeway_is_not_carried_on(
        mesh: Any, caplog: pytest.LogCaptureFixture) -> None:
    port = _gateway_calling_orders(mesh)
    key = DpopClient()
    client = mesh.dpop_channel(port, "gateway", key)  # a fresh proof on every call
    call = client.unary_unary(UNARY)

    def dpop(token: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", "DPoP " + token),)

    # control: a live token goes through both hops
    fresh = dpop(mesh.bound_user_token(key, "gateway"))
    assert decode(call(b"x", metadata=fresh, timeout=10))["downstream"]["chain"] == ["gateway"]
    caplog.set_level(logging.INFO)
    late = dpop(_user_token(mesh, 15, key))  # leeway is 30 s
    with pytest.raises(grpc.RpcError) as info:
        call(b"x", metadata=late, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(info.value).reason == "TOKEN_EXPIRED"
    assert "cannot be carried to another service" in (info.value.details() or "")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # and past the leeway the edge itself refuses, with the same status and reason
    gone = dpop(_user_token(mesh, 45, key))
    with pytest.raises(grpc.RpcError) as info:
        call(b"x", metadata=gone, timeout=10)
    assert (info.value.code(), error_info(info.value).reason) == (
        grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED")
    client.close()
