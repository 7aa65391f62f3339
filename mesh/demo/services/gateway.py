"""gateway: the edge. Takes the user's token at its edge port and calls orders for the user.

The handler passes no token itself: the mesh channel's client interceptor wraps the verified
inbound token into an app-asserted token for orders (spec 3.4).
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from mesh import require_user
from mesh.demo.services._rpc import (
    Registry,
    call_downstream,
    handler,
    stream_handler,
)
from mesh.demo.v1 import gateway_pb2, gateway_pb2_grpc, orders_pb2, orders_pb2_grpc
from mesh.identity.spiffeid import SpiffeId

PLACE_ORDER = "/mesh.demo.v1.GatewayService/PlaceOrder"
LIST_ORDERS = "/mesh.demo.v1.GatewayService/ListOrders"
DOWNSTREAM_TIMEOUT = 10.0


def make_servicer(
    own_id: SpiffeId, orders: orders_pb2_grpc.OrdersServiceStub
) -> gateway_pb2_grpc.GatewayServiceServicer:
    class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
        @handler(own_id, PLACE_ORDER)
        def PlaceOrder(
            self, request: gateway_pb2.PlaceOrderRequest, context: grpc.ServicerContext
        ) -> orders_pb2.Order:
            require_user()
            order: orders_pb2.Order = call_downstream("orders", lambda: orders.CreateOrder(
                orders_pb2.CreateOrderRequest(lines=request.lines), timeout=DOWNSTREAM_TIMEOUT))
            return order

        @stream_handler(own_id, LIST_ORDERS)
        def ListOrders(
            self, request: orders_pb2.ListOrdersRequest, context: grpc.ServicerContext
        ) -> Iterator[orders_pb2.Order]:
            require_user()
            stream = call_downstream("orders", lambda: orders.ListOrders(
                request, timeout=DOWNSTREAM_TIMEOUT))
            yield from call_downstream("orders", lambda: list(stream))

    return GatewayServicer()


def register(server: Registry, servicer: gateway_pb2_grpc.GatewayServiceServicer) -> None:
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
