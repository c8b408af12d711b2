"""Order rules: acceptance, the saga's progress to completion or cancellation, and customer cancellation."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from services.order import domain
from services.order.domain import Order
from shared.events.base import Event
from shared.events.order import (
    FieldError,
    OrderAccepted,
    OrderCancellationRefused,
    OrderCancelled,
    OrderCompleted,
    OrderRejected,
)
from shared.events.storefront import OrderRequest
from tests.unit.factories import (
    AT,
    ORDER_ID,
    TRACKING_NUMBER,
    cancellation_requested,
    cause,
    notification_sent,
    order_placed,
    payment_authorized,
    payment_captured,
    payment_declined,
    retry_of,
    shipment_failed,
    shipment_scheduled,
    shipment_tracked,
    stock_reserved,
    stock_unavailable,
)

DEADLINE = timedelta(minutes=15)


def accepted_order() -> Order:
    order, _ = domain.place(None, order_placed(), at=AT, deadline=DEADLINE, trace_id=None)
    return order


def after(order: Order, *events: Event) -> Order:
    for event in events:
        order, _ = domain.progress(order, event, at=AT)
    return order


# --- place -----------------------------------------------------------------------------------------------------


def test_new_order_is_accepted_pending_with_one_order_accepted_event() -> None:
    placed = order_placed()

    order, events = domain.place(None, placed, at=AT, deadline=DEADLINE, trace_id="t-1")

    assert order.status == "PENDING"
    assert order.stage == "ACCEPTED"
    assert order.deadline_at == AT + DEADLINE
    assert len(events) == 1
    accepted = events[0]
    assert isinstance(accepted, OrderAccepted)
    assert accepted.order_id == ORDER_ID
    assert accepted.causation_id == placed.event_id
    assert accepted.shipping == placed.shipping
    assert accepted.payment == placed.payment


def test_accepted_total_is_the_exact_decimal_sum_of_unit_price_times_quantity() -> None:
    lines = [
        {"sku": "SKU-A", "quantity": 3, "unit_price": "0.10"},
        {"sku": "SKU-B", "quantity": 2, "unit_price": "39.90"},
    ]
    order, events = domain.place(None, order_placed(lines=lines), at=AT, deadline=DEADLINE, trace_id=None)

    accepted = events[0]
    assert isinstance(accepted, OrderAccepted)
    assert isinstance(accepted.total, Decimal)
    assert accepted.total == Decimal("80.10")  # 0.30 + 79.80, no float drift
    assert order.total == Decimal("80.10")


def test_retry_of_the_same_order_with_a_new_event_id_emits_nothing_and_keeps_the_order() -> None:
    placed = order_placed()
    order, _ = domain.place(None, placed, at=AT, deadline=DEADLINE, trace_id=None)

    again, events = domain.place(order, retry_of(placed), at=AT, deadline=DEADLINE, trace_id=None)

    assert events == []
    assert again.status == "PENDING"
    assert again.content_hash == order.content_hash
    assert again.deadline_at == order.deadline_at


def test_different_order_under_a_known_order_id_is_rejected_as_conflict_and_the_order_is_untouched() -> None:
    order = accepted_order()
    other = order_placed(
        event_id="00000000-0000-4000-8000-000000000001",
        lines=[{"sku": "SKU-RED-MUG", "quantity": 3, "unit_price": "39.90"}],
    )

    again, events = domain.place(order, other, at=AT, deadline=DEADLINE, trace_id=None)

    assert len(events) == 1
    rejected = events[0]
    assert isinstance(rejected, OrderRejected)
    assert rejected.reason == "order_id_conflict"
    assert again.status == "PENDING"
    assert again.total == order.total
    assert again.content_hash == order.content_hash


# --- reject_invalid --------------------------------------------------------------------------------------------


def test_invalid_placement_of_an_unknown_order_creates_a_rejected_order_with_field_errors() -> None:
    errors = [FieldError(loc=["lines", 0, "quantity"], msg="must be at least 1", type="greater_than_equal")]
    bad = cause("OrderPlaced")

    order, events = domain.reject_invalid(None, order_id=ORDER_ID, cause=bad, errors=errors, at=AT, trace_id=None)

    assert order.status == "REJECTED"
    assert order.reason == "invalid_order"
    assert order.errors == errors
    assert order.terminal
    assert len(events) == 1
    rejected = events[0]
    assert isinstance(rejected, OrderRejected)
    assert rejected.reason == "invalid_order"
    assert rejected.errors == errors


def test_invalid_retry_of_a_known_order_does_not_overwrite_it() -> None:
    order = accepted_order()

    again, events = domain.reject_invalid(
        order,
        order_id=ORDER_ID,
        cause=cause("OrderPlaced"),
        errors=[],
        at=AT,
        trace_id=None,
    )

    assert again.status == "PENDING"
    assert again.total == order.total
    assert [e.event_type for e in events] == ["OrderRejected"]


# --- progress: cancellations ---------------------------------------------------------------------------------


def test_payment_declined_cancels_the_order_with_reason_payment_declined() -> None:
    declined = payment_declined()

    order, events = domain.progress(accepted_order(), declined, at=AT)

    assert order.status == "CANCELLED"
    assert order.reason == "payment_declined"
    assert order.deadline_at is None
    assert len(events) == 1
    cancelled = events[0]
    assert isinstance(cancelled, OrderCancelled)
    assert cancelled.reason == "payment_declined"
    assert cancelled.causation_id == declined.event_id


def test_stock_unavailable_cancels_the_order_with_reason_out_of_stock() -> None:
    order, events = domain.progress(after(accepted_order(), payment_authorized()), stock_unavailable(), at=AT)

    assert (order.status, order.reason) == ("CANCELLED", "out_of_stock")
    assert [(type(e), getattr(e, "reason", None)) for e in events] == [(OrderCancelled, "out_of_stock")]


def test_shipment_failed_cancels_the_order_with_reason_shipping_failed() -> None:
    pending = after(accepted_order(), payment_authorized(), stock_reserved())

    order, events = domain.progress(pending, shipment_failed(), at=AT)

    assert (order.status, order.reason) == ("CANCELLED", "shipping_failed")
    assert [(type(e), getattr(e, "reason", None)) for e in events] == [(OrderCancelled, "shipping_failed")]


# --- progress: completion ------------------------------------------------------------------------------------


def test_shipment_scheduled_alone_does_not_complete_the_order() -> None:
    pending = after(accepted_order(), payment_authorized(), stock_reserved())

    order, events = domain.progress(pending, shipment_scheduled(), at=AT)

    assert events == []
    assert order.status == "PENDING"
    assert order.stage == "SHIPMENT_SCHEDULED"
    assert order.shipment is not None
    assert order.shipment.tracking_number == TRACKING_NUMBER


def test_payment_captured_alone_does_not_complete_the_order() -> None:
    order, events = domain.progress(after(accepted_order(), payment_authorized()), payment_captured(), at=AT)

    assert events == []
    assert order.status == "PENDING"
    assert order.payment_captured


def test_order_completes_when_capture_follows_the_shipment() -> None:
    pending = after(accepted_order(), payment_authorized(), stock_reserved(), shipment_scheduled())

    order, events = domain.progress(pending, payment_captured(), at=AT)

    assert order.status == "COMPLETED"
    assert order.stage == "DONE"
    assert order.terminal_at == AT
    assert len(events) == 1
    completed = events[0]
    assert isinstance(completed, OrderCompleted)
    assert completed.total == Decimal("79.80")
    assert completed.shipment.tracking_number == TRACKING_NUMBER


def test_order_completes_when_the_shipment_follows_the_capture() -> None:
    pending = after(accepted_order(), payment_authorized(), stock_reserved(), payment_captured())

    order, events = domain.progress(pending, shipment_scheduled(), at=AT)

    assert order.status == "COMPLETED"
    assert [type(e) for e in events] == [OrderCompleted]


def test_order_completes_only_once_when_a_fact_is_repeated_after_completion() -> None:
    done = after(accepted_order(), shipment_scheduled(), payment_captured())
    assert done.status == "COMPLETED"

    order, events = domain.progress(done, payment_captured(), at=AT)

    assert events == []
    assert order.status == "COMPLETED"


# --- progress: late facts ------------------------------------------------------------------------------------


def test_late_shipment_and_capture_after_cancellation_leave_the_order_cancelled() -> None:
    cancelled = after(accepted_order(), payment_declined())

    order, first = domain.progress(cancelled, shipment_scheduled(), at=AT)
    order, second = domain.progress(order, payment_captured(), at=AT)

    assert first == []
    assert second == []
    assert (order.status, order.reason) == ("CANCELLED", "payment_declined")


def test_late_failure_after_completion_does_not_cancel_the_order() -> None:
    done = after(accepted_order(), shipment_scheduled(), payment_captured())

    order, events = domain.progress(done, shipment_failed(), at=AT)

    assert events == []
    assert order.status == "COMPLETED"
    assert order.reason is None


def test_notification_after_the_end_is_recorded_without_changing_status() -> None:
    cancelled = after(accepted_order(), payment_declined())

    order, events = domain.progress(cancelled, notification_sent(), at=AT)

    assert events == []
    assert order.status == "CANCELLED"
    assert [(n.kind, n.status) for n in order.notifications] == [("order_cancelled", "SENT")]


# --- request_cancellation ------------------------------------------------------------------------------------


def test_customer_cancellation_before_shipment_cancels_with_reason_customer_request() -> None:
    pending = after(accepted_order(), payment_authorized(), stock_reserved())
    request = cancellation_requested()

    order, events = domain.request_cancellation(pending, request, request.reason, at=AT)

    assert (order.status, order.reason) == ("CANCELLED", "customer_request")
    assert len(events) == 1
    cancelled = events[0]
    assert isinstance(cancelled, OrderCancelled)
    assert cancelled.reason == "customer_request"
    assert cancelled.causation_id == request.event_id


def test_customer_cancellation_after_shipment_scheduled_cancels_so_the_parcel_is_called_back() -> None:
    shipped = after(accepted_order(), payment_authorized(), stock_reserved(), shipment_scheduled())
    request = cancellation_requested("changed my mind")

    order, events = domain.request_cancellation(shipped, request, request.reason, at=AT)

    assert (order.status, order.reason) == ("CANCELLED", "customer_request")
    assert [type(e) for e in events] == [OrderCancelled]


def test_customer_cancellation_of_a_completed_order_in_transit_cancels_it_for_a_refund() -> None:
    done = after(accepted_order(), shipment_scheduled(), payment_captured(), shipment_tracked("PICKED_UP", 5))
    assert done.status == "COMPLETED"
    request = cancellation_requested()

    order, events = domain.request_cancellation(done, request, request.reason, at=AT)

    assert (order.status, order.reason) == ("CANCELLED", "customer_request")
    assert len(events) == 1
    assert isinstance(events[0], OrderCancelled)
    assert events[0].reason == "customer_request"


def test_customer_cancellation_of_a_delivered_order_is_refused_and_it_stays_completed() -> None:
    delivered = after(accepted_order(), shipment_scheduled(), payment_captured(), shipment_tracked("DELIVERED", 60))
    request = cancellation_requested()

    order, events = domain.request_cancellation(delivered, request, request.reason, at=AT)

    assert order.status == "COMPLETED"
    assert len(events) == 1
    assert isinstance(events[0], OrderCancellationRefused)
    assert events[0].reason == "parcel_already_delivered"


# --- following the parcel ----------------------------------------------------------------------------------------


def test_a_completed_order_follows_its_parcel_to_delivered_and_only_then_its_stream_ends() -> None:
    done = after(accepted_order(), shipment_scheduled(), payment_captured())
    assert done.terminal
    assert not done.followed_to_the_end

    picked = after(done, shipment_tracked("PICKED_UP", 5))
    assert (picked.status, picked.stage, picked.delivery and picked.delivery.status) == (
        "COMPLETED",
        "PICKED_UP",
        "PICKED_UP",
    )
    delivered = after(picked, shipment_tracked("IN_TRANSIT", 30), shipment_tracked("DELIVERED", 60))

    assert delivered.stage == "DELIVERED"
    assert delivered.delivery is not None
    assert [s.milestone for s in delivered.delivery.steps] == ["PICKED_UP", "IN_TRANSIT", "DELIVERED"]
    assert delivered.delivery.delivered_at == AT + timedelta(minutes=60)
    assert delivered.followed_to_the_end


def test_parcel_steps_out_of_order_and_twice_leave_the_latest_milestone_and_a_delivery_stays() -> None:
    done = after(accepted_order(), shipment_scheduled(), payment_captured())
    transit = shipment_tracked("IN_TRANSIT", 30)

    order = after(done, transit, shipment_tracked("PICKED_UP", 5), transit)
    assert order.delivery is not None
    assert order.stage == "IN_TRANSIT"
    assert [s.milestone for s in order.delivery.steps] == ["PICKED_UP", "IN_TRANSIT"]

    late_exception = after(order, shipment_tracked("DELIVERED", 60), shipment_tracked("EXCEPTION", 40))
    assert late_exception.stage == "DELIVERED"


def test_a_parcel_step_before_completion_is_kept_without_moving_the_stage() -> None:
    scheduled = after(accepted_order(), payment_authorized(), stock_reserved(), shipment_scheduled())

    order = after(scheduled, shipment_tracked("PICKED_UP", 5))

    assert order.status == "PENDING"
    assert order.stage == "SHIPMENT_SCHEDULED"
    assert order.delivery is not None
    assert order.delivery.status == "PICKED_UP"


# --- the deadline ----------------------------------------------------------------------------------------------


def test_deadline_has_not_passed_before_deadline_at() -> None:
    assert not domain.deadline_passed(accepted_order(), at=AT + DEADLINE - timedelta(seconds=1))


def test_deadline_has_passed_at_deadline_at() -> None:
    assert domain.deadline_passed(accepted_order(), at=AT + DEADLINE)


def test_deadline_passing_before_the_shipment_is_scheduled_cancels_the_order() -> None:
    stuck = after(accepted_order(), payment_authorized(), stock_reserved())

    assert domain.deadline_passed(stuck, at=AT + DEADLINE)
    assert domain.deadline_cancels(stuck)


def test_deadline_passing_after_the_shipment_is_scheduled_is_an_alert_not_a_cancellation() -> None:
    shipped = after(accepted_order(), payment_authorized(), stock_reserved(), shipment_scheduled())

    assert domain.deadline_passed(shipped, at=AT + DEADLINE * 10)  # still overdue: someone must look
    assert not domain.deadline_cancels(shipped)


def test_deadline_does_not_apply_to_a_terminal_order() -> None:
    cancelled = after(accepted_order(), payment_declined())
    completed = after(accepted_order(), shipment_scheduled(), payment_captured())

    assert not domain.deadline_passed(cancelled, at=AT + DEADLINE * 10)
    assert not domain.deadline_passed(completed, at=AT + DEADLINE * 10)


def test_each_step_of_the_saga_gives_the_order_its_full_deadline_again() -> None:
    later = AT + DEADLINE - timedelta(seconds=1)
    progressed = after(accepted_order(), payment_authorized())

    rearmed = domain.rearm_deadline(progressed, at=later, deadline=DEADLINE)

    assert rearmed.deadline_at == later + DEADLINE
    assert not domain.deadline_passed(rearmed, at=AT + DEADLINE)
    assert domain.deadline_passed(rearmed, at=later + DEADLINE)
    assert rearmed.model_copy(update={"deadline_at": progressed.deadline_at}) == progressed  # nothing else changes


def test_a_terminal_order_gets_no_deadline_again() -> None:
    cancelled = after(accepted_order(), payment_declined())
    assert cancelled.deadline_at is None

    assert domain.rearm_deadline(cancelled, at=AT, deadline=DEADLINE) == cancelled


def test_content_hash_of_a_placement_ignores_its_event_id_and_occurred_at() -> None:
    placed = order_placed()
    resent = order_placed(event_id="00000000-0000-4000-8000-000000000002", occurred_at="2026-11-25T08:05:00Z")

    assert domain.content_hash(resent) == domain.content_hash(placed)


def test_content_hash_of_a_placement_equals_that_of_the_request_body_it_carries() -> None:
    placed = order_placed()
    body = OrderRequest.model_validate(placed.model_dump(exclude={"event_type", "event_id", "occurred_at"}))

    assert domain.content_hash(body) == domain.content_hash(placed)


def test_content_hash_changes_when_the_content_changes() -> None:
    lines = [{"sku": "SKU-RED-MUG", "quantity": 3, "unit_price": "39.90"}]

    assert domain.content_hash(order_placed(lines=lines)) != domain.content_hash(order_placed())
