"""Payment rules: pure and synchronous. Given the payment's state and what happened, decide the new state and
which events follow. The handlers do the I/O (gateway calls, the store) around these functions.

States: NEW -> AUTHORIZING -> AUTHORIZED -> CAPTURING -> CAPTURED -> REFUNDING -> REFUNDED
                    |   \\-> REVIEW -> AUTHORIZING    \\-> VOIDING -> VOIDED
                    \\-> DECLINED
CANCELLED marks an order cancelled before any money was asked for.

At a provider's cashier (Alipay, WeChat Pay: no token) the money is taken when the customer pays, so the same states
mean: AUTHORIZING = create the trade, AWAITING_PAYMENT = the customer has it, AUTHORIZED (``settled``) = paid,
captured on ShipmentScheduled without a call; VOIDING = close the trade if unpaid (a paid one is refunded instead);
REFUND_PENDING = a refund the provider is still processing. What the provider says (a verified notification or a
query) only moves a payment forward; money that arrives for a cancelled or expired order is refunded.

The ``-ING`` states are recorded intents: the provider call they name (:func:`pending`) is made with its
idempotency key after the intent is durable, and its answer is recorded by :func:`record`. A cancellation that
meets an intent in flight does not race it: it is noted (``cancel_requested``), the call is finished, and its
result is compensated (an authorisation voided, a capture refunded).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel

from services.payment.provider import BillRow
from shared.events.base import EmittedEvent, Event, Money
from shared.events.order import OrderAccepted
from shared.events.payment import (
    PaymentAction,
    PaymentActionRequired,
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
    "AWAITING_PAYMENT",
    "AUTHORIZED",
    "DECLINED",
    "CAPTURING",
    "CAPTURED",
    "VOIDING",
    "VOIDED",
    "REFUNDING",
    "REFUND_PENDING",
    "REFUNDED",
    "CANCELLED",
]
Operation = Literal["authorize", "capture", "void", "refund"]
Decision = tuple["Payment", Sequence[EmittedEvent]]


class GatewayResult(BaseModel):
    """What the provider answered: ``approved``, ``declined`` or ``review`` (held for risk review); for a trade at a
    provider's cashier ``created`` (with where to pay), ``paid`` or ``closed``; for a refund ``pending``."""

    outcome: Literal["approved", "declined", "review", "created", "paid", "closed", "pending"]
    reference: str = ""
    reason: str = ""
    pay_url: str | None = None
    code_url: str | None = None
    jsapi: dict[str, str] | None = None
    amount: Money | None = None


class Observation(BaseModel):
    """What the provider says of a trade or a refund (a verified notification, or the answer to a query)."""

    kind: Literal["trade", "refund"]
    status: Literal["paid", "unpaid", "closed", "unknown", "refunded", "refund_processing", "refund_failed"]
    trade_no: str = ""
    refund_no: str = ""
    amount: Money | None = None


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
    # At a provider's cashier (provider "sandbox" = a token payment):
    provider: str = "sandbox"
    channel: str = ""
    openid: str | None = None
    return_url: str | None = None
    subject: str = ""
    action: PaymentAction | None = None
    expires_at: datetime | None = None
    expiring: bool = False  # the close under way is the trade's expiry, not a cancellation
    check_at: datetime | None = None  # when the provider is next asked (a lost notification is found this way)
    checks: int = 0
    last_check: str = ""  # the event id of the last check that changed this payment (what it emitted is published)
    paid_at: datetime | None = None
    refunded_at: datetime | None = None
    late_money: bool = False  # paid after the order was cancelled or its trade expired: refunded
    # Top-level copies for the daily reconciliation (Beijing days, as the providers' bills count them).
    paid_day: str = ""
    refund_day: str = ""

    @property
    def settled(self) -> bool:
        return self.provider != "sandbox"


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


def authorize(
    event: OrderAccepted,
    payment: Payment | None,
    *,
    at: datetime | None = None,
    providers: dict[str, str] | None = None,
    trade_expiry: timedelta = timedelta(minutes=15),
) -> Payment:
    """OrderAccepted: intend to authorise -- or, without a token, to create the trade at the provider the method is
    configured for, expiring after ``trade_expiry`` (once; a payment already started or cancelled stays as it is)."""
    if payment is not None and payment.status != "NEW":
        return payment
    started = start(event, providers or {})
    if started.settled:
        started = started.model_copy(update={"expires_at": (at or event.occurred_at) + trade_expiry})
    return started.model_copy(update={"status": "AUTHORIZING"})


def capture(payment: Payment | None, cause: Event | None = None) -> Decision:
    """ShipmentScheduled: capture if, and only if, the money is authorised and the order not cancelled. Money taken
    at the provider's cashier is captured already: recorded at once, no call."""
    if payment is None or payment.status != "AUTHORIZED" or payment.cancel_requested:
        return payment or Payment(), []
    if payment.settled and cause is not None:
        return record_capture(payment, cause, payment.authorization_id)
    return payment.model_copy(update={"status": "CAPTURING"}), []


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
    if payment.status == "AUTHORIZED" and payment.settled:
        return payment.model_copy(update={"status": "REFUNDING", "cancel_requested": True})
    if payment.status in ("AUTHORIZED", "REVIEW", "AWAITING_PAYMENT"):
        return payment.model_copy(update={"status": "VOIDING", "cancel_requested": True})
    if payment.status == "CAPTURED":
        return payment.model_copy(update={"status": "REFUNDING", "cancel_requested": True})
    return payment.model_copy(update={"cancel_requested": True})


def record(
    payment: Payment,
    call: Call,
    result: GatewayResult,
    cause: Event,
    *,
    at: datetime,
    review_hold: timedelta,
    check_interval: timedelta = timedelta(seconds=30),
) -> Decision:
    """The provider answered ``call``: the next state, the events that follow, and any compensation due."""
    if payment.status != {v: k for k, v in INTENTS.items()}[call.operation]:
        return payment, []  # already recorded (a replica or a redelivery got there first)
    if payment.settled:
        state, events = record_at_provider(payment, call, result, cause, at=at)
        if state.status in ("AWAITING_PAYMENT", "REFUND_PENDING"):
            state = next_check(state.model_copy(update={"checks": 0}), at=at, interval=check_interval)
        return state, events
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


def start(event: OrderAccepted, providers: dict[str, str]) -> Payment:
    p = event.payment
    payment = Payment(
        method=p.method,
        token=p.token,
        amount=event.total,
        currency=event.currency,
        accepted_event_id=str(event.event_id),
    )
    if not p.at_cashier:
        return payment
    skus = ", ".join(f"{ln.sku} x{ln.quantity}" for ln in event.lines)
    return payment.model_copy(
        update={
            "provider": providers.get(p.method, ""),
            "channel": p.cashier_channel,
            "openid": p.openid,
            "return_url": p.return_url,
            "subject": f"Order {event.order_id}: {skus}"[:120],
        }
    )


def beijing_day(at: datetime) -> str:
    """The day a provider's bill counts ``at`` in (China Standard Time, no daylight saving)."""
    return (at + timedelta(hours=8)).date().isoformat() if at.utcoffset() is not None else at.date().isoformat()


def _paid(payment: Payment, trade_no: str, at: datetime) -> Payment:
    return payment.model_copy(
        update={
            "authorization_id": trade_no or payment.authorization_id,
            "paid_at": payment.paid_at or at,
            "paid_day": payment.paid_day or beijing_day(at),
        }
    )


def _refund_recorded(payment: Payment, cause: Event, refund_id: str, at: datetime) -> Decision:
    done = payment.model_copy(
        update={"status": "REFUNDED", "refund_id": refund_id, "refunded_at": at, "refund_day": beijing_day(at)}
    )
    return done, [
        PaymentRefunded.caused_by(cause, amount=payment.amount, currency=payment.currency, refund_id=refund_id),
    ]


def _money_taken(payment: Payment, cause: Event, trade_no: str, at: datetime) -> Decision:
    """The customer paid. The saga goes on -- unless the order was cancelled or the trade expired meanwhile:
    then the money goes back."""
    paid = _paid(payment, trade_no, at)
    if payment.cancel_requested or payment.status in ("DECLINED", "VOIDED", "CANCELLED"):
        return paid.model_copy(update={"status": "REFUNDING", "late_money": True, "check_at": None}), []
    authorized = paid.model_copy(update={"status": "AUTHORIZED", "check_at": None, "expiring": False})
    return authorized, [
        PaymentAuthorized.caused_by(
            cause,
            amount=payment.amount,
            currency=payment.currency,
            authorization_id=paid.authorization_id,
            provider=payment.provider,
            settled=True,
        ),
    ]


def record_at_provider(payment: Payment, call: Call, result: GatewayResult, cause: Event, *, at: datetime) -> Decision:
    """A provider answered a call made for a payment at its cashier."""
    if call.operation == "authorize":
        if result.outcome == "declined":
            return payment.model_copy(update={"status": "DECLINED"}), [
                PaymentDeclined.caused_by(cause, reason=result.reason or "payment_declined"),
            ]
        if result.outcome == "paid":
            return _money_taken(payment, cause, result.reference, at)
        assert payment.expires_at is not None
        action = PaymentAction(
            provider=payment.provider,
            channel=payment.channel,
            pay_url=result.pay_url,
            code_url=result.code_url,
            jsapi=result.jsapi,
            expires_at=payment.expires_at,
        )
        if payment.cancel_requested:  # cancelled while the trade was being created: close it at once
            return payment.model_copy(update={"status": "VOIDING", "action": action}), []
        return payment.model_copy(update={"status": "AWAITING_PAYMENT", "action": action}), [
            PaymentActionRequired.caused_by(cause, amount=payment.amount, currency=payment.currency, action=action),
        ]
    if call.operation == "void":  # close if unpaid
        if result.outcome == "paid":
            return _money_taken(payment.model_copy(update={"expiring": False}), cause, result.reference, at)
        if payment.expiring:
            return payment.model_copy(update={"status": "DECLINED", "check_at": None}), [
                PaymentDeclined.caused_by(cause, reason="payment_expired"),
            ]
        return payment.model_copy(update={"status": "VOIDED", "check_at": None}), [
            PaymentVoided.caused_by(cause, amount=payment.amount, currency=payment.currency),
        ]
    if call.operation == "refund":
        if result.outcome == "pending":
            return payment.model_copy(update={"status": "REFUND_PENDING", "refund_id": result.reference}), []
        return _refund_recorded(payment, cause, result.reference, at)
    raise ValueError(f"no {call.operation} call is made for a payment at a provider's cashier")


def observe(payment: Payment, seen: Observation, cause: Event, *, at: datetime) -> Decision:
    """What the provider says happened. States only move forward: a duplicate, a late or an out-of-order report
    changes nothing."""
    if seen.kind == "refund":
        if payment.status in ("REFUNDING", "REFUND_PENDING") and seen.status == "refunded":
            return _refund_recorded(payment, cause, payment.refund_id or seen.refund_no, at)
        return payment, []
    if seen.status == "closed" and payment.status == "AWAITING_PAYMENT":
        # Closed at the provider (its expiry came first): confirmed by our own close, then declined as expired.
        return payment.model_copy(update={"status": "VOIDING", "expiring": True, "check_at": None}), []
    if seen.status != "paid":
        return payment, []  # unpaid, or closed after we moved on: nothing to do
    if payment.status in ("AWAITING_PAYMENT", "DECLINED", "VOIDED", "CANCELLED"):
        return _money_taken(payment, cause, seen.trade_no, at)
    return payment, []  # a close under way (VOIDING) learns it from the provider when it asks; paid already


def mismatch(payment: Payment, seen: Observation, *, merchant: str, ours: str) -> str | None:
    """Why a provider's report cannot be about this payment (never acted on: an alert and a dead letter)."""
    if merchant != ours:
        return f"merchant {merchant!r} is not ours ({ours!r})"
    if not payment.settled:
        return f"order {payment.method} payment is not at a provider's cashier"
    if seen.kind == "trade" and seen.status == "paid" and seen.amount is not None and seen.amount != payment.amount:
        return f"paid amount {seen.amount} differs from the order's {payment.amount}"
    if seen.kind == "refund" and seen.amount is not None and seen.amount > payment.amount:
        return f"refund amount {seen.amount} exceeds the order's {payment.amount}"
    return None


def next_check(payment: Payment, *, at: datetime, interval: timedelta) -> Payment:
    """Ask the provider again later (backing off), and at the latest when the trade expires."""
    delay = interval * (2 ** min(payment.checks, 4))
    due = at + delay
    if payment.status == "AWAITING_PAYMENT" and payment.expires_at is not None:
        due = min(due, max(payment.expires_at, at))
    return payment.model_copy(update={"check_at": due, "checks": payment.checks + 1})


def expire(payment: Payment, *, at: datetime) -> Payment | None:
    """The trade's time is up and no payment was seen: close it (a payment found then still goes through)."""
    if payment.status == "AWAITING_PAYMENT" and payment.expires_at is not None and payment.expires_at <= at:
        return payment.model_copy(update={"status": "VOIDING", "expiring": True, "check_at": None})
    return None


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


class Difference(BaseModel):
    """One line where a provider's daily bill and our ledger disagree."""

    kind: Literal["missing", "extra", "amount", "refund"]
    order_id: str
    detail: str


def reconcile(bill: Sequence[BillRow], ours: dict[str, Payment], *, day: str) -> list[Difference]:
    """Every difference between a provider's bill for ``day`` and the payments whose money moved that day:
    ``missing`` (taken by our record, not in the bill), ``extra`` (in the bill, not ours), ``amount`` (both, not the
    same sum), ``refund`` (a refund on one side only, or of another sum)."""
    out: list[Difference] = []
    paid = {o: p for o, p in ours.items() if p.paid_day == day}
    refunded = {o: p for o, p in ours.items() if p.refund_day == day and p.status == "REFUNDED"}
    bill_paid: dict[str, Decimal] = {}
    bill_refunded: dict[str, Decimal] = {}
    for row in bill:
        book = bill_paid if row.kind == "payment" else bill_refunded
        book[row.order_id] = book.get(row.order_id, Decimal("0")) + row.amount
    for order_id in sorted(paid.keys() | bill_paid.keys()):
        mine, theirs = paid.get(order_id), bill_paid.get(order_id)
        if theirs is None:
            out.append(Difference(kind="missing", order_id=order_id, detail="we took money the bill does not show"))
        elif mine is None:
            out.append(Difference(kind="extra", order_id=order_id, detail=f"the bill shows {theirs} we never took"))
        elif mine.amount != theirs:
            out.append(Difference(kind="amount", order_id=order_id, detail=f"ours {mine.amount}, bill {theirs}"))
    for order_id in sorted(refunded.keys() | bill_refunded.keys()):
        mine, theirs = refunded.get(order_id), bill_refunded.get(order_id)
        if theirs is None:
            out.append(Difference(kind="refund", order_id=order_id, detail="refunded by our record, not in the bill"))
        elif mine is None:
            out.append(Difference(kind="refund", order_id=order_id, detail=f"the bill refunds {theirs}, we did not"))
        elif mine.amount != theirs:
            out.append(Difference(kind="refund", order_id=order_id, detail=f"refund ours {mine.amount}, bill {theirs}"))
    return out


_TRADE_NO = {"alipay": re.compile(r"^[A-Za-z0-9_-]{1,64}$"), "wechatpay": re.compile(r"^[A-Za-z0-9_*|-]{6,32}$")}


def accepted_trade_no(order_id: str, provider: str) -> bool:
    """Whether the provider takes the order id as its ``out_trade_no`` (WeChat Pay: 6 to 32 characters, no dot)."""
    pattern = _TRADE_NO.get(provider)
    return pattern is not None and pattern.fullmatch(order_id) is not None


def agrees_with_provider(payment: Payment, trade_status: str) -> bool:
    """Whether the provider's view of the trade fits our record: money we hold is paid there, money we gave back
    or never took is not held there."""
    if payment.status in ("AUTHORIZED", "CAPTURED"):
        return trade_status == "paid"
    if payment.status in ("REFUNDING", "REFUND_PENDING", "REFUNDED"):
        return trade_status in ("paid", "closed")  # WeChat keeps a refunded trade REFUND (paid); Alipay closes it
    if payment.status in ("VOIDED", "DECLINED", "CANCELLED"):
        return trade_status in ("closed", "unknown")
    return trade_status in ("unpaid", "unknown", "closed")


def refused_before_create(order_id: str, payment: Payment, provider: object | None) -> str | None:
    """Why a trade cannot be created at all (declined at once, no call): no provider configured for the method, an
    order id the provider would refuse as ``out_trade_no``, or a currency other than the yuan both providers take."""
    name = getattr(provider, "name", None)
    if name is None:
        return "payment_provider_unavailable"
    if not accepted_trade_no(order_id, name):
        return "order_id_not_accepted_by_provider"
    if payment.currency != "CNY":
        return "currency_not_accepted_by_provider"
    return None
