"""Inventory: stock per SKU and reservations against it, thread-safe, all or nothing."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from mesh.demo.errors import InvalidRequest, OutOfStock, UnknownSku

MAX_QUANTITY = 100
MAX_LINES = 50


@dataclass(frozen=True, slots=True)
class ReserveLine:
    order_ref: str
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Reservation:
    reservation_id: str
    order_ref: str
    user: str
    sku: str
    quantity: int
    remaining: int


@dataclass(frozen=True, slots=True)
class StockLevel:
    sku: str
    available: int
    reserved: int


def _check_line(line: ReserveLine) -> None:
    if not line.order_ref or len(line.order_ref) > 64:
        raise InvalidRequest("order_ref must be 1 to 64 characters")
    if not 1 <= line.quantity <= MAX_QUANTITY:
        raise InvalidRequest(
            f"quantity for {line.sku!r} must be between 1 and {MAX_QUANTITY}, not {line.quantity}"
        )


class Inventory:
    def __init__(self, opening: Mapping[str, int]) -> None:
        if any(v < 0 for v in opening.values()):
            raise ValueError("opening stock must not be negative")
        self._available = dict(opening)
        self._reserved = dict.fromkeys(opening, 0)
        self._reservations: dict[str, Reservation] = {}
        self._lock = threading.Lock()

    def reserve(self, line: ReserveLine, *, user: str) -> Reservation:
        return self.reserve_many([line], user=user)[0]

    def reserve_many(self, lines: Iterable[ReserveLine], *, user: str) -> list[Reservation]:
        """Reserve every line or none: the first line that cannot be met aborts the lot."""
        batch = list(lines)
        if not batch:
            raise InvalidRequest("a reservation needs at least one line")
        if len(batch) > MAX_LINES:
            raise InvalidRequest(f"a reservation may have at most {MAX_LINES} lines")
        if not user:
            raise InvalidRequest("a reservation is always made for a user")
        for line in batch:
            _check_line(line)
        with self._lock:
            wanted: dict[str, int] = {}
            for line in batch:
                if line.sku not in self._available:
                    raise UnknownSku(f"SKU {line.sku!r} is not stocked")
                wanted[line.sku] = wanted.get(line.sku, 0) + line.quantity
            for sku, quantity in wanted.items():
                if quantity > self._available[sku]:
                    raise OutOfStock(
                        f"only {self._available[sku]} of {sku!r} available, {quantity} asked"
                    )
            made = []
            for line in batch:
                self._available[line.sku] -= line.quantity
                self._reserved[line.sku] += line.quantity
                res = Reservation(
                    reservation_id="res-" + secrets.token_hex(8),
                    order_ref=line.order_ref,
                    user=user,
                    sku=line.sku,
                    quantity=line.quantity,
                    remaining=self._available[line.sku],
                )
                self._reservations[res.reservation_id] = res
                made.append(res)
            return made

    def release(self, reservation_ids: Sequence[str], *, user: str) -> int:
        """Give ``user``'s reservations back, all or none; another user's id is not found."""
        with self._lock:
            found = [self._reservations.get(rid) for rid in reservation_ids]
            for rid, res in zip(reservation_ids, found, strict=True):
                if res is None or res.user != user:
                    raise InvalidRequest(f"no reservation {rid!r} for this user")
            if len(set(reservation_ids)) != len(reservation_ids):
                raise InvalidRequest("a reservation is listed twice")
            for res in found:
                assert res is not None
                del self._reservations[res.reservation_id]
                self._available[res.sku] += res.quantity
                self._reserved[res.sku] -= res.quantity
            return len(found)

    def stock(self, skus: Sequence[str] = ()) -> list[StockLevel]:
        with self._lock:
            wanted = list(skus) or sorted(self._available)
            for sku in wanted:
                if sku not in self._available:
                    raise UnknownSku(f"SKU {sku!r} is not stocked")
            return [StockLevel(s, self._available[s], self._reserved[s]) for s in wanted]
