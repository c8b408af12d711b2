"""Payment rules: pure and synchronous. Given the payment's state and what happened, decide the new state and
which events follow. The handlers do the I/O (gateway calls, the store) around these functions.

States: NEW -> REVIEW -> AUTHORIZING -> AUTHORIZED -> CAPTURED -> REFUNDED
                       \\-> DECLINED      \\-> VOIDED
CANCELLED marks an order cancelled before any money was asked for.
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
    "NEW", "REVIEW", "AUTHORIZING", "AUTHORIZED", "DECLINED", "CAPTURED", "VOIDED", "REFUNDED", "CANCELLED"
]
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


def start(event: OrderAccepted) -> Payment:
    return Payment(
        method=event.payment.method,
        token=event.payment.token,
        amount=event.total,
        currency=event.currency,
        accepted_event_id=str(event.event_id),
    )


def needs_authorization(payment: Payment | None) -> bool:
    return payment is None or payment.status == "NEW"


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
        return payment.model_copy(update={"status": "AUTHORIZING", "claimed_at": at})
    return None


def capture_due(payment: Payment | None) -> bool:
    """The shipment is scheduled: capture if, and only if, the money is still authorised."""
    return payment is not None and payment.status == "AUTHORIZED"


def record_capture(payment: Payment, cause: Event, capture_id: str) -> Decision:
    return payment.model_copy(update={"status": "CAPTURED", "capture_id": capture_id}), [
        PaymentCaptured.caused_by(cause, amount=payment.amount, currency=payment.currency, capture_id=capture_id),
    ]


CompensationAction = Literal["void", "refund", "none", "wait"]


def compensation_for(payment: Payment | None) -> CompensationAction:
    """What undoing this payment takes when the order is cancelled."""
    if payment is None:
        return "none"
    if payment.status in ("AUTHORIZED", "REVIEW"):
        return "void"
    if payment.status == "CAPTURED":
        return "refund"
    if payment.status == "AUTHORIZING":
        return "wait"  # an authorisation is in flight: void it once it has an answer
    return "none"


def record_compensation(payment: Payment | None, cause: Event, action: CompensationAction, reference: str) -> Decision:
    if payment is None:
        return Payment(status="CANCELLED"), []
    if action == "void":
        return payment.model_copy(update={"status": "VOIDED"}), [
            PaymentVoided.caused_by(cause, amount=payment.amount, currency=payment.currency),
        ]
    if action == "refund":
        return payment.model_copy(update={"status": "REFUNDED", "refund_id": reference}), [
            PaymentRefunded.caused_by(cause, amount=payment.amount, currency=payment.currency, refund_id=reference),
        ]
    if payment.status == "NEW":
        return payment.model_copy(update={"status": "CANCELLED"}), []
    return payment, []
