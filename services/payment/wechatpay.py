"""WeChat Pay API v3 with ``wechatpayv3``'s async client (amounts in fen).

Requests carry ``Authorization: WECHATPAY2-SHA256-RSA2048`` made by the library with the merchant key; replies and
callbacks are verified by the library against the platform public key (public-key mode) and callbacks decrypted
(``AEAD_AES_256_GCM`` with the APIv3 key). The library checks no time: the callback's ``Wechatpay-Timestamp`` is
checked here against the replay window before its signature is believed.
"""

from __future__ import annotations

import csv
import gzip
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import httpx
import structlog
from wechatpayv3.async_ import AsyncWeChatPay
from wechatpayv3.async_.type import SignType, WeChatPayType  # the async client compares its own enums

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
CHANNELS = {
    "native": WeChatPayType.NATIVE,
    "jsapi": WeChatPayType.JSAPI,
    "h5": WeChatPayType.H5,
    "app": WeChatPayType.APP,
}
STATUS = {"NOTPAY": "unpaid", "USERPAYING": "unpaid", "SUCCESS": "paid", "REFUND": "paid", "CLOSED": "closed"}
REFUND_STATUS = {"PROCESSING": "processing", "SUCCESS": "refunded", "CLOSED": "failed", "ABNORMAL": "failed"}
REFUND_NOTICE = {
    "SUCCESS": "refunded",
    "PROCESSING": "refund_processing",
    "CLOSED": "refund_failed",
    "ABNORMAL": "refund_failed",
}
Reply = tuple[int, Any]


def fen(amount: Decimal) -> int:
    return int((amount * 100).to_integral_exact())


def yuan(fen_amount: int) -> Decimal:
    return (Decimal(fen_amount) / 100).quantize(Decimal("0.01"))


class WeChatPayProvider:
    name: Literal["wechatpay"] = "wechatpay"

    def __init__(
        self,
        *,
        mchid: str,
        appid: str,
        api_url: str,
        private_key: str,
        cert_serial_no: str,
        apiv3_key: str,
        public_key: str,
        public_key_id: str,
        notify_url: str,
        timeout: float = 10.0,
        notify_window: timedelta = timedelta(minutes=5),
    ) -> None:
        self.merchant = mchid
        self.appid = appid
        self.notify_window = notify_window
        self.client = AsyncWeChatPay(
            wechatpay_type=WeChatPayType.NATIVE,
            mchid=mchid,
            private_key=private_key,
            cert_serial_no=cert_serial_no,
            appid=appid,
            apiv3_key=apiv3_key,
            notify_url=notify_url,
            timeout=(5, timeout),
            public_key=public_key,
            public_key_id=public_key_id,
        )
        self.client._core._gate_way = api_url.rstrip("/")  # live: https://api.mch.weixin.qq.com
        self._entered = False

    async def _open(self) -> None:
        if not self._entered:
            await self.client.__aenter__()  # one HTTP connection pool for the process's life
            self._entered = True

    async def close_client(self) -> None:
        if self._entered:
            await self.client.__aexit__(None, None, None)
            self._entered = False

    async def _call(self, operation: str, order_id: str, fn: Callable[[], Awaitable[Reply]]) -> tuple[int, Any]:
        """One API call: (status, decoded JSON). Outages and 5xx become TransientError; a reply whose signature
        does not verify is never believed."""
        await self._open()
        with telemetry.tracer().start_as_current_span(
            f"wechatpay {operation}",
            kind=telemetry.SpanKind.CLIENT,
            attributes={"order.id": order_id, "payment.operation": operation, "payment.provider": self.name},
        ):
            try:
                code, message = await fn()
            except httpx.HTTPError as e:
                raise TransientError(f"wechatpay {operation}: {type(e).__name__}: {e}") from None
            except Exception as e:
                if "verify the signature" in str(e):  # the library's own words for a forged or tampered reply
                    raise TransientError(f"wechatpay {operation}: reply signature did not verify") from None
                raise
        if code >= 500 or code == 429:
            raise TransientError(f"wechatpay {operation}: HTTP {code}")
        if isinstance(message, bytes | bytearray):
            return code, bytes(message)
        try:
            return code, json.loads(message) if message else {}
        except json.JSONDecodeError:
            raise TransientError(f"wechatpay {operation}: reply is not JSON") from None

    @staticmethod
    def _refused(body: Any, code: int) -> ProviderRefused:
        body = body if isinstance(body, dict) else {}
        return ProviderRefused(str(body.get("code", f"HTTP{code}")), str(body.get("message", "")))

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
        pay_type = CHANNELS[channel]
        extra: dict[str, Any] = {}
        if pay_type == WeChatPayType.JSAPI:
            extra["payer"] = {"openid": openid}
        if pay_type == WeChatPayType.H5:
            extra["scene_info"] = {"payer_client_ip": "127.0.0.1", "h5_info": {"type": "Wap"}}
        time_expire = expires_at.astimezone(BEIJING).isoformat(timespec="seconds")
        try:
            code, body = await self._call(
                "pay",
                order_id,
                lambda: self.client.pay(
                    description=subject[:127],
                    out_trade_no=order_id,
                    amount={"total": fen(amount), "currency": "CNY"},
                    time_expire=time_expire,
                    pay_type=pay_type,
                    **extra,
                ),
            )
        except TransientError:
            if (await self.query(order_id=order_id)).status == "paid":  # asked before any retry
                return Checkout()
            raise  # the same out_trade_no with the same content answers with the same code later
        if code == 400 and isinstance(body, dict) and body.get("code") == "ORDERPAID":
            return Checkout()
        if code not in (200, 201):
            raise self._refused(body, code)
        if "code_url" in body:
            return Checkout(code_url=str(body["code_url"]))
        if "h5_url" in body:
            return Checkout(pay_url=str(body["h5_url"]))
        return Checkout(jsapi=self._jsapi(str(body["prepay_id"]), app=pay_type == WeChatPayType.APP))

    def _jsapi(self, prepay_id: str, *, app: bool) -> dict[str, str]:
        """The parameters the page (``WeixinJSBridge`` / ``wx.requestPayment``) or the app passes to WeChat."""
        timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
        package = f"prepay_id={prepay_id}" if not app else prepay_id
        signature = self.client.sign([self.appid, timestamp, nonce, package], SignType.RSA_SHA256)
        if app:
            return {
                "appid": self.appid,
                "partnerid": self.merchant,
                "prepayid": prepay_id,
                "package": "Sign=WXPay",
                "noncestr": nonce,
                "timestamp": timestamp,
                "sign": signature,
            }
        return {
            "appId": self.appid,
            "timeStamp": timestamp,
            "nonceStr": nonce,
            "package": package,
            "signType": "RSA",
            "paySign": signature,
        }

    async def query(self, *, order_id: str) -> Trade:
        code, body = await self._call("query", order_id, lambda: self.client.query(out_trade_no=order_id))
        if code == 404:
            return Trade(status="unknown")
        if code != 200:
            raise self._refused(body, code)
        amount = body.get("amount") or {}
        return Trade(
            status=STATUS.get(str(body.get("trade_state")), "unknown"),
            trade_no=str(body.get("transaction_id") or ""),
            amount=yuan(int(amount["total"])) if "total" in amount else None,
        )

    async def close(self, *, order_id: str) -> Trade:
        try:
            code, _ = await self._call("close", order_id, lambda: self.client.close(out_trade_no=order_id))
        except TransientError:
            code = 0  # decided by the query below
        trade = await self.query(order_id=order_id)
        if code == 204 or trade.status in ("closed", "unknown"):
            return trade.model_copy(update={"status": "closed"}) if trade.status != "paid" else trade
        if trade.status == "unpaid":
            raise TransientError(f"wechatpay close of {order_id} not confirmed (trade still unpaid)")
        return trade

    async def refund(self, *, order_id: str, refund_no: str, amount: Decimal, total: Decimal) -> Refund:
        done = await self.query_refund(order_id=order_id, refund_no=refund_no)  # asked first: never refunded twice
        if done.status != "none":
            return done
        code, body = await self._call(
            "refund",
            order_id,
            lambda: self.client.refund(
                out_refund_no=refund_no,
                out_trade_no=order_id,
                amount={"refund": fen(amount), "total": fen(total), "currency": "CNY"},
            ),
        )
        if code not in (200, 201):
            raise self._refused(body, code)
        return self._refund(body)

    def _refund(self, body: dict[str, Any]) -> Refund:
        amount = body.get("amount") or {}
        return Refund(
            status=REFUND_STATUS.get(str(body.get("status")), "processing"),
            refund_id=str(body.get("refund_id") or body.get("out_refund_no") or ""),
            amount=yuan(int(amount["refund"])) if "refund" in amount else None,
        )

    async def query_refund(self, *, order_id: str, refund_no: str) -> Refund:
        code, body = await self._call("refund_query", order_id, lambda: self.client.query_refund(refund_no))
        if code == 404:
            return Refund(status="none")
        if code != 200:
            raise self._refused(body, code)
        return self._refund(body)

    def parse_notification(self, *, headers: Mapping[str, str], body: bytes, at: datetime) -> Notice:
        lower = {k.lower(): v for k, v in headers.items()}
        try:
            sent_at = datetime.fromtimestamp(int(lower.get("wechatpay-timestamp", "")), UTC)
        except (ValueError, OverflowError, OSError):
            raise InvalidNotification("no or malformed Wechatpay-Timestamp") from None
        if not within_window(sent_at, at, self.notify_window):
            raise InvalidNotification("Wechatpay-Timestamp is outside the replay window")
        try:
            data = self.client.callback(lower, body)
        except Exception as e:  # the library raises bare Exception for an unknown algorithm
            raise InvalidNotification(f"callback refused: {e}") from None
        if not data or not isinstance(data.get("resource"), dict):
            raise InvalidNotification("signature did not verify or the resource did not decrypt")
        resource: dict[str, Any] = data["resource"]
        try:
            if str(data.get("event_type", "")).startswith("REFUND."):
                return Notice(
                    order_id=str(resource["out_trade_no"]),
                    kind="refund",
                    status=REFUND_NOTICE.get(str(resource.get("refund_status")), "refund_processing"),
                    trade_no=str(resource.get("transaction_id", "")),
                    refund_no=str(resource.get("out_refund_no", "")),
                    amount=yuan(int(resource["amount"]["refund"])),
                    merchant=str(resource.get("mchid", "")),
                    notify_id=str(data.get("id", "")),
                )
            return Notice(
                order_id=str(resource["out_trade_no"]),
                kind="trade",
                status=STATUS.get(str(resource.get("trade_state")), "unpaid"),
                trade_no=str(resource.get("transaction_id", "")),
                amount=yuan(int(resource["amount"]["total"])),
                merchant=str(resource.get("mchid", "")),
                notify_id=str(data.get("id", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidNotification(f"resource lacks {e}") from None

    def notification_reply(self, *, ok: bool) -> tuple[int, str, str]:
        if ok:
            return 200, "application/json", '{"code":"SUCCESS","message":"OK"}'
        return 500, "application/json", '{"code":"FAIL","message":"not accepted"}'

    async def bill(self, *, day: date) -> list[BillRow]:
        code, body = await self._call("bill", f"bill:{day}", lambda: self.client.trade_bill(day.isoformat()))
        if code != 200:
            raise self._refused(body, code)
        code, raw = await self._call(
            "bill_download", f"bill:{day}", lambda: self.client.download_bill(str(body["download_url"]))
        )
        if code != 200:
            raise self._refused(raw, code)
        data = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        return parse_bill(data.decode("utf-8-sig"))


def parse_bill(text: str) -> list[BillRow]:
    """WeChat's trade bill: a CSV whose values start with a backtick, the detail rows before a summary header."""
    lines = text.splitlines()
    detail = []
    for ln in lines[1:]:
        if not ln.startswith("`"):
            break  # the summary section
        detail.append(ln)
    rows = []
    for rec in csv.DictReader([lines[0], *detail]) if lines else []:
        clean = {k.strip(): (v or "").strip().lstrip("`") for k, v in rec.items() if k}
        status = clean.get("交易状态", "")
        if status == "REFUND":
            rows.append(
                BillRow(
                    kind="refund",
                    order_id=clean.get("商户订单号", ""),
                    reference=clean.get("微信订单号", ""),
                    refund_no=clean.get("商户退款单号", ""),
                    amount=abs(Decimal(clean.get("退款金额") or "0")),
                )
            )
        elif status == "SUCCESS":
            rows.append(
                BillRow(
                    kind="payment",
                    order_id=clean.get("商户订单号", ""),
                    reference=clean.get("微信订单号", ""),
                    amount=Decimal(clean.get("应结订单金额") or clean.get("订单金额") or "0"),
                )
            )
    return rows
