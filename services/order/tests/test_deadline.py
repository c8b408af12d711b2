"""What a deadline firing on an ended order publishes before it clears its timer: the records of the write that
ended the order, and nothing older (no OrderAccepted again after an OrderCancelled)."""

from __future__ import annotations

from datetime import timedelta

from services.order import domain
from services.order.domain import Order
from services.order.handlers import ending_records
from shared.events.base import EmittedEvent, Event
from shared.mongo import Loaded
from shared.outbox import OutboxRecord
from tests.unit.factories import AT, ORDER_ID, cause, order_placed, payment_authorized, payment_declined

DEADLINE = timedelta(minutes=5)


def records(emitted: list[EmittedEvent], by: Event) -> list[OutboxRecord]:
    return [OutboxRecord.of("order.events", e, cause=by.event_id) for e in emitted]


def accepted() -> tuple[Order, list[OutboxRecord]]:
    placed = order_placed()
    order, emitted = domain.place(None, placed, at=AT, deadline=DEADLINE, trace_id=None)
    return order, records(list(emitted), placed)


def test_the_records_of_the_deadline_that_cancelled_the_order() -> None:
    order, carried = accepted()  # OrderAccepted still carried: published by another copy, not known here
    passed = cause("DeadlinePassed")
    cancelled, emitted = domain.cancel(order, passed, "timeout", at=AT + DEADLINE)
    ended = records(list(emitted), passed)

    doc = Loaded(ORDER_ID, cancelled, version=2, outbox=[*carried, *ended])

    assert [r.event_type for r in ending_records(doc)] == ["OrderCancelled"]
    assert ending_records(doc) == ended


def test_the_records_of_the_event_that_ended_the_order_whatever_it_was() -> None:
    order, carried = accepted()
    authorized = payment_authorized()
    order, _ = domain.progress(order, authorized, at=AT)
    declined = payment_declined()
    cancelled, emitted = domain.progress(order, declined, at=AT)
    ended = records(list(emitted), declined)

    assert ending_records(Loaded(ORDER_ID, cancelled, version=3, outbox=[*carried, *ended])) == ended
    # Kafka took them and a later version dropped them: nothing left to publish.
    assert ending_records(Loaded(ORDER_ID, cancelled, version=4, outbox=carried)) == []


def test_nothing_for_an_order_not_ended_or_unknown() -> None:
    order, carried = accepted()

    assert ending_records(Loaded(ORDER_ID, order, version=1, outbox=carried)) == []
    assert ending_records(Loaded(ORDER_ID, None)) == []
