"""Payment rules: intents for every provider call, the gateway's answer, the review hold, and what undoing a
payment takes -- including a cancellation that meets a call in flight."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from services.payment import domain
from services.payment.domain import Call, GatewayResult, Payment
from shared.events.payment import (
    PaymentAuthorized,
    PaymentCaptured,
    PaymentDeclined,
    PaymentRefunded,
    PaymentVoided,
)
from tests.unit.factories import AT, cause, order_accepted, shipment_scheduled

HOLD = timedelta(seconds=30)


def new_payment() -> Payment:
    return domain.start(order_accepted(), {})


def test_start_takes_amount_currency_and_token_from_the_accepted_order() -> None:
    accepted = order_accepted()

    payment = domain.start(accepted, {})

    assert (payment.status, payment.amount, payment.currency) == ("NEW", Decimal("79.80"), "CNY")
    assert (payment.method, payment.token) == ("alipay", "tok_visa_ok")
    assert payment.accepted_event_id == str(accepted.event_id)


def test_approved_authorization_is_authorized_with_the_gateway_reference() -> None:
    accepted = order_accepted()
    result = GatewayResult(outcome="approved", reference="auth-77")

    payment, events = domain.record_authorization(new_payment(), accepted, result, at=AT, review_hold=HOLD)

    assert payment.status == "AUTHORIZED"
    assert payment.authorization_id == "auth-77"
    assert len(events) == 1
    authorized = events[0]
    assert isinstance(authorized, PaymentAuthorized)
    assert (authorized.amount, authorized.currency, authorized.authorization_id) == (
        Decimal("79.80"),
        "CNY",
        "auth-77",
    )
    assert authorized.causation_id == accepted.event_id


def test_declined_authorization_carries_the_gateway_reason() -> None:
    result = GatewayResult(outcome="declined", reason="insufficient_funds")

    payment, events = domain.record_authorization(new_payment(), order_accepted(), result, at=AT, review_hold=HOLD)

    assert payment.status == "DECLINED"
    assert len(events) == 1
    declined = events[0]
    assert isinstance(declined, PaymentDeclined)
    assert declined.reason == "insufficient_funds"


def test_declined_authorization_without_a_reason_says_payment_declined() -> None:
    result = GatewayResult(outcome="declined")

    _, events = domain.record_authorization(new_payment(), order_accepted(), result, at=AT, review_hold=HOLD)

    assert [getattr(e, "reason", None) for e in events] == ["payment_declined"]


def test_authorization_under_review_is_held_without_any_event() -> None:
    result = GatewayResult(outcome="review")

    payment, events = domain.record_authorization(new_payment(), order_accepted(), result, at=AT, review_hold=HOLD)

    assert events == []
    assert payment.status == "REVIEW"
    assert payment.review_until == AT + HOLD


def held() -> Payment:
    payment, _ = domain.record_authorization(
        new_payment(),
        order_accepted(),
        GatewayResult(outcome="review"),
        at=AT,
        review_hold=HOLD,
    )
    return payment


def test_review_cannot_be_claimed_before_the_hold_ends() -> None:
    assert domain.claim_review(held(), at=AT + HOLD - timedelta(milliseconds=1)) is None


def test_review_is_claimed_once_the_hold_has_ended() -> None:
    claimed = domain.claim_review(held(), at=AT + HOLD)

    assert claimed is not None
    assert claimed.status == "AUTHORIZING"
    assert claimed.claimed_at == AT + HOLD
    assert claimed.after_review
    assert domain.pending(claimed) == Call(operation="authorize", after_review=True)


def test_a_claimed_review_cannot_be_claimed_again() -> None:
    claimed = domain.claim_review(held(), at=AT + HOLD)
    assert claimed is not None

    assert domain.claim_review(claimed, at=AT + HOLD * 2) is None


@pytest.mark.parametrize("status", ["NEW", "AUTHORIZED", "CANCELLED", "VOIDED"])
def test_only_a_payment_under_review_can_be_claimed(status: str) -> None:
    payment = new_payment().model_copy(update={"status": status, "review_until": AT})

    assert domain.claim_review(payment, at=AT + HOLD) is None


# --- intents: what a step decides, before any provider call -----------------------------------------------


def payment_in(status: str, **changes: object) -> Payment:
    return new_payment().model_copy(update={"status": status, **changes})


AUTHORIZE, CAPTURE, VOID, REFUND = (Call(operation=op) for op in ("authorize", "capture", "void", "refund"))


def test_an_accepted_order_is_an_intent_to_authorize_its_total() -> None:
    accepted = order_accepted()

    payment = domain.authorize(accepted, None)

    assert (payment.status, payment.amount, payment.token) == ("AUTHORIZING", Decimal("79.80"), "tok_visa_ok")
    assert payment.accepted_event_id == str(accepted.event_id)
    assert domain.pending(payment) == AUTHORIZE


def test_a_new_payment_left_by_an_early_shipment_is_authorized_when_the_order_arrives() -> None:
    assert domain.authorize(order_accepted(), Payment()).status == "AUTHORIZING"


@pytest.mark.parametrize("status", ["AUTHORIZING", "AUTHORIZED", "REVIEW", "CANCELLED", "DECLINED", "VOIDED"])
def test_an_accepted_order_never_restarts_a_payment_already_started_or_cancelled(status: str) -> None:
    payment = payment_in(status, authorization_id="auth-1")

    assert domain.authorize(order_accepted(), payment) == payment


def test_a_scheduled_shipment_is_an_intent_to_capture_the_authorized_money() -> None:
    captured, events = domain.capture(payment_in("AUTHORIZED", authorization_id="auth-1"))

    assert events == []
    assert captured.status == "CAPTURING"
    assert domain.pending(captured) == CAPTURE


@pytest.mark.parametrize("status", ["NEW", "AUTHORIZING", "REVIEW", "DECLINED", "CAPTURED", "VOIDING", "CANCELLED"])
def test_capture_is_intended_only_while_the_money_is_authorized(status: str) -> None:
    payment = payment_in(status)

    assert domain.capture(payment) == (payment, [])


def test_capture_of_an_authorisation_whose_order_is_being_cancelled_is_never_intended() -> None:
    payment = payment_in("AUTHORIZED", cancel_requested=True)

    assert domain.capture(payment) == (payment, [])


def test_capture_without_any_payment_intends_nothing() -> None:
    assert domain.capture(None) == (domain.Payment(), [])


@pytest.mark.parametrize(
    ("status", "call"),
    [
        ("NEW", None),
        ("REVIEW", None),
        ("AUTHORIZING", AUTHORIZE),
        ("AUTHORIZED", None),
        ("DECLINED", None),
        ("CAPTURING", CAPTURE),
        ("CAPTURED", None),
        ("VOIDING", VOID),
        ("VOIDED", None),
        ("REFUNDING", REFUND),
        ("REFUNDED", None),
        ("CANCELLED", None),
    ],
)
def test_pending_names_the_call_of_each_intent_and_nothing_else(status: str, call: Call | None) -> None:
    assert domain.pending(payment_in(status)) == call


def test_nothing_is_pending_without_a_payment() -> None:
    assert domain.pending(None) is None


# --- cancellation ------------------------------------------------------------------------------------------


def test_cancellation_before_any_payment_marks_it_cancelled_so_it_is_never_authorized() -> None:
    payment = domain.cancel(None)

    assert (payment.status, payment.cancel_requested) == ("CANCELLED", True)
    assert domain.pending(payment) is None
    assert domain.authorize(order_accepted(), payment).status == "CANCELLED"


def test_cancellation_of_a_new_payment_marks_it_cancelled() -> None:
    payment = domain.cancel(new_payment())

    assert payment.status == "CANCELLED"
    assert domain.pending(payment) is None


@pytest.mark.parametrize("status", ["AUTHORIZED", "REVIEW"])
def test_cancellation_of_authorized_or_held_money_is_an_intent_to_void_it(status: str) -> None:
    payment = domain.cancel(payment_in(status, authorization_id="auth-1"))

    assert (payment.status, payment.cancel_requested) == ("VOIDING", True)
    assert domain.pending(payment) == VOID


def test_cancellation_of_captured_money_is_an_intent_to_refund_it() -> None:
    payment = domain.cancel(payment_in("CAPTURED", capture_id="cap-1"))

    assert (payment.status, payment.cancel_requested) == ("REFUNDING", True)
    assert domain.pending(payment) == REFUND


@pytest.mark.parametrize("status", ["AUTHORIZING", "CAPTURING"])
def test_cancellation_that_meets_a_call_in_flight_only_notes_it(status: str) -> None:
    in_flight = payment_in(status)

    payment = domain.cancel(in_flight)

    assert payment == in_flight.model_copy(update={"cancel_requested": True})
    assert domain.pending(payment) == domain.pending(in_flight)  # the call is finished first


@pytest.mark.parametrize("status", ["DECLINED", "VOIDING", "VOIDED", "REFUNDING", "REFUNDED", "CANCELLED"])
def test_cancellation_of_a_payment_with_nothing_to_undo_keeps_its_status(status: str) -> None:
    payment = domain.cancel(payment_in(status))

    assert payment.status == status


# --- recording the provider's answer -----------------------------------------------------------------------


def record(payment: Payment, call: Call, result: GatewayResult) -> domain.Decision:
    return domain.record(payment, call, result, cause(), at=AT, review_hold=HOLD)


APPROVED = GatewayResult(outcome="approved", reference="ref-1")


def test_an_approved_authorisation_is_recorded_with_its_reference_and_announced() -> None:
    payment, events = record(payment_in("AUTHORIZING"), AUTHORIZE, GatewayResult(outcome="approved", reference="a-9"))

    assert (payment.status, payment.authorization_id) == ("AUTHORIZED", "a-9")
    assert [type(e) for e in events] == [PaymentAuthorized]
    assert domain.pending(payment) is None


def test_a_declined_authorisation_is_recorded_and_announced() -> None:
    payment, events = record(payment_in("AUTHORIZING"), AUTHORIZE, GatewayResult(outcome="declined", reason="r"))

    assert payment.status == "DECLINED"
    assert [type(e) for e in events] == [PaymentDeclined]


def test_an_authorisation_held_for_review_waits_silently_until_the_hold_ends() -> None:
    payment, events = record(payment_in("AUTHORIZING"), AUTHORIZE, GatewayResult(outcome="review"))

    assert (payment.status, payment.review_until, events) == ("REVIEW", AT + HOLD, [])
    assert domain.pending(payment) is None


def test_an_authorisation_approved_after_the_order_was_cancelled_is_voided_and_never_announced() -> None:
    payment, events = record(payment_in("AUTHORIZING", cancel_requested=True), AUTHORIZE, APPROVED)

    assert events == []
    assert (payment.status, payment.authorization_id) == ("VOIDING", "ref-1")  # the void needs the reference
    assert domain.pending(payment) == VOID


def test_an_authorisation_held_for_review_after_the_order_was_cancelled_ends_cancelled() -> None:
    payment, events = record(
        payment_in("AUTHORIZING", cancel_requested=True), AUTHORIZE, GatewayResult(outcome="review")
    )

    assert (payment.status, events) == ("CANCELLED", [])
    assert domain.pending(payment) is None


def test_a_capture_is_recorded_with_its_reference_and_announced() -> None:
    shipped = shipment_scheduled()
    payment, events = domain.record(
        payment_in("CAPTURING", authorization_id="auth-1"), CAPTURE, APPROVED, shipped, at=AT, review_hold=HOLD
    )

    assert (payment.status, payment.capture_id) == ("CAPTURED", "ref-1")
    assert len(events) == 1
    captured = events[0]
    assert isinstance(captured, PaymentCaptured)
    assert (captured.amount, captured.capture_id, captured.causation_id) == (
        Decimal("79.80"),
        "ref-1",
        shipped.event_id,
    )


def test_a_capture_answered_after_the_order_was_cancelled_is_announced_and_then_refunded() -> None:
    payment, events = record(payment_in("CAPTURING", cancel_requested=True), CAPTURE, APPROVED)

    assert [type(e) for e in events] == [PaymentCaptured]  # the money did move: the ledger must show it
    assert (payment.status, payment.capture_id) == ("REFUNDING", "ref-1")  # the refund needs the capture id
    assert domain.pending(payment) == REFUND


def test_a_void_is_recorded_and_announces_the_released_amount() -> None:
    payment, events = record(payment_in("VOIDING", authorization_id="auth-1"), VOID, APPROVED)

    assert payment.status == "VOIDED"
    assert len(events) == 1
    voided = events[0]
    assert isinstance(voided, PaymentVoided)
    assert (voided.amount, voided.currency) == (Decimal("79.80"), "CNY")
    assert domain.pending(payment) is None


def test_a_refund_is_recorded_under_its_reference_and_announces_the_refunded_amount() -> None:
    payment, events = record(
        payment_in("REFUNDING", capture_id="cap-1"), REFUND, GatewayResult(outcome="approved", reference="ref-9")
    )

    assert (payment.status, payment.refund_id) == ("REFUNDED", "ref-9")
    assert len(events) == 1
    refunded = events[0]
    assert isinstance(refunded, PaymentRefunded)
    assert (refunded.amount, refunded.refund_id) == (Decimal("79.80"), "ref-9")


@pytest.mark.parametrize(
    ("status", "call"),
    [
        ("AUTHORIZED", AUTHORIZE),  # a replica recorded the same answer first
        ("VOIDING", AUTHORIZE),  # ... and a cancellation moved on from it
        ("CAPTURED", CAPTURE),
        ("REFUNDING", CAPTURE),
        ("VOIDED", VOID),
        ("REFUNDED", REFUND),
        ("CAPTURING", AUTHORIZE),
        ("CANCELLED", AUTHORIZE),
    ],
)
def test_an_answer_to_a_call_no_longer_pending_changes_nothing(status: str, call: Call) -> None:
    payment = payment_in(status, authorization_id="auth-1", capture_id="cap-1")

    recorded, events = record(payment, call, APPROVED)

    assert (recorded, events) == (payment, [])


def test_a_claimed_review_is_authorised_after_review_and_then_recorded_like_any_authorisation() -> None:
    claimed = domain.claim_review(held(), at=AT + HOLD)
    assert claimed is not None
    call = domain.pending(claimed)
    assert call == Call(operation="authorize", after_review=True)

    payment, events = record(claimed, call, APPROVED)

    assert payment.status == "AUTHORIZED"
    assert [type(e) for e in events] == [PaymentAuthorized]


def test_a_review_cancelled_before_its_hold_ends_is_called_off_at_the_provider_and_never_claimed() -> None:
    payment = domain.cancel(held())

    assert payment.status == "VOIDING"  # the provider holds the transaction under review: call it off there
    assert domain.claim_review(payment, at=AT + HOLD) is None


@pytest.mark.parametrize(
    ("payment", "waits"),
    [
        (None, True),  # after a restore, the shipment may be read before the order's acceptance
        (Payment(status="NEW"), True),
        (Payment(status="AUTHORIZING"), True),
        (Payment(status="REVIEW"), True),
        (Payment(status="AUTHORIZED"), False),
        (Payment(status="CAPTURED"), False),
        (Payment(status="DECLINED"), False),
        (Payment(status="NEW", cancel_requested=True), False),  # cancelled: nothing to wait for
    ],
)
def test_a_capture_waits_only_while_its_authorisation_is_still_to_come(payment: Payment | None, waits: bool) -> None:
    assert domain.authorization_pending(payment) is waits
