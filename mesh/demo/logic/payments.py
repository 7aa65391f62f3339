"""Payments: charge a user for an order, idempotently, within a per-charge limit."""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass

from mesh.demo.errors import InvalidRequest, PaymentRefused
from mesh.demo.logic.catalog import CURRENCY

DEFAULT_LIMIT_CENTS = 100_000


@dataclass(frozen=True, slots=True)
class Charge:
    payment_id: str
    user: str
    order_ref: str
    amount_cents: int
    currency: str


class Payments:
    def __init__(
        self, *, limit_cents: int = DEFAULT_LIMIT_CENTS, currencies: tuple[str, ...] = (CURRENCY,)
    ) -> None:
        self._limit = limit_cents
        self._currencies = currencies
        self._charges: dict[tuple[str, str], Charge] = {}
        self._lock = threading.Lock()

    def charge(self, *, user: str, order_ref: str, amount_cents: int, currency: str) -> Charge:
        """Charge ``user`` (from the verified chain); a retry with the same order returns the
        first charge, a retry with another amount is refused."""
        if not user:
            raise InvalidRequest("a charge is always made for a user")
        if not order_ref or len(order_ref) > 64:
            raise InvalidRequest("order_ref must be 1 to 64 characters")
        if amount_cents <= 0:
            raise InvalidRequest("amount_cents must be positive")
        if currency not in self._currencies:
            raise PaymentRefused(f"currency {currency!r} is not accepted here")
        if amount_cents > self._limit:
            raise PaymentRefused(
                f"amount {amount_cents} cents is over the per-charge limit of {self._limit}"
            )
        key = (user, order_ref)
        with self._lock:
            previous = self._charges.get(key)
            if previous is not None:
                if (previous.amount_cents, previous.currency) != (amount_cents, currency):
                    raise PaymentRefused(
                        f"order {order_ref} was already charged with a different amount"
                    )
                return previous
            charge = Charge(
                payment_id="pay-" + secrets.token_hex(8),
                user=user,
                order_ref=order_ref,
                amount_cents=amount_cents,
                currency=currency,
            )
            self._charges[key] = charge
            return charge

    def charges_for(self, user: str) -> list[Charge]:
        with self._lock:
            return [c for (u, _), c in self._charges.items() if u == user]
