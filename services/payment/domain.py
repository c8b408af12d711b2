"""Payment rules: pure and synchronous. Given the payment's state and what happened, decide the new state and
which events follow. The handlers do the I/O (gateway calls, the store) around these functions.

States: NEW -> AUTHORIZING -> AUTHORIZED -> CAPTURING -> CAPTURED -> REFUNDING -> REFUNDED
                    |   \\-> REVIEW -> AUTHORIZING    \\-> VOIDING -> VOIDED
                    \\-> DECLINED
CANCELLED marks an order cancelled before any money was asked for.

The ``-ING`` states are recorded intents: the provider call they name (:func:`pending`) is made with its
idempotency key after the intent is durable, and its answer is recorded by :func:`record`. A cancellation that
meets an intent in flight does not race it: it is noted (``cancel_requested``), the call is finished, and its
result is compensated (an authorisation voided, a capture refunded).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel

from shared.events.base import EmittedEvent, Event, Money
from shared.events.order import OrderAccepted
from shared.events.payment import (
    PaymentAuthorized,
    PaymentCaptured,
    PaymentDeclined,
    PaymentRefunded,
    PaymentVoided,
)

Status = Literal[
    "NEW",
    "REVIEW",
    "AUTHORIZING",
    "AUTHORIZED",
    "DECLINED",
    "CAPTURING",
    "CAPTURED",
    "VOIDING",
    "VOIDED",
    "REFUNDING",
    "REFUNDED",
    "CANCELLED",
]
Operation = Literal["authorize", "capture", "void", "refund"]
Decision = tuple["Payment", Sequence[EmittedEvent]]


class GatewayResult(BaseModel):
    """What the provider answered: ``approved``, ``declined`` or ``review`` (held for risk review)."""

    outcome: Literal["approved", "declined", "review"]
    reference: str = ""
    reason: str = ""


class Payment(BaseModel):
    status: Status = "NEW"
    method: str = ""
    token: str = ""
    amount: Money = Decimal("0")
    currency: str = "CNY"
    authorization_id: str = ""
    capture_id: str = ""
    refund_id: str = ""
    review_until: datetime | None = None
    claimed_at: datetime | None = None
    accepted_event_id: str = ""
    after_review: bool = False
    cancel_requested: bool = False


class Call(BaseModel):
    """A provider call a payment has pending; its idempotency key is ``<order_id>:<operation>``."""

    model_config = {"frozen": True}

    operation: Operation
    after_review: bool = False


INTENTS: dict[str, Operation] = {
    "AUTHORIZING": "authorize",
    "CAPTURING": "capture",
    "VOIDING": "void",
    "REFUNDING": "refund",
}


def pending(payment: Payment | None) -> Call | None:
    """The provider call this payment's state has recorded as intended and not yet answered."""
    if payment is None or payment.status not in INTENTS:
        return None
    return Call(operation=INTENTS[payment.status], after_review=payment.after_review)


def authorize(event: OrderAccepted, payment: Payment | None) -> Payment:
    """OrderAccepted: intend to authorise (once; a payment already started or cancelled stays as it is)."""
    if payment is not None and payment.status != "NEW":
        return payment
    return start(event).model_copy(update={"status": "AUTHORIZING"})


def capture(payment: Payment | None) -> Payment | None:
    """ShipmentScheduled: intend to capture if, and only if, the money is authorised and the order not cancelled."""
    if payment is None or payment.status != "AUTHORIZED" or payment.cancel_requested:
        return payment
    return payment.model_copy(update={"status": "CAPTURING"})


def authorization_pending(payment: Payment | None) -> bool:
    """A capture came before the authorisation it follows was recorded (topics re-read side by side after a
    restore): it must wait for it, not be dropped -- a shipment would otherwise go out uncharged."""
    if payment is not None and payment.cancel_requested:
        return False
    return payment is None or payment.status in ("NEW", "AUTHORIZING", "REVIEW")


def cancel(payment: Payment | None) -> Payment:
    """OrderCancelled: undo what was done -- or note it, when a call is in flight, and undo its result."""
    if payment is None or payment.status == "NEW":
        return (payment or Payment()).model_copy(update={"status": "CANCELLED", "cancel_requested": True})
    if payment.status in ("AUTHORIZED", "REVIEW"):
        return payment.model_copy(update={"status": "VOIDING", "cancel_requested": True})
    if payment.status == "CAPTURED":
        return payment.model_copy(update={"status": "REFUNDING", "cancel_requested": True})
    return payment.model_copy(update={"cancel_requested": True})


def record(
    payment: Payment, call: Call, result: GatewayResult, cause: Event, *, at: datetime, review_hold: timedelta
) -> Decision:
    """The provider answered ``call``: the next state, the events that follow, and any compensation due."""
    if payment.status != {v: k for k, v in INTENTS.items()}[call.operation]:
        return payment, []  # already recorded (a replica or a redelivery got there first)
    if call.operation == "authorize":
        if result.outcome == "approved" and payment.cancel_requested:
            # Authorised for an order cancelled meanwhile: void it; the order never hears of the authorisation.
            return payment.model_copy(update={"status": "VOIDING", "authorization_id": result.reference}), []
        if result.outcome == "review" and payment.cancel_requested:
            return payment.model_copy(update={"status": "CANCELLED"}), []
        return record_authorization(payment, cause, result, at=at, review_hold=review_hold)
    if call.operation == "capture":
        captured, events = record_capture(payment, cause, result.reference)
        if payment.cancel_requested:
            return captured.model_copy(update={"status": "REFUNDING"}), events
        return captured, events
    if call.operation == "void":
        return payment.model_copy(update={"status": "VOIDED"}), [
            PaymentVoided.caused_by(cause, amount=payment.amount, currency=payment.currency),
        ]
    return payment.model_copy(update={"status": "REFUNDED", "refund_id": result.reference}), [
        PaymentRefunded.caused_by(cause, amount=payment.amount, currency=payment.currency, refund_id=result.reference),
    ]


def start(event: OrderAccepted) -> Payment:
    return Payment(
        method=event.payment.method,
        token=event.payment.token,
        amount=event.total,
        currency=event.currency,
        accepted_event_id=str(event.event_id),
    )


def record_authorization(
    payment: Payment,
    cause: Event,
    result: GatewayResult,
    *,
    at: datetime,
    review_hold: timedelta,
) -> Decision:
    """The gateway answered an authorisation request."""
    if result.outcome == "approved":
        authorized = payment.model_copy(update={"status": "AUTHORIZED", "authorization_id": result.reference})
        return authorized, [
            PaymentAuthorized.caused_by(
                cause,
                amount=payment.amount,
                currency=payment.currency,
                authorization_id=result.reference,
            ),
        ]
    if result.outcome == "declined":
        return payment.model_copy(update={"status": "DECLINED"}), [
            PaymentDeclined.caused_by(cause, reason=result.reason or "payment_declined"),
        ]
    # Held for risk review: nothing is emitted yet; the review scanner finishes it when the hold ends.
    return payment.model_copy(update={"status": "REVIEW", "review_until": at + review_hold}), []


def claim_review(payment: Payment, *, at: datetime) -> Payment | None:
    """A review whose hold has ended is claimed before the gateway is asked (a cancellation meanwhile wins)."""
    if payment.status == "REVIEW" and payment.review_until is not None and payment.review_until <= at:
        return payment.model_copy(update={"status": "AUTHORIZING", "claimed_at": at, "after_review": True})
    return None


def record_capture(payment: Payment, cause: Event, capture_id: str) -> Decision:
    return payment.model_copy(update={"status": "CAPTURED", "capture_id": capture_id}), [
        PaymentCaptured.caused_by(cause, amount=payment.amount, currency=payment.currency, capture_id=capture_id),
    ]
