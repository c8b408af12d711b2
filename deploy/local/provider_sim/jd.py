"""JD Logistics' open platform (LOP, 京东物流开放平台): the ECAP order paths and the OAuth refresh, as JD's LOP SDKs
and the shipping service's client use them.

Requests: ``POST {path}?app_key=..&access_token=..&timestamp=..&v=2.0&algorithm=md5-salt&sign=..`` (``LOP-DN`` may
come too), the body a JSON array holding the one request object (``param_json``). ``sign`` is the lower-case hex
MD5 of the parameters ``access_token``, ``app_key``, ``method`` (the path), ``param_json`` (the body exactly as
sent), ``timestamp`` and ``v``, each name followed by its value, in that (sorted) order, "salted" with the app
secret at both ends; the LOP SDKs' other algorithms (``HMacMD5``/``HMacSHA1``/``HMacSHA256``/``HMacSHA512``:
base64 of the HMAC keyed by the secret over the same text) are accepted too. The timestamp is local time at the
offset of the ``lop-tz`` header (hours; Beijing's +8 without one) and must be within 15 minutes. The gateway
checks the parameters (1002), the app and the signature (1000), then the access token (1001: unknown, expired or
expired by a test through ``/control/jd/expire-token``), which the client renews at ``/oauth/refresh_token``
with its refresh token (the refresh token stays valid; each refresh issues a new access token for 24 hours).

Replies are HTTP 200 ``{"code": 0, "msg": "success", "success": true, "data": {...}, "requestId": ..}``, a
failure another code with its ``msg`` and ``data`` null. Tracking pushes go to the account's registered URL:
``POST {url}?app_key=..&timestamp=..&sign=..`` with a JSON body, ``sign`` the salted MD5 of ``app_key``,
``param_json`` (the body) and ``timestamp``; the merchant answers ``{"code": 0, ...}`` or JD pushes again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import date, datetime, timedelta, timezone
from datetime import time as clock
from typing import Any

import httpx
from fastapi import APIRouter, Request
from starlette.responses import PlainTextResponse, Response

from .clock import CST, cst_text, now
from .core import Context, digits, with_fault
from .keys import JD_APP_KEY, JD_CUSTOMER_CODE
from .parcels import EXCEPTION_STEP, Parcel, Parcels, Pusher, Route

NAME = "jd"
PREFIX = "/ecap/v1/orders/"
OPERATIONS = ("precheck", "create", "details/query", "cancel", "trace/query")
REFRESH_PATH = "/oauth/refresh_token"
REFRESH_OPERATION = "refresh_token"  # the operation a fault on the OAuth refresh is asked for by
COMMON_PARAMETERS = ("app_key", "access_token", "timestamp", "v", "algorithm", "sign")
VERSION = "2.0"
HMACS: dict[str, Callable[[], Any]] = {
    "HMacMD5": hashlib.md5,
    "HMacSHA1": hashlib.sha1,
    "HMacSHA256": hashlib.sha256,
    "HMacSHA512": hashlib.sha512,
}
ALGORITHMS = ("md5-salt", *HMACS)
TIMESTAMP_WINDOW = timedelta(minutes=15)
TOKEN_SECONDS = 86400

SUCCESS = 0
SIGN_INVALID, TOKEN_INVALID, BAD_PARAMETER, SYSTEM_ERROR = 1000, 1001, 1002, 1099
DUPLICATE_ORDER, NOT_SERVED, NO_ORDER, PICKED_UP, DATE_REFUSED = 2001, 2002, 2003, 2004, 2005
# JD's product codes: ed-m-0002 特快送 (express, next day), ed-m-0001 京东标快 (standard; scheduled
# deliveries go by it). Days to the promised delivery without a scheduled date.
PRODUCTS = {"ed-m-0002": ("特快送", 1), "ed-m-0001": ("京东标快", 2)}
UNDELIVERABLE_POSTCODE = "000000"  # the sandbox rule kept: this postal code is outside every delivery area
SCHEDULED_DAYS = range(1, 15)  # expectDeliveryDate: 1..14 days after the order's day
CITY = re.compile(r"[^省市区县自治]{2,4}市")
# Route step (its place on parcels.SCHEDULE) -> category, state, title, remark, where (sender's or recipient's city).
TRACE_WORDS: dict[int, tuple[str, str, str, str, str]] = {
    0: ("揽收", "10", "揽收完成", "您的快件已由京东快递员揽收", "origin"),
    1: ("分拣", "30", "分拣完成", "您的快件在【{origin}分拣中心】分拣完成，准备发往【{dest}分拣中心】", "origin"),
    2: ("运输", "20", "运输中", "您的快件已到达【{dest}分拣中心】", "dest"),
    3: ("派送", "40", "派送中", "您的快件正在派送中，请保持电话畅通", "dest"),
    4: ("签收", "50", "已签收", "您的快件已签收，感谢您使用京东物流", "dest"),
    EXCEPTION_STEP: ("异常", "90", "配送异常", "您的快件配送异常，将安排再次派送", "dest"),
}


def operation_name(operation: str) -> str:
    """A fault's operation: the path's last segment(s) (``create``, ``trace/query``); a full path works too."""
    return operation.removeprefix(PREFIX).strip("/")


def lop_sign(secret: str, params: Mapping[str, str], algorithm: str = "md5-salt") -> str:
    """LOP's signature: ``secret + name1 + value1 + name2 + value2 + ... + secret``, names sorted; lower-case hex
    MD5 for md5-salt, else base64 of that HMAC keyed by the secret."""
    content = (secret + "".join(f"{name}{params[name]}" for name in sorted(params)) + secret).encode()
    if algorithm == "md5-salt":
        return hashlib.md5(content).hexdigest()  # noqa: S324 -- JD's own choice
    return base64.b64encode(hmac.new(secret.encode(), content, HMACS[algorithm]).digest()).decode()


class JdError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code, self.message = code, message


REFUSALS = {
    "precheck": JdError(NOT_SERVED, "超区：收件地址不在京东物流配送范围内"),
    "create": JdError(NOT_SERVED, "超区：收件地址不在京东物流配送范围内"),
    "cancel": JdError(PICKED_UP, "订单已揽收，不能取消"),
    "details/query": JdError(NO_ORDER, "订单不存在"),
    "trace/query": JdError(NO_ORDER, "运单不存在"),
}


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def _city(address: str, default: str) -> str:
    found = CITY.search(address)
    return found.group(0) if found else default


def accepted(response: httpx.Response) -> bool:
    """JD's rule for a push the merchant has taken: HTTP 200 and ``code`` 0."""
    if response.status_code != 200:
        return False
    try:
        reply = response.json()
    except ValueError:
        return False
    return isinstance(reply, dict) and reply.get("code") in (0, "0")


def reply(code: int, msg: str, data: Any = None, *, status: int = 200) -> Response:
    body = {"code": code, "msg": msg, "success": code == SUCCESS, "data": data, "requestId": uuid.uuid4().hex}
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(content, status_code=status, media_type="application/json;charset=utf-8")


def unavailable() -> Response:
    return PlainTextResponse("503 Service Temporarily Unavailable", status_code=503)


class JdSim:
    """JD Logistics' orders, traces, OAuth tokens and tracking pushes for one merchant (customer code)."""

    name = NAME

    def __init__(self, context: Context, *, pusher: Pusher, time_scale: float, push_url: str | None) -> None:
        self.ctx = context
        self.pusher = pusher
        self.push_url = push_url
        self.parcels = Parcels(NAME, time_scale=time_scale, pusher=pusher, describe=self._trace, on_route=self._push)
        # access token -> when it expires (epoch seconds); the one in providers.env lasts until a test expires it.
        self.tokens: dict[str, float] = {context.keys.jd_access_token: math.inf}

    def router(self) -> APIRouter:
        router = APIRouter(include_in_schema=False)
        router.add_api_route(PREFIX + "{operation:path}", self.api, methods=["POST"])
        router.add_api_route(REFRESH_PATH, self.refresh, methods=["POST"])
        return router

    def expire_tokens(self) -> int:
        """Every access token issued so far stops working (the client's refresh path then has to run)."""
        expired = len(self.tokens)
        self.tokens.clear()
        return expired

    # ------------------------------------------------------------ HTTP

    async def api(self, request: Request, operation: str) -> Response:
        if operation not in OPERATIONS:
            return reply(BAD_PARAMETER, f"接口不存在：{request.url.path}", status=404)
        body = await request.body()
        try:
            text = body.decode("utf-8")
            self._authenticate(request, text)
            req = self._request(text)
        except UnicodeDecodeError:
            return reply(BAD_PARAMETER, "请求体应为 UTF-8 编码的 JSON")
        except JdError as e:
            return reply(e.code, e.message)
        fault = self.ctx.faults.take(NAME, operation, self._order_of(req))

        async def effect() -> Response:
            try:
                if fault is not None and fault.kind == "refuse":
                    raise REFUSALS[operation]
                return reply(SUCCESS, "success", self._dispatch(operation, req))
            except JdError as e:
                return reply(e.code, e.message)

        return await with_fault(fault, request, effect, unavailable)

    async def refresh(self, request: Request) -> Response:
        """``POST /oauth/refresh_token`` (form, or query): app_key, app_secret, refresh_token -> a new access token."""
        params = dict(request.query_params)
        if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            params |= {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        fault = self.ctx.faults.take(NAME, REFRESH_OPERATION, None)

        async def effect() -> Response:
            if fault is not None and fault.kind == "refuse":
                return reply(TOKEN_INVALID, "refresh_token 无效或已过期")
            if any(not params.get(k) for k in ("app_key", "app_secret", "refresh_token")):
                return reply(BAD_PARAMETER, "缺少参数：app_key、app_secret、refresh_token 均为必填")
            keys = self.ctx.keys
            if params["app_key"] != JD_APP_KEY or not hmac.compare_digest(params["app_secret"], keys.jd_app_secret):
                return reply(SIGN_INVALID, "app_key 或 app_secret 无效")
            if not hmac.compare_digest(params["refresh_token"], keys.jd_refresh_token):
                return reply(TOKEN_INVALID, "refresh_token 无效或已过期")
            access_token = uuid.uuid4().hex
            self.tokens[access_token] = time.time() + TOKEN_SECONDS
            data = {"access_token": access_token, "refresh_token": keys.jd_refresh_token, "expires_in": TOKEN_SECONDS}
            return reply(SUCCESS, "success", data)

        return await with_fault(fault, request, effect, unavailable)

    def _authenticate(self, request: Request, body: str) -> None:
        query = dict(request.query_params)
        if missing := [k for k in COMMON_PARAMETERS if not query.get(k)]:
            raise JdError(BAD_PARAMETER, f"缺少系统参数：{', '.join(missing)}")
        if query["v"] != VERSION:
            raise JdError(BAD_PARAMETER, "v 应为 2.0")
        if query["algorithm"] not in ALGORITHMS:
            raise JdError(BAD_PARAMETER, f"不支持的签名算法：{query['algorithm']}")
        if query["app_key"] != JD_APP_KEY:
            raise JdError(SIGN_INVALID, "app_key 不存在")
        self._check_time(query["timestamp"], request.headers.get("lop-tz"))
        secret = self.ctx.keys.jd_app_secret
        signed = {k: query[k] for k in ("access_token", "app_key", "timestamp", "v")}
        signed |= {"method": request.url.path, "param_json": body}
        if not hmac.compare_digest(lop_sign(secret, signed, query["algorithm"]), query["sign"]):
            raise JdError(SIGN_INVALID, "签名无效")
        if self.tokens.get(query["access_token"], 0.0) <= time.time():
            raise JdError(TOKEN_INVALID, "access_token 无效或已过期")

    @staticmethod
    def _check_time(stamp: str, lop_tz: str | None) -> None:
        try:
            zone = timezone(timedelta(hours=float(lop_tz))) if lop_tz else CST
            at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=zone)
        except ValueError:
            raise JdError(BAD_PARAMETER, "timestamp 应为 yyyy-MM-dd HH:mm:ss") from None
        if abs(now() - at) > TIMESTAMP_WINDOW:
            raise JdError(BAD_PARAMETER, "timestamp 与服务器时间相差超过15分钟")

    @staticmethod
    def _request(body: str) -> dict[str, Any]:
        try:
            value = json.loads(body)
        except ValueError:
            value = None
        if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict):
            raise JdError(BAD_PARAMETER, "请求体应为只含一个请求对象的 JSON 数组")
        request: dict[str, Any] = value[0]
        return request

    def _order_of(self, req: dict[str, Any]) -> str | None:
        """The order id a request is about (for faults)."""
        if order_id := _text(req.get("orderId")):
            return order_id
        parcel = self.parcels.by_waybill(_text(req.get("waybillCode")))
        return parcel.order_id if parcel is not None else None

    def _dispatch(self, operation: str, req: dict[str, Any]) -> dict[str, Any]:
        if operation == "precheck":
            self._check_shipment(req, now().date())
            return {"serviceable": True}
        if operation == "create":
            return self._create(req)
        if operation == "details/query":
            parcel = self._found(req)
            return {"orderId": parcel.order_id, "waybillCode": parcel.waybill, "orderStatus": parcel.status}
        if operation == "cancel":
            return self._cancel(req)
        traced = self.parcels.by_waybill(_text(req.get("waybillCode")))
        if traced is None:
            raise JdError(NO_ORDER, "运单不存在")
        return {"waybillCode": traced.waybill, "traceDetails": [self._trace(traced, r) for r in traced.routes]}

    # ------------------------------------------------------------ orders

    @staticmethod
    def _check_shipment(req: dict[str, Any], ordered_on: date) -> date:
        """What precheck and create both check; the promised delivery day."""
        sender = req.get("senderContact") if isinstance(req.get("senderContact"), dict) else {}
        receiver = req.get("receiverContact") if isinstance(req.get("receiverContact"), dict) else {}
        assert isinstance(sender, dict)
        assert isinstance(receiver, dict)
        if not _text(sender.get("fullAddress")):
            raise JdError(BAD_PARAMETER, "senderContact.fullAddress 不能为空")
        if not (_text(receiver.get("name")) and _text(receiver.get("fullAddress"))):
            raise JdError(BAD_PARAMETER, "receiverContact.name 和 receiverContact.fullAddress 不能为空")
        if not (_text(receiver.get("mobile")) or _text(receiver.get("phone"))):
            raise JdError(BAD_PARAMETER, "receiverContact.mobile 和 receiverContact.phone 不能同时为空")
        products = req.get("productsReq") if isinstance(req.get("productsReq"), dict) else {}
        assert isinstance(products, dict)
        product = PRODUCTS.get(_text(products.get("productCode")))
        if product is None:
            raise JdError(BAD_PARAMETER, f"productsReq.productCode 应为 {' 或 '.join(PRODUCTS)}")
        if _text(receiver.get("postcode")) == UNDELIVERABLE_POSTCODE:
            raise JdError(NOT_SERVED, "超区：收件地址不在京东物流配送范围内")
        expected = req.get("expectDeliveryDate")
        if expected is None or expected == "":
            return ordered_on + timedelta(days=product[1])
        try:
            day = date.fromisoformat(_text(expected)[:10])
        except ValueError:
            raise JdError(DATE_REFUSED, "expectDeliveryDate 应为 yyyy-MM-dd") from None
        if (day - ordered_on).days not in SCHEDULED_DAYS:
            raise JdError(DATE_REFUSED, "期望送达日期不可用：应在下单日后1至14天内")
        return day

    def _create(self, req: dict[str, Any]) -> dict[str, Any]:
        order_id = _text(req.get("orderId"))
        if not order_id or len(order_id) > 50:
            raise JdError(BAD_PARAMETER, "orderId 应为1-50位")
        if order_id in self.parcels:
            raise JdError(DUPLICATE_ORDER, f"订单已存在：{order_id}")
        if _text(req.get("customerCode")) != JD_CUSTOMER_CODE:
            raise JdError(BAD_PARAMETER, "customerCode 不存在或与应用未绑定")
        cargoes = req.get("cargoes")
        if not isinstance(cargoes, list) or not cargoes or not all(self._cargo(c) for c in cargoes):
            raise JdError(BAD_PARAMETER, "cargoes 应至少有一项货品（name，quantity 不小于1）")
        promised = self._check_shipment(req, now().date())
        waybill = self._new_waybill()
        data = {
            "waybillCode": waybill,
            "orderId": order_id,
            "deliveryPromiseTime": cst_text(datetime.combine(promised, clock(18, 0), tzinfo=CST)),
        }
        sender, receiver = req["senderContact"], req["receiverContact"]
        details = {
            "request": req,
            "reply": data,
            "origin_city": _city(_text(sender.get("fullAddress")), "上海市"),
            "dest_city": _city(_text(receiver.get("fullAddress")), "北京市"),
        }
        self.parcels.create(order_id, waybill, details)
        return data

    @staticmethod
    def _cargo(cargo: object) -> bool:
        if not isinstance(cargo, dict) or not _text(cargo.get("name")):
            return False
        quantity = cargo.get("quantity", 1)
        return isinstance(quantity, int) and not isinstance(quantity, bool) and quantity >= 1

    def _new_waybill(self) -> str:
        while True:
            waybill = f"JDV{digits(12)}"
            if self.parcels.by_waybill(waybill) is None:
                return waybill

    def _found(self, req: dict[str, Any]) -> Parcel:
        """The parcel a request names by orderId (or, without one, by waybillCode); 2003 when there is none, or
        when both are given and do not belong together."""
        order_id, waybill = _text(req.get("orderId")), _text(req.get("waybillCode"))
        if not order_id and not waybill:
            raise JdError(BAD_PARAMETER, "orderId 和 waybillCode 不能同时为空")
        parcel = self.parcels.get(order_id) if order_id else self.parcels.by_waybill(waybill)
        if parcel is None or (waybill and parcel.waybill != waybill):
            raise JdError(NO_ORDER, "订单不存在")
        return parcel

    def _cancel(self, req: dict[str, Any]) -> dict[str, Any]:
        parcel = self._found(req)
        if self.parcels.cancel(parcel.order_id) == "picked_up":
            raise JdError(PICKED_UP, "订单已揽收，不能取消")
        return {"result": True}

    # ------------------------------------------------------------ traces and their pushes

    @staticmethod
    def _trace(parcel: Parcel, route: Route) -> dict[str, Any]:
        category, state, title, remark, where = TRACE_WORDS[route.step]
        origin, dest = parcel.details["origin_city"], parcel.details["dest_city"]
        return {
            "category": category,
            "state": state,
            "operationTitle": title,
            "operationRemark": remark.format(origin=origin.removesuffix("市"), dest=dest.removesuffix("市")),
            "operationTime": cst_text(route.at),
            "operationSite": origin if where == "origin" else dest,
        }

    def _push(self, parcel: Parcel, route: Route) -> None:
        if not self.push_url:
            return
        url, secret = self.push_url, self.ctx.keys.jd_app_secret
        trace = {**self._trace(parcel, route), "traceId": route.id}
        content = {"waybillCode": parcel.waybill, "orderId": parcel.order_id, "traceDetails": [trace]}
        body = json.dumps(content, ensure_ascii=False, separators=(",", ":"))

        def render() -> tuple[str, dict[str, str], bytes]:  # the same trace, signed anew for each attempt
            stamp = cst_text(now())
            sign = lop_sign(secret, {"app_key": JD_APP_KEY, "param_json": body, "timestamp": stamp})
            query = httpx.QueryParams({"app_key": JD_APP_KEY, "timestamp": stamp, "sign": sign})
            target = f"{url}{'&' if '?' in url else '?'}{query}"
            return target, {"Content-Type": "application/json;charset=utf-8"}, body.encode()

        self.pusher.send(NAME, parcel.order_id, route, render, accepted)
