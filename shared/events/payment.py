"""Events the payment service writes to ``payment.events``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.events.base import Contract, EmittedEvent, Money, UtcDatetime
from shared.events.storefront import Currency

Provider = Literal["alipay", "wechatpay"]


class PaymentAction(Contract):
    """What the storefront shows the customer to pay at the provider's cashier: a page to open (``pay_url``), a QR
    code to render (``code_url``), or the parameters of WeChat's in-app payment call (``jsapi``)."""

    provider: Provider
    channel: str
    pay_url: str | None = None
    code_url: str | None = None
    jsapi: dict[str, str] | None = None
    expires_at: UtcDatetime


class PaymentActionRequired(EmittedEvent):
    """A trade was created at the provider; the customer pays there before ``action.expires_at``."""

    event_type: Literal["PaymentActionRequired"] = "PaymentActionRequired"
    amount: Money
    currency: Currency
    action: PaymentAction


class PaymentAuthorized(EmittedEvent):
    """The money is held (token payments) or, with ``settled``, already taken at the provider's cashier
    (``authorization_id`` is then the provider's trade number). Schema addition: provider, settled."""

    event_type: Literal["PaymentAuthorized"] = "PaymentAuthorized"
    amount: Money
    currency: Currency
    authorization_id: str
    provider: str = "sandbox"
    settled: bool = False


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


PaymentEvent = (
    PaymentActionRequired | PaymentAuthorized | PaymentDeclined | PaymentCaptured | PaymentVoided | PaymentRefunded
)


class ProviderNotified(EmittedEvent):
    """A provider's notification, its signature verified by the payment service's notify endpoint, on the payment
    service's own topic ``payment.notifications`` (answered to the provider only once Kafka has it)."""

    event_type: Literal["ProviderNotified"] = "ProviderNotified"
    provider: Provider
    kind: Literal["trade", "refund"]
    status: Literal["paid", "unpaid", "closed", "refunded", "refund_processing", "refund_failed"]
    trade_no: str = Field(default="", max_length=64)
    refund_no: str = Field(default="", max_length=64)
    amount: Money
    merchant: str = Field(max_length=64)
    notify_id: str = Field(max_length=128)


NotificationEvent = ProviderNotified
