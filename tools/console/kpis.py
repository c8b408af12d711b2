"""The console's KPIs: a :class:`tools.fulfil.kpi.KpiBook` fed from the console's tail, reported in the background.

``KpiBook.report()`` walks every order it holds (a second or so at 100,000), so the board never calls it: a worker
thread folds the records queued since its last round into the book and computes the report, which the board then
shows as it was last computed. Only that thread (and a /metrics scrape, under the same lock) touches the book, so
the event loop never waits for it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from tools.console import charts
from tools.ops.kpi.book import KPI_TOPICS, KpiBook
from tools.ops.kpi.report import KpiReport, span

WINDOW = timedelta(hours=1)


class Kpis:
    """Queue records from the event loop; fold and report them in a worker thread."""

    def __init__(self, *, window: timedelta = WINDOW, every: float = 5.0) -> None:
        self.book = KpiBook()
        self.window = window
        self.every = every
        self.report: KpiReport | None = None
        self.report_seconds = 0.0
        self._pending: list[tuple[str, Mapping[str, Any], datetime]] = []
        self._lock = threading.Lock()

    def add(self, topic: str, event: Mapping[str, Any], at: datetime) -> None:
        """Called by the tail for each record (event loop thread): only queues it (the book's topics only)."""
        if topic in KPI_TOPICS:
            self._pending.append((topic, event, at))

    def fold(self) -> None:
        """Fold what was queued into the book (worker thread)."""
        batch, self._pending = self._pending, []  # a record appended meanwhile lands in `batch` or the new list
        with self._lock:
            for topic, event, at in batch:
                self.book.add(topic, event, at)

    def refresh(self, now: datetime | None = None) -> KpiReport:
        """Fold what was queued and compute the report of the window (worker thread)."""
        started = time.perf_counter()
        self.fold()
        with self._lock:
            report = self.book.report(since=(now or datetime.now(UTC)) - self.window, bucket="minute")
        self.report, self.report_seconds = report, time.perf_counter() - started
        return report

    async def refresh_forever(self, ready: Callable[[], bool] = lambda: True) -> None:
        """Until ``ready()`` (the tail caught up) only fold, so no partial report is shown; then report too."""
        while True:
            if ready():
                await asyncio.to_thread(self.refresh)
            else:
                await asyncio.to_thread(self.fold)
            await asyncio.sleep(max(self.every, 5 * self.report_seconds))  # never more than ~1/5 of a core

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(_Locked(self.book.collector(), self._lock))

    def tiles(self) -> list[dict[str, str]]:
        r = self.report
        if r is None:
            return []

        def pct(x: float | None) -> str:
            return "–" if x is None else f"{x * 100:.1f} %"

        def secs(x: float | None) -> str:
            return "–" if x is None else f"{x:.1f} s"

        return [
            {"label": f"GMV ({r.currency})", "value": f"{r.gmv:,.2f}", "id": "kpi-gmv"},
            {"label": "orders accepted", "value": str(r.orders_accepted), "id": "kpi-orders"},
            {"label": "AOV", "value": "–" if r.aov is None else f"{r.aov:,.2f}", "id": "kpi-aov"},
            {"label": "payment success", "value": pct(r.payment_success_rate), "id": "kpi-payment"},
            {"label": "cancellation rate", "value": pct(r.cancellation_rate), "id": "kpi-cancel"},
            {"label": "fulfilment p50", "value": secs(r.fulfilment_p50_seconds), "id": "kpi-p50"},
            {"label": "fulfilment p95", "value": secs(r.fulfilment_p95_seconds), "id": "kpi-p95"},
            {"label": "orders delivered", "value": str(r.orders_delivered), "id": "kpi-delivered"},
            {"label": "delivery p50", "value": span(r.delivery_p50_seconds), "id": "kpi-delivery-p50"},
            {"label": "delivery p95", "value": span(r.delivery_p95_seconds), "id": "kpi-delivery-p95"},
        ]

    def charts(self) -> dict[str, charts.Figure]:
        r = self.report
        if r is None:
            return {}
        xs = [p.start.isoformat() for p in r.series]
        reasons = r.cancellations_by_reason
        methods = r.by_payment_method
        return {
            "kpi_gmv": charts.series("GMV per minute (last hour)", xs, [float(p.gmv) for p in r.series], y="CNY"),
            "kpi_orders": charts.series(
                "orders accepted per minute (last hour)", xs, [p.orders_accepted for p in r.series], y="orders"
            ),
            "kpi_cancellations": charts.bar(
                "cancellations by reason", list(reasons), list(reasons.values()), color=charts.COLORS["warn"]
            ),
            "kpi_methods": charts.bar(
                "GMV per payment method", list(methods), [float(f.gmv) for f in methods.values()]
            ),
        }


class _Locked(Collector):
    """The book's collector, scraped under the lock the worker holds while it folds."""

    def __init__(self, inner: Collector, lock: threading.Lock) -> None:
        self.inner, self.lock = inner, lock

    def collect(self) -> Iterable[Metric]:
        with self.lock:
            return list(self.inner.collect())
