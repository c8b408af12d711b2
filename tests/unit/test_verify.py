"""`fulfil verify`'s analysis on small made-up histories: a clean run passes, each broken invariant is named."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from shared import topics
from tools.ops.evidence import read_carriers, sim_bookings
from tools.ops.verify import Evidence, Fact, analyse, fact_of, narrow

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
    "ShipmentIntercepted": topics.SHIPPING_EVENTS,
    "ShipmentTracked": topics.SHIPPING_EVENTS,
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


# ------------------------------------------------------------------ a customer cancels a completed order


def cancelled_after_completion(order_id: str, *, after_pickup: bool = False) -> dict[str, Any]:
    """A completed order the customer cancelled before delivery: its parcel called back (before pickup) or
    intercepted (after), the capture refunded, the stock left committed, both mails sent."""
    h = completed(order_id)
    parcel = f"SF-{order_id}"
    h["facts"] += [
        fact(order_id, "OrderCancellationRequested", 8),
        fact(order_id, "OrderCancelled", 9, reason="customer_request"),
        fact(order_id, "PaymentRefunded", 10),
        fact(order_id, "NotificationSent", 11),
    ]
    if after_pickup:
        h["facts"] += [
            fact(order_id, "ShipmentTracked", 8, tracking_number=parcel, milestone="PICKED_UP"),
            fact(order_id, "ShipmentIntercepted", 10, tracking_number=parcel, reason="picked up"),
        ]
        h["bookings"] = [sim_parcel(order_id, status="booked", milestone="IN_TRANSIT")]
    else:
        h["facts"].append(fact(order_id, "ShipmentCancelled", 10, tracking_number=parcel))
        h["bookings"] = [sim_parcel(order_id, status="cancelled", milestone=None)]
    h["view"] = {"order_id": order_id, "status": "CANCELLED", "reason": "customer_request"}
    h["ledger"].append({"_id": f"{order_id}:refund", "op": "refund", "order_id": order_id})
    h["mails"].append(mail(order_id, "CANCELLED"))
    return h


def sim_parcel(
    order_id: str, *, status: str = "booked", milestone: str | None = None, delivered_at: datetime | None = None
) -> dict[str, Any]:
    """A parcel as the carrier simulator's record gives it (after :func:`sim_bookings`)."""
    return {
        "order_id": order_id,
        "carrier": "sf",
        "status": status,
        "tracking_number": f"SF-{order_id}",
        "milestone": milestone,
        "delivered_at": delivered_at,
    }


def drop(h: dict[str, Any], event_type: str) -> dict[str, Any]:
    h["facts"] = [f for f in h["facts"] if f.event_type != event_type]
    return h


@pytest.mark.parametrize("after_pickup", [False, True], ids=["called-back", "intercepted"])
def test_a_customer_may_cancel_a_completed_order_before_delivery(after_pickup: bool) -> None:
    h = cancelled_after_completion("A-1", after_pickup=after_pickup)

    report = analyse(evidence(h, complete=True))  # complete: its units must count as shipped

    assert report.violations == []
    assert report.statuses == {"CANCELLED": 1}


def test_the_same_cancellation_from_the_shipping_events_alone_is_accepted() -> None:
    assert kinds(evidence(cancelled_after_completion("A-1", after_pickup=True), bookings=None)) == []
    assert kinds(evidence(cancelled_after_completion("A-2"), bookings=None)) == []


def test_a_cancellation_after_completion_must_be_the_customers() -> None:
    h = cancelled_after_completion("A-1")
    h["facts"] = [
        fact("A-1", "OrderCancelled", 9, reason="timeout") if f.event_type == "OrderCancelled" else f
        for f in h["facts"]
    ]

    # Judged as an order cancelled outright: besides the conflict, its committed stock and its completion mail.
    assert kinds(evidence(h)) == [
        "cancelled_stock",
        "conflicting_outcomes",
        "conflicting_outcomes",
        "mail_wrong_outcome",
    ]


def test_a_cancellation_decided_before_the_completion_is_a_conflict() -> None:
    h = cancelled_after_completion("A-1")
    # Published after the completion, but decided before it (occurred_at): the order was cancelled, then completed.
    h["facts"] = [
        fact("A-1", "OrderCancelled", 9, reason="customer_request", occurred_at=(T0 + timedelta(seconds=5)).isoformat())
        if f.event_type == "OrderCancelled"
        else fact("A-1", "OrderCompleted", 6, occurred_at=(T0 + timedelta(seconds=6)).isoformat())
        if f.event_type == "OrderCompleted"
        else f
        for f in h["facts"]
    ]

    # Judged as an order cancelled outright: besides the conflict, its committed stock and its completion mail.
    assert kinds(evidence(h)) == [
        "cancelled_stock",
        "conflicting_outcomes",
        "conflicting_outcomes",
        "mail_wrong_outcome",
    ]


def test_a_cancelled_completed_order_the_order_api_still_calls_completed_is_a_conflict() -> None:
    h = cancelled_after_completion("A-1")
    h["view"] = {"order_id": "A-1", "status": "COMPLETED"}

    assert "conflicting_outcomes" in kinds(evidence(h))


@pytest.mark.parametrize(
    ("ledger_ops", "expected"),
    [
        pytest.param(["authorize", "capture"], "cancelled_payment", id="never-refunded"),
        pytest.param(["authorize", "capture", "refund", "refund"], "cancelled_payment", id="refunded-twice"),
        pytest.param(["authorize", "capture", "void"], "cancelled_payment", id="voided-not-refunded"),
        pytest.param(["authorize", "refund"], "cancelled_payment", id="refunded-never-captured"),
    ],
)
def test_a_cancelled_completed_order_is_captured_once_and_refunded_once(ledger_ops: list[str], expected: str) -> None:
    h = cancelled_after_completion("A-1")
    h["ledger"] = [
        {"_id": f"A-1:{op}-{i}", "op": op, "order_id": "A-1", "outcome": "approved"} for i, op in enumerate(ledger_ops)
    ]

    assert kinds(evidence(h)) == [expected]


def test_a_cancelled_completed_order_paid_at_a_cashier_must_be_refunded() -> None:
    h = cancelled_after_completion("A-1")
    h["ledger"] = []
    refunded = {"ours": {"status": "REFUNDED"}, "provider": {"status": "REFUND"}, "agrees": True}
    voided = {"ours": {"status": "VOIDED"}, "provider": {"status": "CLOSED"}, "agrees": True}

    assert kinds(evidence(h, providers={"A-1": refunded})) == []
    assert kinds(evidence(h, providers={"A-1": voided})) == ["cancelled_payment"]


def test_a_cancelled_completed_order_keeps_its_stock_committed() -> None:
    released = cancelled_after_completion("A-1")
    released["facts"].append(fact("A-1", "StockReleased", 10, lines=LINES))
    stock = {"SKU-RED-MUG": {"available": 98, "reserved": 0, "shipped": 0, "received": 98}}

    assert kinds(evidence(released, stock=stock)) == ["cancelled_stock"]
    # Its units count as shipped: with the whole history in scope, shipped 0 would not match them.
    assert kinds(evidence(cancelled_after_completion("A-2"), stock=stock, complete=True)) == ["stock_shipped"]


def test_a_cancelled_completed_order_gets_both_mails_once_each() -> None:
    no_cancel_mail = cancelled_after_completion("A-1")
    no_cancel_mail["mails"] = no_cancel_mail["mails"][:1]
    no_completed_mail = cancelled_after_completion("A-2")
    no_completed_mail["mails"] = no_completed_mail["mails"][1:]
    twice = cancelled_after_completion("A-3")
    twice["mails"].append(mail("A-3", "CANCELLED", message_id="<another@fulfil.local>"))

    assert kinds(evidence(no_cancel_mail)) == ["mail_missing"]
    assert kinds(evidence(no_completed_mail)) == ["mail_missing"]
    assert kinds(evidence(twice)) == ["mail_duplicate"]
    # An order cancelled without having completed still may not have an order_completed mail.
    wrong = cancelled_after_authorisation("A-4")
    wrong["mails"].append(mail("A-4", "COMPLETED"))
    assert kinds(evidence(wrong)) == ["mail_wrong_outcome"]


def test_a_cancelled_completed_order_must_have_its_parcel_called_back_or_intercepted() -> None:
    still_live = drop(cancelled_after_completion("A-1"), "ShipmentCancelled")
    still_live["bookings"] = [sim_parcel("A-1", status="booked", milestone=None)]
    silently_gone = drop(cancelled_after_completion("A-2"), "ShipmentCancelled")

    assert kinds(evidence(still_live)) == ["cancelled_shipment", "cancelled_shipment"]
    assert kinds(evidence(silently_gone)) == ["cancelled_shipment"]


def test_an_intercepted_parcel_is_not_live_but_an_unintercepted_one_is() -> None:
    intercepted = cancelled_after_completion("A-1", after_pickup=True)
    not_intercepted = drop(cancelled_after_completion("A-2", after_pickup=True), "ShipmentIntercepted")

    assert kinds(evidence(intercepted)) == []
    assert kinds(evidence(not_intercepted)) == ["cancelled_shipment", "cancelled_shipment"]
    assert kinds(evidence(not_intercepted, bookings=None)) == ["cancelled_shipment", "cancelled_shipment"]


def test_an_interception_of_a_parcel_never_picked_up_is_no_excuse() -> None:
    h = cancelled_after_completion("A-1", after_pickup=True)
    h["bookings"] = [sim_parcel("A-1", status="booked", milestone=None)]

    assert kinds(evidence(h)) == ["cancelled_shipment"]


def test_an_intercepted_parcel_of_an_order_cancelled_before_completion_needs_its_money_back() -> None:
    h = cancelled_after_authorisation("A-1")
    h["facts"] = [f for f in h["facts"] if f.event_type not in ("ShipmentFailed", "OrderCancelled")]
    h["facts"] += [
        fact("A-1", "ShipmentScheduled", 4, tracking_number="SF-A-1"),
        fact("A-1", "OrderCancelled", 5, reason="customer_request"),
        fact("A-1", "ShipmentIntercepted", 6, tracking_number="SF-A-1", reason="picked up"),
    ]
    h["bookings"] = [sim_parcel("A-1", status="booked", milestone="PICKED_UP")]
    unpaid_back = {**h, "ledger": h["ledger"][:1]}

    assert kinds(evidence(h)) == []
    assert kinds(evidence(unpaid_back)) == ["cancelled_payment"]


def test_a_completed_order_with_an_intercepted_parcel_is_reported() -> None:
    h = completed("A-1")
    h["facts"].append(fact("A-1", "ShipmentIntercepted", 8, tracking_number="SF-A-1", reason="picked up"))

    assert kinds(evidence(h)) == ["completed_shipment"]


def refused_as_delivered(order_id: str) -> dict[str, Any]:
    h = completed(order_id)
    h["facts"] += [
        fact(order_id, "ShipmentTracked", 8, tracking_number=f"SF-{order_id}", milestone="DELIVERED"),
        fact(order_id, "OrderCancellationRequested", 9),
        fact(order_id, "OrderCancellationRefused", 10, reason="parcel_already_delivered"),
    ]
    return h


def test_a_cancellation_of_a_delivered_order_is_refused_and_it_stays_completed() -> None:
    assert kinds(evidence(refused_as_delivered("A-1"))) == []
    # The carrier's record of the delivery is evidence enough (its tracking event may be out of range).
    h = drop(refused_as_delivered("A-2"), "ShipmentTracked")
    h["bookings"] = [sim_parcel("A-2", milestone="DELIVERED", delivered_at=NOW - timedelta(seconds=10))]
    h["view"] = {"order_id": "A-2", "status": "COMPLETED", "delivery": {"status": "DELIVERED"}}
    assert kinds(evidence(h)) == []


def test_a_refusal_as_delivered_without_a_delivered_parcel_is_reported() -> None:
    h = drop(refused_as_delivered("A-1"), "ShipmentTracked")

    assert kinds(evidence(h)) == ["cancellation_refused"]


def test_a_cancellation_after_a_refusal_as_delivered_is_reported() -> None:
    h = refused_as_delivered("A-1")
    h["facts"] += [fact("A-1", "OrderCancelled", 11, reason="customer_request"), fact("A-1", "PaymentRefunded", 12)]
    h["facts"].append(fact("A-1", "ShipmentIntercepted", 12, tracking_number="SF-A-1", reason="delivered"))
    h["view"] = {"order_id": "A-1", "status": "CANCELLED"}
    h["ledger"].append({"_id": "A-1:refund", "op": "refund", "order_id": "A-1"})
    h["mails"].append(mail("A-1", "CANCELLED"))

    assert kinds(evidence(h)) == ["cancellation_refused"]


# ------------------------------------------------------------------ the parcel's delivery in the order view


def delivered_at_carrier(order_id: str, *, ago: timedelta, shown: str | None) -> dict[str, Any]:
    h = completed(order_id)
    h["bookings"] = [sim_parcel(order_id, milestone="DELIVERED", delivered_at=NOW - ago)]
    h["view"] = {**h["view"], "delivery": None if shown is None else {"status": shown, "steps": []}}
    return h


def test_a_parcel_the_carrier_delivered_long_ago_must_show_delivered_in_the_order() -> None:
    assert kinds(evidence(delivered_at_carrier("A-1", ago=timedelta(minutes=10), shown=None))) == [
        "delivery_not_followed"
    ]
    assert kinds(evidence(delivered_at_carrier("A-2", ago=timedelta(minutes=10), shown="OUT_FOR_DELIVERY"))) == [
        "delivery_not_followed"
    ]
    assert kinds(evidence(delivered_at_carrier("A-3", ago=timedelta(minutes=10), shown="DELIVERED"))) == []


def test_a_delivery_within_the_grace_period_is_not_judged_yet() -> None:
    h = delivered_at_carrier("A-1", ago=timedelta(seconds=30), shown="OUT_FOR_DELIVERY")

    assert kinds(evidence(h)) == []
    assert kinds(evidence(h, delivery_grace=timedelta(seconds=10))) == ["delivery_not_followed"]


# ------------------------------------------------------------------ the carriers' record


def test_an_order_missing_from_a_partial_carrier_record_is_judged_from_the_events() -> None:
    h = completed("A-1")
    h["bookings"] = []

    assert kinds(evidence(h, bookings_partial=True)) == []
    assert kinds(evidence(h)) == ["completed_shipment"]
    # A parcel the partial record does know still decides.
    h["bookings"] = [sim_parcel("A-1", status="cancelled")]
    assert kinds(evidence(h, bookings_partial=True)) == ["completed_shipment"]


LISTING = {
    "carrier": "sf",
    "parcels": [
        {
            "order_id": "RUN-1",
            "waybill": "SF1234567890123",
            "status": "created",
            "milestone": "DELIVERED",
            "created_at": "2026-11-25T16:00:00+08:00",
            "routes": [
                {"id": "1", "milestone": "PICKED_UP", "at": "2026-11-25T16:00:02+08:00"},
                {"id": "2", "milestone": "DELIVERED", "at": "2026-11-25T16:00:10+08:00"},
            ],
        },
        {
            "order_id": "RUN-2",
            "waybill": "SF1234567890124",
            "status": "cancelled",
            "milestone": None,
            "created_at": "2026-11-25T16:00:00+08:00",
            "routes": [],
        },
        {
            "order_id": "OTHER-1",
            "waybill": "SF1",
            "status": "created",
            "milestone": None,
            "created_at": "2026-11-25T15:00:00+08:00",
        },
    ],
}


def test_the_simulators_parcels_become_the_carriers_record() -> None:
    first, second, _ = sim_bookings("sf", LISTING)

    assert first == {
        "order_id": "RUN-1",
        "carrier": "sf",
        "status": "booked",
        "tracking_number": "SF1234567890123",
        "milestone": "DELIVERED",
        "delivered_at": T0 + timedelta(seconds=10),
        "at": T0,
    }
    assert (second["status"], second["milestone"], second["delivered_at"]) == ("cancelled", None, None)


def transport(answer: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


async def test_read_carriers_takes_both_carriers_parcels_in_scope() -> None:
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return httpx.Response(200, json=LISTING if request.url.path.endswith("/sf") else {"parcels": []})

    async with transport(answer) as http:
        found, notes, unread = await read_carriers(http, "http://sim", prefix="RUN-", since=None, known=set())

    assert asked == ["/control/parcels/sf", "/control/parcels/jd"]
    assert [b["order_id"] for b in found or []] == ["RUN-1", "RUN-2"]
    assert (notes, unread) == ([], False)


async def test_read_carriers_keeps_parcels_booked_since_or_of_known_orders() -> None:
    async with transport(lambda r: httpx.Response(200, json=LISTING)) as http:
        found, _, _ = await read_carriers(
            http, "http://sim", prefix=None, since=T0 - timedelta(minutes=1), known={"OTHER-1"}
        )
        fresh, _, _ = await read_carriers(http, "http://sim", prefix=None, since=T0 + timedelta(minutes=1), known=set())

    assert sorted({b["order_id"] for b in found or []}) == ["OTHER-1", "RUN-1", "RUN-2"]
    assert fresh == []


async def test_a_simulator_that_does_not_answer_is_a_note_never_a_failure() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with transport(refuse) as http:
        found, notes, unread = await read_carriers(http, "http://sim", prefix=None, since=None, known=set())

    assert found is None
    assert unread
    assert len(notes) == 1
    assert "did not answer" in notes[0]


async def test_a_simulator_without_carriers_is_a_note_and_no_record() -> None:
    async with transport(lambda r: httpx.Response(404, json={"detail": "Not Found"})) as http:
        found, notes, unread = await read_carriers(http, "http://sim", prefix=None, since=None, known=set())

    assert (found, unread) == (None, False)
    assert len(notes) == 2


def test_stock_still_held_for_an_ended_order_is_reported_per_order_even_in_a_filtered_run() -> None:
    young = cancelled_after_authorisation("A-3")
    young["facts"] = [replace(f, at=NOW - timedelta(seconds=5)) for f in young["facts"]]
    holds = {"SKU-RED-MUG": {"A-1": 0, "A-2": 2, "A-3": 2, "OTHER-RUN-1": 1}}

    report = analyse(
        evidence(completed("A-1"), cancelled_after_authorisation("A-2"), young, holds=holds, complete=False)
    )

    assert [(v.kind, v.subject) for v in report.violations] == [("stock_held_after_end", "A-2")]
    assert "CANCELLED order still holds 2 SKU-RED-MUG" in report.violations[0].detail


def test_holds_per_order_that_cannot_be_read_are_noted_not_guessed() -> None:
    report = analyse(evidence(completed("A-1"), holds=None))

    assert report.violations == []
    assert any("holds per order not checked" in n for n in report.notes)
