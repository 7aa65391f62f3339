"""orders: prices and stores orders; reserves stock and charges the user through the mesh."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import grpc

from mesh import require_user
from mesh.demo.logic.orders import OrderPlan, place_order, plan_order
from mesh.demo.logic.orders_store import OrdersStore, StoredOrder
from mesh.demo.services._rpc import (
    Registry,
    call_downstream,
    handler,
    stream_handler,
)
from mesh.demo.v1 import (
    inventory_pb2,
    inventory_pb2_grpc,
    orders_pb2,
    orders_pb2_grpc,
    payments_pb2,
    payments_pb2_grpc,
)
from mesh.identity.spiffeid import SpiffeId

CREATE_ORDER = "/mesh.demo.v1.OrdersService/CreateOrder"
LIST_ORDERS = "/mesh.demo.v1.OrdersService/ListOrders"
DOWNSTREAM_TIMEOUT = 10.0


def to_proto(order: StoredOrder) -> orders_pb2.Order:
    return orders_pb2.Order(
        order_id=order.order_id,
        user=order.user,
        lines=[orders_pb2.OrderLine(sku=line.sku, quantity=line.quantity) for line in order.lines],
        total_cents=order.total_cents,
        payment_id=order.payment_id,
        reservation_ids=list(order.reservation_ids),
        created_at=order.created_at,
    )


def make_servicer(
    own_id: SpiffeId,
    store: OrdersStore,
    inventory: inventory_pb2_grpc.InventoryServiceStub,
    payments: payments_pb2_grpc.PaymentsServiceStub,
) -> orders_pb2_grpc.OrdersServiceServicer:
    def reserve(plan: OrderPlan) -> Sequence[str]:
        requests = [
            inventory_pb2.ReserveRequest(order_ref=plan.order_id, sku=line.sku,
                                         quantity=line.quantity)
            for line in plan.lines
        ]
        if len(requests) == 1:
            one: inventory_pb2.Reservation = call_downstream("inventory", lambda: (
                inventory.Reserve(requests[0], timeout=DOWNSTREAM_TIMEOUT)))
            return [one.reservation_id]
        # Several lines: one client-streaming call, reserved all or nothing.
        many: inventory_pb2.ReserveManyResponse = call_downstream("inventory", lambda: (
            inventory.ReserveMany(iter(requests), timeout=DOWNSTREAM_TIMEOUT)))
        return [r.reservation_id for r in many.reservations]

    def charge(plan: OrderPlan) -> str:
        response: payments_pb2.ChargeResponse = call_downstream("payments", lambda: (
            payments.Charge(
                payments_pb2.ChargeRequest(order_ref=plan.order_id,
                                           amount_cents=plan.total_cents,
                                           currency=plan.currency),
                timeout=DOWNSTREAM_TIMEOUT,
            )))
        return response.payment_id

    def release(reservation_ids: Sequence[str]) -> int:
        response: inventory_pb2.ReleaseResponse = call_downstream("inventory", lambda: (
            inventory.Release(inventory_pb2.ReleaseRequest(reservation_ids=list(reservation_ids)),
                              timeout=DOWNSTREAM_TIMEOUT)))
        return response.released

    class OrdersServicer(orders_pb2_grpc.OrdersServiceServicer):
        @handler(own_id, CREATE_ORDER)
        def CreateOrder(
            self, request: orders_pb2.CreateOrderRequest, context: grpc.ServicerContext
        ) -> orders_pb2.Order:
            user = require_user().id
            plan = plan_order([(line.sku, line.quantity) for line in request.lines])
            return to_proto(place_order(plan, user=user, reserve=reserve, charge=charge,
                                        store=store, release=release))

        @stream_handler(own_id, LIST_ORDERS)
        def ListOrders(
            self, request: orders_pb2.ListOrdersRequest, context: grpc.ServicerContext
        ) -> Iterator[orders_pb2.Order]:
            user = require_user().id
            for order in store.list_for(user, request.limit):
                yield to_proto(order)

    return OrdersServicer()


def register(server: Registry, servicer: orders_pb2_grpc.OrdersServiceServicer) -> None:
    orders_pb2_grpc.add_OrdersServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
