"""The order's life, pure: acceptance, progress through the saga, completion, cancellation and refusal.

Statuses (public): PENDING -> COMPLETED | CANCELLED; REJECTED when the placement was invalid.
Stages (finer, while PENDING): ACCEPTED -> PAYMENT_AUTHORIZED -> STOCK_RESERVED -> SHIPMENT_SCHEDULED; an order
completes when the shipment is scheduled *and* the payment captured (the two facts may arrive in either order).
Cancellation reasons: payment_declined, out_of_stock, shipping_failed, timeout, customer_request.
A customer cancellation is taken until the parcel is delivered, also after completion: before pickup the carrier
calls the parcel back, after pickup it is intercepted and returned (``ShipmentIntercepted``), and either way the
payment is refunded; once delivered it is refused. A request is answered only once the facts of the order that
occurred before it are known, unless none of them could change the answer (``cancellation_settled``): a re-read
after a restore must answer it as the first reading did. After completion the order follows its parcel
(``delivery``: picked up, in transit, out for delivery, delivered, exception) and its stage shows the parcel's
milestone; its stream ends when the parcel is delivered. Every order not yet terminal has a deadline,
which each step of the saga moves on; past it an order is cancelled (``timeout``) -- unless its shipment is
scheduled: then the goods are moving, only the capture is outstanding, and the deadline raises an alert instead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel

from shared.events.base import EmittedEvent, Event, Money
from shared.events.notify import NotificationFailed, NotificationSent
from shared.events.order import (
    CancellationReason,
    FieldError,
    OrderAccepted,
    OrderAwaitingPayment,
    OrderCancellationRefused,
    OrderCancelled,
    OrderCompleted,
    OrderRejected,
    ShipmentInfo,
)
from shared.events.payment import PaymentAction, PaymentActionRequired
from shared.events.shipping import Milestone, ShipmentIntercepted, ShipmentTracked
from shared.events.storefront import Line, OrderPlaced, OrderRequest

Status = Literal["PENDING", "COMPLETED", "CANCELLED", "REJECTED"]
Stage = Literal[
    "ACCEPTED",
    "AWAITING_PAYMENT",
    "PAYMENT_AUTHORIZED",
    "STOCK_RESERVED",
    "SHIPMENT_SCHEDULED",
    "DONE",
    # After completion: where the parcel is (the carrier's milestones).
    "PICKED_UP",
    "IN_TRANSIT",
    "OUT_FOR_DELIVERY",
    "DELIVERED",
    "EXCEPTION",
]
TERMINAL = {"COMPLETED", "CANCELLED", "REJECTED"}
Decision = tuple["Order", Sequence[EmittedEvent]]


class HistoryEntry(BaseModel):
    event_type: str
    at: datetime
    event_id: str = ""
    detail: dict[str, Any] = {}


class Notification(BaseModel):
    kind: str
    status: Literal["SENT", "FAILED"]
    at: datetime
    error: str = ""


class ParcelStep(BaseModel):
    milestone: Milestone
    at: datetime  # the carrier's time
    location: str = ""
    description: str = ""


class Delivery(BaseModel):
    """The parcel after booking, as its carrier reports it (pushes and route queries)."""

    status: Milestone | Literal["INTERCEPTED"]
    steps: list[ParcelStep] = []
    delivered_at: datetime | None = None


class Order(BaseModel):
    order_id: str
    status: Status = "PENDING"
    stage: Stage | None = "ACCEPTED"
    reason: str | None = None
    errors: list[FieldError] = []
    content_hash: str = ""
    lines: list[Line] = []
    total: Money = Decimal("0")
    currency: str = ""
    placed_at: datetime  # the storefront's occurred_at
    accepted_at: datetime | None = None  # our clock: ages, deadlines and saga durations are measured from here
    deadline_at: datetime | None = None
    terminal_at: datetime | None = None
    payment_authorized: bool = False
    payment_captured: bool = False
    stock_reserved: bool = False
    shipment: ShipmentInfo | None = None
    delivery: Delivery | None = None
    payment_action: PaymentAction | None = None  # where the customer pays, while the provider waits for them
    history: list[HistoryEntry] = []
    notifications: list[Notification] = []
    trace_id: str | None = None
    storefront_id: str | None = None  # who placed it (the order API's caller); None: no storefront (Kafka)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def delivered(self) -> bool:
        return self.delivery is not None and self.delivery.delivered_at is not None

    @property
    def followed_to_the_end(self) -> bool:
        """Nothing more will change what a storefront sees: terminal, and a completed order's parcel delivered."""
        return self.terminal and (self.status != "COMPLETED" or self.delivered)


def content_hash(request: OrderRequest) -> str:
    """Fingerprint of what the storefront asked for; a retry with a new event_id has the same one."""
    # Only the request's own fields: an OrderPlaced also carries event_id and occurred_at, which a retry changes.
    content = request.model_dump(mode="json", include=set(OrderRequest.model_fields))
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def total_of(lines: Sequence[Line]) -> Decimal:
    return sum((ln.unit_price * ln.quantity for ln in lines), Decimal("0"))


def _entry(event: Event, at: datetime, **detail: Any) -> HistoryEntry:
    return HistoryEntry(event_type=event.event_type, at=at, event_id=str(event.event_id), detail=detail)


def _note(order: Order, entry: HistoryEntry, **changes: Any) -> Order:
    return order.model_copy(update={"history": [*order.history, entry], **changes})


ORDER_ID_CONFLICT = "order_id_conflict: a different order was already placed under this order_id"


def is_retry(existing: Order, request: OrderRequest, storefront_id: str | None) -> bool:
    """The same order from the same storefront is a retry; another storefront's order under this id never is."""
    return existing.content_hash == content_hash(request) and existing.storefront_id == storefront_id


def place(
    existing: Order | None, event: OrderPlaced, *, at: datetime, deadline: timedelta, trace_id: str | None
) -> Decision:
    """A placement: accept a new order, ignore a retry of a known one, refuse a different order under a known id."""
    if existing is not None:
        if is_retry(existing, event, event.storefront_id):
            return _note(existing, _entry(event, at, outcome="duplicate placement ignored")), []
        return _note(existing, _entry(event, at, outcome="refused", reason=ORDER_ID_CONFLICT)), [
            OrderRejected.caused_by(event, reason="order_id_conflict"),
        ]
    total = total_of(event.lines)
    order = Order(
        order_id=event.order_id,
        content_hash=content_hash(event),
        lines=event.lines,
        total=total,
        currency=event.currency,
        placed_at=event.occurred_at,
        accepted_at=at,
        deadline_at=at + deadline,
        trace_id=trace_id,
        storefront_id=event.storefront_id,
        history=[_entry(event, at)],
    )
    accepted = OrderAccepted.caused_by(
        event,
        customer=event.customer,
        lines=event.lines,
        total=total,
        currency=event.currency,
        payment=event.payment,
        shipping=event.shipping,
    )
    return _note(order, HistoryEntry(event_type="OrderAccepted", at=at, event_id=str(accepted.event_id))), [accepted]


def reject_invalid(
    existing: Order | None,
    *,
    order_id: str,
    cause: Event,
    errors: list[FieldError],
    at: datetime,
    trace_id: str | None,
) -> Decision:
    """An OrderPlaced that failed validation but names an order: REJECTED with field-level reasons."""
    rejected = OrderRejected.caused_by(cause, reason="invalid_order", errors=errors)
    if existing is not None:  # never overwrite a real order with a broken retry of it
        return _note(existing, _entry(cause, at, outcome="invalid placement refused")), [rejected]
    order = Order(
        order_id=order_id,
        status="REJECTED",
        stage=None,
        reason="invalid_order",
        errors=errors,
        placed_at=at,
        accepted_at=at,
        terminal_at=at,
        trace_id=trace_id,
        history=[_entry(cause, at, outcome="invalid")],
    )
    return _note(order, HistoryEntry(event_type="OrderRejected", at=at, event_id=str(rejected.event_id))), [rejected]


def cancel(order: Order, cause: Event, reason: CancellationReason, *, at: datetime) -> Decision:
    """Terminal cancellation; the OrderCancelled event makes every service undo its own part."""
    if order.terminal:
        return _note(order, _entry(cause, at, outcome="ignored: order already " + order.status)), []
    cancelled = OrderCancelled.caused_by(cause, reason=reason)
    order = _note(order, _entry(cause, at))
    return _note(
        order,
        HistoryEntry(event_type="OrderCancelled", at=at, event_id=str(cancelled.event_id), detail={"reason": reason}),
        status="CANCELLED",
        reason=reason,
        terminal_at=at,
        deadline_at=None,
    ), [cancelled]


def request_cancellation(order: Order, cause: Event, customer_reason: str, *, at: datetime) -> Decision:
    """The customer's cancellation: taken until the parcel is delivered (a completed order too: its parcel is
    called back or intercepted, its payment refunded)."""
    if order.delivered:
        refused = OrderCancellationRefused.caused_by(cause, reason="parcel_already_delivered")
        return _note(
            order,
            _entry(cause, at, outcome="refused: parcel already delivered", customer_reason=customer_reason),
        ), [refused]
    if order.status == "COMPLETED":
        order = order.model_copy(update={"status": "PENDING"})  # reopened only to be cancelled, in this one write
    return cancel(order, cause, "customer_request", at=at)


def cancellation_settled(order: Order) -> bool:
    """Nothing that happened before a cancellation request can change its answer any more: the order ended
    otherwise (cancelled, rejected), or its parcel was delivered (refused)."""
    return order.status in ("CANCELLED", "REJECTED") or order.delivered


def _maybe_complete(order: Order, cause: Event, at: datetime) -> Decision:
    if order.terminal or not (order.payment_captured and order.shipment is not None):
        return order, []
    completed = OrderCompleted.caused_by(cause, total=order.total, currency=order.currency, shipment=order.shipment)
    return _note(
        order,
        HistoryEntry(event_type="OrderCompleted", at=at, event_id=str(completed.event_id)),
        status="COMPLETED",
        stage="DONE",
        terminal_at=at,
        deadline_at=None,
    ), [completed]


def progress(order: Order, event: Event, *, at: datetime) -> Decision:
    """A downstream fact about this order: record it, and complete or cancel when it settles the saga."""
    detail = {
        k: v
        for k, v in event.model_dump(mode="json").items()
        if k
        in (
            "reason",
            "carrier",
            "tracking_number",
            "promised_date",
            "amount",
            "skus",
            "kind",
            "error",
            "milestone",
            "location",
        )
    }
    noted = _note(order, _entry(event, at, **detail))
    if isinstance(event, ShipmentTracked | ShipmentIntercepted):
        return follow_parcel(noted, event), []
    if order.terminal and event.event_type not in ("NotificationSent", "NotificationFailed"):
        return noted, []  # late facts after the end: compensations are triggered by OrderCancelled, not here
    match event.event_type:
        case "PaymentActionRequired":
            assert isinstance(event, PaymentActionRequired)
            awaiting = noted.model_copy(update={"payment_action": event.action, "stage": "AWAITING_PAYMENT"})
            return awaiting, [OrderAwaitingPayment.caused_by(event, action=event.action)]
        case "PaymentAuthorized":
            return noted.model_copy(update={"payment_authorized": True, "stage": "PAYMENT_AUTHORIZED"}), []
        case "StockReserved":
            return noted.model_copy(update={"stock_reserved": True, "stage": "STOCK_RESERVED"}), []
        case "ShipmentScheduled":
            shipment = ShipmentInfo.model_validate(event, from_attributes=True)
            return _maybe_complete(
                noted.model_copy(update={"shipment": shipment, "stage": "SHIPMENT_SCHEDULED"}), event, at
            )
        case "PaymentCaptured":
            return _maybe_complete(noted.model_copy(update={"payment_captured": True}), event, at)
        case "PaymentDeclined":
            return cancel(order, event, "payment_declined", at=at)
        case "StockUnavailable":
            return cancel(order, event, "out_of_stock", at=at)
        case "ShipmentFailed":
            return cancel(order, event, "shipping_failed", at=at)
        case "NotificationSent" | "NotificationFailed":
            assert isinstance(event, NotificationSent | NotificationFailed)
            note = Notification(
                kind=event.kind,
                status="SENT" if isinstance(event, NotificationSent) else "FAILED",
                at=at,
                error=getattr(event, "error", ""),
            )
            return noted.model_copy(update={"notifications": [*order.notifications, note]}), []
    return noted, []


def follow_parcel(order: Order, event: ShipmentTracked | ShipmentIntercepted) -> Order:
    """The parcel moved (or is to come back): its delivery view, and -- once the order is complete -- its stage.
    Steps come out of order and twice: the status is the latest step's by the carrier's clock, and a delivery,
    once seen, stays."""
    delivery = order.delivery or Delivery(status="PICKED_UP")
    if isinstance(event, ShipmentIntercepted):
        return order.model_copy(update={"delivery": delivery.model_copy(update={"status": "INTERCEPTED"})})
    step = ParcelStep(milestone=event.milestone, at=event.at, location=event.location, description=event.description)
    if step in delivery.steps:
        return order
    steps = sorted([*delivery.steps, step], key=lambda s: s.at)
    delivered_at = delivery.delivered_at or (event.at if event.milestone == "DELIVERED" else None)
    if delivery.status == "INTERCEPTED":
        status: Milestone | Literal["INTERCEPTED"] = "INTERCEPTED"
    else:
        status = "DELIVERED" if delivered_at is not None else steps[-1].milestone
    update: dict[str, Any] = {"delivery": Delivery(status=status, steps=steps, delivered_at=delivered_at)}
    if order.status == "COMPLETED" and status != "INTERCEPTED":
        update["stage"] = status
    return order.model_copy(update=update)


def deadline_passed(order: Order, *, at: datetime) -> bool:
    return not order.terminal and order.deadline_at is not None and order.deadline_at <= at


def deadline_cancels(order: Order) -> bool:
    """Past its deadline an order is cancelled -- unless its shipment is scheduled (then it is an alert)."""
    return order.shipment is None


def rearm_deadline(order: Order, *, at: datetime, deadline: timedelta) -> Order:
    """The deadline measures the saga's own progress: every step it makes gives it the full deadline again."""
    if order.terminal:
        return order
    if order.stage == "AWAITING_PAYMENT" and order.payment_action is not None:
        # The customer has until the trade expires; the saga's deadline runs from there.
        return order.model_copy(update={"deadline_at": max(at, order.payment_action.expires_at) + deadline})
    return order.model_copy(update={"deadline_at": at + deadline})
