"""Placing an order: validate and price it, reserve stock, charge the user, store it.

Transport-free: reserving and charging are callables, so the servicer plugs in gRPC clients and
the tests plug in the real inventory and payments logic.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mesh.demo.errors import InvalidRequest, UserRequired
from mesh.demo.logic import catalog
from mesh.demo.logic.orders_store import OrderLine, OrdersStore, StoredOrder

_log = logging.getLogger("mesh.demo.orders")

MAX_LINES = 20
MAX_QUANTITY = 100


@dataclass(frozen=True, slots=True)
class OrderPlan:
    order_id: str
    lines: tuple[OrderLine, ...]
    total_cents: int
    currency: str


def plan_order(lines: Sequence[tuple[str, int]]) -> OrderPlan:
    """Validate the lines against the catalog, merge repeated SKUs and price the order."""
    if not lines:
        raise InvalidRequest("an order needs at least one line")
    if len(lines) > MAX_LINES:
        raise InvalidRequest(f"an order may have at most {MAX_LINES} lines")
    merged: dict[str, int] = {}
    for sku, quantity in lines:
        catalog.item(sku)
        if not 1 <= quantity <= MAX_QUANTITY:
            raise InvalidRequest(
                f"quantity for {sku!r} must be between 1 and {MAX_QUANTITY}, not {quantity}"
            )
        merged[sku] = merged.get(sku, 0) + quantity
    for sku, quantity in merged.items():
        if quantity > MAX_QUANTITY:
            raise InvalidRequest(f"at most {MAX_QUANTITY} of {sku!r} per order")
    total = sum(catalog.item(sku).price_cents * qty for sku, qty in merged.items())
    return OrderPlan(
        order_id="ord-" + secrets.token_hex(8),
        lines=tuple(OrderLine(sku, qty) for sku, qty in merged.items()),
        total_cents=total,
        currency=catalog.CURRENCY,
    )


Reserve = Callable[[OrderPlan], Sequence[str]]
Charge = Callable[[OrderPlan], str]
Release = Callable[[Sequence[str]], object]


def place_order(
    plan: OrderPlan,
    *,
    user: str | None,
    reserve: Reserve,
    charge: Charge,
    store: OrdersStore,
    release: Release | None = None,
    clock: Callable[[], float] = time.time,
) -> StoredOrder:
    """Reserve, then charge, then store; a failure stops the order there and propagates.

    If the charge fails, the reservations are given back (``release``) before the charge's
    error propagates; a failed release is logged, never allowed to hide that error.
    ``user`` comes from the verified chain, never from the request.
    """
    if not user:
        raise UserRequired("placing an order needs a verified end user on the call")
    reservation_ids = tuple(reserve(plan))
    try:
        payment_id = charge(plan)
    except BaseException:
        if release is not None and reservation_ids:
            try:
                release(reservation_ids)
            except Exception:
                _log.exception("order %s: releasing its reservations failed", plan.order_id)
        raise
    order = StoredOrder(
        order_id=plan.order_id,
        user=user,
        lines=plan.lines,
        total_cents=plan.total_cents,
        payment_id=payment_id,
        reservation_ids=reservation_ids,
        created_at=int(clock()),
    )
    store.add(order)
    return order
