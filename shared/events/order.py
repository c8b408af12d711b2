"""Events the order service writes to ``order.events``."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import Field

from shared.events.base import Contract, EmittedEvent, Money
from shared.events.payment import PaymentAction
from shared.events.storefront import Currency, Customer, Line, Payment, Shipping


class FieldError(Contract):
    """One reason an order was refused: where (``loc``) and why (``msg``). Input values are never echoed."""

    loc: list[str | int]
    msg: str
    type: str


class OrderAccepted(EmittedEvent):
    """The order is valid and the saga starts. Carries what the downstream services need, nothing more."""

    event_type: Literal["OrderAccepted"] = "OrderAccepted"
    customer: Customer
    lines: list[Line]
    total: Money
    currency: Currency
    payment: Payment
    shipping: Shipping


class OrderRejected(EmittedEvent):
    """The placement was refused; no saga started (invalid order, or a different order under a known id)."""

    event_type: Literal["OrderRejected"] = "OrderRejected"
    reason: str
    errors: list[FieldError] = Field(default_factory=list)


class ShipmentInfo(Contract):
    carrier: str
    tracking_number: str
    promised_date: date


class OrderCompleted(EmittedEvent):
    event_type: Literal["OrderCompleted"] = "OrderCompleted"
    total: Money
    currency: Currency
    shipment: ShipmentInfo


# Why an order was cancelled: the saga's own outcomes and the storefront's request (whose free-text reason stays
# in the order's history, not here). A new reason is added here first, so every consumer can handle it.
CancellationReason = Literal["payment_declined", "out_of_stock", "shipping_failed", "timeout", "customer_request"]


class OrderCancelled(EmittedEvent):
    """Terminal. Every service undoes its own part on this event (void or refund, release, cancel shipment)."""

    event_type: Literal["OrderCancelled"] = "OrderCancelled"
    reason: CancellationReason


class OrderCancellationRefused(EmittedEvent):
    """A customer's cancellation came too late to undo the order (its parcel was delivered); the order goes on."""

    event_type: Literal["OrderCancellationRefused"] = "OrderCancellationRefused"
    reason: str


class OrderAwaitingPayment(EmittedEvent):
    """The customer pays at the provider's cashier: what the storefront shows (pay URL, QR code, JSAPI parameters).
    (Schema addition.)"""

    event_type: Literal["OrderAwaitingPayment"] = "OrderAwaitingPayment"
    action: PaymentAction


OrderEvent = (
    OrderAccepted | OrderRejected | OrderAwaitingPayment | OrderCompleted | OrderCancelled | OrderCancellationRefused
)
