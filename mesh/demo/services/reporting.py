"""reporting: a job with no user that reads inventory's stock as itself (an app token)."""

from __future__ import annotations

from collections.abc import Callable

from mesh.demo.logic.inventory import StockLevel
from mesh.demo.v1 import inventory_pb2, inventory_pb2_grpc

STOCK_TIMEOUT = 5.0


def stock_fetcher(
    inventory: inventory_pb2_grpc.InventoryServiceStub,
) -> Callable[[], list[StockLevel]]:
    def fetch() -> list[StockLevel]:
        response: inventory_pb2.StockResponse = inventory.Stock(
            inventory_pb2.StockRequest(), timeout=STOCK_TIMEOUT
        )
        return [StockLevel(lv.sku, lv.available, lv.reserved) for lv in response.levels]

    return fetch
