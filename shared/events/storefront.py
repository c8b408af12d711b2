"""What storefronts publish to ``storefront.orders``: the public contract. Keep names and shapes exactly."""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Literal

from pydantic import Field, model_validator

from shared.events.base import Contract, Event, OrderId, PositiveMoney

Sku = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
# Deliberately not pydantic's EmailStr: it refuses reserved test domains (the sandbox's bounce.test) and would
# make acceptance depend on DNS rules; shape is checked here, deliverability by the mail server.
Email = Annotated[str, Field(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. CNY")]


def is_card_number(text: str) -> bool:
    """True for 13-19 digits passing the Luhn check: a primary account number, never to be stored."""
    digits = re.sub(r"[ -]", "", text)
    if not digits.isdigit() or not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


class Customer(Contract):
    id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    email: Email
    phone: str | None = Field(default=None, pattern=r"^\+?[0-9 ()-]{5,20}$")


class Line(Contract):
    sku: Sku
    quantity: int = Field(ge=1, le=1000)
    unit_price: PositiveMoney


class Payment(Contract):
    method: Literal["alipay", "wechat_pay", "card"]
    token: str = Field(min_length=1, max_length=200)

    @model_validator(mode="after")
    def _token_is_not_a_card_number(self) -> Payment:
        # The message deliberately omits the value: a card number must never be echoed, stored or logged.
        if is_card_number(self.token):
            raise ValueError("payment.token looks like a card number; send the provider's token instead")
        return self


class Address(Contract):
    recipient: str = Field(min_length=1, max_length=200)
    line1: str = Field(min_length=1, max_length=300)
    line2: str | None = Field(default=None, max_length=300)
    city: str = Field(min_length=1, max_length=100)
    postal_code: str = Field(min_length=1, max_length=20)
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")


class Shipping(Contract):
    option: Literal["standard", "next_day", "scheduled"]
    scheduled_date: date | None = None
    address: Address

    @model_validator(mode="after")
    def _scheduled_date_only_when_scheduled(self) -> Shipping:
        if self.option == "scheduled" and self.scheduled_date is None:
            raise ValueError("scheduled_date is required when option is 'scheduled'")
        if self.option != "scheduled" and self.scheduled_date is not None:
            raise ValueError("scheduled_date is allowed only when option is 'scheduled'")
        return self


class OrderRequest(Contract):
    """The order as a storefront describes it: the body of ``POST /orders`` and of ``OrderPlaced``."""

    order_id: OrderId
    customer: Customer
    lines: list[Line] = Field(min_length=1, max_length=100)
    currency: Currency
    payment: Payment
    shipping: Shipping


class OrderPlaced(Event, OrderRequest):
    event_type: Literal["OrderPlaced"] = "OrderPlaced"


class OrderCancellationRequested(Event):
    event_type: Literal["OrderCancellationRequested"] = "OrderCancellationRequested"
    reason: str = Field(default="customer_request", min_length=1, max_length=200)


StorefrontEvent = OrderPlaced | OrderCancellationRequested
