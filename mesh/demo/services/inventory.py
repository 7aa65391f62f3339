"""inventory: reservations for users (through gateway -> orders) and stock for reporting."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from mesh import require_user
from mesh.demo.errors import InvalidRequest
from mesh.demo.logic.inventory import MAX_LINES, Inventory, Reservation, ReserveLine
from mesh.demo.services._rpc import Registry, handler
from mesh.demo.v1 import inventory_pb2, inventory_pb2_grpc
from mesh.identity.spiffeid import SpiffeId

RESERVE = "/mesh.demo.v1.InventoryService/Reserve"
RESERVE_MANY = "/mesh.demo.v1.InventoryService/ReserveMany"
STOCK = "/mesh.demo.v1.InventoryService/Stock"
RELEASE = "/mesh.demo.v1.InventoryService/Release"


def _line(req: inventory_pb2.ReserveRequest) -> ReserveLine:
    return ReserveLine(order_ref=req.order_ref, sku=req.sku, quantity=req.quantity)


def _proto(res: Reservation) -> inventory_pb2.Reservation:
    return inventory_pb2.Reservation(reservation_id=res.reservation_id, sku=res.sku,
                                     quantity=res.quantity, remaining=res.remaining)


def make_servicer(
    own_id: SpiffeId, inventory: Inventory
) -> inventory_pb2_grpc.InventoryServiceServicer:
    class InventoryServicer(inventory_pb2_grpc.InventoryServiceServicer):
        @handler(own_id, RESERVE)
        def Reserve(
            self, request: inventory_pb2.ReserveRequest, context: grpc.ServicerContext
        ) -> inventory_pb2.Reservation:
            user = require_user().id
            return _proto(inventory.reserve(_line(request), user=user))

        @handler(own_id, RESERVE_MANY)
        def ReserveMany(
            self, request_iterator: Iterator[inventory_pb2.ReserveRequest],
            context: grpc.ServicerContext,
        ) -> inventory_pb2.ReserveManyResponse:
            user = require_user().id
            lines: list[ReserveLine] = []
            for request in request_iterator:
                if len(lines) == MAX_LINES:
                    raise InvalidRequest(f"a reservation may have at most {MAX_LINES} lines")
                lines.append(_line(request))
            made = inventory.reserve_many(lines, user=user)
            return inventory_pb2.ReserveManyResponse(reservations=[_proto(r) for r in made])

        @handler(own_id, RELEASE)
        def Release(
            self, request: inventory_pb2.ReleaseRequest, context: grpc.ServicerContext
        ) -> inventory_pb2.ReleaseResponse:
            user = require_user().id
            released = inventory.release(list(request.reservation_ids), user=user)
            return inventory_pb2.ReleaseResponse(released=released)

        @handler(own_id, STOCK)
        def Stock(
            self, request: inventory_pb2.StockRequest, context: grpc.ServicerContext
        ) -> inventory_pb2.StockResponse:
            levels = inventory.stock(list(request.skus))
            return inventory_pb2.StockResponse(levels=[
                inventory_pb2.StockLevel(sku=s.sku, available=s.available, reserved=s.reserved)
                for s in levels
            ])

    return InventoryServicer()


def register(server: Registry, servicer: inventory_pb2_grpc.InventoryServiceServicer) -> None:
    inventory_pb2_grpc.add_InventoryServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
