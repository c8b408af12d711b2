"""SF Express's open platform (丰桥), ``POST /std/service``, as SF's own SDKs and the shipping service's client use it.

Requests are UTF-8 forms: ``partnerID``, ``requestID``, ``serviceCode``, ``timestamp`` (ms), ``msgData`` (a JSON
text) and ``msgDigest = base64(md5(URLEncoder.encode(msgData + timestamp + checkWord, "UTF-8")))``. Java's
URLEncoder keeps only letters, digits and ``.-*_`` and writes a space as ``+``: unlike Python's ``quote_plus`` it
encodes ``~`` and keeps ``*``, so a digest made with ``quote_plus`` alone fails on a ``~`` or ``*`` in the
message. The platform checks the parameters (A1001), the partner and the service (A1004), the timestamp's 15
minutes (A1002) and the digest (A1006) before the service sees the request; then it answers A1000 with the
service's result, a JSON text in ``apiResultData``: ``{"success", "errorCode", "errorMsg", "msgData"}``.

Route pushes go to the account's registered URL as forms: ``msgData`` (``{"WaybillRoute": [route]}``),
``timestamp`` and ``msgDigest``, digested the same way with the same checkWord. The merchant answers
``{"return_code": "0000", ...}``; anything else, or no answer, and SF pushes the route again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from datetime import date, datetime, timedelta
from datetime import time as clock
from typing import Any
from urllib.parse import parse_qsl, quote_plus, urlencode

import httpx
from fastapi import APIRouter, Request
from starlette.responses import PlainTextResponse, Response

from .clock import CST, cst_text, now
from .core import Context, digits, with_fault
from .keys import SF_MONTHLY_CARD, SF_PARTNER_ID
from .parcels import EXCEPTION_STEP, Parcel, Parcels, Pusher, Route

NAME = "sf"
PATH = "/std/service"
CREATE_ORDER = "EXP_RECE_CREATE_ORDER"
SEARCH_ORDER = "EXP_RECE_SEARCH_ORDER_RESP"
UPDATE_ORDER = "EXP_RECE_UPDATE_ORDER"
SEARCH_ROUTES = "EXP_RECE_SEARCH_ROUTES"
SERVICES = (CREATE_ORDER, SEARCH_ORDER, UPDATE_ORDER, SEARCH_ROUTES)
# Short names a fault may be asked for by (the serviceCode itself works too).
ALIASES = {"create": CREATE_ORDER, "query": SEARCH_ORDER, "cancel": UPDATE_ORDER, "routes": SEARCH_ROUTES}
COMMON_PARAMETERS = ("partnerID", "requestID", "serviceCode", "timestamp", "msgData", "msgDigest")
TIMESTAMP_WINDOW_MS = 15 * 60 * 1000
API_MESSAGES = {
    "A1000": "",
    "A1001": "必传参数不可为空",
    "A1002": "请求时效已过期",
    "A1004": "无对应服务权限",
    "A1006": "数字签名无效",
    "A1099": "系统异常",
}

# Business error codes (apiResultData.errorCode).
DUPLICATE_ORDER = "8016"  # 重复下单
NOT_SERVED = "8114"  # 超范围
NO_ORDER = "8152"  # 订单不存在
PICKED_UP = "8252"  # 已揽收不能取消
DATE_REFUSED = "8196"  # 指定送达日期不可用
INVALID = "8000"  # 报文参数不合法 (a field missing or malformed; the checks SF names by number come first)
SENDER_ADDRESS, SENDER_CONTACT, SENDER_TEL = "1010", "1011", "1012"
RECIPIENT_ADDRESS, RECIPIENT_CONTACT, RECIPIENT_TEL = "1014", "1015", "1016"
UNDELIVERABLE_POSTCODE = "000000"  # the sandbox rule kept: this postal code is outside every delivery area
EXPRESS_TYPES = {1: "顺丰特快", 2: "顺丰标快"}
SCHEDULED_DAYS = range(1, 15)  # specifyDeliveryDate: 1..14 days after the order's day
CITY_CODES = {
    "北京": "010",
    "上海": "021",
    "天津": "022",
    "重庆": "023",
    "广州": "020",
    "深圳": "755",
    "杭州": "571",
    "南京": "025",
    "苏州": "512",
    "武汉": "027",
    "成都": "028",
    "西安": "029",
}
# Route step (its place on parcels.SCHEDULE) -> opCode, remark, where it happens (the sender's or recipient's city).
ROUTE_WORDS: dict[int, tuple[str, str, str]] = {
    0: ("50", "顺丰速运 已收取快件", "origin"),
    1: ("30", "快件在【{origin}集散中心】完成分拣，准备发往【{dest}集散中心】", "origin"),
    2: ("31", "快件到达【{dest}集散中心】", "dest"),
    3: ("44", "快件交给快递员，正在派送途中", "dest"),
    4: ("80", "已签收，感谢使用顺丰，期待再次为您服务", "dest"),
    EXCEPTION_STEP: ("33", "派件异常，快件将再次派送", "dest"),
}


def operation_name(operation: str) -> str:
    return ALIASES.get(operation, operation)


def java_urlencode(text: str) -> str:
    """``java.net.URLEncoder.encode(text, "UTF-8")``: letters, digits and ``.-*_`` kept, space ``+``, every other
    character %XX (upper-case hex) of its UTF-8 bytes -- ``~`` too, which Python's quote_plus would keep."""
    return quote_plus(text, safe="*").replace("~", "%7E")


def msg_digest(msg_data: str, timestamp: str, checkword: str) -> str:
    """SF's msgDigest: base64 of the raw MD5 of the UTF-8 bytes of URLEncoder.encode(msgData+timestamp+checkWord)."""
    encoded = java_urlencode(msg_data + timestamp + checkword)
    return base64.b64encode(hashlib.md5(encoded.encode()).digest()).decode()  # noqa: S324 -- SF's own choice


class ApiError(Exception):
    """A refusal by the platform itself, before the service: apiResultCode A1001..A1099, no apiResultData."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class SfError(Exception):
    """A business failure: ``success: false`` with an errorCode and errorMsg."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code, self.message = code, message


REFUSALS = {
    CREATE_ORDER: SfError(NOT_SERVED, "超范围：收件地址不在顺丰收派范围内"),
    UPDATE_ORDER: SfError(PICKED_UP, "已揽收不能取消"),
    SEARCH_ORDER: SfError(NO_ORDER, "订单不存在"),
    SEARCH_ROUTES: SfError(NO_ORDER, "订单不存在"),
}


def _city(contact: dict[str, Any]) -> str:
    return str(contact.get("city") or contact.get("province") or "")


def _city_code(city: str, default: str) -> str:
    return next((code for name, code in CITY_CODES.items() if name in city), default)


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def accepted(response: httpx.Response) -> bool:
    """SF's rule for a push the merchant has taken: HTTP 200 and ``return_code`` ``0000``."""
    if response.status_code != 200:
        return False
    try:
        reply = response.json()
    except ValueError:
        return False
    return isinstance(reply, dict) and reply.get("return_code") == "0000"


class SfSim:
    """SF Express's orders, routes and route pushes for one monthly-settlement account."""

    name = NAME

    def __init__(self, context: Context, *, pusher: Pusher, time_scale: float, push_url: str | None) -> None:
        self.ctx = context
        self.pusher = pusher
        self.push_url = push_url
        self.parcels = Parcels(NAME, time_scale=time_scale, pusher=pusher, describe=self._route, on_route=self._push)

    def router(self) -> APIRouter:
        router = APIRouter(include_in_schema=False)
        router.add_api_route(PATH, self.service, methods=["POST"])
        return router

    # ------------------------------------------------------------ HTTP

    async def service(self, request: Request) -> Response:
        form = self._form(request, await request.body())
        try:
            service_code = self._authenticate(form)
        except ApiError as e:
            return self._reply(e.code)
        try:
            msg = json.loads(form["msgData"])
        except ValueError:
            msg = None
        msg = msg if isinstance(msg, dict) else None
        fault = self.ctx.faults.take(NAME, service_code, self._order_of(service_code, msg))

        async def effect() -> Response:
            if fault is not None and fault.kind == "refuse":
                return self._reply("A1000", self._failure(REFUSALS[service_code]))
            return self._reply("A1000", self._result(service_code, msg))

        def unavailable() -> Response:
            return PlainTextResponse("503 Service Temporarily Unavailable", status_code=503)

        return await with_fault(fault, request, effect, unavailable)

    @staticmethod
    def _form(request: Request, body: bytes) -> dict[str, str]:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/x-www-form-urlencoded":
            return {}
        return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))

    def _authenticate(self, form: dict[str, str]) -> str:
        """The serviceCode of a request the platform lets through; ApiError otherwise."""
        if any(not form.get(name) for name in COMMON_PARAMETERS):
            raise ApiError("A1001")
        if form["partnerID"] != SF_PARTNER_ID or form["serviceCode"] not in SERVICES:
            raise ApiError("A1004")
        stamp = form["timestamp"]
        if not stamp.isdigit() or abs(time.time() * 1000 - int(stamp)) > TIMESTAMP_WINDOW_MS:
            raise ApiError("A1002")
        expected = msg_digest(form["msgData"], stamp, self.ctx.keys.sf_checkword)
        if not hmac.compare_digest(expected.encode(), form["msgDigest"].encode()):
            raise ApiError("A1006")
        return form["serviceCode"]

    def _order_of(self, service_code: str, msg: dict[str, Any] | None) -> str | None:
        """The order id a request is about (for faults)."""
        if msg is None:
            return None
        if service_code != SEARCH_ROUTES:
            return _text(msg.get("orderId")) or None
        numbers = self._tracking_numbers(msg)
        if not numbers:
            return None
        if _text(msg.get("trackingType")) == "2":
            return numbers[0]
        parcel = self.parcels.by_waybill(numbers[0])
        return parcel.order_id if parcel is not None else None

    @staticmethod
    def _reply(code: str, result: dict[str, Any] | None = None) -> Response:
        body: dict[str, Any] = {
            "apiResultCode": code,
            "apiErrorMsg": API_MESSAGES[code],
            "apiResponseID": uuid.uuid4().hex.upper(),
        }
        if result is not None:
            body["apiResultData"] = json.dumps(result, ensure_ascii=False, separators=(",", ":"))
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        return Response(content, media_type="application/json;charset=UTF-8")

    @staticmethod
    def _failure(error: SfError) -> dict[str, Any]:
        return {"success": False, "errorCode": error.code, "errorMsg": error.message, "msgData": None}

    def _result(self, service_code: str, msg: dict[str, Any] | None) -> dict[str, Any]:
        try:
            if msg is None:
                raise SfError(INVALID, "报文参数不合法：msgData 不是 JSON 对象")
            handler = {
                CREATE_ORDER: self._create,
                SEARCH_ORDER: self._search,
                UPDATE_ORDER: self._update,
                SEARCH_ROUTES: self._routes,
            }[service_code]
            data = handler(msg)
        except SfError as e:
            return self._failure(e)
        return {"success": True, "errorCode": "S0000", "errorMsg": None, "msgData": data}

    # ------------------------------------------------------------ services

    @staticmethod
    def _order_id(msg: dict[str, Any]) -> str:
        order_id = _text(msg.get("orderId"))
        if not order_id or len(order_id) > 64:
            raise SfError(INVALID, "报文参数不合法：orderId 应为1-64位")
        return order_id

    def _create(self, msg: dict[str, Any]) -> dict[str, Any]:
        order_id = self._order_id(msg)
        if order_id in self.parcels:
            raise SfError(DUPLICATE_ORDER, f"重复下单：客户订单号 {order_id} 已下单")
        contacts = msg.get("contactInfoList")
        contacts = [c for c in contacts if isinstance(c, dict)] if isinstance(contacts, list) else []
        sender: dict[str, Any] = next((c for c in contacts if _text(c.get("contactType")) == "1"), {})
        recipient: dict[str, Any] = next((c for c in contacts if _text(c.get("contactType")) == "2"), {})
        for contact, codes, who in (
            (sender, (SENDER_ADDRESS, SENDER_CONTACT, SENDER_TEL), "寄件"),
            (recipient, (RECIPIENT_ADDRESS, RECIPIENT_CONTACT, RECIPIENT_TEL), "到件"),
        ):
            if not _text(contact.get("address")):
                raise SfError(codes[0], f"{who}地址不能为空")
            if not _text(contact.get("contact")):
                raise SfError(codes[1], f"{who}联系人不能为空")
            if not (_text(contact.get("tel")) or _text(contact.get("mobile"))):
                raise SfError(codes[2], f"{who}电话不能为空")
        cargo = msg.get("cargoDetails")
        if not isinstance(cargo, list) or not cargo or not all(isinstance(c, dict) and c.get("name") for c in cargo):
            raise SfError(INVALID, "报文参数不合法：cargoDetails 应至少有一项托寄物（name）")
        express_type = _text(msg.get("expressTypeId", 1))
        if not express_type.isdigit() or int(express_type) not in EXPRESS_TYPES:
            raise SfError(INVALID, "报文参数不合法：expressTypeId 应为 1（顺丰特快）或 2（顺丰标快）")
        card = _text(msg.get("monthlyCard"))
        if card and card != SF_MONTHLY_CARD:
            raise SfError(INVALID, "月结卡号不存在或与顾客编码不匹配")
        if _text(recipient.get("postCode")) == UNDELIVERABLE_POSTCODE:
            raise SfError(NOT_SERVED, "超范围：收件地址不在顺丰收派范围内")
        ordered_on = now().date()
        scheduled = self._scheduled_date(msg.get("specifyDeliveryDate"), ordered_on)
        if scheduled is not None:
            promised = scheduled
        else:
            promised = ordered_on + timedelta(days=1 if int(express_type) == 1 else 2)
        waybill = self._new_waybill()
        origin, dest = _city(sender), _city(recipient)
        reply = {
            "orderId": order_id,
            "waybillNoInfoList": [{"waybillType": 1, "waybillNo": waybill}],
            "filterResult": 2,
            "originCode": _city_code(origin, "755"),
            "destCode": _city_code(dest, "010"),
            "promiseTime": cst_text(datetime.combine(promised, clock(18, 0), tzinfo=CST)),
        }
        details = {"request": msg, "reply": reply, "origin_city": origin, "dest_city": dest}
        self.parcels.create(order_id, waybill, details)
        return reply

    @staticmethod
    def _scheduled_date(value: object, ordered_on: date) -> date | None:
        if value is None or value == "":
            return None
        try:
            day = date.fromisoformat(_text(value)[:10])
        except ValueError:
            raise SfError(DATE_REFUSED, "指定送达日期格式不正确，应为 YYYY-MM-DD") from None
        if (day - ordered_on).days not in SCHEDULED_DAYS:
            raise SfError(DATE_REFUSED, "指定送达日期不可用：应在下单日后1至14天内")
        return day

    def _new_waybill(self) -> str:
        while True:
            waybill = f"SF{digits(13)}"
            if self.parcels.by_waybill(waybill) is None:
                return waybill

    def _found(self, order_id: str) -> Parcel:
        parcel = self.parcels.get(order_id)
        if parcel is None:
            raise SfError(NO_ORDER, "订单不存在")
        return parcel

    def _search(self, msg: dict[str, Any]) -> dict[str, Any]:
        order_id = self._order_id(msg)
        if _text(msg.get("searchType") or 1) != "1":  # 2 = 退货单: this account makes none
            raise SfError(NO_ORDER, "订单不存在")
        parcel = self._found(order_id)
        data = dict(parcel.details["reply"])
        if parcel.status == "cancelled":
            data["resStatus"] = 2
        return data

    def _update(self, msg: dict[str, Any]) -> dict[str, Any]:
        order_id = self._order_id(msg)
        deal_type = _text(msg.get("dealType"))
        if deal_type not in ("1", "2"):
            raise SfError(INVALID, "报文参数不合法：dealType 应为 1（确认）或 2（取消）")
        self._found(order_id)
        if deal_type == "2" and self.parcels.cancel(order_id) == "picked_up":
            raise SfError(PICKED_UP, "已揽收不能取消")
        return {"orderId": order_id, "resStatus": 2}

    @staticmethod
    def _tracking_numbers(msg: dict[str, Any]) -> list[str]:
        numbers = msg.get("trackingNumber")
        if isinstance(numbers, str):
            numbers = numbers.split(",")
        if not isinstance(numbers, list):
            return []
        return [n for n in (_text(v) for v in numbers) if n]

    def _routes(self, msg: dict[str, Any]) -> dict[str, Any]:
        tracking_type = _text(msg.get("trackingType") or 1)
        if tracking_type not in ("1", "2"):
            raise SfError(INVALID, "报文参数不合法：trackingType 应为 1（运单号）或 2（订单号）")
        numbers = self._tracking_numbers(msg)
        if not numbers:
            raise SfError(INVALID, "报文参数不合法：trackingNumber 不能为空")
        found = (self.parcels.by_waybill(n) if tracking_type == "1" else self.parcels.get(n) for n in numbers)
        return {
            "routeResps": [
                {"mailNo": p.waybill, "routes": [self._route(p, r) for r in p.routes]} for p in found if p is not None
            ]
        }

    # ------------------------------------------------------------ routes and their pushes

    @staticmethod
    def _route(parcel: Parcel, route: Route) -> dict[str, Any]:
        op_code, remark, where = ROUTE_WORDS[route.step]
        origin = parcel.details.get("origin_city") or "深圳市"
        dest = parcel.details.get("dest_city") or "北京市"
        return {
            "acceptTime": cst_text(route.at),
            "acceptAddress": origin if where == "origin" else dest,
            "remark": remark.format(origin=origin.removesuffix("市"), dest=dest.removesuffix("市")),
            "opCode": op_code,
        }

    def _push(self, parcel: Parcel, route: Route) -> None:
        if not self.push_url:
            return
        url, checkword = self.push_url, self.ctx.keys.sf_checkword
        item = {"id": route.id, "mailno": parcel.waybill, "orderid": parcel.order_id, **self._route(parcel, route)}
        msg_data = json.dumps({"WaybillRoute": [item]}, ensure_ascii=False, separators=(",", ":"))

        def render() -> tuple[str, dict[str, str], bytes]:  # the same route, digested anew for each attempt
            stamp = str(int(time.time() * 1000))
            form = {"msgData": msg_data, "timestamp": stamp, "msgDigest": msg_digest(msg_data, stamp, checkword)}
            headers = {"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"}
            return url, headers, urlencode(form).encode()

        self.pusher.send(NAME, parcel.order_id, route, render, accepted)
