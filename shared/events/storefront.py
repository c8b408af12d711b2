"""What storefronts publish to ``storefront.orders``: the public contract. Keep names and shapes exactly.

Hostile input is refused here, so the Kafka path and ``POST /orders`` share one set of rules: free text may hold
any script and emoji but no control or bidirectional-override characters; no field may hold a card number (any
13-19 digits passing Luhn, whatever the separators); money is plain digits (see ``shared.events.base.Money``).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StrictInt, field_validator, model_validator

from shared.events.base import Contract, Event, OrderId, PositiveMoney

# ISO 4217 active codes (2024), X-codes for metals, testing and "no currency" left out: a price needs a currency.
_ISO_4217_CODES = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD BTN BWP BYN "
    "BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP "
    "GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF "
    "KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR "
    "MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK "
    "SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD USN UYI UYU "
    "UYW UZS VED VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG "
)
ISO_4217 = frozenset(_ISO_4217_CODES.split())
MAX_ORDER_TOTAL = Decimal("10000000")  # per order, in its currency: above it is a typo or an attack
UNIT_PRICE_MAX = Decimal("1000000")
MAX_ORDER_BYTES = 256 * 1024  # an order is a few KB; the HTTP body cap is the same (settings.max_body_bytes)

# A card number as people write it: digit groups joined by one separator each (space, dash, dot, no-break or
# ideographic space, full-width dash or dot); \d also matches full-width digits.
_DIGIT_GROUP = re.compile(r"\d+")
_CARD_SEPARATORS = frozenset(" -.\u00a0\u2007\u202f\u3000\u2010\u2011\u2012\u2013\u2014\uff0d\uff0e")
# Bidirectional controls (the "Trojan Source" characters) and zero-width characters that hide text.
_INVISIBLE = frozenset("\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_spans(text: str) -> Iterator[tuple[int, int]]:
    """Spans of ``text`` that are card numbers: consecutive digit groups (13-19 digits in all, Luhn-valid).

    A run right after ``+`` is a phone number (``+86 138 0000 0000``), not a card; a run glued to letters or
    digits on either side is part of a word or an identifier (``CHAOS20261125-8642-00008``, ``INV1795647339-5``:
    one such id in ten would be Luhn-valid by chance), not a card written by a person.
    """
    groups = list(_DIGIT_GROUP.finditer(text))
    chains: list[list[re.Match[str]]] = []
    for m in groups:
        if chains and m.start() - chains[-1][-1].end() == 1 and text[m.start() - 1] in _CARD_SEPARATORS:
            chains[-1].append(m)
        else:
            chains.append([m])
    for chain in chains:
        if chain[0].start() > 0 and text[chain[0].start() - 1] == "+":
            continue
        for i in range(len(chain)):
            digits = ""
            for j in range(i, len(chain)):
                digits += chain[j].group()
                if len(digits) > 19:
                    break
                start, end = chain[i].start(), chain[j].end()
                glued = (start > 0 and text[start - 1].isalnum()) or (end < len(text) and text[end].isalnum())
                if len(digits) >= 13 and not glued and _luhn(digits):
                    yield start, end


def is_card_number(text: str) -> bool:
    """True when the whole text is a card number (13-19 digits passing Luhn, with or without separators)."""
    return any(start == 0 and end == len(text.strip()) for start, end in _card_spans(text.strip()))


def contains_card_number(text: str) -> bool:
    return next(_card_spans(text), None) is not None


def redact_card_numbers(text: str, replacement: str = "[card number removed]") -> str:
    spans = list(_card_spans(text))
    if not spans:
        return text
    out, last = [], 0
    for start, end in sorted(spans):
        if start < last:
            continue
        out += [text[last:start], replacement]
        last = end
    return "".join([*out, text[last:]])


def _safe_text(value: str) -> str:
    # The messages name the problem, never the value: a refused value may be a card number.
    for ch in value:
        if ch in _INVISIBLE or unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn"):
            raise ValueError("must not contain control, invisible or bidirectional-override characters")
    if contains_card_number(value):
        raise ValueError("looks like a card number; card numbers are never accepted")
    return value


Text = Annotated[str, AfterValidator(_safe_text)]
Sku = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$"), AfterValidator(_safe_text)]
# Deliberately not pydantic's EmailStr: it refuses reserved test domains (the sandbox's bounce.test) and would
# make acceptance depend on DNS rules; shape is checked here, deliverability by the mail server.
Email = Annotated[str, Field(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"), AfterValidator(_safe_text)]


def _known_currency(value: str) -> str:
    if value not in ISO_4217:
        raise ValueError("not an ISO 4217 currency code")
    return value


Currency = Annotated[
    str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. CNY"), AfterValidator(_known_currency)
]
UnitPrice = Annotated[PositiveMoney, Field(le=UNIT_PRICE_MAX)]
CustomerId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:@+-]+$")]
StorefrontId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


class Customer(Contract):
    id: CustomerId
    name: Text = Field(min_length=1, max_length=200)
    email: Email
    phone: Text | None = Field(default=None, pattern=r"^\+?[0-9 ()-]{5,20}$")


class Line(Contract):
    sku: Sku
    quantity: StrictInt = Field(ge=1, le=1000)
    unit_price: UnitPrice


# How the customer pays at the provider's cashier: Alipay web page, mobile web page or QR code; WeChat Pay QR
# (native), in-app browser (jsapi, needs the payer's openid), mobile browser (h5) or app.
PaymentChannel = Literal["page", "wap", "qr", "native", "jsapi", "h5", "app"]
CHANNELS: dict[str, frozenset[str]] = {
    "alipay": frozenset({"page", "wap", "qr"}),
    "wechat_pay": frozenset({"native", "jsapi", "h5", "app"}),
}


class Payment(Contract):
    """A payment ``token`` (a provider token the storefront already holds) is charged as before; without one the
    customer pays at the provider's cashier through ``channel`` (schema addition: token, channel, openid,
    return_url)."""

    method: Literal["alipay", "wechat_pay", "card"]
    token: str = Field(default="", max_length=200)
    channel: PaymentChannel | None = None
    openid: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")
    return_url: str | None = Field(default=None, max_length=500, pattern=r"^https?://[^\s]+$")

    @model_validator(mode="after")
    def _token_or_cashier(self) -> Payment:
        # The message deliberately omits the value: a card number must never be echoed, stored or logged.
        if contains_card_number(self.token):
            raise ValueError("payment.token looks like a card number; send the provider's token instead")
        _safe_text(self.token)
        if self.token:
            if self.channel is not None:
                raise ValueError("payment.channel is for payment at the provider's cashier: send no token with it")
            return self
        if self.method == "card":
            raise ValueError("payment.token is required for card payments")
        channel = self.channel or ("qr" if self.method == "alipay" else "native")
        if channel not in CHANNELS[self.method]:
            raise ValueError(f"payment.channel {channel!r} is not offered for {self.method}")
        if channel == "jsapi" and not self.openid:
            raise ValueError("payment.openid (the payer's openid) is required for the jsapi channel")
        return self

    @property
    def at_cashier(self) -> bool:
        """Paid by the customer at the provider's cashier (no token): the money is taken at payment."""
        return not self.token

    @property
    def cashier_channel(self) -> str:
        return self.channel or ("qr" if self.method == "alipay" else "native")


class Address(Contract):
    recipient: Text = Field(min_length=1, max_length=200)
    line1: Text = Field(min_length=1, max_length=300)
    line2: Text | None = Field(default=None, max_length=300)
    city: Text = Field(min_length=1, max_length=100)
    postal_code: Text = Field(min_length=1, max_length=20)
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


def _strings(value: Any, path: str, depth: int = 0) -> Iterator[tuple[str, str]]:
    if depth > 8:
        return
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{path}.{k}" if path else str(k), depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value[:200]):
            yield from _strings(v, f"{path}.{i}", depth + 1)


class OrderRequest(Contract):
    """The order as a storefront describes it: the body of ``POST /orders`` and of ``OrderPlaced``."""

    order_id: OrderId
    customer: Customer
    lines: list[Line] = Field(min_length=1, max_length=100)
    currency: Currency
    payment: Payment
    shipping: Shipping

    @field_validator("order_id")
    @classmethod
    def _order_id_is_not_a_card_number(cls, value: str) -> str:
        if contains_card_number(value):
            raise ValueError("looks like a card number; card numbers are never accepted")
        return value

    @model_validator(mode="before")
    @classmethod
    def _no_card_number_in_unknown_fields(cls, data: Any) -> Any:
        # Unknown fields are ignored (readers are tolerant), but a card number is refused wherever it is sent, and
        # an oversized order (a Kafka record has no body cap in front of it) is refused whole.
        if isinstance(data, dict):
            if len(json.dumps(data, ensure_ascii=False, default=str).encode()) > MAX_ORDER_BYTES:
                raise ValueError(f"the order is larger than {MAX_ORDER_BYTES} bytes")
            for key, value in data.items():
                if key in cls.model_fields:
                    continue
                for path, text in _strings(value, str(key)):
                    if contains_card_number(text):
                        raise ValueError(f"unknown field {path[:64]} holds a card number; card numbers are refused")
        return data

    @model_validator(mode="after")
    def _total_is_sane(self) -> OrderRequest:
        if sum((ln.unit_price * ln.quantity for ln in self.lines), Decimal(0)) > MAX_ORDER_TOTAL:
            raise ValueError(f"the order's total exceeds {MAX_ORDER_TOTAL}")
        return self


class OrderPlaced(Event, OrderRequest):
    event_type: Literal["OrderPlaced"] = "OrderPlaced"
    # Who placed it: set by the order API from the caller's key (a body's own value is never taken). Orders
    # published to storefront.orders directly carry what the publisher wrote, or nothing (no storefront).
    storefront_id: StorefrontId | None = None


CancelReason = Annotated[Text, Field(min_length=1, max_length=200)]


class OrderCancellationRequested(Event):
    event_type: Literal["OrderCancellationRequested"] = "OrderCancellationRequested"
    reason: CancelReason = "customer_request"


StorefrontEvent = OrderPlaced | OrderCancellationRequested
