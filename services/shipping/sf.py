"""SF Express over its open platform (丰桥, ``POST {api}/std/service``), a thin httpx client.

Every request is a form: ``partnerID``, ``requestID``, ``serviceCode``, ``timestamp`` (ms), ``msgData`` (a JSON
text) and ``msgDigest`` (:func:`msg_digest`: base64 of the MD5 of Java's URL encoding of msgData + timestamp +
checkword). A reply carries an API-level code (``A1000`` = the call went through) and, as a JSON text, the business
result (``S0000`` = done, else SF's error code). Route pushes come signed with the same digest and checkword.

Nothing here is retried: a timeout, a 5xx, an API-level failure or an unreadable reply is
:class:`~services.shipping.carrier.CarrierUnavailable` (the outcome is unknown), and :func:`carrier.book` asks SF what
it holds under the order id before anything is booked again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, quote_plus, urlencode

import httpx
import structlog

from services.shipping.carrier import (
    CarrierDuplicate,
    CarrierRefused,
    CarrierRejected,
    CarrierUnavailable,
    InvalidPush,
    ParcelOrder,
    Pushed,
    Sender,
    Waybill,
    carrier_http,
)
from shared import telemetry
from shared.events.shipping import CarrierCode, Milestone, TrackingStep

log = structlog.get_logger(__name__)

BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")  # SF's times are Beijing time, without an offset
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
PUSH_WINDOW = timedelta(minutes=15)

CREATE = "EXP_RECE_CREATE_ORDER"
SEARCH_ORDER = "EXP_RECE_SEARCH_ORDER_RESP"
UPDATE_ORDER = "EXP_RECE_UPDATE_ORDER"
SEARCH_ROUTES = "EXP_RECE_SEARCH_ROUTES"

API_OK = "A1000"
OK = "S0000"
DUPLICATE = "8016"  # 重复下单
NOT_SERVED = "8114"  # 超范围
NO_ORDER = "8152"  # 订单不存在
PICKED_UP = "8252"  # 已揽收不能取消
DATE_REFUSED = "8196"  # 指定的派送日期不被接受
CANCELLED = 2  # resStatus of a cancelled order; dealType 2 = cancel

# SF's route operation codes (opCode) in the carriers' common milestones; any other code is kept without one.
MILESTONES: dict[str, Milestone] = {
    "50": "PICKED_UP",  # 顺丰已收件
    "30": "IN_TRANSIT",  # 已从中转场发出
    "31": "IN_TRANSIT",  # 已到达中转场
    "36": "IN_TRANSIT",  # 在途（封车）
    "44": "OUT_FOR_DELIVERY",  # 正在派送途中
    "80": "DELIVERED",  # 已签收
    "70": "EXCEPTION",  # 派送失败
    "33": "EXCEPTION",  # 派件异常
}
PUSH_OK = {"return_code": "0000", "return_msg": "成功"}
PUSH_FAILED = {"return_code": "1000", "return_msg": "失败"}


def java_urlencode(text: str) -> str:
    """Java's ``URLEncoder.encode(text, "UTF-8")``: space -> ``+``, letters, digits and ``.-*_`` kept, every other
    character %XX (upper-case hex) of its UTF-8 bytes -- ``~`` included (Python keeps it), ``*`` not."""
    return quote_plus(text, safe="*").replace("~", "%7E")


def msg_digest(msg_data: str, timestamp: str, checkword: str) -> str:
    """``base64(md5(URLEncoder.encode(msgData + timestamp + checkword, "UTF-8")))``, as SF signs both ways."""
    encoded = java_urlencode(msg_data + timestamp + checkword)
    return base64.b64encode(hashlib.md5(encoded.encode("utf-8")).digest()).decode("ascii")  # noqa: S324  (SF's algorithm)


def beijing_time(text: str) -> datetime:
    """``YYYY-MM-DD HH:MM:SS`` in Beijing time, as an aware datetime."""
    return datetime.strptime(text.strip(), TIME_FORMAT).replace(tzinfo=BEIJING)


def _promised(text: Any) -> date | None:
    """The day of a promised delivery time; None when SF said nothing readable (never fails a booking)."""
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        return beijing_time(text[:19]).date()
    except ValueError:
        try:
            return date.fromisoformat(text.strip()[:10])
        except ValueError:
            return None


def route_digest(*parts: str) -> str:
    """A step's id from what it says: a route query's steps carry no id, so a step pushed and then found by a
    query again must get the same id from its content (the push's own ``id`` is not used)."""
    return "sf-" + hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:40]


def route_step(route: Mapping[str, Any], waybill: str) -> TrackingStep:
    """One route of a query or a push as a tracking step (ValueError / KeyError / TypeError when malformed)."""
    op_code = str(route.get("opCode") or "")
    accept_time = str(route["acceptTime"])
    remark = str(route.get("remark") or "")
    return TrackingStep(
        step_id=route_digest(waybill, op_code, accept_time, remark),
        milestone=MILESTONES.get(op_code),
        code=op_code[:64],
        at=beijing_time(accept_time),
        location=str(route.get("acceptAddress") or "")[:200],
        description=remark[:500],
    )


class _Result:
    """The business part of a reply: SF's error code (``S0000`` = done), its message and its msgData."""

    def __init__(self, code: str, message: str, data: dict[str, Any]) -> None:
        self.code = code
        self.message = message
        self.data = data


class SFExpress:
    """SF Express: book (expressTypeId 1 顺丰特快 for next-day, 2 顺丰标快 otherwise), query, cancel, routes, pushes."""

    code: CarrierCode = "sf"
    name: str = "SF Express"

    def __init__(
        self,
        *,
        api_url: str,
        partner_id: str,
        checkword: str,
        monthly_card: str,
        sender: Sender,
        timeout: float = 10.0,
        max_in_flight: int = 16,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = api_url.rstrip("/") + "/std/service"
        self.partner_id = partner_id
        self._checkword = checkword
        self.monthly_card = monthly_card
        self.sender = sender
        self.timeout = timeout
        self._http = http or carrier_http(timeout, max_in_flight)
        self._owns_http = http is None

    def __repr__(self) -> str:  # never the checkword
        return f"SFExpress(url={self.url!r}, partner_id={self.partner_id!r})"

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def _call(self, service: str, order_id: str, msg: Mapping[str, Any]) -> _Result:
        """One signed call; the business result, or CarrierUnavailable when there is none to rely on."""
        msg_data = json.dumps(msg, ensure_ascii=False, separators=(",", ":"))
        timestamp = str(int(time.time() * 1000))
        form = {
            "partnerID": self.partner_id,
            "requestID": str(uuid.uuid4()),
            "serviceCode": service,
            "timestamp": timestamp,
            "msgData": msg_data,
            "msgDigest": msg_digest(msg_data, timestamp, self._checkword),
        }
        with telemetry.tracer().start_as_current_span(
            f"sf {service}",
            kind=telemetry.SpanKind.CLIENT,
            attributes={"order.id": order_id, "carrier.name": self.name, "carrier.operation": service},
        ) as span:
            try:
                response = await self._http.post(
                    self.url,
                    content=urlencode(form).encode("ascii"),
                    headers={"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"},
                    timeout=self.timeout,
                )
            except httpx.HTTPError as e:
                raise CarrierUnavailable(f"sf {service}: {type(e).__name__}") from None
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code != 200:
                raise CarrierUnavailable(f"sf {service}: HTTP {response.status_code}")
            try:
                reply = response.json()
                api_code = str(reply.get("apiResultCode", ""))
                if api_code != API_OK:
                    raise CarrierUnavailable(
                        f"sf {service}: API {api_code or 'without a code'} {str(reply.get('apiErrorMsg') or '')[:200]}"
                    )
                raw = reply.get("apiResultData")
                result = json.loads(raw) if isinstance(raw, str | bytes) else raw
                if not isinstance(result, dict):
                    raise TypeError("apiResultData is not an object")
                code = str(result.get("errorCode") or "")
                data = result.get("msgData") or {}
                if not isinstance(data, dict):
                    raise TypeError("msgData is not an object")
            except (ValueError, TypeError, AttributeError):
                raise CarrierUnavailable(f"sf {service}: the reply could not be read") from None
            if result.get("success") is True and code in ("", OK):
                code = OK
            elif code in ("", OK):  # "success": false without an error code: nothing to rely on
                raise CarrierUnavailable(f"sf {service}: unsuccessful reply without an error code")
            span.set_attribute("carrier.result_code", code)
            return _Result(code, str(result.get("errorMsg") or "")[:200], data)

    def _unexpected(self, service: str, result: _Result) -> CarrierUnavailable:
        return CarrierUnavailable(f"sf {service}: error {result.code} {result.message}".rstrip())

    def _contacts(self, order: ParcelOrder) -> list[dict[str, Any]]:
        s, a = self.sender, order.address
        return [
            {
                "contactType": 1,
                "contact": s.name,
                "tel": s.phone,
                "country": "CN",
                "province": s.province,
                "city": s.city,
                "address": s.address,
                "postCode": s.postal_code,
            },
            {
                # Our address has no province: SF reads it from the city and the address text, as its docs allow.
                "contactType": 2,
                "contact": a.recipient,
                "tel": order.recipient_phone,
                "country": a.country,
                "city": a.city,
                "address": " ".join(part for part in (a.line1, a.line2) if part),
                "postCode": a.postal_code,
            },
        ]

    @staticmethod
    def _waybill(data: Mapping[str, Any]) -> str:
        numbers = [w for w in data.get("waybillNoInfoList") or [] if isinstance(w, dict) and w.get("waybillNo")]
        main = [w for w in numbers if str(w.get("waybillType", 1)) == "1"]
        return str((main or numbers)[0]["waybillNo"]) if numbers else ""

    async def create(self, order: ParcelOrder) -> Waybill:
        msg: dict[str, Any] = {
            "language": "zh-CN",
            "orderId": order.order_id,
            "monthlyCard": self.monthly_card,
            "expressTypeId": 1 if order.option == "next_day" else 2,
            "payMethod": 1,
            "isReturnRoutelabel": 0,
            "cargoDetails": [{"name": order.contents, "count": 1}],
            "contactInfoList": self._contacts(order),
        }
        if order.option == "scheduled" and order.scheduled_date is not None:
            msg["specifyDeliveryDate"] = order.scheduled_date.isoformat()
        result = await self._call(CREATE, order.order_id, msg)
        if result.code == DUPLICATE:
            raise CarrierDuplicate(f"sf create: order {order.order_id} is already held ({DUPLICATE})")
        if result.code == NOT_SERVED:
            raise CarrierRejected("shipping_failed: SF Express does not deliver to this address")
        if result.code == DATE_REFUSED:
            raise CarrierRejected("shipping_failed: SF Express does not deliver on the scheduled date")
        if result.code != OK:
            raise self._unexpected(CREATE, result)
        number = self._waybill(result.data)
        if not number:
            raise CarrierUnavailable("sf create: the reply carries no waybill number")
        return Waybill(tracking_number=number, promised_date=_promised(result.data.get("promiseTime")))

    async def query(self, order_id: str) -> Waybill | None:
        msg = {"orderId": order_id, "searchType": 1, "language": "zh-CN"}
        result = await self._call(SEARCH_ORDER, order_id, msg)
        if result.code == NO_ORDER:
            return None
        if result.code != OK:
            raise self._unexpected(SEARCH_ORDER, result)
        number = self._waybill(result.data)
        if not number:
            raise CarrierUnavailable("sf query: the order is held without a waybill number")
        return Waybill(
            tracking_number=number,
            promised_date=_promised(result.data.get("promiseTime")),
            cancelled=str(result.data.get("resStatus", "")) == str(CANCELLED),
        )

    async def cancel(self, order_id: str, tracking_number: str) -> None:
        result = await self._call(UPDATE_ORDER, order_id, {"orderId": order_id, "dealType": 2})
        if result.code == PICKED_UP:
            raise CarrierRefused("picked_up")
        if result.code == NO_ORDER:
            log.warning("sf cancel: no such order at SF; nothing to call back", order_id=order_id)
            return
        if result.code != OK:
            raise self._unexpected(UPDATE_ORDER, result)

    async def routes(self, order_id: str, tracking_number: str) -> list[TrackingStep]:
        msg = {"language": "zh-CN", "trackingType": 2, "trackingNumber": [order_id], "methodType": 1}
        result = await self._call(SEARCH_ROUTES, order_id, msg)
        if result.code == NO_ORDER:
            return []
        if result.code != OK:
            raise self._unexpected(SEARCH_ROUTES, result)
        steps: list[TrackingStep] = []
        try:
            for resp in result.data.get("routeResps") or []:
                mail_no = str(resp.get("mailNo") or tracking_number)
                if mail_no != tracking_number:
                    continue  # another parcel of the order (a child waybill): not the one we follow
                for route in resp.get("routes") or []:
                    steps.append(route_step(route, mail_no))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise CarrierUnavailable("sf routes: the reply could not be read") from None
        return steps

    def parse_push(self, body: bytes, content_type: str, query: Mapping[str, str]) -> list[Pushed]:
        try:
            fields = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True))
        except (UnicodeDecodeError, ValueError):
            raise InvalidPush("not a form-encoded UTF-8 body") from None
        msg_data, timestamp, given = fields.get("msgData"), fields.get("timestamp"), fields.get("msgDigest")
        if not msg_data or not timestamp or not given:
            raise InvalidPush("msgData, timestamp or msgDigest missing")
        expected = msg_digest(msg_data, timestamp, self._checkword)
        # A base64 "+" sent unencoded arrives as a space; base64 has no spaces, so reading it back loses nothing.
        if not hmac.compare_digest(expected.encode(), given.replace(" ", "+").encode()):
            raise InvalidPush("msgDigest did not verify")
        try:
            sent_at = datetime.fromtimestamp(int(timestamp) / 1000, BEIJING)
        except (ValueError, OverflowError, OSError):
            raise InvalidPush("malformed timestamp") from None
        if abs(datetime.now(BEIJING) - sent_at) > PUSH_WINDOW:
            raise InvalidPush("timestamp is outside the replay window")
        try:
            routes = json.loads(msg_data)["WaybillRoute"]
            parcels: dict[str, Pushed] = {}
            for route in routes:
                waybill = str(route["mailno"])
                step = route_step(route, waybill)
                order_id = str(route.get("orderid") or "") or None
                held = parcels.get(waybill)
                if held is None:
                    parcels[waybill] = Pushed(order_id=order_id, tracking_number=waybill, steps=[step])
                else:
                    parcels[waybill] = held.model_copy(
                        update={"order_id": held.order_id or order_id, "steps": [*held.steps, step]}
                    )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise InvalidPush("msgData is not a WaybillRoute list") from None
        if not parcels:
            raise InvalidPush("no route in the push")
        return list(parcels.values())

    def push_reply(self, *, ok: bool) -> tuple[bytes, str]:
        body = json.dumps(PUSH_OK if ok else PUSH_FAILED, ensure_ascii=False, separators=(",", ":"))
        return body.encode("utf-8"), "application/json"
