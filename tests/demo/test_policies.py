"""The demo services' policy files, decided against the calls the story makes (and attacks)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from mesh.demo.services import SERVICES, load_service_policy, policy_path
from mesh.identity.spiffeid import SpiffeId, TrustDomain
from mesh.policy import (
    ALLOWED,
    CHAIN_NOT_ALLOWED,
    NO_POLICY_RULE,
    PEER_NOT_ALLOWED,
    SCOPE_MISSING,
    USER_REQUIRED,
)

TD = TrustDomain("mesh.internal")
PKG = "/mesh.demo.v1."


@dataclass(frozen=True)
class Call:
    """The facts a policy reads of a verified call (mesh.policy.CallFacts)."""

    peer: SpiffeId | None
    chain: tuple[SpiffeId, ...]
    user: str | None = None
    kind: str = "user"
    user_claims: Mapping[str, Any] = field(default_factory=dict)


def svc(*names: str) -> tuple[SpiffeId, ...]:
    return tuple(TD.service(n) for n in names)


WRITER = {"sub": "alice", "scope": "orders:read orders:write"}
READER = {"sub": "bob", "scope": "orders:read"}


def user_call(*chain: str, claims: Mapping[str, Any] = WRITER) -> Call:
    ids = svc(*chain)
    return Call(peer=ids[-1] if ids else None, chain=ids, user=str(claims["sub"]),
                user_claims=claims)


def app_call(name: str) -> Call:
    (sid,) = svc(name)
    return Call(peer=sid, chain=(sid,), user=None, kind="service")


CASES = [
    # (service, method, call, expected reason)
    ("gateway", "GatewayService/PlaceOrder", user_call(), ALLOWED),
    ("gateway", "GatewayService/PlaceOrder", user_call(claims=READER), ALLOWED),
    ("gateway", "GatewayService/ListOrders", user_call(claims=READER), ALLOWED),
    ("gateway", "GatewayService/ListOrders", user_call(claims={"sub": "eve"}), SCOPE_MISSING),
    ("gateway", "GatewayService/Unknown", user_call(), NO_POLICY_RULE),
    ("orders", "OrdersService/CreateOrder", user_call("gateway"), ALLOWED),
    ("orders", "OrdersService/ListOrders", user_call("gateway"), ALLOWED),
    ("orders", "OrdersService/CreateOrder", user_call("reporting"), CHAIN_NOT_ALLOWED),
    ("orders", "OrdersService/CreateOrder", app_call("gateway"), USER_REQUIRED),
    ("inventory", "InventoryService/Reserve", user_call("gateway", "orders"), ALLOWED),
    ("inventory", "InventoryService/ReserveMany", user_call("gateway", "orders"), ALLOWED),
    ("inventory", "InventoryService/Release", user_call("gateway", "orders"), ALLOWED),
    ("inventory", "InventoryService/Release", user_call("gateway"), CHAIN_NOT_ALLOWED),
    ("inventory", "InventoryService/Release", app_call("reporting"), CHAIN_NOT_ALLOWED),
    # the story's attacks: skipping orders, a user without the scope, a replayed chain
    ("inventory", "InventoryService/Reserve", user_call("gateway"), CHAIN_NOT_ALLOWED),
    ("inventory", "InventoryService/Reserve", user_call("gateway", "orders", claims=READER),
     SCOPE_MISSING),
    ("inventory", "InventoryService/ReserveMany", user_call("gateway", "orders", claims=READER),
     SCOPE_MISSING),
    ("inventory", "InventoryService/Reserve", app_call("orders"), CHAIN_NOT_ALLOWED),
    ("inventory", "InventoryService/Stock", app_call("reporting"), ALLOWED),
    ("inventory", "InventoryService/Stock", app_call("orders"), PEER_NOT_ALLOWED),
    ("inventory", "InventoryService/Stock", user_call("gateway"), PEER_NOT_ALLOWED),
    ("payments", "PaymentsService/Charge", user_call("gateway", "orders"), ALLOWED),
    ("payments", "PaymentsService/Charge", user_call("orders"), CHAIN_NOT_ALLOWED),
    ("payments", "PaymentsService/Charge", app_call("orders"), CHAIN_NOT_ALLOWED),
    ("payments", "PaymentsService/Charge", user_call("gateway"), PEER_NOT_ALLOWED),
    ("payments", "PaymentsService/Charge", user_call("gateway", "inventory"), PEER_NOT_ALLOWED),
    ("auth", "AuthService/Login", user_call("gateway"), NO_POLICY_RULE),
    ("reporting", "InventoryService/Stock", app_call("reporting"), NO_POLICY_RULE),
]


@pytest.mark.parametrize(("service", "method", "call", "reason"), CASES,
                         ids=[f"{c[0]}-{c[1].split('/')[1]}-{c[3]}-{i}"
                              for i, c in enumerate(CASES)])
def test_policy_decides(service: str, method: str, call: Call, reason: str) -> None:
    decision = load_service_policy(service, TD).decide(PKG + method, call)
    assert decision.reason == reason, decision.message
    assert decision.allowed is (reason == ALLOWED)


def test_every_method_of_every_served_proto_has_a_rule() -> None:
    from mesh.demo.v1 import gateway_pb2, inventory_pb2, orders_pb2, payments_pb2

    for service, module in [("gateway", gateway_pb2), ("orders", orders_pb2),
                            ("inventory", inventory_pb2), ("payments", payments_pb2)]:
        policy = load_service_policy(service, TD)
        for svc_desc in module.DESCRIPTOR.services_by_name.values():
            for method in svc_desc.methods:
                name = f"/{svc_desc.full_name}/{method.name}"
                assert policy.rule_for(name) is not None, f"{service} has no rule for {name}"


def test_only_gateway_orders_inventory_payments_ship_a_file() -> None:
    assert [s for s in SERVICES if policy_path(s)] == ["gateway", "orders", "inventory",
                                                       "payments"]


def test_files_name_services_of_the_given_trust_domain() -> None:
    other = TrustDomain("other.example")
    decision = load_service_policy("payments", other).decide(
        PKG + "PaymentsService/Charge", user_call("gateway", "orders")
    )
    assert decision.reason == PEER_NOT_ALLOWED
