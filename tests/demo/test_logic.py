"""Inventory, payments, orders and reporting logic, without any transport."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from mesh.demo.errors import (
    InvalidRequest,
    OutOfStock,
    PaymentRefused,
    UnknownSku,
    UserRequired,
)
from mesh.demo.logic import catalog
from mesh.demo.logic.inventory import Inventory, ReserveLine, StockLevel
from mesh.demo.logic.orders import OrderPlan, place_order, plan_order
from mesh.demo.logic.orders_store import OrdersStore
from mesh.demo.logic.payments import Payments
from mesh.demo.logic.reporting import ReportingJob, StockReport, build_report

# -- inventory ---------------------------------------------------------------------------------


def test_reserve_takes_stock_and_reports_remaining() -> None:
    inv = Inventory({"mug": 10})
    res = inv.reserve(ReserveLine("o1", "mug", 3), user="alice")
    assert (res.sku, res.quantity, res.remaining, res.user) == ("mug", 3, 7, "alice")
    assert inv.stock() == [StockLevel("mug", 7, 3)]


def test_reserve_many_is_all_or_nothing() -> None:
    inv = Inventory({"mug": 10, "grinder": 1})
    with pytest.raises(OutOfStock, match="only 1 of 'grinder' available, 2 asked"):
        inv.reserve_many(
            [ReserveLine("o1", "mug", 5), ReserveLine("o1", "grinder", 2)], user="alice"
        )
    assert inv.stock() == [StockLevel("grinder", 1, 0), StockLevel("mug", 10, 0)]
    made = inv.reserve_many(
        [ReserveLine("o1", "mug", 5), ReserveLine("o1", "grinder", 1)], user="alice"
    )
    assert [r.remaining for r in made] == [5, 0]


def test_same_sku_twice_in_one_batch_counts_both() -> None:
    inv = Inventory({"mug": 5})
    with pytest.raises(OutOfStock):
        inv.reserve_many([ReserveLine("o", "mug", 3), ReserveLine("o", "mug", 3)], user="u")


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (ReserveLine("o", "mug", 0), InvalidRequest),
        (ReserveLine("o", "mug", -1), InvalidRequest),
        (ReserveLine("o", "mug", 101), InvalidRequest),
        (ReserveLine("", "mug", 1), InvalidRequest),
        (ReserveLine("o", "piano", 1), UnknownSku),
    ],
)
def test_bad_lines_are_refused_and_change_nothing(line: ReserveLine, error: type) -> None:
    inv = Inventory({"mug": 200})
    with pytest.raises(error):
        inv.reserve(line, user="alice")
    assert inv.stock() == [StockLevel("mug", 200, 0)]


def test_reserve_needs_a_user_and_lines() -> None:
    inv = Inventory({"mug": 1})
    with pytest.raises(InvalidRequest, match="for a user"):
        inv.reserve(ReserveLine("o", "mug", 1), user="")
    with pytest.raises(InvalidRequest, match="at least one line"):
        inv.reserve_many([], user="alice")


def test_release_gives_units_back_once_and_only_to_their_user() -> None:
    inv = Inventory({"mug": 5})
    a = inv.reserve(ReserveLine("o", "mug", 2), user="alice")
    b = inv.reserve(ReserveLine("o", "mug", 1), user="alice")
    other = inv.reserve(ReserveLine("p", "mug", 1), user="bob")
    with pytest.raises(InvalidRequest, match="for this user"):
        inv.release([a.reservation_id, other.reservation_id], user="alice")
    with pytest.raises(InvalidRequest, match="twice"):
        inv.release([a.reservation_id, a.reservation_id], user="alice")
    assert inv.stock(["mug"]) == [StockLevel("mug", 1, 4)]  # all or none: nothing moved
    assert inv.release([a.reservation_id, b.reservation_id], user="alice") == 2
    assert inv.stock(["mug"]) == [StockLevel("mug", 4, 1)]
    with pytest.raises(InvalidRequest):
        inv.release([a.reservation_id], user="alice")


def test_concurrent_reservations_never_oversell() -> None:
    inv = Inventory({"grinder": 50})
    won: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(20):
            try:
                inv.reserve(ReserveLine("o", "grinder", 1), user="u")
            except OutOfStock:
                continue
            with lock:
                won.append(1)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 50
    assert inv.stock() == [StockLevel("grinder", 0, 50)]


def test_stock_of_unknown_sku_is_an_error() -> None:
    with pytest.raises(UnknownSku):
        Inventory({"mug": 1}).stock(["piano"])


# -- payments ----------------------------------------------------------------------------------


def test_charge_is_idempotent_per_user_and_order() -> None:
    pay = Payments()
    first = pay.charge(user="alice", order_ref="o1", amount_cents=900, currency="EUR")
    again = pay.charge(user="alice", order_ref="o1", amount_cents=900, currency="EUR")
    other = pay.charge(user="bob", order_ref="o1", amount_cents=900, currency="EUR")
    assert first == again and other.payment_id != first.payment_id
    with pytest.raises(PaymentRefused, match="different amount"):
        pay.charge(user="alice", order_ref="o1", amount_cents=901, currency="EUR")
    assert pay.charges_for("alice") == [first]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"amount_cents": 0}, InvalidRequest, "positive"),
        ({"amount_cents": 100_001}, PaymentRefused, "over the per-charge limit"),
        ({"currency": "USD"}, PaymentRefused, "currency"),
        ({"user": ""}, InvalidRequest, "for a user"),
        ({"order_ref": ""}, InvalidRequest, "order_ref"),
    ],
)
def test_charge_rules(kwargs: dict[str, object], error: type, message: str) -> None:
    args: dict[str, object] = {
        "user": "alice", "order_ref": "o", "amount_cents": 100, "currency": "EUR"
    }
    args.update(kwargs)
    pay = Payments()
    with pytest.raises(error, match=message):
        pay.charge(**args)  # type: ignore[arg-type]
    assert pay.charges_for("alice") == []


# -- orders ------------------------------------------------------------------------------------


def test_plan_merges_lines_and_prices_from_the_catalog() -> None:
    plan = plan_order([("mug", 2), ("sencha", 1), ("mug", 1)])
    assert [(line.sku, line.quantity) for line in plan.lines] == [("mug", 3), ("sencha", 1)]
    expected = 3 * catalog.item("mug").price_cents + catalog.item("sencha").price_cents
    assert plan.total_cents == expected and plan.currency == "EUR"
    assert plan.order_id.startswith("ord-") and plan.order_id != plan_order([("mug", 1)]).order_id


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        ([], InvalidRequest),
        ([("mug", 0)], InvalidRequest),
        ([("mug", 60), ("mug", 60)], InvalidRequest),
        ([("piano", 1)], UnknownSku),
        ([("mug", 1)] * 21, InvalidRequest),
    ],
)
def test_plan_rejects_bad_orders(lines: list[tuple[str, int]], error: type) -> None:
    with pytest.raises(error):
        plan_order(lines)


def _wired(tmp_path: Path) -> tuple[Inventory, Payments, OrdersStore, dict[str, object]]:
    inv = Inventory(catalog.opening_stock())
    pay = Payments()
    store = OrdersStore(tmp_path / "orders.sqlite")

    def reserve(plan: OrderPlan) -> list[str]:
        lines = [ReserveLine(plan.order_id, line.sku, line.quantity) for line in plan.lines]
        return [r.reservation_id for r in inv.reserve_many(lines, user="alice")]

    def charge(plan: OrderPlan) -> str:
        return pay.charge(
            user="alice", order_ref=plan.order_id, amount_cents=plan.total_cents,
            currency=plan.currency,
        ).payment_id

    return inv, pay, store, {"reserve": reserve, "charge": charge, "store": store}


def test_place_order_reserves_charges_and_stores(tmp_path: Path) -> None:
    inv, pay, store, deps = _wired(tmp_path)
    order = place_order(plan_order([("grinder", 2)]), user="alice", **deps)  # type: ignore[arg-type]
    assert order.user == "alice" and len(order.reservation_ids) == 1
    assert pay.charges_for("alice")[0].payment_id == order.payment_id
    assert inv.stock(["grinder"]) == [StockLevel("grinder", 1, 2)]
    assert store.list_for("alice") == [order]
    assert store.list_for("bob") == []


def test_failed_charge_releases_the_reservations(tmp_path: Path) -> None:
    inv, pay, store, deps = _wired(tmp_path)
    released: list[tuple[str, ...]] = []

    def release(ids):  # type: ignore[no-untyped-def]
        released.append(tuple(ids))
        return inv.release(ids, user="alice")

    plan = plan_order([("grinder", 3)])
    pay.charge(user="alice", order_ref=plan.order_id, amount_cents=1, currency="EUR")
    with pytest.raises(PaymentRefused, match="different amount"):
        place_order(plan, user="alice", release=release, **deps)  # type: ignore[arg-type]
    assert len(released) == 1 and len(released[0]) == 1
    assert inv.stock(["grinder"]) == [StockLevel("grinder", 3, 0)] and store.count() == 0


def test_a_failed_release_never_hides_the_charge_error(tmp_path: Path) -> None:
    _, pay, _, deps = _wired(tmp_path)

    def broken_release(_ids):  # type: ignore[no-untyped-def]
        raise RuntimeError("inventory down")

    plan = plan_order([("mug", 1)])
    pay.charge(user="alice", order_ref=plan.order_id, amount_cents=1, currency="EUR")
    with pytest.raises(PaymentRefused):
        place_order(plan, user="alice", release=broken_release, **deps)  # type: ignore[arg-type]


def test_failed_reservation_charges_and_stores_nothing(tmp_path: Path) -> None:
    _, pay, store, deps = _wired(tmp_path)
    with pytest.raises(OutOfStock):
        place_order(plan_order([("grinder", 4)]), user="alice", **deps)  # type: ignore[arg-type]
    assert pay.charges_for("alice") == [] and store.count() == 0


def test_place_order_without_user_is_refused_before_any_side_effect(tmp_path: Path) -> None:
    inv, _, store, deps = _wired(tmp_path)
    with pytest.raises(UserRequired):
        place_order(plan_order([("mug", 1)]), user=None, **deps)  # type: ignore[arg-type]
    assert inv.stock(["mug"])[0].reserved == 0 and store.count() == 0


def test_store_lists_newest_first_with_limit_and_survives_reopen(tmp_path: Path) -> None:
    _, _, store, deps = _wired(tmp_path)
    ids = [
        place_order(plan_order([("mug", 1)]), user="alice", **deps).order_id  # type: ignore[arg-type]
        for _ in range(3)
    ]
    assert [o.order_id for o in store.list_for("alice", 2)] == ids[::-1][:2]
    store.close()
    reopened = OrdersStore(tmp_path / "orders.sqlite")
    assert [o.order_id for o in reopened.list_for("alice")] == ids[::-1]
    with pytest.raises(InvalidRequest):
        reopened.list_for("alice", 501)
    with sqlite3.connect(tmp_path / "orders.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_duplicate_order_id_is_rejected_and_rolled_back(tmp_path: Path) -> None:
    _, _, store, deps = _wired(tmp_path)
    order = place_order(plan_order([("mug", 1)]), user="alice", **deps)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="already stored"):
        store.add(order)
    assert store.count() == 1
    store.add(
        type(order)(**{**{f: getattr(order, f) for f in order.__slots__}, "order_id": "ord-x"})
    )
    assert store.count() == 2


# -- reporting ---------------------------------------------------------------------------------


def test_report_flags_low_stock() -> None:
    report = build_report(
        [StockLevel("grinder", 3, 0), StockLevel("mug", 200, 0)], threshold=5, now=100
    )
    assert report.low == ("grinder",) and report.at == 100
    assert report.summary() == "2 SKUs, 203 units available, low stock: grinder"


def test_job_reports_and_survives_failures() -> None:
    reports: list[StockReport] = []
    errors: list[Exception] = []
    calls = iter([RuntimeError("inventory down"), [StockLevel("mug", 1, 0)]])

    def fetch() -> list[StockLevel]:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    job = ReportingJob(fetch, interval=60, on_report=reports.append, on_error=errors.append)
    assert job.run_once() is None
    assert job.run_once() is not None
    assert (job.runs, job.failures) == (2, 1)
    assert [str(e) for e in errors] == ["inventory down"] and reports[0].low == ("mug",)


def test_job_thread_runs_until_stopped() -> None:
    seen = threading.Event()
    job = ReportingJob(
        lambda: [StockLevel("mug", 9, 0)], interval=0.01,
        on_report=lambda _r: seen.set(), on_error=lambda _e: None,
    )
    job.start()
    assert seen.wait(10)
    job.stop()
    runs = job.runs
    assert runs >= 1
    with pytest.raises(RuntimeError):
        job.start()
