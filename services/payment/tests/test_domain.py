"""Payment rules: the gateway's answer, the review hold, and what undoing a payment takes."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from services.payment import domain
from services.payment.domain import GatewayResult, Payment
from shared.events.payment import PaymentAuthorized, PaymentDeclined, PaymentRefunded, PaymentVoided
from tests.unit.factories import AT, order_accepted

HOLD = timedelta(seconds=30)


def new_payment() -> Payment:
    return domain.start(order_accepted())


def test_start_takes_amount_currency_and_token_from_the_accepted_order() -> None:
    accepted = order_accepted()

    payment = domain.start(accepted)

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


def test_a_claimed_review_cannot_be_claimed_again() -> None:
    claimed = domain.claim_review(held(), at=AT + HOLD)
    assert claimed is not None

    assert domain.claim_review(claimed, at=AT + HOLD * 2) is None


@pytest.mark.parametrize("status", ["NEW", "AUTHORIZED", "CANCELLED", "VOIDED"])
def test_only_a_payment_under_review_can_be_claimed(status: str) -> None:
    payment = new_payment().model_copy(update={"status": status, "review_until": AT})

    assert domain.claim_review(payment, at=AT + HOLD) is None


@pytest.mark.parametrize(
    ("status", "action"),
    [
        ("NEW", "none"),
        ("REVIEW", "void"),
        ("AUTHORIZING", "wait"),
        ("AUTHORIZED", "void"),
        ("DECLINED", "none"),
        ("CAPTURED", "refund"),
        ("VOIDED", "none"),
        ("REFUNDED", "none"),
        ("CANCELLED", "none"),
    ],
)
def test_compensation_for_each_status(status: str, action: str) -> None:
    payment = new_payment().model_copy(update={"status": status})

    assert domain.compensation_for(payment) == action


def test_no_payment_needs_no_compensation() -> None:
    assert domain.compensation_for(None) == "none"


def test_void_compensation_voids_the_authorized_amount() -> None:
    authorized = new_payment().model_copy(update={"status": "AUTHORIZED", "authorization_id": "auth-1"})

    payment, events = domain.record_compensation(authorized, order_accepted(), "void", "")

    assert payment.status == "VOIDED"
    assert len(events) == 1
    voided = events[0]
    assert isinstance(voided, PaymentVoided)
    assert (voided.amount, voided.currency) == (Decimal("79.80"), "CNY")


def test_refund_compensation_refunds_the_captured_amount_under_the_refund_reference() -> None:
    captured = new_payment().model_copy(update={"status": "CAPTURED", "capture_id": "cap-1"})

    payment, events = domain.record_compensation(captured, order_accepted(), "refund", "ref-9")

    assert (payment.status, payment.refund_id) == ("REFUNDED", "ref-9")
    assert len(events) == 1
    refunded = events[0]
    assert isinstance(refunded, PaymentRefunded)
    assert (refunded.amount, refunded.refund_id) == (Decimal("79.80"), "ref-9")


def test_cancellation_before_any_payment_marks_it_cancelled_without_events() -> None:
    payment, events = domain.record_compensation(None, order_accepted(), "none", "")

    assert events == []
    assert payment.status == "CANCELLED"


def test_cancellation_of_a_new_payment_marks_it_cancelled_so_it_is_never_authorized() -> None:
    payment, events = domain.record_compensation(new_payment(), order_accepted(), "none", "")

    assert events == []
    assert payment.status == "CANCELLED"
    assert not domain.needs_authorization(payment)


def test_cancellation_of_a_declined_payment_changes_nothing() -> None:
    declined = new_payment().model_copy(update={"status": "DECLINED"})

    payment, events = domain.record_compensation(declined, order_accepted(), "none", "")

    assert events == []
    assert payment == declined


def test_capture_is_due_only_while_the_money_is_authorized() -> None:
    payment = new_payment()

    assert domain.capture_due(payment.model_copy(update={"status": "AUTHORIZED"}))
    assert not domain.capture_due(payment.model_copy(update={"status": "VOIDED"}))
    assert not domain.capture_due(None)
