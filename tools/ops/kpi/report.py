"""A KPI report and its figures: what ``KpiBook.report()`` answers, and the tallies it sums them from (pure)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, PlainSerializer

CURRENCY = "CNY"
MAX_BUCKETS = 10_000
Bucket = Literal["minute", "hour", "day"]
STEP = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}
Amount = Annotated[Decimal, PlainSerializer(lambda v: format(v, "f"), return_type=str)]
CENT = Decimal("0.01")


class Figures(BaseModel):
    """The core figures, for the whole window or one payment method, shipping option or carrier."""

    model_config = ConfigDict(frozen=True)

    orders_placed: int = 0
    orders_accepted: int = 0
    orders_completed: int = 0
    orders_cancelled: int = 0
    orders_rejected: int = 0
    orders_delivered: int = 0
    gmv: Amount = Decimal("0.00")
    aov: Amount | None = None
    payments_attempted: int = 0
    payments_authorized: int = 0
    payments_declined: int = 0
    payment_success_rate: float | None = None
    cancellation_rate: float | None = None
    cancellations_by_reason: dict[str, int] = {}
    captured: Amount = Decimal("0.00")
    refunded: Amount = Decimal("0.00")
    net_revenue: Amount = Decimal("0.00")
    fulfilment_p50_seconds: float | None = None
    fulfilment_p95_seconds: float | None = None
    delivery_p50_seconds: float | None = None
    delivery_p95_seconds: float | None = None


class SeriesPoint(BaseModel):
    """One bucket of the time series: what happened from ``start`` for one minute, hour or day."""

    model_config = ConfigDict(frozen=True)

    start: datetime
    orders_placed: int = 0
    orders_accepted: int = 0
    orders_completed: int = 0
    orders_cancelled: int = 0
    orders_delivered: int = 0
    gmv: Amount = Decimal("0.00")


class KpiReport(Figures):
    """The KPIs of a window ``[since, until)``: totals, splits per method/option/carrier, and a time series."""

    since: datetime | None
    until: datetime | None
    bucket: Bucket
    currency: str = CURRENCY
    rejections_by_reason: dict[str, int] = {}
    orders_other_currency: int = 0
    by_payment_method: dict[str, Figures] = {}
    by_shipping_option: dict[str, Figures] = {}
    by_carrier: dict[str, Figures] = {}
    series: list[SeriesPoint] = []


@dataclass(slots=True)
class Tally:
    """Sums of contributions (counts, money), the fulfilment and the delivery times, for a cell or part of a report."""

    values: dict[str, Any] = field(default_factory=lambda: defaultdict(int))
    durations: list[float] = field(default_factory=list)
    deliveries: list[float] = field(default_factory=list)

    def put(self, name: str, value: Any, sign: int) -> None:
        if name in ("duration", "delivery"):
            times = self.durations if name == "duration" else self.deliveries
            if sign > 0:
                times.append(value)
            else:
                times.remove(value)
        else:
            self.values[name] += value * sign

    def merge(self, other: Tally) -> None:
        for name, value in other.values.items():
            self.values[name] += value
        self.durations += other.durations
        self.deliveries += other.deliveries

    def prefixed(self, prefix: str) -> dict[str, int]:
        return {k.removeprefix(prefix): int(v) for k, v in sorted(self.values.items()) if k.startswith(prefix) and v}

    def figures(self) -> Figures:
        c = self.values
        attempted = c["authorized"] + c["declined"]
        ended = c["completed"] + c["cancelled"]
        gmv, captured, refunded = (Decimal(c[name]).quantize(CENT) for name in ("gmv", "captured", "refunded"))
        p50, p95 = _percentiles(self.durations)
        delivery_p50, delivery_p95 = _percentiles(self.deliveries)
        return Figures(
            orders_placed=c["placed"],
            orders_accepted=c["accepted"],
            orders_completed=c["completed"],
            orders_cancelled=c["cancelled"],
            orders_rejected=c["rejected"],
            orders_delivered=c["delivered"],
            gmv=gmv,
            aov=(gmv / c["gmv_orders"]).quantize(CENT, ROUND_HALF_UP) if c["gmv_orders"] else None,
            payments_attempted=attempted,
            payments_authorized=c["authorized"],
            payments_declined=c["declined"],
            payment_success_rate=round(c["authorized"] / attempted, 4) if attempted else None,
            cancellation_rate=round(c["cancelled"] / ended, 4) if ended else None,
            cancellations_by_reason=self.prefixed("reason:"),
            captured=captured,
            refunded=refunded,
            net_revenue=captured - refunded,
            fulfilment_p50_seconds=p50,
            fulfilment_p95_seconds=p95,
            delivery_p50_seconds=delivery_p50,
            delivery_p95_seconds=delivery_p95,
        )

    def point(self, start: datetime) -> SeriesPoint:
        c = self.values
        return SeriesPoint(
            start=start,
            orders_placed=c["placed"],
            orders_accepted=c["accepted"],
            orders_completed=c["completed"],
            orders_cancelled=c["cancelled"],
            orders_delivered=c["delivered"],
            gmv=Decimal(c["gmv"]).quantize(CENT),
        )


def _percentiles(durations: list[float]) -> tuple[float | None, float | None]:
    """p50 and p95, interpolated between closest ranks (``statistics.quantiles``, inclusive)."""
    if not durations:
        return None, None
    if len(durations) == 1:
        return round(durations[0], 3), round(durations[0], 3)
    cuts = statistics.quantiles(durations, n=100, method="inclusive")
    return round(cuts[49], 3), round(cuts[94], 3)


def split(tallies: dict[str, Tally]) -> dict[str, Figures]:
    """Figures per value of a dimension, leaving out values with nothing in the window."""
    return {
        name: t.figures()
        for name, t in sorted(tallies.items())
        if any(t.values.values()) or t.durations or t.deliveries
    }


def floor(at: datetime, bucket: Bucket) -> datetime:
    if bucket == "minute":
        return at.replace(second=0, microsecond=0)
    if bucket == "hour":
        return at.replace(minute=0, second=0, microsecond=0)
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


def bucket_range(first: datetime | None, end: datetime | None, bucket: Bucket) -> list[datetime]:
    """The starts of every bucket that overlaps ``[first, end)``."""
    if first is None or end is None or end <= first:
        return []
    start, last, step = floor(first, bucket), floor(end - timedelta(microseconds=1), bucket), STEP[bucket]
    if (last - start) / step >= MAX_BUCKETS:
        raise ValueError(f"{(last - start) // step + 1} {bucket} buckets are too many (at most {MAX_BUCKETS})")
    return [start + i * step for i in range((last - start) // step + 1)]


def span(seconds: float | None) -> str:
    """A time in the unit it reads best in: a delivery takes a minute on the simulator, days with a carrier."""
    if seconds is None:
        return "-"
    for unit, size, below in (("s", 1, 120), ("min", 60, 2 * 3600), ("h", 3600, 48 * 3600)):
        if seconds < below:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds / 86400:.1f} d"
