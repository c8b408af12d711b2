"""Events the payment service writes to ``payment.events``."""

from __future__ import annotations

from typing import Literal

from shared.events.base import EmittedEvent, Money
from shared.events.storefront import Currency


class PaymentAuthorized(EmittedEvent):
    event_type: Literal["PaymentAuthorized"] = "PaymentAuthorized"
    amount: Money
    currency: Currency
    authorization_id: str


class PaymentDeclined(EmittedEvent):
    event_type: Literal["PaymentDeclined"] = "PaymentDeclined"
    reason: str


class PaymentCaptured(EmittedEvent):
    event_type: Literal["PaymentCaptured"] = "PaymentCaptured"
    amount: Money
    currency: Currency
    capture_id: str


class PaymentVoided(EmittedEvent):
    """The authorisation was released (or a payment under review was abandoned): no money moved."""

    event_type: Literal["PaymentVoided"] = "PaymentVoided"
    amount: Money
    currency: Currency


class PaymentRefunded(EmittedEvent):
    event_type: Literal["PaymentRefunded"] = "PaymentRefunded"
    amount: Money
    currency: Currency
    refund_id: str


PaymentEvent = PaymentAuthorized | PaymentDeclined | PaymentCaptured | PaymentVoided | PaymentRefunded
