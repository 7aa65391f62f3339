"""The reporting job: every interval, read stock levels and report what runs low.

It has no user: it calls inventory as itself (an app token), which inventory's policy allows
for ``Stock`` only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mesh.demo.logic.inventory import StockLevel

DEFAULT_LOW_STOCK = 5


@dataclass(frozen=True, slots=True)
class StockReport:
    at: int
    levels: tuple[StockLevel, ...]
    low: tuple[str, ...]

    def summary(self) -> str:
        total = sum(level.available for level in self.levels)
        low = ", ".join(self.low) or "none"
        return f"{len(self.levels)} SKUs, {total} units available, low stock: {low}"


def build_report(
    levels: Sequence[StockLevel], *, threshold: int = DEFAULT_LOW_STOCK, now: float | None = None
) -> StockReport:
    at = int(time.time() if now is None else now)
    low = tuple(sorted(level.sku for level in levels if level.available <= threshold))
    return StockReport(at=at, levels=tuple(levels), low=low)


class ReportingJob:
    """Runs ``fetch`` every ``interval`` seconds on its own thread until :meth:`stop`."""

    def __init__(
        self,
        fetch: Callable[[], Sequence[StockLevel]],
        *,
        interval: float,
        on_report: Callable[[StockReport], None],
        on_error: Callable[[Exception], None],
        threshold: int = DEFAULT_LOW_STOCK,
    ) -> None:
        if interval <= 0:
            raise ValueError("the reporting interval must be positive")
        self._fetch = fetch
        self._interval = interval
        self._on_report = on_report
        self._on_error = on_error
        self._threshold = threshold
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0
        self.failures = 0

    def run_once(self) -> StockReport | None:
        self.runs += 1
        try:
            report = build_report(self._fetch(), threshold=self._threshold)
        except Exception as err:  # a failed round is reported; the job goes on
            self.failures += 1
            self._on_error(err)
            return None
        self._on_report(report)
        return report

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self._interval)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the reporting job is already running")
        self._thread = threading.Thread(target=self._loop, name="reporting-job", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
