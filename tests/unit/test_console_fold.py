"""The console's fold (tools/console/fold.py): stages only move forward, stuck is counted by start time."""

from __future__ import annotations

from typing import Any

from shared import topics
from tools.console.fold import SagaFold, decode_position, encode_position, status_history


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
