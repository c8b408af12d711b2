"""`fulfil verify`'s analysis on small made-up histories: a clean run passes, each broken invariant is named."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared import topics
from tools.fulfil.verify import Evidence, Fact, analyse, fact_of, narrow

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=30)
LINES = [{"sku": "SKU-RED-MUG", "quantity": 2}]
TOPIC = {
    "OrderPlaced": topics.STOREFRONT_ORDERS,
    "OrderCancellationRequested": topics.STOREFRONT_ORDERS,
    "PaymentAuthorized": topics.PAYMENT_EVENTS,
    "PaymentDeclined": topics.PAYMENT_EVENTS,
    "PaymentCaptured": topics.PAYMENT_EVENTS,
    "PaymentVoided": topics.PAYMENT_EVENTS,
    "PaymentRefunded": topics.PAYMENT_EVENTS,
    "StockReserved": topics.INVENTORY_EVENTS,
    "StockReleased": topics.INVENTORY_EVENTS,
    "ShipmentScheduled": topics.SHIPPING_EVENTS,
    "ShipmentCancelled": topics.SHIPPING_EVENTS,
    "NotificationSent": topics.NOTIFY_EVENTS,
}


def fact(order_id: str, event_type: str, second: int = 0, **data: Any) -> Fact:
    return Fact(
        topic=TOPIC.get(event_type, topics.ORDER_EVENTS),
        event_type=event_type,
        order_id=order_id,
        event_id=str(uuid.uuid4()),
        at=T0 + timedelta(seconds=second),
        data={"order_id": order_id, "event_type": event_type, **data},
    )


def mail(order_id: str, outcome: str, *, to: str | None = None, message_id: str | None = None) -> dict[str, Any]:
    what = "is on its way" if outcome == "COMPLETED" else "was cancelled"
    return {
        "ID": uuid.uuid4().hex,
        "MessageID": message_id or f"<{order_id}.{outcome}@fulfil.local>",
        "To": [{"Name": "", "Address": to or f"{order_id.lower()}@example.com"}],
        "Subject": f"Your order {order_id} {what}",
    }


def authorised_and_reserved(order_id: str) -> list[Fact]:
    """The facts both sample histories begin with: placed, accepted, money authorised, stock reserved."""
    customer = {"email": f"{order_id.lower()}@example.com"}
    return [
        fact(order_id, "OrderPlaced", 0, customer=customer, lines=LINES),
        fact(order_id, "OrderAccepted", 1, customer=customer, lines=LINES),
        fact(order_id, "PaymentAuthorized", 2),
        fact(order_id, "StockReserved", 3, lines=LINES),
    ]


def completed(order_id: str) -> dict[str, Any]:
    """Every trace a cleanly completed order leaves."""
    return {
        "facts": [
            *authorised_and_reserved(order_id),
            fact(order_id, "ShipmentScheduled", 4, tracking_number=f"SF-{order_id}"),
            fact(order_id, "PaymentCaptured", 5),
            fact(order_id, "OrderCompleted", 6),
            fact(order_id, "NotificationSent", 7),
        ],
        "view": {"order_id": order_id, "status": "COMPLETED"},
        "ledger": [
            {"_id": f"{order_id}:authorize", "op": "authorize", "order_id": order_id, "outcome": "approved"},
            {"_id": f"{order_id}:capture", "op": "capture", "order_id": order_id},
        ],
        "bookings": [{"order_id": order_id, "status": "booked", "tracking_number": f"SF-{order_id}"}],
        "mails": [mail(order_id, "COMPLETED")],
    }


def cancelled_after_authorisation(order_id: str) -> dict[str, Any]:
    """An order cancelled (shipping failed) after the money was authorised and the stock reserved, fully undone."""
    return {
        "facts": [
            *authorised_and_reserved(order_id),
            fact(order_id, "ShipmentFailed", 4),
            fact(order_id, "OrderCancelled", 5, reason="shipping_failed"),
            fact(order_id, "PaymentVoided", 6),
            fact(order_id, "StockReleased", 6, lines=LINES),
            fact(order_id, "NotificationSent", 7),
        ],
        "view": {"order_id": order_id, "status": "CANCELLED"},
        "ledger": [
            {"_id": f"{order_id}:authorize", "op": "authorize", "order_id": order_id, "outcome": "approved"},
            {"_id": f"{order_id}:void", "op": "void", "order_id": order_id},
        ],
        "bookings": [],
        "mails": [mail(order_id, "CANCELLED")],
    }


def evidence(*histories: dict[str, Any], **overrides: Any) -> Evidence:
    ev = Evidence(
        facts=[f for h in histories for f in h["facts"]],
        orders={h["view"]["order_id"]: h["view"] for h in histories},
        ledger=[d for h in histories for d in h["ledger"]],
        bookings=[b for h in histories for b in h["bookings"]],
        mails=[m for h in histories for m in h["mails"]],
        stock={"SKU-RED-MUG": {"available": 96, "reserved": 0, "shipped": 2, "received": 98}},
        now=NOW,
    )
    return replace(ev, **overrides)


def kinds(ev: Evidence) -> list[str]:
    return sorted(v.kind for v in analyse(ev).violations)


def test_a_clean_history_has_no_violations() -> None:
    report = analyse(evidence(completed("A-1"), cancelled_after_authorisation("A-2")))

    assert report.violations == []
    assert report.statuses == {"COMPLETED": 1, "CANCELLED": 1}


def test_an_open_order_past_its_deadline_is_reported_and_a_young_one_is_not() -> None:
    h = completed("A-1")
    h["facts"] = h["facts"][:4]
    h["view"] = {"order_id": "A-1", "status": "PENDING"}
    h["ledger"], h["bookings"], h["mails"] = h["ledger"][:1], [], []
    stock = {"SKU-RED-MUG": {"available": 96, "reserved": 2, "shipped": 0, "received": 98}}

    assert kinds(evidence(h, stock=stock)) == ["not_terminal"]
    assert kinds(evidence(h, stock=stock, now=T0 + timedelta(seconds=60))) == []


@pytest.mark.parametrize(
    ("extra_ledger_op", "expected"),
    [("capture", "completed_payment"), ("void", "completed_payment"), ("refund", "completed_payment")],
)
def test_a_completed_order_moves_money_exactly_once(extra_ledger_op: str, expected: str) -> None:
    h = completed("A-1")
    h["ledger"].append({"_id": f"A-1:{extra_ledger_op}-2", "op": extra_ledger_op, "order_id": "A-1"})

    assert kinds(evidence(h)) == [expected]


def test_a_completed_order_without_capture_is_reported() -> None:
    h = completed("A-1")
    h["ledger"] = h["ledger"][:1]

    assert kinds(evidence(h)) == ["completed_payment"]


@pytest.mark.parametrize(
    ("history", "booking", "expected"),
    [
        pytest.param(completed, "cancelled", "completed_shipment", id="completed-but-called-back"),
        pytest.param(cancelled_after_authorisation, "booked", "cancelled_shipment", id="cancelled-but-booked"),
    ],
)
def test_a_booking_that_contradicts_the_outcome_is_reported(
    history: Callable[[str], dict[str, Any]], booking: str, expected: str
) -> None:
    h = history("A-1")
    h["bookings"] = [{"order_id": "A-1", "status": booking, "tracking_number": "SF-A-1"}]

    assert kinds(evidence(h)) == [expected]


def test_a_completed_order_booked_twice_is_reported_from_the_events() -> None:
    h = completed("A-1")
    h["facts"].append(fact("A-1", "ShipmentScheduled", 4, tracking_number="JD-other"))

    assert kinds(evidence(h, bookings=None)) == ["completed_shipment"]


def test_a_cancelled_order_must_undo_its_authorisation_once() -> None:
    never_voided = cancelled_after_authorisation("A-1")
    never_voided["ledger"] = never_voided["ledger"][:1]
    voided_and_refunded = cancelled_after_authorisation("A-2")
    voided_and_refunded["ledger"].append({"_id": "A-2:refund", "op": "refund", "order_id": "A-2"})

    assert kinds(evidence(never_voided)) == ["cancelled_payment"]
    assert kinds(evidence(voided_and_refunded)) == ["cancelled_payment"]


def test_a_cancelled_order_that_kept_a_capture_is_reported() -> None:
    h = cancelled_after_authorisation("A-1")
    h["ledger"] = [*h["ledger"][:1], {"_id": "A-1:capture", "op": "capture", "order_id": "A-1"}]
    h["ledger"].append({"_id": "A-1:void", "op": "void", "order_id": "A-1"})

    assert kinds(evidence(h)) == ["cancelled_payment"]


def test_a_cancelled_order_that_never_released_its_stock_is_reported() -> None:
    h = cancelled_after_authorisation("A-1")
    h["facts"] = [f for f in h["facts"] if f.event_type != "StockReleased"]
    stock = {"SKU-RED-MUG": {"available": 96, "reserved": 2, "shipped": 0, "received": 98}}

    assert kinds(evidence(h, stock=stock)) == ["cancelled_stock"]


def test_an_order_with_both_outcomes_is_reported() -> None:
    h = completed("A-1")
    h["facts"].append(fact("A-1", "OrderCancelled", 8, reason="timeout"))

    assert "conflicting_outcomes" in kinds(evidence(h))


def test_stock_that_is_not_conserved_or_negative_is_reported() -> None:
    leaked = {"SKU-RED-MUG": {"available": 95, "reserved": 0, "shipped": 2, "received": 98}}
    negative = {"SKU-RED-MUG": {"available": -1, "reserved": 1, "shipped": 2, "received": 2}}

    assert kinds(evidence(completed("A-1"), stock=leaked)) == ["stock_not_conserved"]
    assert kinds(evidence(completed("A-1"), stock=negative)) == ["stock_negative"]


def test_stock_conservation_is_skipped_with_a_note_when_the_api_lacks_the_counters() -> None:
    report = analyse(evidence(completed("A-1"), stock={"SKU-RED-MUG": {"available": 96, "reserved": 0}}))

    assert report.violations == []
    assert any("conservation skipped" in n for n in report.notes)


def test_reserved_stock_below_the_holds_of_open_orders_is_reported() -> None:
    h = completed("A-1")
    h["facts"] = h["facts"][:4]
    h["view"] = {"order_id": "A-1", "status": "PENDING"}
    h["ledger"], h["bookings"], h["mails"] = h["ledger"][:1], [], []

    assert kinds(evidence(h, now=T0 + timedelta(seconds=10))) == ["stock_holds"]


def test_with_the_whole_history_in_scope_reserved_and_shipped_must_match_the_events() -> None:
    stock = {"SKU-RED-MUG": {"available": 95, "reserved": 1, "shipped": 2, "received": 98}}

    assert kinds(evidence(completed("A-1"), stock=stock, complete=True)) == ["stock_holds"]
    assert kinds(evidence(completed("A-1"), complete=True)) == []


def test_each_terminal_outcome_gets_exactly_one_mail() -> None:
    missing = completed("A-1")
    missing["mails"] = []
    twice = completed("A-2")
    twice["mails"].append(mail("A-2", "COMPLETED", message_id="<another@fulfil.local>"))
    wrong = completed("A-3")
    wrong["mails"].append(mail("A-3", "CANCELLED"))

    assert kinds(evidence(missing)) == ["mail_missing"]
    assert kinds(evidence(twice)) == ["mail_duplicate"]
    assert kinds(evidence(wrong)) == ["mail_wrong_outcome"]


def test_the_same_message_delivered_twice_is_a_note_not_a_violation() -> None:
    h = completed("A-1")
    h["mails"].append(mail("A-1", "COMPLETED"))

    report = analyse(evidence(h))

    assert report.violations == []
    assert any("same Message-ID" in n for n in report.notes)


def test_a_bouncing_address_gets_no_mail() -> None:
    h = completed("A-1")
    h["facts"][0] = fact("A-1", "OrderPlaced", 0, customer={"email": "a-1@bounce.test"}, lines=LINES)
    bounced = {**h, "mails": []}

    assert kinds(evidence(bounced)) == []
    assert kinds(evidence(h)) == ["mail_duplicate", "mail_wrong_recipient"]


def test_events_money_and_mail_for_an_unknown_order_are_reported() -> None:
    ghost = {
        "facts": [fact("GHOST-1", "PaymentVoided", 3)],
        "view": {"order_id": "A-1", "status": "COMPLETED"},
        "ledger": [{"_id": "GHOST-1:void", "op": "void", "order_id": "GHOST-1"}],
        "bookings": [],
        "mails": [mail("GHOST-1", "CANCELLED")],
    }

    report = analyse(evidence(completed("A-1"), ghost))

    assert [(v.kind, v.subject) for v in report.violations] == [("unknown_order", "GHOST-1")]


def test_a_storefront_cancellation_for_an_unknown_order_is_not_a_service_violation() -> None:
    stray = fact("NOPE-1", "OrderCancellationRequested", 1)

    assert kinds(evidence(completed("A-1"), facts=[*completed("A-1")["facts"], stray])) == []


def test_a_placed_order_the_order_api_does_not_know_is_reported() -> None:
    h = completed("A-1")

    assert kinds(evidence(h, orders={})) == ["order_lost"]


def test_narrow_keeps_orders_placed_since_and_with_the_prefix() -> None:
    old = fact("RUN1-old", "OrderPlaced", 0)
    late = fact("RUN1-old", "OrderCompleted", 600)
    new = fact("RUN1-new", "OrderPlaced", 500)
    other = fact("RUN2-x", "OrderPlaced", 500)

    kept = narrow([old, late, new, other], since=T0 + timedelta(seconds=100), prefix="RUN1-")

    assert kept == [new]


def test_undecodable_records_are_not_facts() -> None:
    assert fact_of(topics.ORDER_EVENTS, "A-1", b"{not json", 0) is None
    parsed = fact_of(topics.ORDER_EVENTS, "A-1", b'{"event_type": "OrderAccepted", "event_id": "e1"}', 1000)
    assert parsed is not None
    assert parsed.order_id == "A-1"
    assert parsed.at == datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)
