"""Providers for payment's tests: a cashier provider kept in memory."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Literal

from services.payment.provider import BillRow, Checkout, Notice, Refund, Trade


class FakeAlipay:
    """The provider's side in memory: trades by order id, every call counted."""

    name: Literal["alipay"] = "alipay"
    merchant = "2021-test"

    def __init__(self) -> None:
        self.trades: dict[str, Trade] = {}
        self.calls: list[tuple[str, str]] = []

    async def create(self, *, order_id: str, **_: object) -> Checkout:
        self.calls.append(("create", order_id))
        self.trades.setdefault(order_id, Trade(status="unpaid"))
        return Checkout(code_url=f"https://qr.example/{order_id}")

    async def query(self, *, order_id: str) -> Trade:
        self.calls.append(("query", order_id))
        return self.trades.get(order_id, Trade(status="unknown"))

    async def close(self, *, order_id: str) -> Trade:
        self.calls.append(("close", order_id))
        return self.trades.get(order_id, Trade(status="closed"))

    async def refund(self, *, order_id: str, refund_no: str, amount: Decimal, total: Decimal) -> Refund:
        self.calls.append(("refund", order_id))
        return Refund(status="refunded", refund_id=refund_no, amount=amount)

    async def query_refund(self, *, order_id: str, refund_no: str) -> Refund:
        return Refund(status="none")

    def parse_notification(self, *, headers: Mapping[str, str], body: bytes, at: datetime) -> Notice:
        raise NotImplementedError

    def notification_reply(self, *, ok: bool) -> tuple[int, str, str]:
        return 200, "text/plain", "success"

    async def bill(self, *, day: date) -> list[BillRow]:
        return []
