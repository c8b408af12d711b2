"""The console's fold (tools/console/fold.py): stages only move forward, stuck is counted by start time."""

from __future__ import annotations

from typing import Any

from shared import topics
from tools.console.fold import SagaFold, decode_position, encode_position, parcel_view, status_history, transition


def _apply(fold: SagaFold, topic: str, event_type: str, at: float, *, order: str = "A-1", offset: int = 0) -> None:
    data: dict[str, Any] = {"event_type": event_type, "order_id": order}
    fold.apply(topic=topic, partition=1, offset=offset, timestamp=at, key=order, data=data)


def test_a_late_record_of_an_earlier_stage_does_not_move_an_order_back() -> None:
    fold = SagaFold()
    _apply(fold, topics.SHIPPING_EVENTS, "ShipmentScheduled", 10.0)
    _apply(fold, topics.PAYMENT_EVENTS, "PaymentAuthorized", 9.0)  # read later, happened earlier
    assert fold.orders["A-1"].stage == "SHIPMENT_SCHEDULED"
    assert fold.orders["A-1"].started_at == 9.0
    _apply(fold, topics.ORDER_EVENTS, "OrderCompleted", 11.0)
    _apply(fold, topics.ORDER_EVENTS, "OrderAccepted", 8.0)
    assert fold.orders["A-1"].stage == "COMPLETED"
    assert dict(fold.stage_counts) == {"SHIPMENT_SCHEDULED": 0, "COMPLETED": 1}
    assert len(fold.in_flight) == 0
    assert fold.completed_per_minute[0] == 1


def test_stuck_counts_the_orders_in_flight_longer_than_the_threshold() -> None:
    fold = SagaFold()
    for i, at in enumerate((100.0, 200.0, 300.0)):
        _apply(fold, topics.STOREFRONT_ORDERS, "OrderPlaced", at, order=f"S-{i}")
    _apply(fold, topics.ORDER_EVENTS, "OrderCancelled", 310.0, order="S-0")
    assert len(fold.in_flight) == 2
    assert fold.stuck(now=400.0, older_than=150.0) == 1  # S-1 (started 200); S-0 ended, S-2 is young
    assert [o.order_id for o in fold.oldest_in_flight(5)] == ["S-1", "S-2"]
    assert fold.orders["S-0"].stage == "CANCELLED"


def test_dead_letters_are_counted_and_kept_on_the_timeline_but_move_no_stage() -> None:
    fold = SagaFold()
    _apply(fold, topics.STOREFRONT_ORDERS, "OrderPlaced", 1.0)
    _apply(fold, topics.dlq(topics.PAYMENT_EVENTS), "PaymentAuthorized", 2.0, offset=7)
    assert fold.orders["A-1"].stage == "PLACED"
    assert fold.dead_lettered[topics.dlq(topics.PAYMENT_EVENTS)] == 1
    assert decode_position(fold.orders["A-1"].positions[-1]) == (topics.dlq(topics.PAYMENT_EVENTS), 1, 7)


def test_a_position_survives_packing() -> None:
    for topic in topics.ALL_TOPICS:
        assert decode_position(encode_position(topic, 4095, 2**47 - 1)) == (topic, 4095, 2**47 - 1)


def test_status_history_lists_each_stage_once_in_order() -> None:
    events: list[dict[str, Any]] = [
        {"event_type": "OrderPlaced", "at": "t1", "topic": topics.STOREFRONT_ORDERS},
        {"event_type": "OrderAccepted", "at": "t2", "topic": topics.ORDER_EVENTS},
        {"event_type": "OrderAccepted", "at": "t3", "topic": topics.ORDER_EVENTS},  # a duplicate
        {"event_type": "PaymentDeclined", "at": "t4", "topic": topics.PAYMENT_EVENTS, "dead_letter": True},
        {"event_type": "OrderCancelled", "at": "t5", "topic": topics.ORDER_EVENTS},
    ]
    assert [(h["stage"], h["at"]) for h in status_history(events)] == [
        ("PLACED", "t1"),
        ("ACCEPTED", "t2"),
        ("CANCELLED", "t5"),
    ]


def test_a_completed_order_cancelled_by_its_customer_before_delivery_becomes_cancelled() -> None:
    fold = SagaFold()
    _apply(fold, topics.STOREFRONT_ORDERS, "OrderPlaced", 1.0)
    _apply(fold, topics.ORDER_EVENTS, "OrderCompleted", 2.0)
    fold.apply(
        topic=topics.ORDER_EVENTS,
        partition=1,
        offset=3,
        timestamp=900.0,
        key="A-1",
        data={"event_type": "OrderCancelled", "order_id": "A-1", "reason": "customer_request"},
    )
    _apply(fold, topics.ORDER_EVENTS, "OrderCompleted", 901.0)  # a replay of the completion moves nothing back

    order = fold.orders["A-1"]
    assert (order.stage, order.reason) == ("CANCELLED", "customer_request")
    assert dict(fold.stage_counts) == {"PLACED": 0, "COMPLETED": 0, "CANCELLED": 1}
    assert len(fold.in_flight) == 0
    assert transition("CANCELLED", "OrderCompleted") == "CANCELLED"
    assert transition("REJECTED", "OrderCancelled") == "REJECTED"


def _tracked(milestone: str, at: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    event = {
        "event_type": "ShipmentTracked",
        "order_id": "A-1",
        "carrier": "SF Express",
        "tracking_number": "SF0001",
        "milestone": milestone,
        "at": at,
        "location": "深圳",
        "description": milestone.lower(),
    }
    return topics.SHIPPING_EVENTS, {**event, **extra}


def test_the_parcel_is_its_steps_once_each_by_the_carriers_time_delivered_once_any_says_so() -> None:
    scheduled = {"event_type": "ShipmentScheduled", "carrier": "SF Express", "tracking_number": "SF0001"}
    records: list[tuple[str, dict[str, Any] | None]] = [
        (topics.ORDER_EVENTS, {"event_type": "OrderCompleted"}),
        (topics.SHIPPING_EVENTS, scheduled),
        _tracked("IN_TRANSIT", "2026-11-25T10:00:00Z"),
        _tracked("DELIVERED", "2026-11-26T09:30:00+08:00"),  # read before the step that came before it
        _tracked("OUT_FOR_DELIVERY", "2026-11-26T00:45:00Z"),
        _tracked("PICKED_UP", "2026-11-25T09:00:00Z"),
        _tracked("IN_TRANSIT", "2026-11-25T10:00:00Z"),  # a replay
        _tracked("EXCEPTION", "not a time"),  # unreadable: left out
        (topics.dlq(topics.SHIPPING_EVENTS), _tracked("EXCEPTION", "2026-11-26T03:00:00Z")[1]),  # a dead letter
        (topics.SHIPPING_EVENTS, None),  # undecodable
    ]

    parcel = parcel_view(records)

    assert parcel is not None
    assert [(s["milestone"], s["at"]) for s in parcel["steps"]] == [
        ("PICKED_UP", "2026-11-25T09:00:00Z"),
        ("IN_TRANSIT", "2026-11-25T10:00:00Z"),
        ("OUT_FOR_DELIVERY", "2026-11-26T00:45:00Z"),
        ("DELIVERED", "2026-11-26T01:30:00Z"),
    ]
    assert (parcel["status"], parcel["delivered_at"]) == ("DELIVERED", "2026-11-26T01:30:00Z")
    assert (parcel["carrier"], parcel["tracking_number"]) == ("SF Express", "SF0001")
    # Not delivered yet: the latest step by the carrier's clock, whatever the order it was read in.
    on_the_way = parcel_view([r for r in records if r[1] is None or r[1].get("milestone") != "DELIVERED"])
    assert on_the_way is not None
    assert on_the_way["status"] == "OUT_FOR_DELIVERY"


def test_the_parcel_of_an_order_never_booked_is_none_and_an_interception_shows() -> None:
    assert parcel_view([(topics.ORDER_EVENTS, {"event_type": "OrderAccepted"})]) is None
    booked = parcel_view([(topics.SHIPPING_EVENTS, {"event_type": "ShipmentScheduled", "carrier": "JD Logistics"})])
    assert booked is not None
    assert (booked["status"], booked["steps"]) == (None, [])
    intercepted = {"event_type": "ShipmentIntercepted", "carrier": "SF Express", "reason": "picked_up"}
    parcel = parcel_view(
        [
            (topics.SHIPPING_EVENTS, intercepted),
            _tracked("PICKED_UP", "2026-11-25T09:00:00Z"),
            _tracked("IN_TRANSIT", "2026-11-25T11:00:00Z"),  # the way back, after the interception
        ]
    )
    assert parcel is not None
    assert (parcel["status"], parcel["intercepted"], len(parcel["steps"])) == ("INTERCEPTED", "picked_up", 2)
