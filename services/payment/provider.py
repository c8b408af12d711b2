"""The payment provider a customer pays at (Alipay, WeChat Pay), behind one interface.

The money is taken when the customer pays at the provider's cashier; the payment service creates the trade, learns
the outcome from a verified notification or a query (never from the browser's return URL), closes an unpaid trade
and refunds a paid one. Every call is idempotent at the provider by the order id (``out_trade_no``) or the refund
request number, so a call repeated after a crash or a lost reply never moves money twice; after a timeout or a 5xx
an adapter asks the provider what happened before it reports failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict

from shared.events.base import Money

# Both providers keep Beijing time in their protocols (Alipay's timestamps, the days of both providers' bills).
BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")
TradeStatus = Literal["unknown", "unpaid", "paid", "closed"]
RefundStatus = Literal["none", "processing", "refunded", "failed"]


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True)


class Checkout(_Value):
    """Where the customer pays: a page to open, a QR code to show, or WeChat's in-app payment parameters."""

    pay_url: str | None = None
    code_url: str | None = None
    jsapi: dict[str, str] | None = None


class Trade(_Value):
    """The provider's view of the trade of one order."""

    status: TradeStatus
    trade_no: str = ""
    amount: Money | None = None


class Refund(_Value):
    status: RefundStatus
    refund_id: str = ""
    amount: Money | None = None


class Notice(_Value):
    """A notification whose signature verified: what it says happened."""

    order_id: str
    kind: Literal["trade", "refund"]
    status: Literal["paid", "unpaid", "closed", "refunded", "refund_processing", "refund_failed"]
    trade_no: str = ""
    refund_no: str = ""
    amount: Money
    merchant: str
    notify_id: str


class BillRow(_Value):
    """One line of a provider's daily bill: a payment, or a refund (``refund_no`` set, amount positive)."""

    kind: Literal["payment", "refund"]
    order_id: str
    reference: str
    refund_no: str = ""
    amount: Money


class InvalidNotification(Exception):
    """A notification that is not the provider's: bad or missing signature, another merchant, outside the window."""


class ProviderRefused(Exception):
    """The provider refused the request for good (its error code says why); repeating it will not help."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class PaymentProvider(Protocol):
    @property
    def name(self) -> Literal["alipay", "wechatpay"]: ...

    @property
    def merchant(self) -> str:
        """Alipay app id / WeChat Pay mchid: notifications for anyone else are refused."""
        ...

    async def create(
        self,
        *,
        order_id: str,
        amount: Decimal,
        subject: str,
        channel: str,
        expires_at: datetime,
        openid: str | None = None,
        return_url: str | None = None,
    ) -> Checkout: ...

    async def query(self, *, order_id: str) -> Trade: ...

    async def close(self, *, order_id: str) -> Trade:
        """Close the trade if it is unpaid; returns the trade as it ends up (a paid one stays paid)."""
        ...

    async def refund(self, *, order_id: str, refund_no: str, amount: Decimal, total: Decimal) -> Refund: ...

    async def query_refund(self, *, order_id: str, refund_no: str) -> Refund: ...

    def parse_notification(self, *, headers: Mapping[str, str], body: bytes, at: datetime) -> Notice: ...

    def notification_reply(self, *, ok: bool) -> tuple[int, str, str]:
        """(status, content type, body) the provider expects: it retries until it gets the success reply."""
        ...

    async def bill(self, *, day: date) -> list[BillRow]: ...


def within_window(sent_at: datetime, at: datetime, window: timedelta) -> bool:
    """A notification sent longer ago (or further ahead) than ``window`` is a replay: refused."""
    return abs(at - sent_at) <= window
