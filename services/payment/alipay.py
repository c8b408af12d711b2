"""Alipay over its open-platform gateway, with ``python-alipay-sdk`` (RSA2 both ways).

The library is synchronous (``urllib``): every call runs in a worker thread. It signs each request over the sorted
parameters and verifies each reply's signature over the reply's exact JSON text; notifications are verified here
with the same library, the merchant (``app_id``) and the sending time checked before anything is believed.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl

import structlog
from alipay import AliPay
from alipay.exceptions import AliPayException, AliPayValidationError

from services.payment.provider import (
    BEIJING,
    BillRow,
    Checkout,
    InvalidNotification,
    Notice,
    ProviderRefused,
    Refund,
    Trade,
    within_window,
)
from shared import telemetry
from shared.consumer import TransientError

log = structlog.get_logger(__name__)
T = TypeVar("T")
SUCCESS = "10000"
STATUS = {"WAIT_BUYER_PAY": "unpaid", "TRADE_SUCCESS": "paid", "TRADE_FINISHED": "paid", "TRADE_CLOSED": "closed"}


class AlipayProvider:
    """Alipay: page / wap (a signed cashier URL, nothing sent) and qr (``alipay.trade.precreate``)."""

    name: Literal["alipay"] = "alipay"

    def __init__(
        self,
        *,
        app_id: str,
        gateway_url: str,
        app_private_key: str,
        alipay_public_key: str,
        notify_url: str,
        timeout: float = 10.0,
        notify_window: timedelta = timedelta(minutes=15),
    ) -> None:
        self.merchant = app_id
        self.gateway_url = gateway_url
        self.notify_url = notify_url
        self.timeout = timeout
        self.notify_window = notify_window
        self.client = AliPay(
            appid=app_id,
            app_notify_url=notify_url,
            app_private_key_string=app_private_key,
            alipay_public_key_string=alipay_public_key,
            sign_type="RSA2",
        )
        self.client._gateway = gateway_url  # the library's one switch between live, sandbox and our simulator
        self.client._config.timeout = timeout

    async def _call(self, operation: str, order_id: str, fn: Callable[[], T]) -> T:
        """Run a library call off the event loop; outages become TransientError, a forged reply is refused."""
        with telemetry.tracer().start_as_current_span(
            f"alipay {operation}",
            kind=telemetry.SpanKind.CLIENT,
            attributes={"order.id": order_id, "payment.operation": operation, "payment.provider": self.name},
        ):
            try:
                return await asyncio.to_thread(fn)
            except urllib.error.HTTPError as e:
                if e.code >= 500:
                    raise TransientError(f"alipay {operation}: HTTP {e.code}") from None
                raise ProviderRefused(f"HTTP{e.code}", f"alipay {operation} answered HTTP {e.code}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                raise TransientError(f"alipay {operation}: {type(e).__name__}: {e}") from None
            except AliPayValidationError:
                # A reply whose signature does not verify is not Alipay's: never acted on, asked again later.
                raise TransientError(f"alipay {operation}: reply signature did not verify") from None
            except AliPayException as e:
                raise ProviderRefused(str(e.code or "unknown"), f"alipay {operation} refused: {e}") from None
            except json.JSONDecodeError:
                raise TransientError(f"alipay {operation}: reply is not JSON") from None

    @staticmethod
    def _refused(reply: Mapping[str, Any]) -> ProviderRefused:
        return ProviderRefused(str(reply.get("sub_code") or reply.get("code")), str(reply.get("sub_msg", "")))

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
    ) -> Checkout:
        time_expire = expires_at.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")
        total = format(amount, "f")
        if channel in ("page", "wap"):
            build = self.client.api_alipay_trade_page_pay if channel == "page" else self.client.api_alipay_trade_wap_pay
            query = build(subject, order_id, total, return_url=return_url, time_expire=time_expire)
            return Checkout(pay_url=f"{self.gateway_url}?{query}")
        try:
            reply = await self._call(
                "precreate",
                order_id,
                lambda: self.client.api_alipay_trade_precreate(subject, order_id, total, time_expire=time_expire),
            )
        except TransientError:
            # Asked before any retry: a lost reply may have created the trade, and the customer may have paid.
            if (await self.query(order_id=order_id)).status == "paid":
                return Checkout()
            raise  # retried later: precreate again with the same out_trade_no answers with the same code
        if reply.get("code") == SUCCESS:
            return Checkout(code_url=str(reply["qr_code"]))
        if reply.get("sub_code") == "ACQ.TRADE_HAS_SUCCESS":
            return Checkout()  # paid already: the notification or a query records it
        raise self._refused(reply)

    async def query(self, *, order_id: str) -> Trade:
        reply = await self._call("query", order_id, lambda: self.client.api_alipay_trade_query(out_trade_no=order_id))
        if reply.get("code") != SUCCESS:
            if reply.get("sub_code") == "ACQ.TRADE_NOT_EXIST":
                return Trade(status="unknown")
            raise self._refused(reply)
        return Trade(
            status=STATUS.get(str(reply.get("trade_status")), "unknown"),
            trade_no=str(reply.get("trade_no", "")),
            amount=Decimal(str(reply["total_amount"])) if reply.get("total_amount") else None,
        )

    async def close(self, *, order_id: str) -> Trade:
        try:
            reply = await self._call(
                "close", order_id, lambda: self.client.api_alipay_trade_close(out_trade_no=order_id)
            )
        except TransientError:
            reply = {}  # decided by the query below
        if reply.get("code") == SUCCESS:
            return Trade(status="closed", trade_no=str(reply.get("trade_no", "")))
        trade = await self.query(order_id=order_id)
        if trade.status == "unknown":
            # Never opened at the cashier: nothing exists at Alipay, and past its expiry nothing can be paid.
            return Trade(status="closed")
        if trade.status == "unpaid":
            raise TransientError(f"alipay close of {order_id} not confirmed (trade still unpaid)")
        return trade

    async def refund(self, *, order_id: str, refund_no: str, amount: Decimal, total: Decimal) -> Refund:
        done = await self.query_refund(order_id=order_id, refund_no=refund_no)  # asked first: never refunded twice
        if done.status == "refunded":
            return done
        reply = await self._call(
            "refund",
            order_id,
            lambda: self.client.api_alipay_trade_refund(
                format(amount, "f"), out_trade_no=order_id, out_request_no=refund_no
            ),
        )
        if reply.get("code") != SUCCESS:
            raise self._refused(reply)
        return Refund(status="refunded", refund_id=refund_no, amount=amount)

    async def query_refund(self, *, order_id: str, refund_no: str) -> Refund:
        reply = await self._call(
            "refund_query",
            order_id,
            lambda: self.client.api_alipay_trade_fastpay_refund_query(refund_no, out_trade_no=order_id),
        )
        if reply.get("code") == SUCCESS and reply.get("refund_status") == "REFUND_SUCCESS":
            return Refund(status="refunded", refund_id=refund_no, amount=Decimal(str(reply["refund_amount"])))
        if reply.get("code") not in (SUCCESS, None) and reply.get("sub_code") != "ACQ.TRADE_NOT_EXIST":
            raise self._refused(reply)
        return Refund(status="none")

    def parse_notification(self, *, headers: Mapping[str, str], body: bytes, at: datetime) -> Notice:
        try:
            fields = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True))
        except (UnicodeDecodeError, ValueError):
            raise InvalidNotification("not a form-encoded UTF-8 body") from None
        sign = fields.pop("sign", "")
        if not sign:
            raise InvalidNotification("no sign")
        try:
            valid = self.client.verify(dict(fields), sign)
        except (AliPayException, ValueError, TypeError, IndexError):
            valid = False
        if not valid:
            raise InvalidNotification("signature did not verify")
        if fields.get("app_id") != self.merchant:
            raise InvalidNotification(f"app_id {fields.get('app_id')!r} is not ours")
        try:
            sent_at = datetime.strptime(fields["notify_time"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING)
            order_id = fields["out_trade_no"]
            amount = Decimal(fields["total_amount"])
        except (KeyError, ValueError, ArithmeticError) as e:
            raise InvalidNotification(f"missing or malformed field: {e}") from None
        if not within_window(sent_at, at, self.notify_window):
            raise InvalidNotification(f"notify_time {fields['notify_time']} is outside the replay window")
        refund_no = fields.get("out_biz_no", "")
        if refund_no and fields.get("refund_fee"):
            return Notice(
                order_id=order_id,
                kind="refund",
                status="refunded",
                trade_no=fields.get("trade_no", ""),
                refund_no=refund_no,
                amount=Decimal(fields["refund_fee"]),
                merchant=fields["app_id"],
                notify_id=fields.get("notify_id", ""),
            )
        status = STATUS.get(fields.get("trade_status", ""))
        if status is None:
            raise InvalidNotification(f"unknown trade_status {fields.get('trade_status')!r}")
        return Notice(
            order_id=order_id,
            kind="trade",
            status=status,
            trade_no=fields.get("trade_no", ""),
            amount=amount,
            merchant=fields["app_id"],
            notify_id=fields.get("notify_id", ""),
        )

    def notification_reply(self, *, ok: bool) -> tuple[int, str, str]:
        return 200, "text/plain", "success" if ok else "fail"

    async def bill(self, *, day: date) -> list[BillRow]:
        reply = await self._call(
            "bill",
            f"bill:{day}",
            lambda: self.client.server_api(
                "alipay.data.dataservice.bill.downloadurl.query",
                biz_content={"bill_type": "trade", "bill_date": day.isoformat()},
            ),
        )
        if reply.get("code") != SUCCESS:
            raise self._refused(reply)
        url = str(reply["bill_download_url"])
        raw = await self._call("bill_download", f"bill:{day}", lambda: _download(url, self.timeout))
        return parse_bill(raw)


def _download(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310  (the URL Alipay's signed reply gave)
        return bytes(r.read())


def parse_bill(raw: bytes) -> list[BillRow]:
    """Alipay's trade bill: a zip of GBK CSV files; the detail file has ``#`` comment lines around its table."""
    rows: list[BillRow] = []
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        for name in z.namelist():
            text = z.read(name).decode("gbk")
            lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
            if not lines or "商户订单号" not in lines[0]:
                continue  # the summary file
            for rec in csv.DictReader(lines):
                kind = (rec.get("业务类型") or "").strip()
                if kind not in ("交易", "退款"):
                    continue
                amount = abs(Decimal((rec.get("订单金额（元）") or "0").strip()))
                rows.append(
                    BillRow(
                        kind="payment" if kind == "交易" else "refund",
                        order_id=(rec.get("商户订单号") or "").strip(),
                        reference=(rec.get("支付宝交易号") or "").strip(),
                        refund_no=(rec.get("退款批次号/请求号") or "").strip() if kind == "退款" else "",
                        amount=amount,
                    )
                )
    return rows
