"""The demo servicers on a real in-process mesh: who they act for, and how each failure reaches
the caller (status, ErrorInfo reason, the refusing service)."""

from __future__ import annotations

import grpc
import pytest

from mesh.demo.client import stubs as client
from mesh.demo.logic.auth import LoginService
from mesh.demo.logic.users import UserStore, new_user, write_users_file
from mesh.demo.services import auth as auth_svc
from mesh.demo.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    inventory_pb2,
    inventory_pb2_grpc,
    orders_pb2,
    orders_pb2_grpc,
    payments_pb2,
    payments_pb2_grpc,
)
from mesh.dpop import DpopClient
from mesh.policy import Policy
from mesh.tokens.errors import AudienceMismatch
from mesh.tokens.jose import decode_unverified
from mesh.transport.server import MeshServer

WRITER = "orders:read orders:write"


def _failure(call) -> client.Failure:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        call()
    return client.failure_of(err.value)


def _gateway(mesh):  # type: ignore[no-untyped-def]
    return client.edge_channel(mesh.address("gateway"), mesh.roots_pem, "gateway", mesh.td,
                               mesh.key)


def test_an_order_is_made_for_the_chain_user(inproc_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = inproc_mesh
    with _gateway(mesh) as gw:
        token = mesh.user_token("alice", WRITER)
        order = client.place_order(gw, token, [("mug", 2), ("sencha", 1)])
        listed = client.list_orders(gw, token)
    assert order.user == "alice" and len(order.reservation_ids) == 2
    charge = mesh.payments.charges_for("alice")[0]
    assert (charge.payment_id, charge.amount_cents) == (order.payment_id, order.total_cents)
    assert [o.order_id for o in listed] == [order.order_id]
    assert [s.reserved for s in mesh.inventory.stock(["mug", "sencha"])] == [2, 1]


def test_each_user_sees_only_their_orders(inproc_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = inproc_mesh
    with _gateway(mesh) as gw:
        client.place_order(gw, mesh.user_token("alice", WRITER), [("mug", 1)])
        carol = mesh.user_token("carol", WRITER)
        assert client.list_orders(gw, carol) == []
        client.place_order(gw, carol, [("mug", 1)])
        assert [o.user for o in client.list_orders(gw, carol)] == ["carol"]


@pytest.mark.parametrize(
    ("lines", "code", "reason", "service", "prefix"),
    [
        ([("grinder", 4)], "FAILED_PRECONDITION", "OUT_OF_STOCK", "inventory",
         "orders refused: inventory refused: only 3 of 'grinder' available, 4 asked"),
        ([("piano", 1)], "NOT_FOUND", "UNKNOWN_SKU", "orders",
         "orders refused: SKU 'piano' is not in the catalog"),
        ([("mug", 0)], "INVALID_ARGUMENT", "INVALID_REQUEST", "orders",
         "orders refused: quantity for 'mug' must be between 1 and 100"),
        ([], "INVALID_ARGUMENT", "INVALID_REQUEST", "orders",
         "orders refused: an order needs at least one line"),
    ],
)
def test_business_failures_reach_the_user_with_reason_and_place(  # type: ignore[no-untyped-def]
    inproc_mesh, lines, code: str, reason: str, service: str, prefix: str
) -> None:
    mesh = inproc_mesh
    with _gateway(mesh) as gw:
        failure = _failure(lambda: client.place_order(gw, mesh.user_token("alice", WRITER),
                                                      lines))
    assert (failure.code, failure.reason) == (code, reason)
    assert failure.service == str(mesh.td.service(service))
    assert failure.message.startswith(prefix)
    assert mesh.payments.charges_for("alice") == []
    assert mesh.store.count() == 0


def test_scope_is_enforced_two_hops_behind_the_edge(inproc_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = inproc_mesh
    with _gateway(mesh) as gw:
        reader = mesh.user_token("bob", "orders:read")
        failure = _failure(lambda: client.place_order(gw, reader, [("mug", 1), ("sencha", 1)]))
        assert client.list_orders(gw, reader) == []  # reading is allowed
    assert failure.summary() == "PERMISSION_DENIED SCOPE_MISSING at inventory"
    assert mesh.inventory.stock(["mug"])[0].reserved == 0


def _chain_token(mesh, callee: str, user: str = "alice", scope: str = WRITER) -> str:  # type: ignore[no-untyped-def]
    """What orders sends to ``callee`` for a user who came through the gateway."""
    hop1 = mesh.signer("gateway").app_asserted_token(mesh.user_token(user, scope),
                                                     mesh.td.service("orders"))
    return mesh.signer("orders").app_asserted_token(hop1, mesh.td.service(callee))


def test_reserve_many_streams_and_bounds_its_lines(inproc_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = inproc_mesh
    token = _chain_token(mesh, "inventory")
    meta = (("authorization", f"Bearer {token}"),)
    with mesh.raw_channel("inventory", "orders") as ch:
        stub = inventory_pb2_grpc.InventoryServiceStub(ch)  # type: ignore[no-untyped-call]
        made = stub.ReserveMany(iter([
            inventory_pb2.ReserveRequest(order_ref="o1", sku="mug", quantity=1),
            inventory_pb2.ReserveRequest(order_ref="o1", sku="sencha", quantity=2),
        ]), metadata=meta, timeout=10)
        assert [(r.sku, r.quantity) for r in made.reservations] == [("mug", 1), ("sencha", 2)]
        too_many = (inventory_pb2.ReserveRequest(order_ref="o2", sku="mug", quantity=1)
                    for _ in range(51))
        failure = _failure(lambda: stub.ReserveMany(too_many, metadata=meta, timeout=10))
    assert failure.summary() == "INVALID_ARGUMENT INVALID_REQUEST at inventory"
    assert mesh.inventory.stock(["mug"])[0].reserved == 1


def test_payments_charges_the_chain_user_not_a_request_field(inproc_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = inproc_mesh
    meta = (("authorization", f"Bearer {_chain_token(mesh, 'payments', user='dave')}"),)
    with mesh.raw_channel("payments", "orders") as ch:
        stub = payments_pb2_grpc.PaymentsServiceStub(ch)  # type: ignore[no-untyped-call]
        charged = stub.Charge(payments_pb2.ChargeRequest(order_ref="o9", amount_cents=900,
                                                         currency="EUR"),
                              metadata=meta, timeout=10)
        assert charged.user == "dave"
        over = _failure(lambda: stub.Charge(payments_pb2.ChargeRequest(
            order_ref="o10", amount_cents=10**7, currency="EUR"), metadata=meta, timeout=10))
    assert over.summary() == "FAILED_PRECONDITION PAYMENT_REFUSED at payments"
    assert [c.order_ref for c in mesh.payments.charges_for("dave")] == ["o9"]


def test_stock_is_for_reporting_alone(inproc_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = inproc_mesh
    for caller, expected in (("reporting", None),
                             ("orders", "PERMISSION_DENIED PEER_NOT_ALLOWED at inventory")):
        token = mesh.signer(caller).app_token(mesh.td.service("inventory"))
        with mesh.raw_channel("inventory", caller) as ch:
            stub = inventory_pb2_grpc.InventoryServiceStub(ch)  # type: ignore[no-untyped-call]
            call = lambda stub=stub, token=token: stub.Stock(  # noqa: E731
                inventory_pb2.StockRequest(skus=["grinder"]),
                metadata=(("authorization", f"Bearer {token}"),), timeout=10)
            if expected is None:
                assert [(lv.sku, lv.available) for lv in call().levels] == [("grinder", 3)]
            else:
                assert _failure(call).summary() == expected


def test_orders_refuses_a_call_that_did_not_come_through_the_gateway(inproc_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = inproc_mesh
    # reporting cannot even wrap alice's token: it was not addressed to reporting.
    with pytest.raises(AudienceMismatch, match="not addressed to this service"):
        mesh.signer("reporting").app_asserted_token(mesh.user_token("alice", WRITER),
                                                    mesh.td.service("orders"))
    app = mesh.signer("reporting").app_token(mesh.td.service("orders"))
    with mesh.raw_channel("orders", "reporting") as ch:
        stub = orders_pb2_grpc.OrdersServiceStub(ch)  # type: ignore[no-untyped-call]
        failure = _failure(lambda: stub.CreateOrder(
            orders_pb2.CreateOrderRequest(lines=[orders_pb2.OrderLine(sku="mug", quantity=1)]),
            metadata=(("authorization", f"Bearer {app}"),), timeout=10))
    assert failure.summary() == "PERMISSION_DENIED CHAIN_NOT_ALLOWED at orders"


def test_an_unreachable_hop_is_named_without_internal_addresses(inproc_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = inproc_mesh
    mesh.servers["payments"].stop(None).wait()
    with _gateway(mesh) as gw:
        failure = _failure(lambda: client.place_order(gw, mesh.user_token("alice", WRITER),
                                                      [("mug", 1)]))
    assert failure.summary() == "UNAVAILABLE DOWNSTREAM_FAILED at orders"
    assert failure.message.startswith("orders refused: payments could not be reached")
    assert "127.0.0.1" not in failure.message and str(mesh.ports["payments"]) not in (
        failure.message)
    assert mesh.store.count() == 0
    # the reservation made before the charge failed was given back
    assert mesh.inventory.stock(["mug"])[0].reserved == 0


def test_login_proves_a_key_and_binds_the_token_to_it(inproc_mesh, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """auth's Login at its edge port: no proof, a replayed proof or a proof for another method
    is refused for its DPoP reason before the password is looked at; with a fresh proof the
    token is bound to the key that made it, and the gateway accepts it only from that key."""
    mesh = inproc_mesh
    users = tmp_path / "users.json"
    write_users_file(users, [new_user("alice", "pw", scope=["orders:read", "orders:write"],
                                      n=2**10)])
    td = mesh.td
    server = MeshServer(mesh.sources["auth"], Policy.deny_all(trust_domain=td),
                        mesh.trust, edge=True,
                        tokenless_methods=[auth_svc.LOGIN], max_workers=2)
    assert server.dpop is not None
    logins = LoginService(UserStore.load(users), mesh.signer("auth"), [td.service("gateway")])
    auth_svc.register(server, auth_svc.make_servicer(td.service("auth"), logins, server.dpop))
    port = server.add_port("127.0.0.1:0")
    server.start()
    address = f"127.0.0.1:{port}"
    key = DpopClient()
    try:
        with client.edge_channel(address, mesh.roots_pem, "auth", td) as bare:
            assert _failure(lambda: client.login(bare, "alice", "pw")).summary() == (
                "UNAUTHENTICATED DPOP_MISSING at auth")
            stub_metadata = key.metadata(td.service("auth"), auth_svc.LOGIN)
            stub = auth_pb2_grpc.AuthServiceStub(bare)  # type: ignore[no-untyped-call]
            request = auth_pb2.LoginRequest(username="alice", password="pw")
            stub.Login(request, metadata=stub_metadata, timeout=10)
            assert _failure(lambda: stub.Login(request, metadata=stub_metadata,
                                               timeout=10)).summary() == (
                "UNAUTHENTICATED DPOP_REPLAYED at auth")
            wrong = key.metadata(td.service("gateway"), auth_svc.LOGIN)
            assert _failure(lambda: stub.Login(request, metadata=wrong, timeout=10)).reason == (
                "DPOP_HTU_MISMATCH")
            # a bad password with a good proof: the password's own refusal
            assert _failure(lambda: stub.Login(
                auth_pb2.LoginRequest(username="alice", password="no"),
                metadata=key.metadata(td.service("auth"), auth_svc.LOGIN),
                timeout=10)).summary() == "UNAUTHENTICATED INVALID_CREDENTIALS at auth"
        with client.edge_channel(address, mesh.roots_pem, "auth", td, key) as channel:
            token = client.login(channel, "alice", "pw").token
        claims = decode_unverified(token).claims or {}
        assert claims["cnf"] == {"jkt": key.jkt}
        with client.edge_channel(mesh.address("gateway"), mesh.roots_pem, "gateway", td,
                                 key) as gw:
            assert client.list_orders(gw, token) == []
        with client.edge_channel(mesh.address("gateway"), mesh.roots_pem, "gateway", td,
                                 DpopClient()) as thief:
            assert _failure(lambda: client.list_orders(thief, token)).summary() == (
                "UNAUTHENTICATED DPOP_KEY_MISMATCH at gateway")
    finally:
        server.stop(None).wait()
