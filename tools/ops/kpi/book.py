"""The KPI fold: :class:`KpiBook` takes the records of :data:`KPI_TOPICS` one by one, keeps each order's facts once
(the earliest record of each), and answers ``report()`` for any window from per-minute tallies; ``collector()``
exposes the ``fulfil_kpi_*`` Prometheus metrics. What counts, and when: ``tools/ops/kpi/__init__.py``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, get_args

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import TypeAdapter, ValidationError

from shared import topics
from shared.events.base import Money, UtcDatetime
from shared.events.order import CancellationReason
from tools.ops.kpi.report import CURRENCY, STEP, Bucket, KpiReport, Tally, bucket_range, floor, split

KPI_TOPICS = (topics.STOREFRONT_ORDERS, topics.ORDER_EVENTS, topics.PAYMENT_EVENTS, topics.SHIPPING_EVENTS)
METHODS = ("alipay", "wechat_pay", "card")
OPTIONS = ("standard", "next_day", "scheduled")
CANCEL_REASONS: tuple[str, ...] = get_args(CancellationReason)
REJECT_REASONS = ("invalid_order", "order_id_conflict")
UNKNOWN, OTHER, UNSHIPPED = "unknown", "other", "none"
MAX_CARRIERS = 20  # carriers are the one open-ended label: past this many, the rest are "other"
# Placement -> completed in seconds. The sandbox completes in about a second; a real carrier booking takes minutes.
FULFILMENT_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 6 * 3600, 24 * 3600)
# Placement -> delivered in seconds: the carrier simulator delivers in a minute or so, a real parcel in 1-14 days.
HOUR, DAY = 3600, 24 * 3600
DELIVERY_BUCKETS = (10, 30, 60, 300, 1800, HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY, 3 * DAY, 5 * DAY, 7 * DAY, 14 * DAY)

Effect = Literal["counted", "unchanged", "ignored", "malformed"]
Dims = tuple[str, str, str]  # (payment method, shipping option, carrier)
Entry = tuple[datetime, str, Any]  # (when, figure, value): one contribution of an order to the figures
_MONEY: TypeAdapter[Decimal] = TypeAdapter(Money)
_TIME: TypeAdapter[datetime] = TypeAdapter(UtcDatetime)


# ------------------------------------------------------------------ the fold


@dataclass(slots=True)
class _Order:
    """What the book knows of one order: the earliest time of each fact, and its dimensions."""

    placed_at: datetime | None = None
    accepted_at: datetime | None = None
    authorized_at: datetime | None = None
    declined_at: datetime | None = None
    completed_at: datetime | None = None
    cancelled_at: datetime | None = None
    delivered_at: datetime | None = None  # the first record of the DELIVERED step
    delivered_step_at: datetime | None = None  # the carrier's time of it (the earliest DELIVERED step)
    delivery_observed: bool = False  # in the delivery histogram already
    captured: tuple[datetime, Decimal] | None = None
    refunded: tuple[datetime, Decimal] | None = None
    rejections: dict[str, tuple[datetime, str]] | None = None  # event_id -> (at, reason)
    cancel_reason: str = OTHER
    method: str = UNKNOWN
    option: str = UNKNOWN
    dims_accepted: bool = False  # method/option come from OrderAccepted (else OrderPlaced, or unknown)
    carrier: str = UNSHIPPED
    total: Decimal | None = None  # None: another currency (or not accepted)
    other_currency: bool = False

    @property
    def started_at(self) -> datetime | None:
        return self.placed_at or self.accepted_at

    @property
    def rejected_at(self) -> datetime | None:
        if self.accepted_at is not None or not self.rejections:
            return None
        return min(at for at, _ in self.rejections.values())

    @property
    def open(self) -> bool:
        return self.accepted_at is not None and self.completed_at is None and self.cancelled_at is None

    @property
    def fulfilment_seconds(self) -> float | None:
        start = self.started_at
        if self.completed_at is None or start is None:
            return None
        return max((self.completed_at - start).total_seconds(), 0.0)

    @property
    def delivery_seconds(self) -> float | None:
        start = self.started_at
        if self.delivered_step_at is None or start is None:
            return None
        return max((self.delivered_step_at - start).total_seconds(), 0.0)


def _state(o: _Order) -> tuple[Any, ...]:
    return (
        o.placed_at,
        o.accepted_at,
        o.authorized_at,
        o.declined_at,
        o.completed_at,
        o.cancelled_at,
        o.delivered_at,
        o.delivered_step_at,
        o.captured,
        o.refunded,
        o.carrier,
        o.method,
        o.option,
    )


def _earlier(known: datetime | None, at: datetime) -> tuple[datetime, bool]:
    """The earliest of the two times, and whether the fact is new."""
    if known is None:
        return at, True
    return min(known, at), False


def _label(value: Any, allowed: tuple[str, ...]) -> str:
    if value is None:
        return UNKNOWN
    return value if value in allowed else OTHER


def _money(value: Any) -> Decimal | None:
    try:
        return _MONEY.validate_python(value)
    except ValidationError:
        return None


def _time(value: Any) -> datetime | None:
    try:
        return _TIME.validate_python(value)
    except ValidationError:
        return None


def _sub(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = data.get(name)
    return value if isinstance(value, Mapping) else {}


@dataclass
class _Histogram:
    bounds: tuple[float, ...] = FULFILMENT_BUCKETS
    buckets: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.buckets = self.buckets or [0] * (len(self.bounds) + 1)

    def observe(self, seconds: float) -> None:
        for i, bound in enumerate(self.bounds):
            if seconds <= bound:
                self.buckets[i] += 1
                break
        else:
            self.buckets[-1] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        """The (le, count) pairs of a Prometheus histogram."""
        total, out = 0, []
        for bound, n in zip((*self.bounds, float("inf")), self.buckets, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else str(float(bound)), float(total)))
        return out


class KpiBook:
    """The fold: ``add`` every record of :data:`KPI_TOPICS`, then ask ``report()`` or scrape ``collector()``."""

    def __init__(self, *, counting_from: datetime | None = None) -> None:
        self.counting_from = counting_from or datetime.now(UTC)
        self._orders: dict[str, _Order] = {}
        self._carriers: set[str] = set()
        self._open = 0
        self._last_at: datetime | None = None
        # Prometheus counters: (metric, labels) -> value, raised when a fact first becomes known.
        self._counts: dict[tuple[str, tuple[str, ...]], float] = defaultdict(float)
        self._fulfilment: dict[tuple[str, str], _Histogram] = defaultdict(_Histogram)
        self._delivery: dict[tuple[str, str], _Histogram] = defaultdict(lambda: _Histogram(DELIVERY_BUCKETS))
        self._events: dict[tuple[str, str], int] = defaultdict(int)
        # What report() sums: per minute and (method, option, carrier), the figures of the facts in that minute;
        # and which orders have a fact in each minute, to count a window's partial first and last minutes exactly.
        self._cells: dict[datetime, dict[Dims, Tally]] = defaultdict(dict)
        self._minute_orders: dict[datetime, set[str]] = defaultdict(set)

    def __len__(self) -> int:
        return len(self._orders)

    def add(self, topic: str, event: Mapping[str, Any], at: datetime) -> None:
        """Fold one decoded record value; ``at`` is the record's timestamp. Unusable records are counted, not raised."""
        at = at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)
        kind = event.get("event_type")
        order_id = event.get("order_id")
        if topic not in KPI_TOPICS:
            self._events[(OTHER, "ignored")] += 1
            return
        if not isinstance(kind, str) or not isinstance(order_id, str) or not order_id:
            self._events[(topic, "malformed")] += 1
            return
        order = self._orders.get(order_id)
        fresh = order is None
        if order is None:
            order = _Order()
        if self._last_at is None or at > self._last_at:
            self._last_at = at
        was_open, dims, entries = order.open, (order.method, order.option, order.carrier), _entries(order)
        effect = self._apply(topic, kind, event, order, at, counted=at >= self.counting_from)
        self._events[(topic, effect)] += 1
        if effect != "counted":
            return
        if fresh:
            self._orders[order_id] = order
        self._open += int(order.open) - int(was_open)
        self._observe_delivery(order)
        self._recell(order_id, dims, entries, order)

    def _observe_delivery(self, o: _Order) -> None:
        """Into the histogram once both the delivery (from ``counting_from`` on) and the order's start are known."""
        if o.delivery_observed or o.delivered_at is None or o.delivered_at < self.counting_from:
            return
        seconds = o.delivery_seconds
        if seconds is not None:
            o.delivery_observed = True
            self._delivery[(o.method, o.carrier)].observe(seconds)

    def undated_deliveries(self, since: datetime | None = None) -> set[str]:
        """The orders delivered from ``since`` on whose start (placement, acceptance) was not read."""
        return {
            order_id
            for order_id, o in self._orders.items()
            if o.delivered_at is not None and o.started_at is None and (since is None or o.delivered_at >= since)
        }

    def _recell(self, order_id: str, dims: Dims, entries: list[Entry], order: _Order) -> None:
        """Move the order's contribution to the per-minute cells from what it was to what it is now."""
        now_dims, now_entries = (order.method, order.option, order.carrier), _entries(order)
        if now_dims == dims:  # the usual case: one fact added; only the entries that differ move
            before, after = Counter(entries), Counter(now_entries)
            entries, now_entries = list((before - after).elements()), list((after - before).elements())
        for cell_dims, moved, sign in ((dims, entries, -1), (now_dims, now_entries, 1)):
            for at, name, value in moved:
                minute = at.replace(second=0, microsecond=0)
                cells = self._cells[minute]
                cell = cells.get(cell_dims)
                if cell is None:
                    cell = cells[cell_dims] = Tally()
                cell.put(name, value, sign)
                if sign > 0:
                    self._minute_orders[minute].add(order_id)

    def _apply(self, topic: str, kind: str, e: Mapping[str, Any], o: _Order, at: datetime, *, counted: bool) -> Effect:
        """Record the fact the event states: counted (new, or earlier), unchanged (known), ignored or malformed."""
        before = _state(o)
        new = False
        match topic, kind:
            case topics.STOREFRONT_ORDERS, "OrderPlaced":
                if not o.dims_accepted:
                    o.method = _label(_sub(e, "payment").get("method"), METHODS)
                    o.option = _label(_sub(e, "shipping").get("option"), OPTIONS)
                o.placed_at, new = _earlier(o.placed_at, at)
                if new and counted:
                    self._count_order("placed", o)
            case topics.ORDER_EVENTS, "OrderAccepted":
                total = _money(e.get("total"))
                if total is None:
                    return "malformed"
                o.method = _label(_sub(e, "payment").get("method"), METHODS)
                o.option = _label(_sub(e, "shipping").get("option"), OPTIONS)
                o.dims_accepted = True
                o.other_currency = e.get("currency") != CURRENCY
                o.total = None if o.other_currency else total
                o.accepted_at, new = _earlier(o.accepted_at, at)
                if new and counted:
                    self._count_order("accepted", o)
                    if o.total is not None:
                        self._counts[("gmv", (o.method, o.option))] += float(o.total)
            case topics.ORDER_EVENTS, "OrderRejected":
                event_id = e.get("event_id")
                if not isinstance(event_id, str):
                    return "malformed"
                reason = _label(e.get("reason"), REJECT_REASONS)
                known = (o.rejections or {}).get(event_id)
                o.rejections = {**(o.rejections or {}), event_id: (min(known[0], at) if known else at, reason)}
                if known is None and counted:
                    self._counts[("rejections", (reason,))] += 1
                    if o.accepted_at is None and len(o.rejections) == 1:
                        self._count_order("rejected", o)
                return "counted" if known is None or at < known[0] else "unchanged"
            case topics.ORDER_EVENTS, "OrderCompleted":
                carrier = _sub(e, "shipment").get("carrier")
                if isinstance(carrier, str) and carrier:
                    o.carrier = self._carrier(carrier)
                o.completed_at, new = _earlier(o.completed_at, at)
                if new and counted:
                    self._count_order("completed", o)
                    seconds = o.fulfilment_seconds
                    if seconds is not None:
                        self._fulfilment[(o.method, o.carrier)].observe(seconds)
            case topics.ORDER_EVENTS, "OrderCancelled":
                o.cancel_reason = _label(e.get("reason"), CANCEL_REASONS)
                o.cancelled_at, new = _earlier(o.cancelled_at, at)
                if new and counted:
                    self._count_order("cancelled", o)
                    self._counts[("cancellations", (o.cancel_reason, o.method, o.option))] += 1
            case topics.PAYMENT_EVENTS, "PaymentAuthorized" | "PaymentDeclined":
                result = "authorized" if kind == "PaymentAuthorized" else "declined"
                if result == "authorized":
                    o.authorized_at, new = _earlier(o.authorized_at, at)
                else:
                    o.declined_at, new = _earlier(o.declined_at, at)
                if new and counted:
                    self._counts[("payments", (result, o.method))] += 1
            case topics.PAYMENT_EVENTS, "PaymentCaptured" | "PaymentRefunded":
                amount = _money(e.get("amount"))
                if amount is None:
                    return "malformed"
                if e.get("currency") != CURRENCY:
                    return "ignored"
                flow = "captured" if kind == "PaymentCaptured" else "refunded"
                prior = o.captured if flow == "captured" else o.refunded
                new = prior is None
                moved = (min(prior[0], at), prior[1]) if prior is not None else (at, amount)
                if flow == "captured":
                    o.captured = moved
                else:
                    o.refunded = moved
                if new and counted:
                    self._counts[("money", (flow, o.method))] += float(amount)
            case topics.SHIPPING_EVENTS, "ShipmentScheduled":
                carrier = e.get("carrier")
                if not isinstance(carrier, str) or not carrier:
                    return "malformed"
                o.carrier = self._carrier(carrier)
            case topics.SHIPPING_EVENTS, "ShipmentTracked":
                if e.get("milestone") != "DELIVERED":
                    return "ignored"  # the parcel's way there is no KPI
                carrier, step_at = e.get("carrier"), _time(e.get("at"))
                if not isinstance(carrier, str) or not carrier or step_at is None:
                    return "malformed"
                o.carrier = self._carrier(carrier)
                o.delivered_step_at, _ = _earlier(o.delivered_step_at, step_at)
                o.delivered_at, new = _earlier(o.delivered_at, at)
                if new and counted:
                    self._count_order("delivered", o)
            case _:
                return "ignored"
        return "counted" if before != _state(o) else "unchanged"

    def _carrier(self, name: str) -> str:
        if name in self._carriers:
            return name
        if len(self._carriers) < MAX_CARRIERS:
            self._carriers.add(name)
            return name
        return OTHER

    def _count_order(self, outcome: str, o: _Order) -> None:
        self._counts[("orders", (outcome, o.method, o.option, o.carrier))] += 1

    # -------------------------------------------------------------- report

    def report(
        self, *, since: datetime | None = None, until: datetime | None = None, bucket: Bucket = "hour"
    ) -> KpiReport:
        """The KPIs of ``[since, until)`` (open ends: everything the book holds), with a series per ``bucket``.

        Whole minutes are summed from per-minute cells, so a report costs the minutes it spans, not the orders;
        the window's partial first and last minutes are counted order by order.
        """
        if bucket not in STEP:
            raise ValueError(f"bucket must be one of {', '.join(STEP)}, not {bucket!r}")
        since = since.astimezone(UTC) if since is not None else None
        until = until.astimezone(UTC) if until is not None else None
        if since is not None and until is not None and until < since:
            raise ValueError("until is before since")
        minutes = sorted(self._cells)
        first = since if since is not None else (minutes[0] if minutes else None)
        last = until if until is not None else (minutes[-1] + STEP["minute"] if minutes else None)
        series_range = bucket_range(first, last, bucket)
        total = Tally()
        splits: dict[str, dict[str, Tally]] = {"method": {}, "option": {}, "carrier": {}}
        series: dict[datetime, Tally] = {}

        def tally(dims: Dims, minute: datetime) -> list[Tally]:
            method, option, carrier = dims
            return [
                total,
                splits["method"].setdefault(method, Tally()),
                splits["option"].setdefault(option, Tally()),
                splits["carrier"].setdefault(carrier, Tally()),
                series.setdefault(floor(minute, bucket), Tally()),
            ]

        edges = set()
        if since is not None and since != floor(since, "minute"):
            edges.add(floor(since, "minute"))
        if until is not None and until != floor(until, "minute"):
            edges.add(floor(until, "minute"))
        for minute in minutes:
            if minute in edges or (since is not None and minute < since) or (until is not None and minute >= until):
                continue
            for dims, cell in self._cells[minute].items():
                for t in tally(dims, minute):
                    t.merge(cell)
        for minute in edges:
            for order_id in self._minute_orders.get(minute, ()):
                o = self._orders[order_id]
                for at, name, value in _entries(o):
                    if (
                        floor(at, "minute") == minute
                        and (since is None or at >= since)
                        and (until is None or at < until)
                    ):
                        for t in tally((o.method, o.option, o.carrier), minute):
                            t.put(name, value, 1)
        return KpiReport(
            since=since,
            until=until,
            bucket=bucket,
            **dict(total.figures()),
            rejections_by_reason=total.prefixed("rejection:"),
            orders_other_currency=total.values.get("other_currency", 0),
            by_payment_method=split(splits["method"]),
            by_shipping_option=split(splits["option"]),
            by_carrier=split(splits["carrier"]),
            series=[(series.get(start) or Tally()).point(start) for start in series_range],
        )

    # -------------------------------------------------------------- Prometheus

    def collector(self) -> Collector:
        """The ``fulfil_kpi_*`` metrics of this book, for a registry (``REGISTRY.register(book.collector())``)."""
        return _KpiCollector(self)

    def metrics(self) -> Iterator[Metric]:
        """The metric families, computed from the counters at the time of the scrape."""
        families: dict[str, CounterMetricFamily] = {
            "orders": CounterMetricFamily(
                "fulfil_kpi_orders",
                "Orders by outcome (placed, accepted, rejected, completed, cancelled, delivered) on the topics",
                labels=["outcome", "method", "option", "carrier"],
            ),
            "gmv": CounterMetricFamily(
                "fulfil_kpi_gmv_cny", "GMV: totals of accepted orders in CNY", labels=["method", "option"]
            ),
            "payments": CounterMetricFamily(
                "fulfil_kpi_payments", "Payment answers: authorized or declined", labels=["result", "method"]
            ),
            "cancellations": CounterMetricFamily(
                "fulfil_kpi_cancellations", "Cancelled orders by reason", labels=["reason", "method", "option"]
            ),
            "rejections": CounterMetricFamily("fulfil_kpi_rejections", "Refused placements", labels=["reason"]),
            "money": CounterMetricFamily(
                "fulfil_kpi_money_cny", "Money moved in CNY: captured or refunded", labels=["flow", "method"]
            ),
        }
        for (metric, labels), value in sorted(self._counts.items()):
            families[metric].add_metric(list(labels), value)
        yield from families.values()
        histogram = HistogramMetricFamily(
            "fulfil_kpi_fulfilment_seconds",
            "Placement to OrderCompleted, per payment method and carrier",
            labels=["method", "carrier"],
        )
        for (method, carrier), h in sorted(self._fulfilment.items()):
            histogram.add_metric([method, carrier], h.cumulative(), h.total)
        yield histogram
        delivery = HistogramMetricFamily(
            "fulfil_kpi_delivery_seconds",
            "Placement to the carrier's time of delivery, per payment method and carrier",
            labels=["method", "carrier"],
        )
        for (method, carrier), h in sorted(self._delivery.items()):
            delivery.add_metric([method, carrier], h.cumulative(), h.total)
        yield delivery
        yield GaugeMetricFamily("fulfil_kpi_orders_open", "Accepted orders not yet completed or cancelled", self._open)
        events = CounterMetricFamily(
            "fulfil_kpi_events",
            "Records read: counted (a new fact), unchanged (a repeat), ignored (no KPI in it), malformed",
            labels=["topic", "effect"],
        )
        for (topic, effect), n in sorted(self._events.items()):
            events.add_metric([topic, effect], n)
        yield events
        yield GaugeMetricFamily(
            "fulfil_kpi_last_event_timestamp_seconds",
            "Kafka timestamp of the newest record folded (0: none yet)",
            self._last_at.timestamp() if self._last_at else 0.0,
        )


class _KpiCollector(Collector):
    def __init__(self, book: KpiBook) -> None:
        self.book = book

    def collect(self) -> Iterable[Metric]:
        return list(self.book.metrics())


# ------------------------------------------------------------------ report helpers (pure)


def _entries(o: _Order) -> list[Entry]:
    """The order's contributions to the figures, each at the time of the fact that makes it."""
    out: list[Entry] = []
    if o.placed_at is not None:
        out.append((o.placed_at, "placed", 1))
    if o.accepted_at is not None:
        out.append((o.accepted_at, "accepted", 1))
        if o.total is not None:
            out += [(o.accepted_at, "gmv", o.total), (o.accepted_at, "gmv_orders", 1)]
        if o.other_currency:
            out.append((o.accepted_at, "other_currency", 1))
    if (rejected_at := o.rejected_at) is not None:
        out.append((rejected_at, "rejected", 1))
    out += [(at, f"rejection:{reason}", 1) for at, reason in (o.rejections or {}).values()]
    if o.authorized_at is not None:
        out.append((o.authorized_at, "authorized", 1))
    if o.declined_at is not None:
        out.append((o.declined_at, "declined", 1))
    if o.completed_at is not None:
        out.append((o.completed_at, "completed", 1))
        if (seconds := o.fulfilment_seconds) is not None:
            out.append((o.completed_at, "duration", seconds))
    if o.cancelled_at is not None:
        out += [(o.cancelled_at, "cancelled", 1), (o.cancelled_at, f"reason:{o.cancel_reason}", 1)]
    if o.delivered_at is not None:
        out.append((o.delivered_at, "delivered", 1))
        if (seconds := o.delivery_seconds) is not None:
            out.append((o.delivered_at, "delivery", seconds))
    if o.captured is not None:
        out.append((o.captured[0], "captured", o.captured[1]))
    if o.refunded is not None:
        out.append((o.refunded[0], "refunded", o.refunded[1]))
    return out
