"""Alipay open platform: ``gateway.do`` with RSA2 signatures, as python-alipay-sdk and Alipay's own SDKs use it.

Requests: GET or POST (form) ``/gateway.do``; the common parameters and ``biz_content`` are verified as Alipay
does: the RSA2 signature (SHA256withRSA) over every non-empty parameter but ``sign``, sorted by name, ``k=v``
joined with ``&``, values URL-decoded; ``sign_type`` is part of a request's signed content (python-alipay-sdk's
``sign_data`` signs it), while notifications and return parameters exclude it (``AliPay.verify`` pops it).

Replies: ``{"<method>_response": {...}, "sign": "..."}``; the sign covers the exact bytes of that object as
written. The one reply left unsigned is the one Alipay cannot sign for: an unknown or missing ``app_id``.

As at Alipay, a trade made by ``alipay.trade.precreate`` exists for query and close only once the customer has
scanned its QR code (opened ``/qr/alipay/<token>``), and a ``page.pay``/``wap.pay`` trade once the customer's
browser has opened the signed gateway URL.
"""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Request
from starlette.responses import PlainTextResponse, Response

from . import cashier
from .clock import CST, bill_day, cst_text, now
from .core import (
    CENT,
    PAY,
    BillEntry,
    CashierTrade,
    Context,
    PayOutcome,
    digits,
    token,
    with_fault,
    with_planted,
    yuan,
    yuan_text,
)
from .keys import ALIPAY_APP_ID, ALIPAY_SELLER_ID, sign, verify
from .notifier import Notification

NAME = "alipay"
# Alipay retries a notification not answered "success" after 4m, 10m, 10m, 1h, 2h, 6h and 15h.
RETRY_SCHEDULE = (240.0, 600.0, 600.0, 3600.0, 7200.0, 21600.0, 54000.0)
TIMESTAMP_WINDOW = timedelta(minutes=15)
FEE_RATE = Decimal("0.006")
BILL_ACCOUNT = f"{ALIPAY_SELLER_ID}0156"
BILL_COLUMNS = (
    "支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,对方账户,订单金额（元）,"
    "商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,券核销金额（元）,券名称,"
    "商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注"
)

# Method -> the operation name faults are asked for by (the full method name works too).
OPERATIONS = {
    "alipay.trade.page.pay": "page_pay",
    "alipay.trade.wap.pay": "wap_pay",
    "alipay.trade.precreate": "precreate",
    "alipay.trade.query": "query",
    "alipay.trade.close": "close",
    "alipay.trade.refund": "refund",
    "alipay.trade.fastpay.refund.query": "refund_query",
    "alipay.data.dataservice.bill.downloadurl.query": "bill",
}
BROWSER_METHODS = {"alipay.trade.page.pay": "FAST_INSTANT_TRADE_PAY", "alipay.trade.wap.pay": "QUICK_WAP_WAY"}
COMMON_PARAMETERS = ("app_id", "method", "sign_type", "sign", "timestamp", "version")
MESSAGES = {
    "10000": "Success",
    "20000": "Service Currently Unavailable",
    "40001": "Missing Required Arguments",
    "40002": "Invalid Arguments",
    "40004": "Business Failed",
}


def operation_name(operation: str) -> str:
    return OPERATIONS.get(operation, operation)


class AlipayError(Exception):
    """An error reply: ``code``, ``msg``, ``sub_code``, ``sub_msg``; unsigned when Alipay cannot sign it."""

    def __init__(self, code: str, sub_code: str, sub_msg: str, *, signed: bool = True, **extra: str) -> None:
        super().__init__(f"{code} {sub_code}: {sub_msg}")
        self.body = {"code": code, "msg": MESSAGES[code], "sub_code": sub_code, "sub_msg": sub_msg, **extra}
        self.signed = signed


def business(sub_code: str, sub_msg: str, **extra: str) -> AlipayError:
    error = AlipayError("40004", sub_code, sub_msg)
    error.body |= extra
    return error


def signed_content(params: dict[str, str], *, without: tuple[str, ...]) -> str:
    """Alipay's content to sign: the non-empty parameters but ``without``, sorted by name, ``k=v`` joined by ``&``."""
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in without and v != "")


def compact_json(value: object) -> str:
    """JSON without spaces, braces inside strings written as ``\\u007b``/``\\u007d``: SDKs find the signed object
    of a reply by counting braces, so only the structure may contain them."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{compact_json(str(k))}:{compact_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(compact_json(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("{", "\\u007b").replace("}", "\\u007d")
    return json.dumps(value)


@dataclass
class AlipayRefund:
    out_request_no: str
    amount: Decimal
    at: datetime
    reason: str = ""


@dataclass
class AlipayTrade:
    out_trade_no: str
    trade_no: str
    total_amount: Decimal
    subject: str
    product: str  # FACE_TO_FACE_PAYMENT (precreate), FAST_INSTANT_TRADE_PAY (page), QUICK_WAP_WAY (wap)
    notify_url: str
    return_url: str
    token: str
    created_at: datetime
    expire_at: datetime | None
    scanned: bool  # the customer has seen it: from then on it exists at Alipay (query, close)
    status: str = "WAIT_BUYER_PAY"
    paid_at: datetime | None = None
    closed_at: datetime | None = None
    buyer_id: str = ""
    refunds: dict[str, AlipayRefund] = field(default_factory=dict)

    @property
    def refunded(self) -> Decimal:
        return sum((r.amount for r in self.refunds.values()), Decimal("0.00"))

    @property
    def buyer_logon_id(self) -> str:
        return f"sim***@{self.buyer_id[-4:]}.example" if self.buyer_id else ""

    def payment_fields(self) -> dict[str, str]:
        paid = self.paid_at is not None
        amount = yuan_text(self.total_amount) if paid else "0.00"
        fields = {
            "buyer_pay_amount": amount,
            "invoice_amount": amount,
            "receipt_amount": amount,
            "point_amount": "0.00",
        }
        if self.paid_at is not None:
            fields |= {"buyer_id": self.buyer_id, "buyer_logon_id": self.buyer_logon_id}
        return fields


def _fee(amount: Decimal) -> Decimal:
    return (amount * FEE_RATE).quantize(CENT, rounding=ROUND_HALF_UP)


class AlipaySim:
    """Alipay's trades, refunds, notifications and bills, in memory."""

    name = NAME

    def __init__(self, context: Context) -> None:
        self.ctx = context
        self.trades: dict[str, AlipayTrade] = {}
        self.by_token: dict[str, str] = {}
        self.bills: dict[str, bytes] = {}

    # ------------------------------------------------------------ HTTP

    def router(self) -> APIRouter:
        router = APIRouter()
        router.add_api_route("/gateway.do", self.gateway, methods=["GET", "POST"], include_in_schema=False)
        router.add_api_route("/qr/alipay/{cashier_token}", self.scan, methods=["GET"], include_in_schema=False)
        router.add_api_route("/bills/alipay/{name}", self.download_bill, methods=["GET"], include_in_schema=False)
        return router

    async def gateway(self, request: Request) -> Response:
        params = await self._parameters(request)
        method = params.get("method", "")
        browser = method in BROWSER_METHODS
        response_key = f"{method.replace('.', '_')}_response" if method in OPERATIONS else "error_response"
        try:
            self._authenticate(params)
            biz = self._biz_content(params)
        except AlipayError as e:
            if browser:
                return cashier.message(f"错误代码 {e.body['sub_code']}", e.body["sub_msg"])
            return self._reply(response_key, e.body, signed=e.signed)
        out_trade_no = str(biz.get("out_trade_no", "")) or None
        fault = self.ctx.faults.take(NAME, OPERATIONS[method], out_trade_no)

        async def effect() -> Response:
            if browser:
                return self._open_cashier(params, biz)
            handlers: dict[str, Callable[[dict[str, str], dict[str, Any], Request], dict[str, str]]] = {
                "alipay.trade.precreate": self._precreate,
                "alipay.trade.query": self._query,
                "alipay.trade.close": self._close,
                "alipay.trade.refund": self._refund,
                "alipay.trade.fastpay.refund.query": self._refund_query,
                "alipay.data.dataservice.bill.downloadurl.query": self._bill_url,
            }
            try:
                body = {"code": "10000", "msg": "Success", **handlers[method](params, biz, request)}
            except AlipayError as e:
                body = e.body
            return self._reply(response_key, body)

        def unavailable() -> Response:
            return PlainTextResponse("503 Service Temporarily Unavailable", status_code=503)

        return await with_fault(fault, request, effect, unavailable)

    async def scan(self, cashier_token: str) -> Response:
        """The customer scans the QR code of a precreated trade: the cashier page."""
        trade = self.cashier(cashier_token)
        if trade is None:
            return cashier.message("二维码已失效", "No trade behind this QR code.", status_code=404)
        return cashier.page(trade)

    async def download_bill(self, name: str) -> Response:
        data = self.bills.get(name.removesuffix(".zip"))
        if data is None:
            return PlainTextResponse("bill not found", status_code=404)
        return Response(
            data, media_type="application/zip", headers={"Content-Disposition": f"attachment; filename={name}"}
        )

    async def _parameters(self, request: Request) -> dict[str, str]:
        pairs = parse_qsl(request.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        body = await request.body() if request.method == "POST" else b""
        if body and "form" in request.headers.get("content-type", "application/x-www-form-urlencoded"):
            pairs += parse_qsl(body.decode("latin-1"), keep_blank_values=True)
        charset = next((v for k, v in pairs if k == "charset"), "utf-8") or "utf-8"
        decode_as = "gbk" if charset.lower() in ("gbk", "gb2312") else "utf-8"
        # parse_qsl decoded %XX as latin-1: turn each value back into its bytes, then read them in the charset.
        return {k: v.encode("latin-1").decode(decode_as, errors="replace") for k, v in pairs}

    def _authenticate(self, params: dict[str, str]) -> None:
        for name in COMMON_PARAMETERS:
            if not params.get(name):
                sub_code = {"sign": "signature", "sign_type": "signature-type"}.get(name, name.replace("_", "-"))
                raise AlipayError("40001", f"isv.missing-{sub_code}", f"缺少{name}参数", signed=name != "app_id")
        if params["app_id"] != ALIPAY_APP_ID:
            raise AlipayError("40002", "isv.invalid-app-id", "无效的AppID参数", signed=False)
        if params["method"] not in OPERATIONS:
            raise AlipayError("40002", "isv.invalid-method", "不存在的方法名")
        if params["sign_type"] != "RSA2":
            raise AlipayError("40002", "isv.invalid-signature-type", "无效的签名类型")
        try:
            stamp = datetime.strptime(params["timestamp"], "%Y-%m-%d %H:%M:%S")
        except ValueError:
            raise AlipayError("40002", "isv.invalid-timestamp", "非法的时间戳参数") from None
        # The SDKs stamp the caller's local wall clock; Alipay reads it as Beijing time. A host on UTC is 8 hours
        # off that, so the simulator also accepts its own local wall clock.
        clocks = (now().replace(tzinfo=None), datetime.now())
        if all(abs(stamp - clock) > TIMESTAMP_WINDOW for clock in clocks):
            raise AlipayError("40002", "isv.invalid-timestamp", "非法的时间戳参数")
        content = signed_content(params, without=("sign",))
        if not verify(self.ctx.keys.alipay_app_public, content.encode(), params["sign"]):
            raise AlipayError(
                "40002",
                "isv.invalid-signature",
                f"验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配，网关生成的验签字符串为：{content}",
            )

    @staticmethod
    def _biz_content(params: dict[str, str]) -> dict[str, Any]:
        raw = params.get("biz_content") or "{}"
        try:
            biz = json.loads(raw)
        except ValueError:
            raise AlipayError("40002", "isv.invalid-parameter", "biz_content 不是合法的 JSON") from None
        if not isinstance(biz, dict):
            raise AlipayError("40002", "isv.invalid-parameter", "biz_content 不是 JSON 对象")
        return biz

    def _reply(self, response_key: str, body: dict[str, str], *, signed: bool = True) -> Response:
        inner = compact_json(body)
        text = f'{{"{response_key}":{inner}'
        if signed:
            text += f',"sign":"{sign(self.ctx.keys.alipay_platform_private, inner.encode())}"'
        return Response(text + "}", media_type="application/json;charset=utf-8")

    # ------------------------------------------------------------ trades

    def _expiry(self, biz: dict[str, Any], created: datetime) -> datetime | None:
        if time_expire := str(biz.get("time_expire", "")):
            for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"):
                try:
                    return datetime.strptime(time_expire, fmt).replace(tzinfo=CST)
                except ValueError:
                    continue
            raise business("ACQ.INVALID_PARAMETER", "time_expire 格式错误")
        timeout = str(biz.get("timeout_express", ""))
        if not timeout:
            return None
        m = re.fullmatch(r"(\d+)([mhdc])", timeout)
        if not m or int(m.group(1)) < 1:
            raise business("ACQ.INVALID_PARAMETER", "timeout_express 取值范围：1m～15d")
        n, unit = int(m.group(1)), m.group(2)
        if unit == "c":  # the trade closes at midnight of the day it was made, however late that is
            return datetime.combine(created.astimezone(CST).date() + timedelta(days=1), datetime.min.time(), CST)
        return created + {"m": timedelta(minutes=n), "h": timedelta(hours=n), "d": timedelta(days=n)}[unit]

    def _create_or_find(
        self, params: dict[str, str], biz: dict[str, Any], *, product: str, scanned: bool
    ) -> AlipayTrade:
        out_trade_no = str(biz.get("out_trade_no", ""))
        amount = yuan(biz.get("total_amount"))
        subject = str(biz.get("subject", ""))
        if not out_trade_no or len(out_trade_no) > 64:
            raise business("ACQ.INVALID_PARAMETER", "参数无效：out_trade_no")
        if amount is None or not Decimal("0.01") <= amount <= Decimal("100000000"):
            raise business("ACQ.INVALID_PARAMETER", "参数无效：total_amount")
        if not subject:
            raise business("ACQ.INVALID_PARAMETER", "参数无效：subject")
        if (trade := self.trades.get(out_trade_no)) is not None:
            self._expire_if_due(trade, now())
            if trade.total_amount != amount:
                raise business("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改")
            if trade.status in ("TRADE_SUCCESS", "TRADE_FINISHED"):
                raise business("ACQ.TRADE_HAS_SUCCESS", "交易已被支付")
            if trade.status == "TRADE_CLOSED":
                raise business("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
            trade.scanned = trade.scanned or scanned
            return trade
        created = now()
        trade = AlipayTrade(
            out_trade_no=out_trade_no,
            trade_no=f"{created:%Y%m%d}2200{digits(16)}",
            total_amount=amount,
            subject=subject,
            product=product,
            notify_url=params.get("notify_url", ""),
            return_url=params.get("return_url", ""),
            token=token(),
            created_at=created,
            expire_at=self._expiry(biz, created),
            scanned=scanned,
        )
        self.trades[out_trade_no] = trade
        self.by_token[trade.token] = out_trade_no
        return trade

    def _find(self, biz: dict[str, Any]) -> AlipayTrade:
        """The trade a query/close/refund names, as Alipay knows it (a precreated one only once scanned)."""
        out_trade_no, trade_no = str(biz.get("out_trade_no", "")), str(biz.get("trade_no", ""))
        if not out_trade_no and not trade_no:
            raise business("ACQ.INVALID_PARAMETER", "out_trade_no 和 trade_no 不能同时为空")
        trade = self.trades.get(out_trade_no) if out_trade_no else None
        if trade is None and trade_no:
            trade = next((t for t in self.trades.values() if t.trade_no == trade_no), None)
        if trade is None or not trade.scanned or (trade_no and trade.trade_no != trade_no):
            raise business("ACQ.TRADE_NOT_EXIST", "交易不存在")
        self._expire_if_due(trade, now())
        return trade

    def _expire_if_due(self, trade: AlipayTrade, moment: datetime) -> None:
        if trade.status == "WAIT_BUYER_PAY" and trade.expire_at is not None and moment >= trade.expire_at:
            self._close_unpaid(trade, timed_out=True)

    def _close_unpaid(self, trade: AlipayTrade, *, timed_out: bool) -> None:
        trade.status, trade.closed_at = "TRADE_CLOSED", now()
        # A timed-out trade that existed at Alipay is announced; one the merchant closed itself is not.
        if timed_out and trade.scanned:
            self._notify(trade, "TRADE_CLOSED", {"gmt_close": cst_text(trade.closed_at)})

    # ------------------------------------------------------------ methods

    def _open_cashier(self, params: dict[str, str], biz: dict[str, Any]) -> Response:
        method = params["method"]
        try:
            trade = self._create_or_find(params, biz, product=BROWSER_METHODS[method], scanned=True)
        except AlipayError as e:
            return cashier.message(f"错误代码 {e.body['sub_code']}", e.body["sub_msg"])
        view = self.cashier(trade.token)
        assert view is not None
        return cashier.page(view)

    def _precreate(self, params: dict[str, str], biz: dict[str, Any], request: Request) -> dict[str, str]:
        trade = self._create_or_find(params, biz, product="FACE_TO_FACE_PAYMENT", scanned=False)
        return {
            "out_trade_no": trade.out_trade_no,
            "qr_code": f"{self.ctx.base_url(request)}/qr/alipay/{trade.token}",
        }

    def _query(self, params: dict[str, str], biz: dict[str, Any], request: Request) -> dict[str, str]:
        trade = self._find(biz)
        body = {
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "trade_status": trade.status,
            "total_amount": yuan_text(trade.total_amount),
            **trade.payment_fields(),
        }
        if trade.paid_at is not None:
            body |= {"send_pay_date": cst_text(trade.paid_at), "buyer_user_id": body.pop("buyer_id")}
        return body

    def _close(self, params: dict[str, str], biz: dict[str, Any], request: Request) -> dict[str, str]:
        trade = self._find(biz)
        if trade.status != "WAIT_BUYER_PAY":
            raise business("ACQ.TRADE_STATUS_ERROR", "交易状态不合法", out_trade_no=trade.out_trade_no)
        self._close_unpaid(trade, timed_out=False)
        return {"trade_no": trade.trade_no, "out_trade_no": trade.out_trade_no}

    def _refund(self, params: dict[str, str], biz: dict[str, Any], request: Request) -> dict[str, str]:
        trade = self._find(biz)
        amount = yuan(biz.get("refund_amount"))
        if amount is None or amount <= 0:
            raise business("ACQ.INVALID_PARAMETER", "参数无效：refund_amount")
        # Without out_request_no, the request is named by the trade's out_trade_no (one full refund).
        request_no = str(biz.get("out_request_no", "")) or trade.out_trade_no
        fund_change = "N"
        if (earlier := trade.refunds.get(request_no)) is not None:
            if earlier.amount != amount:
                raise business("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额与该退款请求号的原请求不一致")
        elif trade.paid_at is None:
            raise business("ACQ.TRADE_STATUS_ERROR", "交易状态不合法", out_trade_no=trade.out_trade_no)
        elif amount > trade.total_amount - trade.refunded:
            raise business(
                "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限", out_trade_no=trade.out_trade_no, refund_fee="0.00"
            )
        else:
            refund = AlipayRefund(request_no, amount, now(), str(biz.get("refund_reason", "")))
            trade.refunds[request_no] = refund
            fund_change = "Y"
            if trade.refunded == trade.total_amount:  # a full refund closes the trade, and Alipay says so
                trade.status, trade.closed_at = "TRADE_CLOSED", refund.at
                gmt_refund = refund.at.astimezone(CST).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
                self._notify(
                    trade,
                    "TRADE_CLOSED",
                    {
                        "refund_fee": yuan_text(trade.refunded),
                        "gmt_refund": gmt_refund,
                        "gmt_close": cst_text(refund.at),
                        "out_biz_no": request_no,
                    },
                )
        refund = trade.refunds[request_no]
        return {
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "buyer_logon_id": trade.buyer_logon_id,
            "buyer_user_id": trade.buyer_id,
            "fund_change": fund_change,
            "refund_fee": yuan_text(trade.refunded),
            "gmt_refund_pay": cst_text(refund.at),
        }

    def _refund_query(self, params: dict[str, str], biz: dict[str, Any], request: Request) -> dict[str, str]:
        trade = self._find(biz)
        request_no = str(biz.get("out_request_no", ""))
        if not request_no:
            raise business("ACQ.INVALID_PARAMETER", "参数无效：out_request_no")
        body = {"trade_no": trade.trade_no, "out_trade_no": trade.out_trade_no}
        if (refund := trade.refunds.get(request_no)) is None:
            return body  # Alipay answers an unknown refund request with success and no refund in it
        return body | {
            "out_request_no": request_no,
            "total_amount": yuan_text(trade.total_amount),
            "refund_amount": yuan_text(refund.amount),
            "refund_status": "REFUND_SUCCESS",
            "gmt_refund_pay": cst_text(refund.at),
        }

    def _bill_url(self, params: dict[str, str], biz: dict[str, Any], request: Request) -> dict[str, str]:
        if biz.get("bill_type") != "trade":
            raise business("ACQ.INVALID_PARAMETER", "参数无效：bill_type（模拟器只提供 trade 账单）")
        bill_date = str(biz.get("bill_date", ""))
        try:
            if len(bill_date) == 7:
                first = datetime.strptime(bill_date, "%Y-%m").date()
                last = (first.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
            else:
                first = last = datetime.strptime(bill_date, "%Y-%m-%d").date()
        except ValueError:
            raise business("ACQ.INVALID_PARAMETER", "参数无效：bill_date") from None
        # Alipay makes a day's bill the next morning; the simulator has today's ready at once, for tests.
        if first > now().date():
            raise business("isp.bill_not_exist", "账单不存在")
        file_id = uuid.uuid4().hex
        self.bills[file_id] = self._bill_zip(first, min(last, now().date()), bill_date.replace("-", ""))
        return {"bill_download_url": f"{self.ctx.base_url(request)}/bills/alipay/{file_id}.zip"}

    # ------------------------------------------------------------ bills

    def _bill_entries(self, day: date) -> list[BillEntry]:
        entries = []
        for trade in self.trades.values():
            if trade.paid_at is not None and bill_day(trade.paid_at) == day:
                entries.append(BillEntry(trade.out_trade_no, "payment", trade.total_amount, trade.paid_at, trade))
            for refund in trade.refunds.values():
                if bill_day(refund.at) == day:
                    entries.append(BillEntry(trade.out_trade_no, "refund", refund.amount, refund.at, (trade, refund)))
        entries = with_planted(entries, self.ctx.plants.of(NAME, day), day=day)
        return sorted(entries, key=lambda e: e.at)

    @staticmethod
    def _bill_row(entry: BillEntry) -> list[str]:
        source = entry.source
        trade = source[0] if isinstance(source, tuple) else source
        refund = source[1] if isinstance(source, tuple) else None
        if isinstance(trade, AlipayTrade):
            trade_no, subject, created, buyer = trade.trade_no, trade.subject, trade.created_at, trade.buyer_logon_id
        else:  # planted without a trade
            trade_no, subject, created, buyer = f"{entry.at:%Y%m%d}2200{digits(16)}", "", entry.at, ""
        payment = entry.kind == "payment"
        amount = entry.amount if payment else -entry.amount
        request_no = refund.out_request_no if isinstance(refund, AlipayRefund) else ("" if payment else "planted")
        return [
            f"{trade_no}\t",
            f"{entry.out_trade_no}\t",
            "交易\t" if payment else "退款\t",
            subject,
            cst_text(created),
            cst_text(entry.at),
            "\t",
            "\t",
            "\t",
            "\t",
            f"{buyer}\t",
            yuan_text(amount),
            yuan_text(amount),
            "0.00",
            "0.00",
            "0.00",
            "0.00",
            "0.00",
            "",
            "0.00\t",
            "0.00",
            f"{request_no}\t",
            yuan_text(-_fee(amount)),
            "0.00",
            "",
        ]

    def _bill_zip(self, first: date, last: date, label: str) -> bytes:
        entries = []
        day = first
        while day <= last:
            entries += self._bill_entries(day)
            day += timedelta(days=1)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        end = last + timedelta(days=1)
        out.write("#支付宝业务明细查询\r\n")
        out.write(f"#账号：[{BILL_ACCOUNT}]\r\n")
        out.write(f"#起始日期：[{first:%Y年%m月%d日} 00:00:00]   终止日期：[{end:%Y年%m月%d日} 00:00:00]\r\n")
        out.write(f"#{'-' * 41}业务明细列表{'-' * 40}\r\n")
        out.write(BILL_COLUMNS + "\r\n")
        for entry in entries:
            writer.writerow(self._bill_row(entry))
        payments = [e.amount for e in entries if e.kind == "payment"]
        refunds = [e.amount for e in entries if e.kind == "refund"]
        paid, refunded = yuan_text(sum(payments, Decimal(0))), yuan_text(-sum(refunds, Decimal(0)))
        out.write(f"#{'-' * 41}业务明细列表结束{'-' * 36}\r\n")
        out.write(f"#交易合计：{len(payments)}笔，商家实收共{paid}元，商家优惠共0.00元\r\n")
        out.write(f"#退款合计：{len(refunds)}笔，商家实收退款共{refunded}元，商家优惠退款共0.00元\r\n")
        out.write(f"#导出时间：[{now():%Y年%m月%d日 %H:%M:%S}]\r\n")
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(f"{BILL_ACCOUNT}_{label}_业务明细.csv", out.getvalue().encode("gbk", errors="replace"))
        return archive.getvalue()

    # ------------------------------------------------------------ notifications

    def _notify(self, trade: AlipayTrade, trade_status: str, extra: dict[str, str]) -> None:
        if not trade.notify_url:
            return
        # The fields are those of the moment of the event; each attempt adds its own notify_time and signature.
        fields = {
            "notify_type": "trade_status_sync",
            "notify_id": uuid.uuid4().hex,
            "app_id": ALIPAY_APP_ID,
            "auth_app_id": ALIPAY_APP_ID,
            "charset": "utf-8",
            "version": "1.0",
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "trade_status": trade_status,
            "total_amount": yuan_text(trade.total_amount),
            "gmt_create": cst_text(trade.created_at),
            "seller_id": ALIPAY_SELLER_ID,
            "subject": trade.subject,
            **extra,
        }
        if trade.paid_at is not None:
            fields |= trade.payment_fields() | {"gmt_payment": cst_text(trade.paid_at)}
            fund_bill = [{"amount": yuan_text(trade.total_amount), "fundChannel": "ALIPAYACCOUNT"}]
            fields["fund_bill_list"] = json.dumps(fund_bill, separators=(",", ":"))

        def render() -> tuple[dict[str, str], bytes]:
            attempt = {**fields, "notify_time": cst_text(now()), "sign_type": "RSA2"}
            content = signed_content(attempt, without=("sign", "sign_type"))
            attempt["sign"] = sign(self.ctx.keys.alipay_platform_private, content.encode())
            headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
            return headers, urlencode(attempt).encode()

        self.ctx.notifier.send(
            Notification(
                id=fields["notify_id"],
                provider=NAME,
                out_trade_no=trade.out_trade_no,
                event=trade_status,
                url=trade.notify_url,
                render=render,
                accepted=lambda r: r.status_code == 200 and r.text.strip() == "success",
                schedule=RETRY_SCHEDULE,
            )
        )

    # ------------------------------------------------------------ the customer and the control API

    def cashier(self, cashier_token: str) -> CashierTrade | None:
        """The trade behind a cashier/QR token as the customer opens it (which makes a precreated one exist)."""
        trade = self.trades.get(self.by_token.get(cashier_token, ""))
        if trade is None:
            return None
        trade.scanned = True
        self._expire_if_due(trade, now())
        return CashierTrade(
            provider=NAME,
            token=trade.token,
            merchant=f"provider-sim shop ({ALIPAY_SELLER_ID})",
            subject=trade.subject,
            amount=trade.total_amount,
            out_trade_no=trade.out_trade_no,
            status=trade.status,
            payable=trade.status == "WAIT_BUYER_PAY",
        )

    def pay(self, out_trade_no: str) -> PayOutcome:
        trade = self.trades.get(out_trade_no)
        if trade is None:
            return PayOutcome.NOT_FOUND
        trade.scanned = True
        self._expire_if_due(trade, now())
        if trade.paid_at is not None:
            return PayOutcome.ALREADY_PAID
        if trade.status != "WAIT_BUYER_PAY":
            return PayOutcome.CLOSED
        if self.ctx.faults.take(NAME, PAY, out_trade_no) is not None:
            return PayOutcome.DECLINED
        trade.status, trade.paid_at, trade.buyer_id = "TRADE_SUCCESS", now(), f"2088{digits(12)}"
        self._notify(trade, "TRADE_SUCCESS", {})
        return PayOutcome.PAID

    def abandon(self, out_trade_no: str) -> bool:
        trade = self.trades.get(out_trade_no)
        if trade is not None:
            trade.scanned = True  # the customer saw the cashier, then left
        return trade is not None

    def expire(self, out_trade_no: str) -> bool:
        trade = self.trades.get(out_trade_no)
        if trade is None or trade.status != "WAIT_BUYER_PAY":
            return False
        self._close_unpaid(trade, timed_out=True)
        return True

    def sweep(self, moment: datetime) -> None:
        for trade in list(self.trades.values()):
            self._expire_if_due(trade, moment)

    def return_url_after_pay(self, cashier_token: str) -> str | None:
        """Where the browser goes after paying a page/wap trade: its return_url with Alipay's signed parameters."""
        trade = self.trades.get(self.by_token.get(cashier_token, ""))
        if trade is None or not trade.return_url or trade.paid_at is None:
            return None
        method = (
            "alipay.trade.wap.pay"
            if trade.product == BROWSER_METHODS["alipay.trade.wap.pay"]
            else "alipay.trade.page.pay"
        )
        params = {
            "charset": "utf-8",
            "out_trade_no": trade.out_trade_no,
            "method": f"{method}.return",
            "total_amount": yuan_text(trade.total_amount),
            "trade_no": trade.trade_no,
            "auth_app_id": ALIPAY_APP_ID,
            "version": "1.0",
            "app_id": ALIPAY_APP_ID,
            "seller_id": ALIPAY_SELLER_ID,
            "timestamp": cst_text(now()),
        }
        params["sign"] = sign(
            self.ctx.keys.alipay_platform_private, signed_content(params, without=("sign", "sign_type")).encode()
        )
        params["sign_type"] = "RSA2"
        separator = "&" if "?" in trade.return_url else "?"
        return f"{trade.return_url}{separator}{urlencode(params)}"

    def view(self, out_trade_no: str) -> dict[str, Any] | None:
        trade = self.trades.get(out_trade_no)
        if trade is None:
            return None
        self._expire_if_due(trade, now())
        times = {"created_at": trade.created_at, "paid_at": trade.paid_at, "closed_at": trade.closed_at}
        return {
            "provider": NAME,
            "out_trade_no": trade.out_trade_no,
            "trade_no": trade.trade_no,
            "status": trade.status,
            "exists_at_provider": trade.scanned,
            "product": trade.product,
            "subject": trade.subject,
            "total_amount": yuan_text(trade.total_amount),
            "refunded_amount": yuan_text(trade.refunded),
            "refunds": [
                {"out_request_no": r.out_request_no, "amount": yuan_text(r.amount), "at": cst_text(r.at)}
                for r in trade.refunds.values()
            ],
            **{k: cst_text(v) if v else None for k, v in times.items()},
            "expire_at": cst_text(trade.expire_at) if trade.expire_at else None,
            "notify_url": trade.notify_url,
            "return_url": trade.return_url,
            "cashier_url": f"/qr/alipay/{trade.token}",
            "notifications": self.ctx.notifier.of(NAME, trade.out_trade_no),
        }
