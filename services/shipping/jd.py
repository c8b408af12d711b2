"""JD Logistics over its LOP open platform (京东物流开放平台, ``POST {api}{path}``), a thin httpx client.

A request's body is a JSON array holding the one request object (``param_json``); the query carries ``app_key``,
``access_token``, ``timestamp`` (Beijing time), ``v=2.0``, ``algorithm=md5-salt`` and ``sign`` (:func:`lop_sign`:
the lower-hex MD5 of the parameters in name order, salted with the app secret on both ends). A reply is
``{"code": 0, "data": ...}`` or another code. An access token JD no longer accepts (``1001``) is refreshed with the
refresh token once and the call repeated once; tracking pushes come signed the same way (:func:`push_sign`).

Nothing else is retried: a timeout, a 5xx, a ``1099`` or an unreadable reply is
:class:`~services.shipping.carrier.CarrierUnavailable` (the outcome is unknown), and :func:`carrier.book` asks JD
what it holds under the order id before anything is booked again.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone
from typing import Any

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

BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")  # JD's times are Beijing time, without an offset
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
PUSH_WINDOW = timedelta(minutes=15)
VERSION = "2.0"

PRECHECK = "/ecap/v1/orders/precheck"
CREATE = "/ecap/v1/orders/create"
DETAILS = "/ecap/v1/orders/details/query"
CANCEL = "/ecap/v1/orders/cancel"
TRACE = "/ecap/v1/orders/trace/query"
REFRESH = "/oauth/refresh_token"

OK = "0"
SIGN_INVALID = "1000"
TOKEN_EXPIRED = "1001"  # noqa: S105  (a reply code, not a password)
BAD_REQUEST = "1002"
SYSTEM_ERROR = "1099"
DUPLICATE = "2001"  # 订单已存在
NOT_SERVED = "2002"  # 超区
NO_ORDER = "2003"
PICKED_UP = "2004"  # 已揽收不能取消
DATE_REFUSED = "2005"

PRODUCT_NEXT_DAY = "ed-m-0002"  # 特快送
PRODUCT_STANDARD = "ed-m-0001"  # 京东标快

# JD's trace states (and, when a step carries no state, its category) in the carriers' common milestones.
MILESTONES: dict[str, Milestone] = {
    "10": "PICKED_UP",
    "揽收": "PICKED_UP",
    "20": "IN_TRANSIT",
    "运输": "IN_TRANSIT",
    "30": "IN_TRANSIT",
    "分拣": "IN_TRANSIT",
    "40": "OUT_FOR_DELIVERY",
    "派送": "OUT_FOR_DELIVERY",
    "50": "DELIVERED",
    "签收": "DELIVERED",
    "90": "EXCEPTION",
    "异常": "EXCEPTION",
}
PUSH_OK = {"code": 0, "msg": "success"}
PUSH_FAILED = {"code": 1, "msg": "failed"}


def lop_sign(app_secret: str, params: Mapping[str, str]) -> str:
    """LOP's ``md5-salt`` signature: lower-hex MD5 of secret + every name and value in name order + secret.

    A call signs ``access_token``, ``app_key``, ``method`` (the path), ``param_json`` (the exact body),
    ``timestamp`` and ``v``; a push signs ``app_key``, ``param_json`` and ``timestamp``."""
    text = app_secret + "".join(name + params[name] for name in sorted(params)) + app_secret
    return hashlib.md5(text.encode("utf-8")).hexdigest()  # noqa: S324  (JD's algorithm)


def push_sign(app_secret: str, app_key: str, body: str, timestamp: str) -> str:
    """The sign of a tracking push: ``app_key``, ``param_json`` (the body) and ``timestamp``."""
    return lop_sign(app_secret, {"app_key": app_key, "param_json": body, "timestamp": timestamp})


def beijing_time(text: str) -> datetime:
    return datetime.strptime(text.strip(), TIME_FORMAT).replace(tzinfo=BEIJING)


def beijing_now() -> str:
    return datetime.now(BEIJING).strftime(TIME_FORMAT)


def _promised(text: Any) -> date | None:
    """The day of a promised delivery time; None when JD said nothing readable (never fails a booking)."""
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        return date.fromisoformat(text.strip()[:10])
    except ValueError:
        return None


def trace_digest(*parts: str) -> str:
    """A step's id from what it says: a trace query's steps carry no ``traceId``, so a step pushed and then found
    by a query again must get the same id from its content (the push's ``traceId`` is not used)."""
    return "jd-" + hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:40]


def trace_step(item: Mapping[str, Any], waybill: str) -> TrackingStep:
    """One trace item of a query or a push as a tracking step (ValueError / KeyError / TypeError when malformed)."""
    state = str(item.get("state") or "")
    category = str(item.get("category") or "")
    operation_time = str(item["operationTime"])
    remark = str(item.get("operationRemark") or "")
    title = str(item.get("operationTitle") or "")
    return TrackingStep(
        step_id=trace_digest(waybill, state, category, operation_time, remark),
        milestone=MILESTONES.get(state) or MILESTONES.get(category),
        code=(state or category)[:64],
        at=beijing_time(operation_time),
        location=str(item.get("operationSite") or "")[:200],
        description=(remark or title)[:500],
    )


class _Reply:
    def __init__(self, code: str, message: str, data: Any) -> None:
        self.code = code
        self.message = message
        self.data = data


class JDLogistics:
    """JD Logistics (ECAP): precheck then create (ed-m-0002 特快送 for next-day, ed-m-0001 京东标快 otherwise),
    query, cancel, trace, pushes."""

    code: CarrierCode = "jd"
    name: str = "JD Logistics"

    def __init__(
        self,
        *,
        api_url: str,
        app_key: str,
        app_secret: str,
        access_token: str,
        refresh_token: str,
        customer_code: str,
        sender: Sender,
        timeout: float = 10.0,
        max_in_flight: int = 16,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.app_key = app_key
        self._app_secret = app_secret
        self._access_token = access_token
        self._refresh_token = refresh_token
        self.customer_code = customer_code
        self.sender = sender
        self.timeout = timeout
        self._http = http or carrier_http(timeout, max_in_flight)
        self._owns_http = http is None
        self._refreshing = asyncio.Lock()

    def __repr__(self) -> str:  # never the secret or the tokens
        return f"JDLogistics(api_url={self.api_url!r}, app_key={self.app_key!r})"

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def _post(self, operation: str, request: httpx.Request) -> dict[str, Any]:
        """Send; the decoded JSON object, or CarrierUnavailable (the URL, which holds the token, is never quoted)."""
        try:
            response = await self._http.send(request)
        except httpx.HTTPError as e:
            raise CarrierUnavailable(f"jd {operation}: {type(e).__name__}") from None
        if response.status_code != 200:
            raise CarrierUnavailable(f"jd {operation}: HTTP {response.status_code}")
        try:
            reply = response.json()
        except ValueError:
            raise CarrierUnavailable(f"jd {operation}: the reply could not be read") from None
        if not isinstance(reply, dict) or "code" not in reply:
            raise CarrierUnavailable(f"jd {operation}: the reply could not be read")
        return reply

    def _request(self, path: str, body: str) -> httpx.Request:
        timestamp = beijing_now()
        params = {
            "access_token": self._access_token,
            "app_key": self.app_key,
            "method": path,
            "param_json": body,
            "timestamp": timestamp,
            "v": VERSION,
        }
        query = {
            "app_key": self.app_key,
            "access_token": self._access_token,
            "timestamp": timestamp,
            "v": VERSION,
            "algorithm": "md5-salt",
            "sign": lop_sign(self._app_secret, params),
        }
        return self._http.build_request(
            "POST",
            self.api_url + path,
            params=query,
            content=body.encode("utf-8"),
            headers={"Content-Type": "application/json;charset=UTF-8"},
            timeout=self.timeout,
        )

    async def _call(self, path: str, order_id: str, request: Mapping[str, Any]) -> _Reply:
        """One signed call (refreshing an expired token once); JD's code and data, or CarrierUnavailable when there
        is no answer to rely on (gateway failures included)."""
        operation = path.removeprefix("/ecap/v1/orders/")
        body = json.dumps([request], ensure_ascii=False, separators=(",", ":"))
        with telemetry.tracer().start_as_current_span(
            f"jd {operation}",
            kind=telemetry.SpanKind.CLIENT,
            attributes={"order.id": order_id, "carrier.name": self.name, "carrier.operation": operation},
        ) as span:
            token = self._access_token
            reply = await self._post(operation, self._request(path, body))
            if str(reply.get("code")) == TOKEN_EXPIRED:
                # Refused at the gateway, before the call did anything: safe to repeat once with a fresh token.
                await self._refresh(token)
                reply = await self._post(operation, self._request(path, body))
            code = str(reply.get("code"))
            span.set_attribute("carrier.result_code", code)
            message = str(reply.get("msg") or "")[:200]
            if code in (SIGN_INVALID, TOKEN_EXPIRED, BAD_REQUEST, SYSTEM_ERROR):
                raise CarrierUnavailable(f"jd {operation}: gateway {code} {message}".rstrip())
            return _Reply(code, message, reply.get("data"))

    async def _refresh(self, stale: str) -> None:
        """A new access token from the refresh token (once per expiry, however many calls saw it expire)."""
        async with self._refreshing:
            if self._access_token != stale:
                return  # another call refreshed it meanwhile
            with telemetry.tracer().start_as_current_span(
                "jd refresh_token", kind=telemetry.SpanKind.CLIENT, attributes={"carrier.name": self.name}
            ):
                request = self._http.build_request(
                    "POST",
                    self.api_url + REFRESH,
                    data={
                        "app_key": self.app_key,
                        "app_secret": self._app_secret,
                        "refresh_token": self._refresh_token,
                    },
                    timeout=self.timeout,
                )
                reply = await self._post("refresh_token", request)
                data = reply.get("data")
                if str(reply.get("code")) != OK or not isinstance(data, dict) or not data.get("access_token"):
                    raise CarrierUnavailable(f"jd refresh_token: refused ({reply.get('code')})")
                self._access_token = str(data["access_token"])
                self._refresh_token = str(data.get("refresh_token") or self._refresh_token)
                log.info("jd access token refreshed", expires_in=data.get("expires_in"))

    @staticmethod
    def _unexpected(operation: str, reply: _Reply) -> CarrierUnavailable:
        return CarrierUnavailable(f"jd {operation}: error {reply.code} {reply.message}".rstrip())

    def _order_body(self, order: ParcelOrder) -> dict[str, Any]:
        s, a = self.sender, order.address
        body: dict[str, Any] = {
            "orderId": order.order_id,
            "orderOrigin": 1,
            "customerCode": self.customer_code,
            "senderContact": {
                "name": s.name,
                "mobile": s.phone,
                "fullAddress": " ".join(dict.fromkeys(p for p in (s.province, s.city, s.address) if p)),
                "postcode": s.postal_code,
            },
            "receiverContact": {
                "name": a.recipient,
                "mobile": order.recipient_phone,
                "fullAddress": " ".join(p for p in (a.city, a.line1, a.line2) if p),
                "postcode": a.postal_code,
            },
            "productsReq": {"productCode": PRODUCT_NEXT_DAY if order.option == "next_day" else PRODUCT_STANDARD},
        }
        if order.option == "scheduled" and order.scheduled_date is not None:
            body["expectDeliveryDate"] = order.scheduled_date.isoformat()
        return body

    @staticmethod
    def _refused(reply: _Reply) -> CarrierRejected | None:
        if reply.code == NOT_SERVED:
            return CarrierRejected("shipping_failed: JD Logistics does not deliver to this address")
        if reply.code == DATE_REFUSED:
            return CarrierRejected("shipping_failed: JD Logistics does not deliver on the scheduled date")
        return None

    async def create(self, order: ParcelOrder) -> Waybill:
        body = self._order_body(order)
        check = await self._call(PRECHECK, order.order_id, body)
        if refused := self._refused(check):
            raise refused
        if check.code != OK:
            raise self._unexpected("precheck", check)
        if isinstance(check.data, dict) and check.data.get("serviceable") is False:
            raise CarrierRejected("shipping_failed: JD Logistics does not deliver to this address")
        request = {**body, "settleType": 3, "cargoes": [{"name": order.contents, "quantity": 1}]}
        reply = await self._call(CREATE, order.order_id, request)
        if reply.code == DUPLICATE:
            raise CarrierDuplicate(f"jd create: order {order.order_id} is already held ({DUPLICATE})")
        if refused := self._refused(reply):
            raise refused
        if reply.code != OK:
            raise self._unexpected("create", reply)
        data = reply.data if isinstance(reply.data, dict) else {}
        if not data.get("waybillCode"):
            raise CarrierUnavailable("jd create: the reply carries no waybill number")
        return Waybill(
            tracking_number=str(data["waybillCode"]), promised_date=_promised(data.get("deliveryPromiseTime"))
        )

    async def query(self, order_id: str) -> Waybill | None:
        reply = await self._call(DETAILS, order_id, {"orderId": order_id})
        if reply.code == NO_ORDER:
            return None
        if reply.code != OK:
            raise self._unexpected("details/query", reply)
        data = reply.data if isinstance(reply.data, dict) else {}
        if not data.get("waybillCode"):
            raise CarrierUnavailable("jd query: the order is held without a waybill number")
        return Waybill(
            tracking_number=str(data["waybillCode"]),
            promised_date=_promised(data.get("deliveryPromiseTime")),
            cancelled=data.get("orderStatus") == "cancelled",
        )

    async def cancel(self, order_id: str, tracking_number: str) -> None:
        request = {"orderId": order_id, "waybillCode": tracking_number, "cancelReason": "order cancelled"}
        reply = await self._call(CANCEL, order_id, request)
        if reply.code == PICKED_UP:
            raise CarrierRefused("picked_up")
        if reply.code == NO_ORDER:
            log.warning("jd cancel: no such order at JD; nothing to call back", order_id=order_id)
            return
        if reply.code != OK:
            raise self._unexpected("cancel", reply)
        if not isinstance(reply.data, dict) or reply.data.get("result") is not True:
            raise CarrierUnavailable("jd cancel: not confirmed (result is not true)")

    async def routes(self, order_id: str, tracking_number: str) -> list[TrackingStep]:
        reply = await self._call(TRACE, order_id, {"waybillCode": tracking_number})
        if reply.code == NO_ORDER:
            return []
        if reply.code != OK:
            raise self._unexpected("trace/query", reply)
        data = reply.data if isinstance(reply.data, dict) else {}
        try:
            return [trace_step(item, tracking_number) for item in data.get("traceDetails") or []]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise CarrierUnavailable("jd trace/query: the reply could not be read") from None

    def parse_push(self, body: bytes, content_type: str, query: Mapping[str, str]) -> list[Pushed]:
        app_key, timestamp, given = query.get("app_key", ""), query.get("timestamp", ""), query.get("sign", "")
        if not app_key or not timestamp or not given:
            raise InvalidPush("app_key, timestamp or sign missing")
        if app_key != self.app_key:
            raise InvalidPush("app_key is not ours")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidPush("not a UTF-8 body") from None
        expected = push_sign(self._app_secret, app_key, text, timestamp)
        if not hmac.compare_digest(expected.encode(), given.strip().lower().encode()):
            raise InvalidPush("sign did not verify")
        try:
            sent_at = beijing_time(timestamp)
        except ValueError:
            raise InvalidPush("malformed timestamp") from None
        if abs(datetime.now(BEIJING) - sent_at) > PUSH_WINDOW:
            raise InvalidPush("timestamp is outside the replay window")
        try:
            push = json.loads(text)
            waybill = str(push["waybillCode"])
            steps = [trace_step(item, waybill) for item in push.get("traceDetails") or []]
            order_id = str(push.get("orderId") or "") or None
        except (KeyError, TypeError, ValueError, AttributeError):
            raise InvalidPush("the body is not a trace push") from None
        if not waybill or not steps:
            raise InvalidPush("no waybill or no trace in the push")
        return [Pushed(order_id=order_id, tracking_number=waybill, steps=steps)]

    def push_reply(self, *, ok: bool) -> tuple[bytes, str]:
        return json.dumps(PUSH_OK if ok else PUSH_FAILED, separators=(",", ":")).encode("utf-8"), "application/json"
