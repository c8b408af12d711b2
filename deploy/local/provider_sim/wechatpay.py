"""WeChat Pay API v3 (direct merchant, platform public-key mode), as wechatpayv3 and WeChat's own SDKs use it.

Requests carry ``Authorization: WECHATPAY2-SHA256-RSA2048 mchid="..",nonce_str="..",signature="..",
timestamp="..",serial_no=".."``: SHA256withRSA with the merchant's key over ``METHOD\\nPATH?QUERY\\ntimestamp\\n
nonce\\nbody\\n``, the path and query exactly as sent. Every reply, errors included, is signed with the platform key
over ``timestamp\\nnonce\\nbody\\n`` and names the key by its ``Wechatpay-Serial`` (the public key id); only the
bill file itself is not, as at WeChat Pay (its integrity is the SHA1 ``hash_value`` of the bill request).

Callbacks carry the transaction or refund as an AEAD_AES_256_GCM resource under the APIv3 key, signed like
replies; amounts are in fen.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import re
import time
import uuid
from base64 import b64encode
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import parse_qsl

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import APIRouter, Request
from starlette.responses import Response

from .clock import CST, bill_day, cst_text, now, rfc3339
from .core import PAY, BillEntry, CashierTrade, Context, PayOutcome, digits, token, with_fault, with_planted
from .keys import WECHATPAY_APPID, WECHATPAY_MCHID, sign, verify
from .notifier import Notification

NAME = "wechatpay"
SCHEME = "WECHATPAY2-SHA256-RSA2048"
TIMESTAMP_WINDOW_SECONDS = 300
# WeChat Pay retries a callback not answered 200/204 after 15s, 15s, 30s, 3m, 10m, 20m, 30m, 30m, 30m, 60m, 3h,
# 3h, 3h, 6h and 6h.
RETRY_SCHEDULE: tuple[float, ...] = (
    15,
    15,
    30,
    180,
    600,
    1200,
    1800,
    1800,
    1800,
    3600,
    10800,
    10800,
    10800,
    21600,
    21600,
)
REFUND_SETTLES_AFTER_SECONDS = 60.0  # PROCESSING -> SUCCESS, multiplied by --time-scale
TRADE_TYPES = {"native": "NATIVE", "jsapi": "JSAPI", "h5": "MWEB", "app": "APP"}
STATE_DESCRIPTIONS = {"NOTPAY": "订单未支付", "SUCCESS": "支付成功", "CLOSED": "已关闭", "REFUND": "转入退款"}
FEE_RATE = Decimal("0.006")
ALL_COLUMNS = [
    *("交易时间", "公众账号ID", "商户号", "特约商户号", "设备号", "微信订单号", "商户订单号", "用户标识", "交易类型"),
    *("交易状态", "付款银行", "货币种类", "应结订单金额", "代金券金额", "微信退款单号", "商户退款单号", "退款金额"),
    *("充值券退款金额", "退款类型", "退款状态", "商品名称", "商户数据包", "手续费", "费率", "订单金额", "申请退款金额"),
    "费率备注",
]
REFUND_ONLY = ("微信退款单号", "商户退款单号", "退款金额", "充值券退款金额", "退款类型", "退款状态", "申请退款金额")
SUCCESS_COLUMNS = [c for c in ALL_COLUMNS if c not in REFUND_ONLY]
REFUND_COLUMNS = [*ALL_COLUMNS[:14], "退款申请时间", "退款成功时间", *ALL_COLUMNS[14:]]
SUMMARY_ALL = [
    "总交易单数",
    "应结订单总金额",
    "退款总金额",
    "充值券退款总金额",
    "手续费总金额",
    "订单总金额",
    "申请退款总金额",
]
SUMMARY_SUCCESS = ["总交易单数", "应结订单总金额", "手续费总金额", "订单总金额"]
OUT_TRADE_NO = re.compile(r"[0-9A-Za-z_\-*|]{6,32}")


class WechatError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def fen_text(fen: int) -> str:
    return f"{Decimal(fen) / 100:.2f}"


def _fee(fen: int) -> Decimal:
    return (Decimal(fen) / 100 * FEE_RATE).quantize(Decimal("0.00001"), rounding=ROUND_HALF_UP)


@dataclass
class WechatRefund:
    out_refund_no: str
    refund_id: str
    amount: int
    created_at: datetime
    notify_url: str
    reason: str
    status: str = "PROCESSING"
    success_at: datetime | None = None


@dataclass
class WechatTrade:
    out_trade_no: str
    kind: str  # native, jsapi, h5, app
    appid: str
    description: str
    total: int  # fen
    notify_url: str
    attach: str
    openid: str
    code: str  # the pr= of the code_url and the cashier token
    prepay_id: str
    created_at: datetime
    expire_at: datetime | None
    state: str = "NOTPAY"
    transaction_id: str = ""
    success_at: datetime | None = None
    closed_at: datetime | None = None
    refunds: dict[str, WechatRefund] = field(default_factory=dict)

    @property
    def refunded(self) -> int:
        return sum(r.amount for r in self.refunds.values())


class WechatPaySim:
    """WeChat Pay's transactions, refunds, callbacks and bills, in memory."""

    name = NAME

    def __init__(self, context: Context) -> None:
        self.ctx = context
        self.trades: dict[str, WechatTrade] = {}
        self.by_code: dict[str, str] = {}
        self.bills: dict[str, bytes] = {}

    def router(self) -> APIRouter:
        router = APIRouter(include_in_schema=False)
        router.add_api_route("/v3/{path:path}", self.api, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
        return router

    # ------------------------------------------------------------ HTTP

    async def api(self, request: Request) -> Response:
        body = await request.body()
        try:
            self._authenticate(request, body)
            operation, out_trade_no = self._operation(request, body)
        except WechatError as e:
            return self._error(e)
        fault = self.ctx.faults.take(NAME, operation, out_trade_no)

        async def effect() -> Response:
            try:
                return self._dispatch(operation, request, body)
            except WechatError as e:
                return self._error(e)

        def unavailable() -> Response:
            return self._error(WechatError(500, "SYSTEM_ERROR", "系统错误"))

        return await with_fault(fault, request, effect, unavailable)

    def _authenticate(self, request: Request, body: bytes) -> None:
        header = request.headers.get("authorization", "")
        if not header.startswith(f"{SCHEME} "):
            raise WechatError(401, "SIGN_ERROR", "Authorization 缺失或认证类型不是 WECHATPAY2-SHA256-RSA2048")
        fields = dict(re.findall(r'(\w+)="([^"]*)"', header[len(SCHEME) + 1 :]))
        missing = [k for k in ("mchid", "nonce_str", "signature", "timestamp", "serial_no") if not fields.get(k)]
        if missing:
            raise WechatError(401, "SIGN_ERROR", f"Authorization 缺少 {', '.join(missing)}")
        if fields["mchid"] != WECHATPAY_MCHID:
            raise WechatError(400, "MCH_NOT_EXISTS", "商户号不存在")
        if fields["serial_no"].upper() != self.ctx.keys.wechatpay_cert_serial_no.upper():
            raise WechatError(401, "SIGN_ERROR", "商户证书序列号有误")
        if not fields["timestamp"].isdigit() or abs(time.time() - int(fields["timestamp"])) > TIMESTAMP_WINDOW_SECONDS:
            raise WechatError(401, "SIGN_ERROR", "请求时间戳已过期或无效")
        target = request.scope["raw_path"].decode("latin-1")
        if query := request.scope.get("query_string", b""):
            target += f"?{query.decode('latin-1')}"
        message = f"{request.method}\n{target}\n{fields['timestamp']}\n{fields['nonce_str']}\n"
        message += body.decode("utf-8", errors="replace") + "\n"
        if not verify(self.ctx.keys.wechatpay_merchant_public, message.encode(), fields["signature"]):
            raise WechatError(401, "SIGN_ERROR", "签名错误，请检查后再试")

    def _operation(self, request: Request, body: bytes) -> tuple[str, str | None]:
        """The operation a request names (for faults), and its out_trade_no when it names one."""
        path, method = request.url.path, request.method
        if method == "POST" and (m := re.fullmatch(r"/v3/pay/transactions/(native|jsapi|h5|app)", path)):
            return m.group(1), str(self._json(body).get("out_trade_no", "")) or None
        if method == "GET" and (m := re.fullmatch(r"/v3/pay/transactions/out-trade-no/([^/]+)", path)):
            return "query", m.group(1)
        if method == "GET" and re.fullmatch(r"/v3/pay/transactions/id/[^/]+", path):
            return "query", None
        if method == "POST" and (m := re.fullmatch(r"/v3/pay/transactions/out-trade-no/([^/]+)/close", path)):
            return "close", m.group(1)
        if method == "POST" and path == "/v3/refund/domestic/refunds":
            return "refund", str(self._json(body).get("out_trade_no", "")) or None
        if method == "GET" and re.fullmatch(r"/v3/refund/domestic/refunds/[^/]+", path):
            return "refund_query", None
        if method == "GET" and path == "/v3/bill/tradebill":
            return "bill", None
        if method == "GET" and path == "/v3/billdownload/file":
            return "bill_download", None
        raise WechatError(404, "RESOURCE_NOT_EXISTS", "请求的资源不存在")

    def _dispatch(self, operation: str, request: Request, body: bytes) -> Response:
        query = dict(parse_qsl(request.url.query, keep_blank_values=True))
        last = request.url.path.rstrip("/").split("/")[-1]
        if operation in TRADE_TYPES:
            return self._signed(200, self._prepay(operation, self._json(body), request))
        if operation == "query":
            self._require_mchid(query.get("mchid"))
            by_id = "/v3/pay/transactions/id/" in request.url.path
            return self._signed(
                200, self._transaction(self._find(last if not by_id else None, last if by_id else None))
            )
        if operation == "close":
            return self._close(request.url.path.split("/")[-2], self._json(body))
        if operation == "refund":
            return self._signed(200, self._refund(self._json(body)))
        if operation == "refund_query":
            refund = next(
                (r for t in self.trades.values() for r in t.refunds.values() if r.out_refund_no == last), None
            )
            if refund is None:
                raise WechatError(404, "RESOURCE_NOT_EXISTS", "退款单不存在")
            return self._signed(200, self._refund_view(self._trade_of(refund), refund))
        if operation == "bill":
            return self._signed(200, self._bill(query, request))
        data = self.bills.get(query.get("token", ""))
        if data is None:
            raise WechatError(404, "RESOURCE_NOT_EXISTS", "账单下载地址无效或已过期")
        return Response(data, media_type="application/octet-stream")

    @staticmethod
    def _json(body: bytes) -> dict[str, Any]:
        try:
            value = json.loads(body or b"{}")
        except ValueError:
            raise WechatError(400, "PARAM_ERROR", "请求体不是合法的 JSON") from None
        if not isinstance(value, dict):
            raise WechatError(400, "PARAM_ERROR", "请求体不是 JSON 对象")
        return value

    def _signature_headers(self, body: bytes) -> dict[str, str]:
        stamp, nonce = str(int(time.time())), token(32)
        message = f"{stamp}\n{nonce}\n{body.decode()}\n".encode()
        return {
            "Wechatpay-Timestamp": stamp,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature": sign(self.ctx.keys.wechatpay_platform_private, message),
            "Wechatpay-Serial": self.ctx.keys.wechatpay_public_key_id,
            "Wechatpay-Signature-Type": SCHEME,
        }

    def _signed(self, status: int, value: dict[str, Any] | None) -> Response:
        body = b"" if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
        headers = {**self._signature_headers(body), "Request-ID": uuid.uuid4().hex}
        return Response(body, status_code=status, headers=headers, media_type="application/json; charset=utf-8")

    def _error(self, e: WechatError) -> Response:
        return self._signed(e.status, {"code": e.code, "message": e.message})

    # ------------------------------------------------------------ transactions

    @staticmethod
    def _require_mchid(mchid: object) -> None:
        if mchid != WECHATPAY_MCHID:
            raise WechatError(400, "PARAM_ERROR", "mchid 与请求商户号不一致")

    def _prepay(self, kind: str, body: dict[str, Any], request: Request) -> dict[str, str]:
        self._require_mchid(body.get("mchid"))
        if body.get("appid") != WECHATPAY_APPID:
            raise WechatError(400, "APPID_MCHID_NOT_MATCH", "appid和mch_id不匹配")
        out_trade_no, description = str(body.get("out_trade_no", "")), str(body.get("description", ""))
        amount, notify_url = body.get("amount"), str(body.get("notify_url", ""))
        total = amount.get("total") if isinstance(amount, dict) else None
        if not OUT_TRADE_NO.fullmatch(out_trade_no):
            raise WechatError(400, "PARAM_ERROR", "out_trade_no 应为6-32位数字、大小写字母_-|*")
        if not description or len(description) > 127:
            raise WechatError(400, "PARAM_ERROR", "description 长度应为1-127")
        if not isinstance(total, int) or isinstance(total, bool) or total < 1:
            raise WechatError(400, "PARAM_ERROR", "amount.total 应为不小于1的整数（单位：分）")
        if isinstance(amount, dict) and amount.get("currency", "CNY") != "CNY":
            raise WechatError(400, "PARAM_ERROR", "amount.currency 仅支持 CNY")
        if not re.match(r"https?://", notify_url):
            raise WechatError(400, "PARAM_ERROR", "notify_url 应为 http(s) 地址")
        payer = body.get("payer") if isinstance(body.get("payer"), dict) else {}
        assert isinstance(payer, dict)
        if kind == "jsapi" and not payer.get("openid"):
            raise WechatError(400, "PARAM_ERROR", "JSAPI 下单需要 payer.openid")
        scene = body.get("scene_info") if isinstance(body.get("scene_info"), dict) else {}
        assert isinstance(scene, dict)
        if kind == "h5" and not (scene.get("payer_client_ip") and isinstance(scene.get("h5_info"), dict)):
            raise WechatError(400, "PARAM_ERROR", "H5 下单需要 scene_info.payer_client_ip 和 scene_info.h5_info")
        expire_at = None
        if body.get("time_expire"):
            try:
                expire_at = datetime.fromisoformat(str(body["time_expire"]))
            except ValueError:
                raise WechatError(400, "PARAM_ERROR", "time_expire 应为 RFC3339 格式") from None
            if expire_at.tzinfo is None:
                raise WechatError(400, "PARAM_ERROR", "time_expire 应带时区（RFC3339）")
        if (trade := self.trades.get(out_trade_no)) is not None:
            self._expire_if_due(trade, now())
            if trade.state in ("SUCCESS", "REFUND"):
                raise WechatError(400, "ORDERPAID", "该订单已支付")
            if trade.state == "CLOSED":
                raise WechatError(400, "ORDER_CLOSED", "订单已关闭")
            if (trade.kind, trade.total, trade.description) != (kind, total, description):
                raise WechatError(403, "OUT_TRADE_NO_USED", "商户订单号重复")
        else:
            created = now()
            trade = WechatTrade(
                out_trade_no=out_trade_no,
                kind=kind,
                appid=WECHATPAY_APPID,
                description=description,
                total=total,
                notify_url=notify_url,
                attach=str(body.get("attach", "")),
                openid=str(payer.get("openid", "")),
                code=token(11),
                prepay_id=f"wx{created:%d%H%M%S}{uuid.uuid4().hex[:26]}",
                created_at=created,
                expire_at=expire_at,
            )
            self.trades[out_trade_no] = trade
            self.by_code[trade.code] = out_trade_no
        if kind == "native":
            return {"code_url": f"weixin://wxpay/bizpayurl?pr={trade.code}"}
        if kind == "h5":
            return {"h5_url": f"{self.ctx.base_url(request)}/cashier/wechatpay/{trade.code}"}
        return {"prepay_id": trade.prepay_id}

    def _find(self, out_trade_no: str | None, transaction_id: str | None = None) -> WechatTrade:
        trade = self.trades.get(out_trade_no) if out_trade_no else None
        if transaction_id:
            trade = next((t for t in self.trades.values() if t.transaction_id == transaction_id), None)
        if trade is None:
            raise WechatError(404, "ORDER_NOT_EXIST", "订单不存在")
        self._expire_if_due(trade, now())
        return trade

    def _trade_of(self, refund: WechatRefund) -> WechatTrade:
        return next(t for t in self.trades.values() if refund.out_refund_no in t.refunds)

    @staticmethod
    def _transaction(trade: WechatTrade) -> dict[str, Any]:
        amount: dict[str, Any] = {"total": trade.total, "currency": "CNY"}
        view: dict[str, Any] = {
            "appid": trade.appid,
            "mchid": WECHATPAY_MCHID,
            "out_trade_no": trade.out_trade_no,
            "trade_type": TRADE_TYPES[trade.kind],
            "trade_state": trade.state,
            "trade_state_desc": STATE_DESCRIPTIONS[trade.state],
            "attach": trade.attach,
            "amount": amount,
        }
        if trade.success_at is not None:
            amount |= {"payer_total": trade.total, "payer_currency": "CNY"}
            view |= {
                "transaction_id": trade.transaction_id,
                "bank_type": "OTHERS",
                "success_time": rfc3339(trade.success_at),
                "payer": {"openid": trade.openid},
            }
        return view

    def _close(self, out_trade_no: str, body: dict[str, Any]) -> Response:
        self._require_mchid(body.get("mchid"))
        trade = self._find(out_trade_no)
        if trade.state in ("SUCCESS", "REFUND"):
            raise WechatError(400, "ORDERPAID", "订单已支付，不能关闭")
        if trade.state == "NOTPAY":
            trade.state, trade.closed_at = "CLOSED", now()
        return self._signed(204, None)

    def _expire_if_due(self, trade: WechatTrade, moment: datetime) -> None:
        if trade.state == "NOTPAY" and trade.expire_at is not None and moment >= trade.expire_at:
            trade.state, trade.closed_at = "CLOSED", moment

    # ------------------------------------------------------------ refunds

    def _refund(self, body: dict[str, Any]) -> dict[str, Any]:
        out_refund_no = str(body.get("out_refund_no", ""))
        amount = body.get("amount") if isinstance(body.get("amount"), dict) else {}
        assert isinstance(amount, dict)
        refund_fen, total_fen = amount.get("refund"), amount.get("total")
        if not out_refund_no or len(out_refund_no) > 64:
            raise WechatError(400, "PARAM_ERROR", "out_refund_no 长度应为1-64")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (refund_fen, total_fen)):
            raise WechatError(400, "PARAM_ERROR", "amount.refund 和 amount.total 应为不小于1的整数（单位：分）")
        assert isinstance(refund_fen, int)
        assert isinstance(total_fen, int)
        if not body.get("out_trade_no") and not body.get("transaction_id"):
            raise WechatError(400, "PARAM_ERROR", "out_trade_no 和 transaction_id 不能同时为空")
        try:
            trade = self._find(str(body.get("out_trade_no", "")) or None, str(body.get("transaction_id", "")) or None)
        except WechatError:
            raise WechatError(404, "RESOURCE_NOT_EXISTS", "订单不存在") from None
        if (earlier := trade.refunds.get(out_refund_no)) is not None:
            if earlier.amount != refund_fen:
                raise WechatError(400, "PARAM_ERROR", "同一退款单号的退款金额与原请求不一致")
            return self._refund_view(trade, earlier)
        if trade.success_at is None:
            raise WechatError(400, "INVALID_REQUEST", "订单未支付，不能退款")
        if total_fen != trade.total:
            raise WechatError(400, "PARAM_ERROR", "amount.total 与原订单金额不一致")
        if refund_fen > trade.total - trade.refunded:
            raise WechatError(400, "PARAM_ERROR", "申请退款金额超过订单可退金额")
        refund = WechatRefund(
            out_refund_no=out_refund_no,
            refund_id=f"503{digits(26)}",
            amount=refund_fen,
            created_at=now(),
            notify_url=str(body.get("notify_url", "")),
            reason=str(body.get("reason", "")),
        )
        trade.refunds[out_refund_no] = refund
        trade.state = "REFUND"
        delay = REFUND_SETTLES_AFTER_SECONDS * self.ctx.notifier.time_scale
        asyncio.get_running_loop().call_later(delay, self._settle, trade, refund)
        return self._refund_view(trade, refund)

    def _settle(self, trade: WechatTrade, refund: WechatRefund) -> None:
        refund.status, refund.success_at = "SUCCESS", now()
        if refund.notify_url:
            resource = {
                "mchid": WECHATPAY_MCHID,
                "out_trade_no": trade.out_trade_no,
                "transaction_id": trade.transaction_id,
                "out_refund_no": refund.out_refund_no,
                "refund_id": refund.refund_id,
                "refund_status": refund.status,
                "success_time": rfc3339(refund.success_at),
                "user_received_account": "支付用户零钱",
                "amount": {
                    "total": trade.total,
                    "refund": refund.amount,
                    "payer_total": trade.total,
                    "payer_refund": refund.amount,
                },
            }
            self._callback(trade, refund.notify_url, "REFUND.SUCCESS", "退款成功", "refund", resource)

    @staticmethod
    def _refund_view(trade: WechatTrade, refund: WechatRefund) -> dict[str, Any]:
        view: dict[str, Any] = {
            "refund_id": refund.refund_id,
            "out_refund_no": refund.out_refund_no,
            "transaction_id": trade.transaction_id,
            "out_trade_no": trade.out_trade_no,
            "channel": "ORIGINAL",
            "user_received_account": "支付用户零钱",
            "create_time": rfc3339(refund.created_at),
            "status": refund.status,
            "funds_account": "AVAILABLE",
            "amount": {
                "total": trade.total,
                "refund": refund.amount,
                "payer_total": trade.total,
                "payer_refund": refund.amount,
                "settlement_total": trade.total,
                "settlement_refund": refund.amount,
                "discount_refund": 0,
                "currency": "CNY",
                "refund_fee": 0,
            },
            "promotion_detail": [],
        }
        if refund.success_at is not None:
            view["success_time"] = rfc3339(refund.success_at)
        return view

    # ------------------------------------------------------------ callbacks

    def _callback(
        self, trade: WechatTrade, url: str, event: str, summary: str, original_type: str, resource: dict[str, Any]
    ) -> None:
        notification_id, created = str(uuid.uuid4()), rfc3339(now())
        nonce = token(12)
        plaintext = json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode()
        key = AESGCM(self.ctx.keys.wechatpay_apiv3_key.encode())
        ciphertext = b64encode(key.encrypt(nonce.encode(), plaintext, original_type.encode())).decode()
        envelope = {
            "id": notification_id,
            "create_time": created,
            "resource_type": "encrypt-resource",
            "event_type": event,
            "summary": summary,
            "resource": {
                "original_type": original_type,
                "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": ciphertext,
                "associated_data": original_type,
                "nonce": nonce,
            },
        }
        body = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()

        def render() -> tuple[dict[str, str], bytes]:  # the same body, signed anew for each attempt
            return {**self._signature_headers(body), "Content-Type": "application/json"}, body

        self.ctx.notifier.send(
            Notification(
                id=notification_id,
                provider=NAME,
                out_trade_no=trade.out_trade_no,
                event=event,
                url=url,
                render=render,
                accepted=lambda r: r.status_code in (200, 204),
                schedule=RETRY_SCHEDULE,
            )
        )

    # ------------------------------------------------------------ bills

    def _bill(self, query: dict[str, str], request: Request) -> dict[str, str]:
        bill_type = query.get("bill_type", "ALL")
        if bill_type not in ("ALL", "SUCCESS", "REFUND"):
            raise WechatError(400, "PARAM_ERROR", "bill_type 应为 ALL、SUCCESS 或 REFUND")
        try:
            day = date.fromisoformat(query.get("bill_date", ""))
        except ValueError:
            raise WechatError(400, "PARAM_ERROR", "bill_date 应为 YYYY-MM-DD") from None
        # WeChat Pay makes a day's bill the next morning; the simulator has today's ready at once, for tests.
        if day > now().date():
            raise WechatError(400, "NO_STATEMENT_EXIST", "账单文件不存在")
        text = self._bill_text(day, bill_type).encode()
        file_token = uuid.uuid4().hex
        self.bills[file_token] = gzip.compress(text) if query.get("tar_type") == "GZIP" else text
        return {
            "hash_type": "SHA1",
            "hash_value": hashlib.sha1(text).hexdigest(),  # noqa: S324 -- WeChat Pay's own choice of digest
            "download_url": f"{self.ctx.base_url(request)}/v3/billdownload/file?token={file_token}",
        }

    def _bill_entries(self, day: date) -> list[BillEntry]:
        entries = []
        for trade in self.trades.values():
            if trade.success_at is not None and bill_day(trade.success_at) == day:
                amount = Decimal(trade.total) / 100
                entries.append(BillEntry(trade.out_trade_no, "payment", amount, trade.success_at, trade))
            for refund in trade.refunds.values():
                if bill_day(refund.created_at) == day:
                    amount = Decimal(refund.amount) / 100
                    entries.append(BillEntry(trade.out_trade_no, "refund", amount, refund.created_at, (trade, refund)))
        entries = with_planted(entries, self.ctx.plants.of(NAME, day), day=day)
        return sorted(entries, key=lambda e: e.at)

    @staticmethod
    def _bill_row(entry: BillEntry) -> dict[str, str]:
        source = entry.source
        trade = source[0] if isinstance(source, tuple) else source
        refund = source[1] if isinstance(source, tuple) else None
        fen = int(entry.amount * 100)
        row = dict.fromkeys(REFUND_COLUMNS, "")
        row |= {
            "交易时间": cst_text(entry.at),
            "公众账号ID": WECHATPAY_APPID,
            "商户号": WECHATPAY_MCHID,
            "特约商户号": "0",
            "微信订单号": f"4200{digits(24)}",
            "商户订单号": entry.out_trade_no,
            "交易类型": "NATIVE",
            "付款银行": "OTHERS",
            "货币种类": "CNY",
            "代金券金额": "0.00",
            "充值券退款金额": "0.00",
            "费率": "0.60%",
        }
        if isinstance(trade, WechatTrade):
            row |= {
                "微信订单号": trade.transaction_id,
                "用户标识": trade.openid,
                "交易类型": TRADE_TYPES[trade.kind],
                "商品名称": trade.description,
                "商户数据包": trade.attach,
            }
        if entry.kind == "payment":
            return row | {
                "交易状态": "SUCCESS",
                "应结订单金额": fen_text(fen),
                "微信退款单号": "0",
                "商户退款单号": "0",
                "退款金额": "0.00",
                "手续费": f"{_fee(fen):.5f}",
                "订单金额": fen_text(fen),
                "申请退款金额": "0.00",
            }
        row |= {
            "交易状态": "REFUND",
            "应结订单金额": "0.00",
            "退款金额": fen_text(fen),
            "退款类型": "ORIGINAL",
            "退款状态": "SUCCESS",
            "手续费": f"{-_fee(fen):.5f}",
            "订单金额": "0.00",
            "申请退款金额": fen_text(fen),
            "退款申请时间": cst_text(entry.at),
        }
        if isinstance(refund, WechatRefund):
            row |= {
                "微信退款单号": refund.refund_id,
                "商户退款单号": refund.out_refund_no,
                "退款状态": refund.status,
                "退款成功时间": cst_text(refund.success_at) if refund.success_at else "",
            }
        else:
            row |= {"微信退款单号": f"503{digits(26)}", "商户退款单号": "planted"}
        return row

    def _bill_text(self, day: date, bill_type: str) -> str:
        """The trade bill as WeChat Pay writes it: header, rows, summary header, summary; values after a backtick."""
        entries = self._bill_entries(day)
        if bill_type == "SUCCESS":
            entries = [e for e in entries if e.kind == "payment"]
        elif bill_type == "REFUND":
            entries = [e for e in entries if e.kind == "refund"]
        rows = [self._bill_row(e) for e in entries]
        columns = {"ALL": ALL_COLUMNS, "SUCCESS": SUCCESS_COLUMNS, "REFUND": REFUND_COLUMNS}[bill_type]
        lines = [",".join(columns)]
        lines += [",".join(f"`{row[c]}" for c in columns) for row in rows]

        def total(column: str, digits_after: int = 2) -> str:
            value = sum((Decimal(row[column]) for row in rows), Decimal(0))
            return f"{value:.{digits_after}f}"

        summary = {
            "总交易单数": str(len(rows)),
            "应结订单总金额": total("应结订单金额"),
            "退款总金额": total("退款金额") if bill_type != "SUCCESS" else "",
            "充值券退款总金额": "0.00",
            "手续费总金额": total("手续费", 5),
            "订单总金额": total("订单金额"),
            "申请退款总金额": total("申请退款金额") if bill_type != "SUCCESS" else "",
        }
        summary_columns = SUMMARY_SUCCESS if bill_type == "SUCCESS" else SUMMARY_ALL
        lines.append(",".join(summary_columns))
        lines.append(",".join(f"`{summary[c]}" for c in summary_columns))
        return "\r\n".join(lines) + "\r\n"

    # ------------------------------------------------------------ the customer and the control API

    def cashier(self, cashier_token: str) -> CashierTrade | None:
        trade = self.trades.get(self.by_code.get(cashier_token, ""))
        if trade is None:
            return None
        self._expire_if_due(trade, now())
        return CashierTrade(
            provider=NAME,
            token=trade.code,
            merchant=f"provider-sim shop ({WECHATPAY_MCHID})",
            subject=trade.description,
            amount=Decimal(trade.total) / 100,
            out_trade_no=trade.out_trade_no,
            status=trade.state,
            payable=trade.state == "NOTPAY",
        )

    def return_url_after_pay(self, cashier_token: str) -> str | None:
        return None  # H5 returns through the page's own redirect_url, which the simulator does not model

    def pay(self, out_trade_no: str) -> PayOutcome:
        trade = self.trades.get(out_trade_no)
        if trade is None:
            return PayOutcome.NOT_FOUND
        self._expire_if_due(trade, now())
        if trade.success_at is not None:
            return PayOutcome.ALREADY_PAID
        if trade.state != "NOTPAY":
            return PayOutcome.CLOSED
        if self.ctx.faults.take(NAME, PAY, out_trade_no) is not None:
            return PayOutcome.DECLINED
        trade.state, trade.success_at = "SUCCESS", now()
        trade.transaction_id = f"4200{trade.success_at:%Y%m%d}{digits(16)}"
        trade.openid = trade.openid or f"o{token(27)}"
        resource = self._transaction(trade)
        self._callback(trade, trade.notify_url, "TRANSACTION.SUCCESS", "支付成功", "transaction", resource)
        return PayOutcome.PAID

    def abandon(self, out_trade_no: str) -> bool:
        return out_trade_no in self.trades

    def expire(self, out_trade_no: str) -> bool:
        trade = self.trades.get(out_trade_no)
        if trade is None or trade.state != "NOTPAY":
            return False
        trade.state, trade.closed_at = "CLOSED", now()
        return True

    def sweep(self, moment: datetime) -> None:
        for trade in list(self.trades.values()):
            self._expire_if_due(trade, moment)

    def view(self, out_trade_no: str) -> dict[str, Any] | None:
        trade = self.trades.get(out_trade_no)
        if trade is None:
            return None
        self._expire_if_due(trade, now())
        times = {"created_at": trade.created_at, "success_at": trade.success_at, "closed_at": trade.closed_at}
        return {
            "provider": NAME,
            "out_trade_no": trade.out_trade_no,
            "transaction_id": trade.transaction_id or None,
            "status": trade.state,
            "trade_type": TRADE_TYPES[trade.kind],
            "description": trade.description,
            "total": trade.total,
            "refunded": trade.refunded,
            "refunds": [
                {"out_refund_no": r.out_refund_no, "amount": r.amount, "status": r.status}
                for r in trade.refunds.values()
            ],
            **{k: rfc3339(v) if v else None for k, v in times.items()},
            "expire_at": rfc3339(trade.expire_at.astimezone(CST)) if trade.expire_at else None,
            "notify_url": trade.notify_url,
            "cashier_url": f"/cashier/wechatpay/{trade.code}",
            "notifications": self.ctx.notifier.of(NAME, trade.out_trade_no),
        }
