"""The demo shop's catalog: what can be ordered, its price and its opening stock."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from mesh.demo.errors import UnknownSku

CURRENCY = "EUR"


@dataclass(frozen=True, slots=True)
class Item:
    sku: str
    name: str
    price_cents: int
    opening_stock: int


_ITEMS = (
    Item("coffee-beans", "Coffee beans, 1 kg", 1850, 500),
    Item("sencha", "Sencha green tea, 100 g", 1200, 500),
    Item("mug", "Stoneware mug", 900, 200),
    # Scarce on purpose: the demo can show an order failing for want of stock.
    Item("grinder", "Hand grinder", 4500, 3),
)

CATALOG: Mapping[str, Item] = MappingProxyType({item.sku: item for item in _ITEMS})


def item(sku: str) -> Item:
    try:
        return CATALOG[sku]
    except KeyError:
        raise UnknownSku(f"SKU {sku!r} is not in the catalog") from None


def opening_stock() -> dict[str, int]:
    return {sku: it.opening_stock for sku, it in CATALOG.items()}
