"""The KPI fold (tools/ops/kpi/): made-up histories of contract events in, figures out."""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shared import topics
from shared.events.base import EmittedEvent, Event
from shared.events.order import (
    OrderAccepted,
    OrderCancelled,
    OrderCompleted,
    OrderRejected,
    ShipmentInfo,
)
from shared.events.payment import (
    PaymentAuthorized,
    PaymentCaptured,
    PaymentDeclined,
    PaymentRefunded,
    PaymentVoided,
)
from shared.events.shipping import (
    Milestone,
    ShipmentCancelled,
    ShipmentIntercepted,
    ShipmentScheduled,
    ShipmentTracked,
)
from shared.events.storefront import OrderPlaced
from tests.unit.factories import order_placed_data
from tools.ops import topic_log
from tools.ops.kpi import read
from tools.ops.kpi.book import KpiBook
from tools.ops.kpi.report import KpiReport

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
Record = tuple[str, dict[str, Any], datetime]
CARRIERS = {"next_day": "SF Express", "standard": "JD Logistics", "scheduled": "JD Logistics"}


@dataclass
class Saga:
    """One order's events as the services write them (real contract models), each at ``start + seconds``."""

    order_id: str
    start: datetime = T0
    method: str = "alipay"
    option: str = "next_day"
    total: str = "79.80"
    currency: str = "CNY"
    records: list[Record] = field(default_factory=list)

    def _add(self, topic: str, event: Event, seconds: float) -> Saga:
        self.records.append((topic, json.loads(event.model_dump_json()), self.start + timedelta(seconds=seconds)))
        return self

    def _then(self, model: type[EmittedEvent], **fields: Any) -> EmittedEvent:
        return model(event_id=uuid.uuid4(), order_id=self.order_id, occurred_at=self.start, **fields)

    def placed(self, seconds: float = 0) -> Saga:
        data = {**self._placed_data(), "event_id": str(uuid.uuid4())}
        return self._add(topics.STOREFRONT_ORDERS, OrderPlaced.model_validate(data), seconds)

    def accepted(self, seconds: float = 0.1) -> Saga:
        placed = OrderPlaced.model_validate(self._placed_data())
        event = self._then(
            OrderAccepted,
            customer=placed.customer,
            lines=placed.lines,
            total=Decimal(self.total),
            currency=self.currency,
            payment=placed.payment,
            shipping=placed.shipping,
        )
        return self._add(topics.ORDER_EVENTS, event, seconds)

    def _placed_data(self) -> dict[str, Any]:
        shipping = {**order_placed_data()["shipping"], "option": self.option}
        if self.option == "scheduled":
            shipping["scheduled_date"] = "2026-11-30"
        return order_placed_data(
            order_id=self.order_id,
            currency=self.currency,
            payment={"method": self.method, "token": "tok_ok"},
            shipping=shipping,
            lines=[{"sku": "SKU-RED-MUG", "quantity": 1, "unit_price": self.total}],
        )

    def rejected(self, reason: str = "invalid_order", seconds: float = 0.1) -> Saga:
        return self._add(topics.ORDER_EVENTS, self._then(OrderRejected, reason=reason), seconds)

    def authorized(self, seconds: float = 0.2) -> Saga:
        event = self._then(PaymentAuthorized, amount=Decimal(self.total), currency=self.currency, authorization_id="a")
        return self._add(topics.PAYMENT_EVENTS, event, seconds)

    def declined(self, seconds: float = 0.2) -> Saga:
        return self._add(topics.PAYMENT_EVENTS, self._then(PaymentDeclined, reason="payment_declined"), seconds)

    def scheduled(self, seconds: float = 0.4) -> Saga:
        event = self._then(
            ShipmentScheduled,
            carrier=CARRIERS[self.option],
            tracking_number=f"T-{self.order_id}",
            promised_date=date(2026, 11, 26),
        )
        return self._add(topics.SHIPPING_EVENTS, event, seconds)

    def captured(self, seconds: float = 0.5) -> Saga:
        event = self._then(PaymentCaptured, amount=Decimal(self.total), currency=self.currency, capture_id="c")
        return self._add(topics.PAYMENT_EVENTS, event, seconds)

    def completed(self, seconds: float = 0.6) -> Saga:
        shipment = ShipmentInfo(
            carrier=CARRIERS[self.option], tracking_number=f"T-{self.order_id}", promised_date=date(2026, 11, 26)
        )
        event = self._then(OrderCompleted, total=Decimal(self.total), currency=self.currency, shipment=shipment)
        return self._add(topics.ORDER_EVENTS, event, seconds)

    def cancelled(self, reason: str, seconds: float = 0.7) -> Saga:
        return self._add(topics.ORDER_EVENTS, self._then(OrderCancelled, reason=reason), seconds)

    def voided(self, seconds: float = 0.8) -> Saga:
        event = self._then(PaymentVoided, amount=Decimal(self.total), currency=self.currency)
        return self._add(topics.PAYMENT_EVENTS, event, seconds)

    def refunded(self, seconds: float = 0.8) -> Saga:
        event = self._then(PaymentRefunded, amount=Decimal(self.total), currency=self.currency, refund_id="r")
        return self._add(topics.PAYMENT_EVENTS, event, seconds)

    def called_back(self, seconds: float = 0.8) -> Saga:
        event = self._then(ShipmentCancelled, tracking_number=f"T-{self.order_id}")
        return self._add(topics.SHIPPING_EVENTS, event, seconds)

    def tracked(self, milestone: Milestone, seconds: float, *, carrier_at: float | None = None) -> Saga:
        """The carrier's step at ``start + carrier_at`` (default: ``seconds``), read at ``start + seconds``."""
        event = self._then(
            ShipmentTracked,
            carrier=CARRIERS[self.option],
            tracking_number=f"T-{self.order_id}",
            milestone=milestone,
            at=self.start + timedelta(seconds=seconds if carrier_at is None else carrier_at),
            location="深圳 <b>南山</b>",
            description=f"{milestone.lower()} & signed",
        )
        return self._add(topics.SHIPPING_EVENTS, event, seconds)

    def delivered(self, seconds: float = 3600, *, carrier_at: float | None = None) -> Saga:
        """The parcel's way: picked up, in transit, out for delivery, delivered (carrier's time ``carrier_at``)."""
        at = seconds if carrier_at is None else carrier_at
        way: tuple[Milestone, ...] = ("PICKED_UP", "IN_TRANSIT", "OUT_FOR_DELIVERY")
        for i, milestone in enumerate(way, start=1):
            self.tracked(milestone, seconds * i / 4, carrier_at=at * i / 4)
        return self.tracked("DELIVERED", seconds, carrier_at=at)

    def intercepted(self, seconds: float = 900) -> Saga:
        event = self._then(
            ShipmentIntercepted,
            carrier=CARRIERS[self.option],
            tracking_number=f"T-{self.order_id}",
            reason="picked_up",
        )
        return self._add(topics.SHIPPING_EVENTS, event, seconds)

    # The saga's usual endings (docs/events.md)
    def completes(self, seconds: float = 0.6) -> Saga:
        return self.placed().accepted().authorized().scheduled().captured().completed(seconds)

    def is_declined(self) -> Saga:
        return self.placed().accepted().declined().cancelled("payment_declined")

    def is_out_of_stock(self) -> Saga:
        return self.placed().accepted().authorized().cancelled("out_of_stock").voided()

    def is_refunded(self) -> Saga:
        return self.placed().accepted().authorized().scheduled().captured().cancelled("customer_request").refunded()


def fold(records: list[Record], **book: Any) -> KpiBook:
    kpis = KpiBook(counting_from=book.pop("counting_from", T0 - timedelta(days=1)), **book)
    for topic, event, at in records:
        kpis.add(topic, event, at)
    return kpis


def figures(report: KpiReport) -> dict[str, Any]:
    """The report's top-level figures as JSON (splits and series left out)."""
    splits = {"series", "by_payment_method", "by_shipping_option", "by_carrier"}
    data: dict[str, Any] = json.loads(report.model_dump_json(exclude=splits))
    return data


# ------------------------------------------------------------------ what counts


CASES: list[tuple[str, list[Record], dict[str, Any]]] = [
    (
        "a completed order",
        Saga("A").completes(seconds=2.5).records,
        {
            "orders_placed": 1,
            "orders_accepted": 1,
            "orders_completed": 1,
            "orders_cancelled": 0,
            "gmv": "79.80",
            "aov": "79.80",
            "payments_attempted": 1,
            "payment_success_rate": 1.0,
            "cancellation_rate": 0.0,
            "captured": "79.80",
            "net_revenue": "79.80",
            "fulfilment_p50_seconds": 2.5,
            "fulfilment_p95_seconds": 2.5,
        },
    ),
    (
        "every record delivered twice counts once",
        Saga("A").completes().records * 2,
        {"orders_placed": 1, "orders_accepted": 1, "orders_completed": 1, "gmv": "79.80", "captured": "79.80"},
    ),
    (
        "a storefront's retry of the same order (new event_id) is one placement",
        Saga("A").placed().placed(seconds=3).accepted(seconds=0.1).records,
        {"orders_placed": 1, "orders_accepted": 1},
    ),
    (
        "a declined payment cancels; GMV keeps the accepted order, no money moved",
        Saga("D").is_declined().records,
        {
            "orders_accepted": 1,
            "orders_cancelled": 1,
            "cancellations_by_reason": {"payment_declined": 1},
            "payments_attempted": 1,
            "payments_declined": 1,
            "payment_success_rate": 0.0,
            "cancellation_rate": 1.0,
            "gmv": "79.80",
            "captured": "0.00",
            "fulfilment_p50_seconds": None,
        },
    ),
    (
        "a cancellation after authorisation counts the payment as a success, and moves no money (void)",
        Saga("S").is_out_of_stock().records,
        {
            "payment_success_rate": 1.0,
            "orders_cancelled": 1,
            "cancellations_by_reason": {"out_of_stock": 1},
            "captured": "0.00",
            "refunded": "0.00",
            "net_revenue": "0.00",
        },
    ),
    (
        "a refund after capture is subtracted from net revenue, not from GMV",
        Saga("R").is_refunded().records,
        {
            "gmv": "79.80",
            "captured": "79.80",
            "refunded": "79.80",
            "net_revenue": "0.00",
            "orders_cancelled": 1,
            "cancellations_by_reason": {"customer_request": 1},
        },
    ),
    (
        "a rejected placement is placed and rejected, never accepted",
        Saga("X").placed().rejected("invalid_order").records,
        {
            "orders_placed": 1,
            "orders_accepted": 0,
            "orders_rejected": 1,
            "rejections_by_reason": {"invalid_order": 1},
            "gmv": "0.00",
            "aov": None,
            "cancellation_rate": None,
            "payment_success_rate": None,
        },
    ),
    (
        "a second order under a known id is refused, the first order is not rejected",
        Saga("C").completes().rejected("order_id_conflict", seconds=5).records,
        {"orders_rejected": 0, "orders_completed": 1, "rejections_by_reason": {"order_id_conflict": 1}},
    ),
    (
        "two refusals in the same millisecond are two refusals of one rejected order",
        Saga("T").placed().rejected(seconds=1).rejected(seconds=1).records,
        {"orders_rejected": 1, "rejections_by_reason": {"invalid_order": 2}},
    ),
    (
        "an order in another currency is counted, its money left out",
        Saga("U", currency="USD").completes().records,
        {"orders_accepted": 1, "orders_other_currency": 1, "gmv": "0.00", "aov": None, "captured": "0.00"},
    ),
    (
        "a delivered order: delivered, its delivery time by the carrier's clock from the placement's record",
        Saga("DL").completes(seconds=2).delivered(seconds=7205, carrier_at=7200).records,
        {
            "orders_completed": 1,
            "orders_delivered": 1,
            "delivery_p50_seconds": 7200.0,
            "delivery_p95_seconds": 7200.0,
            "fulfilment_p50_seconds": 2.0,  # fulfilment still ends at completion
        },
    ),
    (
        "a DELIVERED step replayed (same event) and announced again (a second step) counts once, the earliest",
        Saga("DR").completes().delivered(seconds=5000).records * 2
        + Saga("DR").tracked("DELIVERED", 5100, carrier_at=4990).tracked("DELIVERED", 5200, carrier_at=5060).records,
        {"orders_delivered": 1, "delivery_p50_seconds": 4990.0, "delivery_p95_seconds": 4990.0},
    ),
    (
        "a parcel on its way, or intercepted, is not delivered",
        Saga("DW").completes().tracked("PICKED_UP", 600).tracked("IN_TRANSIT", 900).records
        + Saga("DI").completes().tracked("PICKED_UP", 600).cancelled("customer_request", 800).intercepted().records,
        {"orders_completed": 2, "orders_delivered": 0, "delivery_p50_seconds": None},
    ),
    (
        "an order not placed here starts at its acceptance; a carrier clock before it gives 0, not a negative time",
        Saga("DA").accepted(seconds=10).tracked("DELIVERED", 100, carrier_at=70).records
        + Saga("DS").placed(seconds=10).tracked("DELIVERED", 100, carrier_at=5).records,
        {"orders_delivered": 2, "delivery_p50_seconds": 30.0, "delivery_p95_seconds": 57.0},  # 60 s and 0 s
    ),
    (
        "AOV is GMV over accepted orders, rounded half-up to the fen",
        Saga("A1", total="10.00").placed().accepted().records
        + Saga("A2", total="10.00").placed().accepted().records
        + Saga("A3", total="10.01").placed().accepted().records,
        {"orders_accepted": 3, "gmv": "30.01", "aov": "10.00"},
    ),
]


@pytest.mark.parametrize(("records", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_figures(records: list[Record], expected: dict[str, Any]) -> None:
    got = figures(fold(records).report())
    assert {k: got[k] for k in expected} == expected


def test_splits_per_payment_method_shipping_option_and_carrier() -> None:
    records = (
        Saga("M1", method="alipay", option="next_day", total="100.00").completes().records
        + Saga("M2", method="wechat_pay", option="standard", total="50.00").completes().records
        + Saga("M3", method="wechat_pay", option="scheduled", total="30.00").completes().records
        + Saga("M4", method="card", option="standard", total="20.00").is_declined().records
    )
    report = fold(records).report()

    method = {k: (f.orders_accepted, str(f.gmv), f.payment_success_rate) for k, f in report.by_payment_method.items()}
    assert method == {
        "alipay": (1, "100.00", 1.0),
        "card": (1, "20.00", 0.0),
        "wechat_pay": (2, "80.00", 1.0),
    }
    assert {k: f.orders_accepted for k, f in report.by_shipping_option.items()} == {
        "next_day": 1,
        "scheduled": 1,
        "standard": 2,
    }
    carrier = {k: (f.orders_completed, f.orders_cancelled) for k, f in report.by_carrier.items()}
    assert carrier == {"JD Logistics": (2, 0), "SF Express": (1, 0), "none": (0, 1)}
    assert str(report.gmv) == "200.00"
    assert str(report.by_payment_method["wechat_pay"].aov) == "40.00"


def test_method_named_by_an_event_read_later_still_attributes_the_earlier_facts() -> None:
    saga = Saga("L", method="card").completes()
    payment_first = sorted(saga.records, key=lambda r: r[0] != topics.PAYMENT_EVENTS)

    report = fold(payment_first).report()

    assert list(report.by_payment_method) == ["card"]
    assert report.by_payment_method["card"].payments_authorized == 1


def test_unknown_and_out_of_contract_values_are_bounded_labels() -> None:
    saga = Saga("Q").completes()
    for _, event, _ in saga.records:
        if "payment" in event:
            event["payment"]["method"] = "paypal"  # not in the contract: "other", never a new label
    only_payment = Saga("P").authorized().records  # its OrderAccepted was never read: "unknown"

    report = fold(saga.records + only_payment).report()

    assert set(report.by_payment_method) == {"other", "unknown"}


@pytest.mark.parametrize("seed", range(5))
def test_the_fold_does_not_depend_on_the_order_records_arrive_in(seed: int) -> None:
    records = (
        Saga("O1").completes(seconds=3).records
        + Saga("O2", method="card").is_refunded().records
        + Saga("O3").is_declined().records
        + Saga("O4").placed().rejected().records
        + Saga("O5").placed().placed(seconds=9).records
        + Saga("O6", option="standard").completes().delivered(seconds=4000, carrier_at=3990).records * 2
        + Saga("O7").completes().delivered(seconds=3000).tracked("DELIVERED", 3100, carrier_at=2900).records
        + Saga("O7").tracked("DELIVERED", 3200, carrier_at=3050).records
    )
    shuffled = random.Random(seed).sample(records, len(records))

    report = fold(shuffled).report(bucket="minute")

    assert report == fold(records).report(bucket="minute")
    assert (report.orders_delivered, report.delivery_p50_seconds, report.delivery_p95_seconds) == (2, 3445.0, 3935.5)
    assert report.by_carrier["JD Logistics"].delivery_p50_seconds == 3990.0
    assert sum(p.orders_delivered for p in report.series) == 2


def test_malformed_records_are_skipped_and_counted_not_raised() -> None:
    delivered = Saga("Z").tracked("DELIVERED", 60).records[0][1]
    kpis = fold(
        [
            (topics.ORDER_EVENTS, {"event_type": "OrderAccepted"}, T0),  # no order id
            (topics.ORDER_EVENTS, {"event_type": "OrderAccepted", "order_id": "Z", "total": 79.8}, T0),  # a float
            (topics.ORDER_EVENTS, {"event_type": "OrderAccepted", "order_id": "Z", "total": "1E+30"}, T0),
            (topics.PAYMENT_EVENTS, {"event_type": "PaymentCaptured", "order_id": "Z", "amount": None}, T0),
            (topics.SHIPPING_EVENTS, {"event_type": "ShipmentScheduled", "order_id": "Z", "carrier": 7}, T0),
            ("elsewhere", {"event_type": "OrderAccepted", "order_id": "Z"}, T0),
            (topics.SHIPPING_EVENTS, {**delivered, "at": "2026-11-25T08:00:00"}, T0),  # no time zone
            (topics.SHIPPING_EVENTS, {**delivered, "at": "yesterday"}, T0),
            (topics.SHIPPING_EVENTS, {**delivered, "carrier": ""}, T0),
        ]
    )

    report = kpis.report()

    assert (report.orders_accepted, str(report.gmv), str(report.captured)) == (0, "0.00", "0.00")
    assert report.orders_delivered == 0
    assert len(kpis) == 0
    assert sample(kpis, "fulfil_kpi_events_total", topic="order.events", effect="malformed") == 3
    assert sample(kpis, "fulfil_kpi_events_total", topic="shipping.events", effect="malformed") == 4
    assert sample(kpis, "fulfil_kpi_events_total", topic="other", effect="ignored") == 1


# ------------------------------------------------------------------ percentiles, windows and buckets


def test_fulfilment_percentiles_interpolate_between_closest_ranks() -> None:
    records = [r for i in range(1, 101) for r in Saga(f"P{i}", start=T0 + timedelta(seconds=i)).completes(i).records]

    report = fold(records).report()

    assert (report.fulfilment_p50_seconds, report.fulfilment_p95_seconds) == (50.5, 95.05)
    assert report.orders_completed == 100


def test_a_window_counts_each_fact_when_it_happened() -> None:
    # Accepted at 08:59:59, completed at 09:00:01: accepted in the 08:00 hour, completed in the 09:00 hour.
    late = Saga("W", start=T0 + timedelta(minutes=59, seconds=59)).completes(seconds=2)
    book = fold(late.records)
    nine = T0 + timedelta(hours=1)

    before = book.report(since=T0, until=nine)
    after = book.report(since=nine, until=nine + timedelta(hours=1))

    assert (before.orders_accepted, before.orders_completed, str(before.gmv)) == (1, 0, "79.80")
    assert (after.orders_accepted, after.orders_completed, str(after.gmv)) == (0, 1, "0.00")
    assert after.fulfilment_p50_seconds == 2.0  # its placement, before the window, is still known
    assert after.cancellation_rate == 0.0


def test_a_delivery_counts_in_the_window_of_its_record_and_its_time_runs_from_a_placement_before_it() -> None:
    # Placed at 08:00; the carrier says delivered at 09:59:50, its push is read at 10:00:05.
    saga = Saga("WD").completes().delivered(seconds=2 * 3600 + 5, carrier_at=2 * 3600 - 10)
    book = fold(saga.records)
    ten = T0 + timedelta(hours=2)

    before = book.report(since=ten - timedelta(hours=1), until=ten)
    after = book.report(since=ten, until=ten + timedelta(hours=1), bucket="minute")

    assert (before.orders_delivered, before.delivery_p50_seconds) == (0, None)
    assert (after.orders_delivered, after.delivery_p50_seconds, after.orders_placed) == (1, 7190.0, 0)
    assert [p.orders_delivered for p in after.series[:2]] == [1, 0]
    assert after.by_payment_method["alipay"].orders_delivered == 1  # its method, from the acceptance hours before


def test_delivery_percentiles_interpolate_between_closest_ranks_per_carrier_too() -> None:
    records = []
    for i in range(1, 101):
        saga = Saga(f"DP{i}", option="next_day" if i % 2 else "standard").completes()
        records += saga.delivered(seconds=60 * i + 30, carrier_at=60 * i).records
    report = fold(random.Random(7).sample(records, len(records))).report()

    assert (report.orders_delivered, report.delivery_p50_seconds, report.delivery_p95_seconds) == (100, 3030.0, 5703.0)
    sf, jd = report.by_carrier["SF Express"], report.by_carrier["JD Logistics"]
    assert (sf.orders_delivered, sf.delivery_p50_seconds) == (50, 3000.0)  # odd minutes 1..99
    assert (jd.orders_delivered, jd.delivery_p50_seconds) == (50, 3060.0)  # even minutes 2..100


def test_the_carrier_of_a_delivery_is_known_from_the_delivery_alone() -> None:
    # Its ShipmentScheduled and OrderCompleted are older than what was read; the ShipmentTracked names the carrier.
    report = fold(Saga("DC", option="standard").placed().accepted().delivered(seconds=900).records).report()

    assert list(report.by_carrier) == ["JD Logistics"]
    assert report.by_carrier["JD Logistics"].orders_delivered == 1


def test_until_is_exclusive_and_since_inclusive() -> None:
    book = fold(Saga("E").placed().records)

    assert book.report(since=T0).orders_placed == 1
    assert book.report(until=T0).orders_placed == 0


@pytest.mark.parametrize("seed", range(5))
def test_any_window_counts_exactly_the_facts_inside_it_partial_minutes_included(seed: int) -> None:
    rng = random.Random(seed)
    sagas = [Saga(f"R{i}", start=T0 + timedelta(seconds=rng.uniform(0, 600))) for i in range(60)]
    for saga in sagas:
        saga.completes(seconds=rng.uniform(1, 120))
    book = fold([r for saga in sagas for r in saga.records])

    for _ in range(20):
        since = T0 + timedelta(seconds=rng.uniform(-60, 700))
        until = since + timedelta(seconds=rng.uniform(0, 400))
        report = book.report(since=since, until=until, bucket="minute")

        inside = Counter(e["event_type"] for s in sagas for _, e, at in s.records if since <= at < until)

        assert report.orders_placed == inside["OrderPlaced"]
        assert report.orders_completed == inside["OrderCompleted"]
        assert report.captured == Decimal("79.80") * inside["PaymentCaptured"]
        assert sum(p.orders_completed for p in report.series) == report.orders_completed


@pytest.mark.parametrize(
    ("bucket", "starts", "placed"),
    [
        ("minute", ["08:00", "08:01", "08:02", "08:03"], [1, 0, 0, 2]),
        ("hour", ["08:00"], [3]),
        ("day", ["00:00"], [3]),
    ],
)
def test_series_has_every_bucket_of_the_window_empty_ones_as_zero(
    bucket: Any, starts: list[str], placed: list[int]
) -> None:
    records = (
        Saga("B1").placed().accepted().records
        + Saga("B2", start=T0 + timedelta(minutes=3, seconds=10)).placed().accepted().records
        + Saga("B3", start=T0 + timedelta(minutes=3, seconds=50), total="20.20").placed().accepted().records
    )

    series = fold(records).report(since=T0, until=T0 + timedelta(minutes=4), bucket=bucket).series

    assert [p.start.strftime("%H:%M") for p in series] == starts
    assert [p.orders_placed for p in series] == placed
    assert sum((p.gmv for p in series), Decimal(0)) == Decimal("179.80")


def test_a_bad_bucket_or_window_is_refused_with_the_reason() -> None:
    book = fold(Saga("F").placed().records)
    with pytest.raises(ValueError, match="bucket must be one of minute, hour, day"):
        book.report(bucket="week")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="until is before since"):
        book.report(since=T0, until=T0 - timedelta(hours=1))
    with pytest.raises(ValueError, match="too many"):
        book.report(since=T0 - timedelta(days=30), bucket="minute")


def test_the_report_is_json_with_money_as_decimal_strings() -> None:
    report = fold(Saga("J", total="0.10").completes().records + Saga("K", total="0.20").completes().records).report()

    data = json.loads(report.model_dump_json())

    assert data["gmv"] == "0.30"  # 0.1 + 0.2, exactly
    assert data["by_payment_method"]["alipay"]["captured"] == "0.30"
    assert KpiReport.model_validate_json(report.model_dump_json()) == report


# ------------------------------------------------------------------ Prometheus


def scrape(book: KpiBook) -> dict[str, Any]:
    registry = CollectorRegistry()
    registry.register(book.collector())
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(book: KpiBook, name: str, **labels: str) -> float:
    families = scrape(book)
    found = [
        s.value
        for f in families.values()
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return float(sum(found))


def test_the_collector_exposes_the_kpis_as_prometheus_metrics() -> None:
    records = (
        Saga("G1", method="alipay", option="next_day", total="100.00").completes(seconds=1.5).records
        + Saga("G2", method="wechat_pay", option="standard", total="50.00").is_out_of_stock().records
        + Saga("G3", method="card", total="10.00").is_refunded().records
        + Saga("G4").placed().rejected().records
    )
    book = fold(records + records)  # delivered twice

    assert sample(book, "fulfil_kpi_orders_total", outcome="accepted") == 3
    completed = {"outcome": "completed", "method": "alipay", "option": "next_day", "carrier": "SF Express"}
    assert sample(book, "fulfil_kpi_orders_total", **completed) == 1
    assert sample(book, "fulfil_kpi_orders_total", outcome="rejected") == 1
    assert sample(book, "fulfil_kpi_gmv_cny_total") == 160.0
    assert sample(book, "fulfil_kpi_gmv_cny_total", method="wechat_pay") == 50.0
    assert sample(book, "fulfil_kpi_payments_total", result="authorized") == 3
    assert sample(book, "fulfil_kpi_cancellations_total", reason="out_of_stock", method="wechat_pay") == 1
    assert sample(book, "fulfil_kpi_cancellations_total", reason="customer_request") == 1
    assert sample(book, "fulfil_kpi_money_cny_total", flow="refunded", method="card") == 10.0
    assert sample(book, "fulfil_kpi_rejections_total", reason="invalid_order") == 1
    assert sample(book, "fulfil_kpi_fulfilment_seconds_count", method="alipay", carrier="SF Express") == 1
    assert sample(book, "fulfil_kpi_fulfilment_seconds_bucket", method="alipay", le="1.0") == 0
    assert sample(book, "fulfil_kpi_fulfilment_seconds_bucket", method="alipay", le="2.0") == 1
    assert sample(book, "fulfil_kpi_fulfilment_seconds_sum") == 1.5
    assert sample(book, "fulfil_kpi_orders_open") == 0
    assert sample(book, "fulfil_kpi_events_total", effect="unchanged") == len(records) - 1  # the void: ignored
    assert sample(book, "fulfil_kpi_events_total", effect="ignored") == 2
    assert sample(book, "fulfil_kpi_last_event_timestamp_seconds") == max(at for *_, at in records).timestamp()


def test_counters_count_from_counting_from_so_a_rereading_console_does_not_burst() -> None:
    history = Saga("H1").completes().records
    live = Saga("H2", start=T0 + timedelta(hours=1)).placed().accepted().records

    book = fold(history + live, counting_from=T0 + timedelta(hours=1))

    assert sample(book, "fulfil_kpi_orders_total", outcome="accepted") == 1
    assert sample(book, "fulfil_kpi_orders_total", outcome="completed") == 0
    assert sample(book, "fulfil_kpi_orders_open") == 1  # a gauge: the state, whenever it began
    assert book.report().orders_accepted == 2  # the report answers for any window


def test_carrier_labels_are_capped() -> None:
    records = []
    for i in range(25):
        saga = Saga(f"N{i}").completes()
        for _, event, _ in saga.records:
            if "shipment" in event:
                event["shipment"]["carrier"] = f"Carrier {i}"
            if "carrier" in event:
                event["carrier"] = f"Carrier {i}"
        records += saga.records

    carriers = {
        s.labels["carrier"]
        for s in scrape(fold(records))["fulfil_kpi_orders"].samples
        if s.labels["outcome"] == "completed"
    }

    assert len(carriers) == 21
    assert "other" in carriers


def test_deliveries_are_counted_once_and_their_times_observed_once() -> None:
    records = (
        Saga("V1", method="card").completes().delivered(seconds=7200, carrier_at=7000).records
        + Saga("V2", option="standard").completes().delivered(seconds=4 * 86400).records
        + Saga("V3").completes().tracked("PICKED_UP", 600).intercepted().records
    )
    book = fold(records + records)  # delivered twice

    delivered = {"outcome": "delivered", "method": "card", "option": "next_day", "carrier": "SF Express"}
    assert sample(book, "fulfil_kpi_orders_total", **delivered) == 1
    assert sample(book, "fulfil_kpi_orders_total", outcome="delivered") == 2
    assert sample(book, "fulfil_kpi_delivery_seconds_count") == 2
    assert sample(book, "fulfil_kpi_delivery_seconds_count", method="card", carrier="SF Express") == 1
    assert sample(book, "fulfil_kpi_delivery_seconds_bucket", method="card", le="3600.0") == 0
    assert sample(book, "fulfil_kpi_delivery_seconds_bucket", method="card", le="21600.0") == 1
    assert sample(book, "fulfil_kpi_delivery_seconds_bucket", carrier="JD Logistics", le="259200.0") == 0
    assert sample(book, "fulfil_kpi_delivery_seconds_bucket", carrier="JD Logistics", le="432000.0") == 1
    assert sample(book, "fulfil_kpi_delivery_seconds_sum") == 7000 + 4 * 86400
    # The way there (3 steps x 2 parcels, and V3's pickup) and the interception are no KPI, twice over.
    assert sample(book, "fulfil_kpi_events_total", topic="shipping.events", effect="ignored") == 2 * 8


def test_a_delivery_read_before_its_placement_is_observed_when_the_placement_arrives() -> None:
    saga = Saga("VB").completes().delivered(seconds=500)
    book = fold([r for r in saga.records if r[2] > T0 + timedelta(seconds=300)])  # the delivery's steps only

    assert sample(book, "fulfil_kpi_delivery_seconds_count") == 0  # no start yet
    assert book.report().delivery_p50_seconds is None
    assert book.undated_deliveries() == {"VB"}
    for record in saga.records[:2] * 2:  # then its placement and acceptance, twice
        book.add(*record)

    assert sample(book, "fulfil_kpi_delivery_seconds_count") == 1
    assert sample(book, "fulfil_kpi_delivery_seconds_sum") == 500
    assert book.report().delivery_p50_seconds == 500.0
    assert book.undated_deliveries() == set()


def test_a_delivery_before_counting_from_is_in_the_report_not_in_the_counters() -> None:
    old = Saga("VO").completes().delivered(seconds=600).records
    new = Saga("VN", start=T0 + timedelta(hours=2)).completes().delivered(seconds=600).records

    book = fold(old + new, counting_from=T0 + timedelta(hours=1))

    assert sample(book, "fulfil_kpi_orders_total", outcome="delivered") == 1
    assert sample(book, "fulfil_kpi_delivery_seconds_count") == 1
    assert book.report().orders_delivered == 2


# ------------------------------------------------------------------ reading the topics


async def test_read_kpis_looks_further_back_only_for_the_start_of_orders_delivered_in_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A parcel delivered in the window was placed days before it: read_kpis finds its placement and acceptance."""
    since = T0 + timedelta(days=3)
    old = Saga("RD", method="card", start=T0).completes().delivered(seconds=3 * 86400 + 600, carrier_at=3 * 86400)
    other = Saga("RX", start=T0).completes()  # placed then too, nothing in the window
    fresh = Saga("RF", start=since + timedelta(minutes=1)).completes(seconds=4)
    log = sorted(old.records + other.records + fresh.records, key=lambda r: r[2])
    scans: list[tuple[tuple[str, ...], datetime | None, datetime | None]] = []

    async def scan(_: Any, names: Any, *, since: Any = None, until: Any = None, **__: Any) -> Any:
        scans.append((tuple(names), since, until))
        for i, (topic, event, at) in enumerate(log):
            if topic in names and (since is None or at >= since) and (until is None or at <= until):
                value = json.dumps(event).encode()
                yield topic_log.Rec(topic, 0, i, int(at.timestamp() * 1000), event["order_id"], value)

    monkeypatch.setattr(topic_log, "scan", scan)

    book = await read.read_kpis(None, since)  # type: ignore[arg-type]  # scan is faked
    report = book.report(since=since)

    assert (report.orders_delivered, report.delivery_p50_seconds) == (1, 3 * 86400.0)
    assert report.by_payment_method["card"].orders_delivered == 1  # not "unknown": its acceptance was found
    assert (report.orders_placed, report.orders_completed, report.fulfilment_p50_seconds) == (1, 1, 4.0)
    assert scans[1] == ((topics.STOREFRONT_ORDERS, topics.ORDER_EVENTS), since - read.DELIVERY_CONTEXT, scans[0][1])
    assert len(book) == 2  # RD and RF: RX's records, read again, were left alone

    scans.clear()
    await read.read_kpis(None, since + timedelta(hours=2))  # type: ignore[arg-type]
    assert len(scans) == 1  # nothing delivered in that window: no second read
