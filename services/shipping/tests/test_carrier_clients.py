"""The SF Express and JD Logistics clients against scripted replies (``httpx.MockTransport``): their signatures,
the carriers' codes mapped to milestones, and every reply mapped to the carrier errors the saga acts on."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest

from services.shipping import jd as jd_module
from services.shipping import sf as sf_module
from services.shipping.carrier import (
    CarrierDuplicate,
    CarrierError,
    CarrierRefused,
    CarrierRejected,
    CarrierUnavailable,
    InvalidPush,
    ParcelOrder,
    Sender,
    book,
)
from services.shipping.jd import JDLogistics, lop_sign, push_sign
from services.shipping.jd import trace_step as jd_trace_step
from services.shipping.sf import SFExpress, java_urlencode, msg_digest
from services.shipping.sf import route_step as sf_route_step
from shared.events.storefront import Address

CHECKWORD = "cw-SECRET-9f2"
APP_SECRET = "jd-SECRET-4b1"
ACCESS_TOKEN = "at-SECRET-1"
REFRESH_TOKEN = "rt-SECRET-1"
SECRETS = (CHECKWORD, APP_SECRET, ACCESS_TOKEN, REFRESH_TOKEN, "at-SECRET-2", "rt-SECRET-2")
BEIJING = sf_module.BEIJING
ADDRESS = Address(recipient="张三", line1="朝阳区建国路 1 号", city="北京市", postal_code="100000", country="CN")


def parcel(option: str = "standard", scheduled: date | None = None, order_id: str = "o-1") -> ParcelOrder:
    return ParcelOrder(
        order_id=order_id,
        recipient_phone="13800000000",
        option=option,
        address=ADDRESS,
        ordered_on=date(2026, 3, 2),
        scheduled_date=scheduled,
    )


def no_secret_in(error: BaseException) -> None:
    text = f"{error} {getattr(error, 'reason', '')} {error!r}"
    assert not any(secret in text for secret in SECRETS), text


Reply = httpx.Response | Callable[[httpx.Request], httpx.Response] | BaseException


@dataclass
class Script:
    """A carrier in a test: the replies per operation, in turn; every request kept."""

    key: Callable[[httpx.Request], str]
    replies: dict[str, list[Reply]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)

    def on(self, operation: str, *replies: Reply) -> Script:
        self.replies.setdefault(operation, []).extend(replies)
        return self

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        queue = self.replies.get(self.key(request), [])
        assert queue, f"no reply scripted for {self.key(request)}"
        reply = queue.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply(request) if callable(reply) else reply

    def calls(self, operation: str) -> list[httpx.Request]:
        return [r for r in self.requests if self.key(r) == operation]


# ---------------------------------------------------------------------------------------------------------- SF


def sf_form(request: httpx.Request) -> dict[str, str]:
    return dict(parse_qsl(request.content.decode("utf-8"), keep_blank_values=True))


def sf_key(request: httpx.Request) -> str:
    return sf_form(request)["serviceCode"]


def sf_reply(code: str = "S0000", data: dict[str, Any] | None = None, *, api: str = "A1000") -> httpx.Response:
    if api != "A1000":
        return httpx.Response(200, json={"apiResultCode": api, "apiErrorMsg": "refused", "apiResponseID": "r"})
    result = {
        "success": code == "S0000",
        "errorCode": code,
        "errorMsg": None if code == "S0000" else "x",
        "msgData": data,
    }
    return httpx.Response(
        200,
        json={"apiResultCode": api, "apiErrorMsg": "", "apiResponseID": "r", "apiResultData": json.dumps(result)},
    )


def sf_created(waybill: str = "SF1234567890123", **extra: Any) -> httpx.Response:
    data = {"orderId": "o-1", "waybillNoInfoList": [{"waybillType": 1, "waybillNo": waybill}], "filterResult": 2}
    return sf_reply(data={**data, **extra})


@pytest.fixture
def sf_script() -> Script:
    return Script(key=sf_key)


@pytest.fixture
async def sf(sf_script: Script) -> AsyncIterator[SFExpress]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(sf_script)) as http:
        yield SFExpress(
            api_url="https://sf.example/",
            partner_id="P1",
            checkword=CHECKWORD,
            monthly_card="7551234567",
            sender=Sender(),
            http=http,
        )


def test_msg_digest_matches_the_published_example() -> None:
    # 丰桥's own worked example of the digest (its "数字签名认证说明").
    msg = '{"language":"zh-CN","orderId":"QIAO-20200618-004"}'
    assert msg_digest(msg, "12312334453453", "fjcg5PGKaNpPSHFAZ4QsCOkV71R3zVci") == "IIKJtuLVzoFTu4kHI8M8vA=="


def test_urlencode_follows_java_urlencoder() -> None:
    # Java keeps letters, digits and .-*_ only: ~ is encoded (Python's quote keeps it), * is not, space is +.
    assert java_urlencode("a b~c*d.e-f_g") == "a+b%7Ec*d.e-f_g"
    assert java_urlencode("中+/!'()") == "%E4%B8%AD%2B%2F%21%27%28%29"


def test_msg_digest_over_space_tilde_star_and_chinese() -> None:
    msg = """{"remark":"a b~c*中文+/!'()"}"""
    encoded = "%7B%22remark%22%3A%22a+b%7Ec*%E4%B8%AD%E6%96%87%2B%2F%21%27%28%29%22%7D1700000000000cw%7E1"
    assert java_urlencode(msg + "1700000000000cw~1") == encoded
    expected = base64.b64encode(hashlib.md5(encoded.encode()).digest()).decode()
    assert expected == "AsU6+EiwK35aTeGxkqPXJQ=="
    assert msg_digest(msg, "1700000000000", "cw~1") == expected


@pytest.mark.parametrize(
    ("op_code", "milestone"),
    [
        ("50", "PICKED_UP"),
        ("30", "IN_TRANSIT"),
        ("31", "IN_TRANSIT"),
        ("36", "IN_TRANSIT"),
        ("44", "OUT_FOR_DELIVERY"),
        ("80", "DELIVERED"),
        ("70", "EXCEPTION"),
        ("33", "EXCEPTION"),
        ("607", None),
        ("", None),
    ],
)
def test_sf_op_codes_map_to_milestones(op_code: str, milestone: str | None) -> None:
    route = {"acceptTime": "2026-03-02 10:00:00", "opCode": op_code, "remark": "r", "acceptAddress": "深圳"}
    assert sf_module.route_step(route, "SF1").milestone == milestone


async def test_sf_create_sends_a_signed_order(sf: SFExpress, sf_script: Script) -> None:
    sf_script.on("EXP_RECE_CREATE_ORDER", sf_created(promiseTime="2026-03-03 18:00:00"))
    waybill = await sf.create(parcel("next_day"))
    assert waybill.tracking_number == "SF1234567890123"
    assert waybill.promised_date == date(2026, 3, 3)
    (request,) = sf_script.requests
    assert str(request.url) == "https://sf.example/std/service"
    assert request.headers["content-type"].startswith("application/x-www-form-urlencoded")
    form = sf_form(request)
    assert form["partnerID"] == "P1"
    assert abs(int(form["timestamp"]) - time.time() * 1000) < 60_000
    assert form["msgDigest"] == msg_digest(form["msgData"], form["timestamp"], CHECKWORD)
    msg = json.loads(form["msgData"])
    assert msg["orderId"] == "o-1"
    assert msg["monthlyCard"] == "7551234567"
    assert msg["expressTypeId"] == 1
    assert "specifyDeliveryDate" not in msg
    sender, recipient = msg["contactInfoList"]
    assert sender["contactType"] == 1
    assert sender["postCode"] == Sender().postal_code
    assert recipient == {
        "contactType": 2,
        "contact": "张三",
        "tel": "13800000000",
        "country": "CN",
        "city": "北京市",
        "address": "朝阳区建国路 1 号",
        "postCode": "100000",
    }


@pytest.mark.parametrize(
    ("option", "scheduled", "express_type", "specify"),
    [
        ("next_day", None, 1, None),
        ("standard", None, 2, None),
        ("scheduled", date(2026, 3, 9), 2, "2026-03-09"),
    ],
)
async def test_sf_express_type_by_option(
    sf: SFExpress, sf_script: Script, option: str, scheduled: date | None, express_type: int, specify: str | None
) -> None:
    sf_script.on("EXP_RECE_CREATE_ORDER", sf_created())
    waybill = await sf.create(parcel(option, scheduled))
    assert waybill.promised_date is None
    msg = json.loads(sf_form(sf_script.requests[0])["msgData"])
    assert msg["expressTypeId"] == express_type
    assert msg.get("specifyDeliveryDate") == specify


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (sf_reply("8016"), CarrierDuplicate),
        (sf_reply("8114"), CarrierRejected),
        (sf_reply("8196"), CarrierRejected),
        (sf_reply("8888"), CarrierUnavailable),  # a business code we do not know: the outcome is not known
        (sf_reply(data={"orderId": "o-1", "waybillNoInfoList": []}), CarrierUnavailable),  # no waybill number
        (sf_reply(api="A1099"), CarrierUnavailable),
        (sf_reply(api="A1006"), CarrierUnavailable),
        (sf_reply(api="A1002"), CarrierUnavailable),
        (httpx.Response(500, text="oops"), CarrierUnavailable),
        (httpx.Response(502), CarrierUnavailable),
        (httpx.Response(404, text="no"), CarrierUnavailable),
        (httpx.Response(200, text="<html>gateway</html>"), CarrierUnavailable),
        (httpx.Response(200, json=["not", "an", "object"]), CarrierUnavailable),
        (httpx.Response(200, json={"apiResultCode": "A1000", "apiResultData": "{broken"}), CarrierUnavailable),
        (httpx.Response(200, json={"apiResultCode": "A1000"}), CarrierUnavailable),
        (httpx.ReadTimeout("timed out"), CarrierUnavailable),
        (httpx.ConnectError("connection refused"), CarrierUnavailable),
    ],
)
async def test_sf_create_errors(sf: SFExpress, sf_script: Script, reply: Reply, error: type[CarrierError]) -> None:
    sf_script.on("EXP_RECE_CREATE_ORDER", reply)
    with pytest.raises(error) as raised:
        await sf.create(parcel())
    assert type(raised.value) is error
    assert len(sf_script.requests) == 1  # never retried inside the client
    no_secret_in(raised.value)
    if error is CarrierRejected:
        assert raised.value.reason.startswith("shipping_failed: ")


async def test_sf_rejections_say_why(sf: SFExpress, sf_script: Script) -> None:
    sf_script.on("EXP_RECE_CREATE_ORDER", sf_reply("8114"), sf_reply("8196"))
    with pytest.raises(CarrierRejected, match=r"^shipping_failed: SF Express does not deliver to this address$"):
        await sf.create(parcel())
    with pytest.raises(CarrierRejected, match=r"^shipping_failed: .*scheduled date$"):
        await sf.create(parcel("scheduled", date(2026, 4, 30)))


async def test_sf_query(sf: SFExpress, sf_script: Script) -> None:
    sf_script.on(
        "EXP_RECE_SEARCH_ORDER_RESP",
        sf_created("SF1"),
        sf_created("SF1", resStatus=2),
        sf_reply("8152"),
        sf_reply(api="A1099"),
    )
    held = await sf.query("o-1")
    assert held is not None
    assert (held.tracking_number, held.cancelled) == ("SF1", False)
    cancelled = await sf.query("o-1")
    assert cancelled is not None
    assert cancelled.cancelled
    assert await sf.query("o-1") is None
    with pytest.raises(CarrierUnavailable):
        await sf.query("o-1")
    msg = json.loads(sf_form(sf_script.requests[0])["msgData"])
    assert msg == {"orderId": "o-1", "searchType": 1, "language": "zh-CN"}


async def test_sf_cancel(sf: SFExpress, sf_script: Script) -> None:
    ok = sf_reply(data={"orderId": "o-1", "resStatus": 2})
    sf_script.on("EXP_RECE_UPDATE_ORDER", ok, ok, sf_reply("8252"), sf_reply("8152"), httpx.Response(503))
    await sf.cancel("o-1", "SF1")
    await sf.cancel("o-1", "SF1")  # a cancelled order cancelled again: fine
    with pytest.raises(CarrierRefused) as refused:
        await sf.cancel("o-1", "SF1")
    assert refused.value.reason == "picked_up"
    await sf.cancel("o-1", "SF1")  # SF holds no such order: nothing to call back
    with pytest.raises(CarrierUnavailable):
        await sf.cancel("o-1", "SF1")
    assert json.loads(sf_form(sf_script.requests[0])["msgData"]) == {"orderId": "o-1", "dealType": 2}


ROUTES = [
    {"acceptTime": "2026-03-02 10:00:00", "acceptAddress": "深圳市", "remark": "顺丰已收件", "opCode": "50"},
    {"acceptTime": "2026-03-02 14:30:00", "acceptAddress": "深圳中转场", "remark": "快件在中转", "opCode": "31"},
    {"acceptTime": "2026-03-03 09:00:00", "acceptAddress": "北京市", "remark": "正在派送途中", "opCode": "44"},
    {"acceptTime": "2026-03-03 11:00:00", "acceptAddress": "北京市", "remark": "已签收", "opCode": "80"},
    {"acceptTime": "2026-03-03 11:05:00", "acceptAddress": "北京市", "remark": "其它", "opCode": "8000"},
]


async def test_sf_routes(sf: SFExpress, sf_script: Script) -> None:
    data = {"routeResps": [{"mailNo": "SF1", "routes": ROUTES}, {"mailNo": "SF2", "routes": ROUTES[:1]}]}
    sf_script.on("EXP_RECE_SEARCH_ROUTES", sf_reply(data=data), sf_reply(data=data))
    steps = await sf.routes("o-1", "SF1")
    assert [s.milestone for s in steps] == ["PICKED_UP", "IN_TRANSIT", "OUT_FOR_DELIVERY", "DELIVERED", None]
    assert [s.code for s in steps] == ["50", "31", "44", "80", "8000"]
    assert steps[0].at == datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # Beijing 10:00
    assert steps[0].at.tzinfo is not None
    assert (steps[0].location, steps[0].description) == ("深圳市", "顺丰已收件")
    assert len({s.step_id for s in steps}) == len(steps)
    again = await sf.routes("o-1", "SF1")
    assert [s.step_id for s in again] == [s.step_id for s in steps]  # stable digests
    msg = json.loads(sf_form(sf_script.requests[0])["msgData"])
    assert msg == {"language": "zh-CN", "trackingType": 2, "trackingNumber": ["o-1"], "methodType": 1}


async def test_sf_routes_errors(sf: SFExpress, sf_script: Script) -> None:
    garbled = {"routeResps": [{"mailNo": "SF1", "routes": [{"opCode": "50"}]}]}
    sf_script.on("EXP_RECE_SEARCH_ROUTES", sf_reply("8152"), sf_reply(data=garbled), httpx.ReadTimeout("t"))
    assert await sf.routes("o-1", "SF1") == []
    with pytest.raises(CarrierUnavailable):
        await sf.routes("o-1", "SF1")
    with pytest.raises(CarrierUnavailable):
        await sf.routes("o-1", "SF1")


async def test_sf_book_recovers_a_lost_reply_by_query(sf: SFExpress, sf_script: Script) -> None:
    sf_script.on("EXP_RECE_CREATE_ORDER", httpx.ReadTimeout("timed out"))
    sf_script.on("EXP_RECE_SEARCH_ORDER_RESP", sf_created("SF777"))
    waybill = await book(sf, parcel())
    assert waybill.tracking_number == "SF777"
    assert len(sf_script.calls("EXP_RECE_CREATE_ORDER")) == 1


async def test_sf_book_after_a_duplicate_reads_the_held_order(sf: SFExpress, sf_script: Script) -> None:
    sf_script.on("EXP_RECE_CREATE_ORDER", sf_reply("8016"))
    sf_script.on("EXP_RECE_SEARCH_ORDER_RESP", sf_created("SF778"))
    assert (await book(sf, parcel())).tracking_number == "SF778"


def sf_push(routes: list[dict[str, Any]], *, checkword: str = CHECKWORD, at: float | None = None) -> bytes:
    msg_data = json.dumps({"WaybillRoute": routes}, ensure_ascii=False)
    timestamp = str(int((time.time() if at is None else at) * 1000))
    digest = msg_digest(msg_data, timestamp, checkword)
    return urlencode({"msgData": msg_data, "timestamp": timestamp, "msgDigest": digest}).encode()


PUSHED = [
    {"id": "r-1", "mailno": "SF1", "orderid": "o-1", **ROUTES[0]},
    {"id": "r-2", "mailno": "SF1", "orderid": "o-1", **ROUTES[1]},
    {"id": "r-9", "mailno": "SF9", "orderid": "o-9", **ROUTES[3]},
]
FORM = "application/x-www-form-urlencoded"


def test_sf_push_parses_per_waybill(sf: SFExpress) -> None:
    pushed = sf.parse_push(sf_push(PUSHED), FORM, {})
    assert [(p.order_id, p.tracking_number) for p in pushed] == [("o-1", "SF1"), ("o-9", "SF9")]
    # A pushed step has the id the same step gets from a route query (which carries no id): taken once.
    assert [s.step_id for s in pushed[0].steps] == [sf_route_step(r, "SF1").step_id for r in ROUTES[:2]]
    assert [s.milestone for s in pushed[0].steps] == ["PICKED_UP", "IN_TRANSIT"]
    assert pushed[1].steps[0].milestone == "DELIVERED"
    assert pushed[0].steps[0].at == datetime(2026, 3, 2, 2, 0, tzinfo=UTC)


def test_sf_push_with_an_unencoded_plus_in_the_digest(sf: SFExpress) -> None:
    body = sf_push(PUSHED)
    fields = dict(parse_qsl(body.decode()))
    raw = "&".join(f"{k}={urlencode({'': v})[1:]}" for k, v in fields.items() if k != "msgDigest")
    raw += "&msgDigest=" + fields["msgDigest"]  # "+" and "/" as sent by a careless encoder
    assert len(sf.parse_push(raw.encode(), FORM, {})) == 2


@pytest.mark.parametrize(
    "make",
    [
        lambda: sf_push(PUSHED).replace(b"r-1", b"r-X"),  # tampered after signing
        lambda: sf_push(PUSHED, checkword="someone-else"),
        lambda: sf_push(PUSHED, at=time.time() - 16 * 60),  # replayed
        lambda: sf_push(PUSHED, at=time.time() + 16 * 60),
        lambda: sf_push([]),
        lambda: sf_push([{"id": "r-1", "mailno": "SF1", "opCode": "50"}]),  # no acceptTime
        lambda: sf_push([{"id": "r-1", "mailno": "SF1", "opCode": "50", "acceptTime": "yesterday"}]),
        lambda: b"msgData=%7B%7D&timestamp=1",
        lambda: b"\xff\xfe",
        lambda: b'{"WaybillRoute": []}',
        lambda: b"",
    ],
)
def test_sf_push_refused(sf: SFExpress, make: Callable[[], bytes]) -> None:
    body = make()  # built now: a push signed at collection time would age past the window before a slow run
    with pytest.raises(InvalidPush) as refused:
        sf.parse_push(body, FORM, {})
    no_secret_in(refused.value)


def test_sf_push_reply(sf: SFExpress) -> None:
    body, media = sf.push_reply(ok=True)
    assert media == "application/json"
    assert json.loads(body) == {"return_code": "0000", "return_msg": "成功"}
    assert body.decode("utf-8") == '{"return_code":"0000","return_msg":"成功"}'
    failed, _ = sf.push_reply(ok=False)
    assert json.loads(failed)["return_code"] != "0000"


def test_sf_repr_keeps_the_checkword(sf: SFExpress) -> None:
    assert CHECKWORD not in repr(sf)


# ---------------------------------------------------------------------------------------------------------- JD


def jd_key(request: httpx.Request) -> str:
    return request.url.path.removeprefix("/ecap/v1/orders/").removeprefix("/")


def jd_reply(code: int = 0, data: Any = None, msg: str = "") -> httpx.Response:
    return httpx.Response(200, json={"code": code, "msg": msg or ("success" if code == 0 else "error"), "data": data})


def jd_created(waybill: str = "JDV000123456789", **extra: Any) -> httpx.Response:
    return jd_reply(data={"waybillCode": waybill, "orderId": "o-1", **extra})


SERVICEABLE = jd_reply(data={"serviceable": True})


def jd_body(request: httpx.Request) -> dict[str, Any]:
    body = json.loads(request.content)
    assert isinstance(body, list)
    assert len(body) == 1
    item: dict[str, Any] = body[0]
    return item


@pytest.fixture
def jd_script() -> Script:
    return Script(key=jd_key)


@pytest.fixture
async def jd(jd_script: Script) -> AsyncIterator[JDLogistics]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(jd_script)) as http:
        yield JDLogistics(
            api_url="https://jd.example",
            app_key="KEY1",
            app_secret=APP_SECRET,
            access_token=ACCESS_TOKEN,
            refresh_token=REFRESH_TOKEN,
            customer_code="010K000001",
            sender=Sender(),
            http=http,
        )


def test_lop_sign_salts_the_sorted_parameters() -> None:
    params = {
        "v": "2.0",
        "timestamp": "2025-01-01 10:00:00",
        "param_json": '[{"orderId":"o-1","name":"张 三"}]',
        "method": "/ecap/v1/orders/create",
        "app_key": "key",
        "access_token": "tok",
    }
    text = (
        "s3cr3t"
        + "access_tokentok"
        + "app_keykey"
        + "method/ecap/v1/orders/create"
        + 'param_json[{"orderId":"o-1","name":"张 三"}]'
        + "timestamp2025-01-01 10:00:00"
        + "v2.0"
        + "s3cr3t"
    )
    assert hashlib.md5(text.encode()).hexdigest() == "96b506943960815ffebf6b3109120738"
    assert lop_sign("s3cr3t", params) == "96b506943960815ffebf6b3109120738"


def test_push_sign() -> None:
    assert push_sign("s3cr3t", "key", '{"waybillCode":"JDV1"}', "2025-01-01 10:00:00") == (
        "34564f8a2b78fc039d0ba464cea9e08a"
    )


@pytest.mark.parametrize(
    ("category", "state", "milestone"),
    [
        ("揽收", "10", "PICKED_UP"),
        ("运输", "20", "IN_TRANSIT"),
        ("分拣", "30", "IN_TRANSIT"),
        ("派送", "40", "OUT_FOR_DELIVERY"),
        ("签收", "50", "DELIVERED"),
        ("异常", "90", "EXCEPTION"),
        ("签收", "", "DELIVERED"),  # no state: the category decides
        ("", "40", "OUT_FOR_DELIVERY"),
        ("其他", "99", None),
    ],
)
def test_jd_categories_map_to_milestones(category: str, state: str, milestone: str | None) -> None:
    item = {"category": category, "state": state, "operationTime": "2026-03-02 10:00:00", "operationRemark": "r"}
    assert jd_module.trace_step(item, "JDV1").milestone == milestone


def assert_signed(request: httpx.Request, token: str = ACCESS_TOKEN) -> None:
    q = dict(request.url.params)
    assert q["app_key"] == "KEY1"
    assert q["access_token"] == token
    assert q["v"] == "2.0"
    assert q["algorithm"] == "md5-salt"
    sent = datetime.strptime(q["timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING)
    assert abs(datetime.now(BEIJING) - sent) < timedelta(minutes=1)
    params = {
        "access_token": token,
        "app_key": "KEY1",
        "method": request.url.path,
        "param_json": request.content.decode(),
        "timestamp": q["timestamp"],
        "v": "2.0",
    }
    assert q["sign"] == lop_sign(APP_SECRET, params)


async def test_jd_create_prechecks_then_creates(jd: JDLogistics, jd_script: Script) -> None:
    jd_script.on("precheck", SERVICEABLE).on("create", jd_created(deliveryPromiseTime="2026-03-04 18:00:00"))
    waybill = await jd.create(parcel("next_day"))
    assert waybill.tracking_number == "JDV000123456789"
    assert waybill.promised_date == date(2026, 3, 4)
    precheck, create = jd_script.requests
    assert (precheck.url.path, create.url.path) == ("/ecap/v1/orders/precheck", "/ecap/v1/orders/create")
    for request in (precheck, create):
        assert_signed(request)
        assert request.headers["content-type"].startswith("application/json")
    body = jd_body(create)
    assert body["orderId"] == "o-1"
    assert body["customerCode"] == "010K000001"
    assert body["productsReq"] == {"productCode": "ed-m-0002"}
    assert body["cargoes"] == [{"name": "goods", "quantity": 1}]
    assert body["receiverContact"] == {
        "name": "张三",
        "mobile": "13800000000",
        "fullAddress": "北京市 朝阳区建国路 1 号",
        "postcode": "100000",
    }
    assert "expectDeliveryDate" not in body
    assert jd_body(precheck)["receiverContact"] == body["receiverContact"]


@pytest.mark.parametrize(
    ("option", "scheduled", "product", "expect"),
    [
        ("next_day", None, "ed-m-0002", None),
        ("standard", None, "ed-m-0001", None),
        ("scheduled", date(2026, 3, 9), "ed-m-0001", "2026-03-09"),
    ],
)
async def test_jd_product_by_option(
    jd: JDLogistics, jd_script: Script, option: str, scheduled: date | None, product: str, expect: str | None
) -> None:
    jd_script.on("precheck", SERVICEABLE).on("create", jd_created())
    await jd.create(parcel(option, scheduled))
    for request in jd_script.requests:
        assert jd_body(request)["productsReq"]["productCode"] == product
        assert jd_body(request).get("expectDeliveryDate") == expect


@pytest.mark.parametrize(
    ("precheck", "create", "error"),
    [
        (jd_reply(2002), None, CarrierRejected),
        (jd_reply(2005), None, CarrierRejected),
        (jd_reply(data={"serviceable": False}), None, CarrierRejected),
        (jd_reply(1099), None, CarrierUnavailable),
        (httpx.Response(500), None, CarrierUnavailable),
        (SERVICEABLE, jd_reply(2001), CarrierDuplicate),
        (SERVICEABLE, jd_reply(2002), CarrierRejected),
        (SERVICEABLE, jd_reply(2005), CarrierRejected),
        (SERVICEABLE, jd_reply(1099), CarrierUnavailable),
        (SERVICEABLE, jd_reply(1000), CarrierUnavailable),
        (SERVICEABLE, jd_reply(1002), CarrierUnavailable),
        (SERVICEABLE, jd_reply(2999), CarrierUnavailable),
        (SERVICEABLE, jd_reply(data={"orderId": "o-1"}), CarrierUnavailable),  # no waybill number
        (SERVICEABLE, jd_reply(data=None), CarrierUnavailable),
        (SERVICEABLE, httpx.Response(500, text="oops"), CarrierUnavailable),
        (SERVICEABLE, httpx.Response(503), CarrierUnavailable),
        (SERVICEABLE, httpx.Response(200, text="not json"), CarrierUnavailable),
        (SERVICEABLE, httpx.Response(200, json={"msg": "no code"}), CarrierUnavailable),
        (SERVICEABLE, httpx.ReadTimeout("timed out"), CarrierUnavailable),
        (SERVICEABLE, httpx.ConnectError("refused"), CarrierUnavailable),
    ],
)
async def test_jd_create_errors(
    jd: JDLogistics, jd_script: Script, precheck: Reply, create: Reply | None, error: type[CarrierError]
) -> None:
    jd_script.on("precheck", precheck)
    if create is not None:
        jd_script.on("create", create)
    with pytest.raises(error) as raised:
        await jd.create(parcel("scheduled", date(2026, 3, 9)))
    assert type(raised.value) is error
    assert len(jd_script.calls("create")) == (0 if create is None else 1)  # refused at precheck: never created
    no_secret_in(raised.value)
    if error is CarrierRejected:
        assert raised.value.reason.startswith("shipping_failed: ")


def refreshed(request: httpx.Request) -> httpx.Response:
    form = dict(parse_qsl(request.content.decode()))
    assert form == {"app_key": "KEY1", "app_secret": APP_SECRET, "refresh_token": REFRESH_TOKEN}
    data = {"access_token": "at-SECRET-2", "refresh_token": "rt-SECRET-2", "expires_in": 86400}
    return jd_reply(data=data)


async def test_jd_refreshes_an_expired_token_once_and_repeats_the_call(jd: JDLogistics, jd_script: Script) -> None:
    jd_script.on("precheck", jd_reply(1001), SERVICEABLE).on("create", jd_created())
    jd_script.on("oauth/refresh_token", refreshed)
    assert (await jd.create(parcel())).tracking_number == "JDV000123456789"
    keys = [jd_key(r) for r in jd_script.requests]
    assert keys == ["precheck", "oauth/refresh_token", "precheck", "create"]
    assert_signed(jd_script.requests[2], "at-SECRET-2")
    assert_signed(jd_script.requests[3], "at-SECRET-2")


async def test_jd_token_refused_again_is_unavailable(jd: JDLogistics, jd_script: Script) -> None:
    jd_script.on("precheck", jd_reply(1001), jd_reply(1001)).on("oauth/refresh_token", refreshed)
    with pytest.raises(CarrierUnavailable) as raised:
        await jd.create(parcel())
    assert len(jd_script.calls("oauth/refresh_token")) == 1
    assert len(jd_script.calls("precheck")) == 2
    no_secret_in(raised.value)


@pytest.mark.parametrize(
    "refresh", [jd_reply(1000), jd_reply(data={}), httpx.Response(500), httpx.ReadTimeout("timed out")]
)
async def test_jd_refresh_failing_is_unavailable(jd: JDLogistics, jd_script: Script, refresh: Reply) -> None:
    jd_script.on("precheck", jd_reply(1001)).on("oauth/refresh_token", refresh)
    with pytest.raises(CarrierUnavailable) as raised:
        await jd.create(parcel())
    assert len(jd_script.calls("precheck")) == 1
    no_secret_in(raised.value)


async def test_jd_query(jd: JDLogistics, jd_script: Script) -> None:
    jd_script.on(
        "details/query",
        jd_reply(data={"orderId": "o-1", "waybillCode": "JDV1", "orderStatus": "created"}),
        jd_reply(data={"orderId": "o-1", "waybillCode": "JDV1", "orderStatus": "cancelled"}),
        jd_reply(2003),
        httpx.Response(502),
    )
    held = await jd.query("o-1")
    assert held is not None
    assert (held.tracking_number, held.cancelled) == ("JDV1", False)
    cancelled = await jd.query("o-1")
    assert cancelled is not None
    assert cancelled.cancelled
    assert await jd.query("o-1") is None
    with pytest.raises(CarrierUnavailable):
        await jd.query("o-1")
    assert jd_body(jd_script.requests[0]) == {"orderId": "o-1"}
    assert_signed(jd_script.requests[0])


async def test_jd_cancel(jd: JDLogistics, jd_script: Script) -> None:
    ok = jd_reply(data={"result": True})
    jd_script.on("cancel", ok, ok, jd_reply(2004), jd_reply(2003), jd_reply(data={"result": False}), jd_reply(1099))
    await jd.cancel("o-1", "JDV1")
    await jd.cancel("o-1", "JDV1")
    with pytest.raises(CarrierRefused) as refused:
        await jd.cancel("o-1", "JDV1")
    assert refused.value.reason == "picked_up"
    await jd.cancel("o-1", "JDV1")  # JD holds no such order: nothing to call back
    with pytest.raises(CarrierUnavailable):
        await jd.cancel("o-1", "JDV1")
    with pytest.raises(CarrierUnavailable):
        await jd.cancel("o-1", "JDV1")
    body = jd_body(jd_script.requests[0])
    assert (body["orderId"], body["waybillCode"]) == ("o-1", "JDV1")
    assert body["cancelReason"]


TRACE = [
    {
        "category": "揽收",
        "state": "10",
        "operationTitle": "揽收",
        "operationRemark": "已揽收",
        "operationTime": "2026-03-02 10:00:00",
        "operationSite": "上海",
    },
    {
        "category": "运输",
        "state": "20",
        "operationTitle": "运输",
        "operationRemark": "运输中",
        "operationTime": "2026-03-02 12:00:00",
    },
    {
        "category": "分拣",
        "state": "30",
        "operationTitle": "分拣",
        "operationRemark": "分拣中",
        "operationTime": "2026-03-02 15:00:00",
    },
    {
        "category": "派送",
        "state": "40",
        "operationTitle": "派送",
        "operationRemark": "派送中",
        "operationTime": "2026-03-03 09:00:00",
    },
    {
        "category": "签收",
        "state": "50",
        "operationTitle": "签收",
        "operationRemark": "已签收",
        "operationTime": "2026-03-03 11:00:00",
    },
]


async def test_jd_routes(jd: JDLogistics, jd_script: Script) -> None:
    data = {"waybillCode": "JDV1", "traceDetails": TRACE}
    jd_script.on("trace/query", jd_reply(data=data), jd_reply(data=data), jd_reply(2003), httpx.ReadTimeout("t"))
    steps = await jd.routes("o-1", "JDV1")
    assert [s.milestone for s in steps] == ["PICKED_UP", "IN_TRANSIT", "IN_TRANSIT", "OUT_FOR_DELIVERY", "DELIVERED"]
    assert steps[0].at == datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
    assert (steps[0].location, steps[0].description, steps[0].code) == ("上海", "已揽收", "10")
    assert len({s.step_id for s in steps}) == 5
    assert [s.step_id for s in await jd.routes("o-1", "JDV1")] == [s.step_id for s in steps]
    assert await jd.routes("o-1", "JDV1") == []
    with pytest.raises(CarrierUnavailable):
        await jd.routes("o-1", "JDV1")
    assert jd_body(jd_script.requests[0]) == {"waybillCode": "JDV1"}


async def test_jd_book_recovers_a_lost_reply_by_query(jd: JDLogistics, jd_script: Script) -> None:
    jd_script.on("precheck", SERVICEABLE).on("create", httpx.ReadTimeout("timed out"))
    jd_script.on("details/query", jd_reply(data={"orderId": "o-1", "waybillCode": "JDV9", "orderStatus": "created"}))
    assert (await book(jd, parcel())).tracking_number == "JDV9"
    assert len(jd_script.calls("create")) == 1


def jd_push(
    body: dict[str, Any], *, secret: str = APP_SECRET, app_key: str = "KEY1", at: datetime | None = None
) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(body, ensure_ascii=False)
    timestamp = (at or datetime.now(BEIJING)).astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")
    return text.encode(), {
        "app_key": app_key,
        "timestamp": timestamp,
        "sign": push_sign(secret, app_key, text, timestamp),
    }


PUSH_BODY = {
    "waybillCode": "JDV1",
    "orderId": "o-1",
    "traceDetails": [{**TRACE[0], "traceId": "t-1"}, {**TRACE[1], "traceId": "t-2"}],
}


def test_jd_push_parses(jd: JDLogistics) -> None:
    body, query = jd_push(PUSH_BODY)
    (pushed,) = jd.parse_push(body, "application/json", query)
    assert (pushed.order_id, pushed.tracking_number) == ("o-1", "JDV1")
    assert [s.milestone for s in pushed.steps] == ["PICKED_UP", "IN_TRANSIT"]
    # A pushed step has the id the same step gets from a trace query (which carries no traceId): taken once.
    assert [s.step_id for s in pushed.steps] == [jd_trace_step(t, "JDV1").step_id for t in TRACE[:2]]


def _tampered() -> tuple[bytes, dict[str, str]]:
    body, query = jd_push(PUSH_BODY)
    return body.replace(b"t-1", b"t-X"), query


@pytest.mark.parametrize(
    "make",
    [
        lambda: _tampered(),
        lambda: jd_push(PUSH_BODY, secret="someone-else"),
        lambda: jd_push(PUSH_BODY, app_key="KEY2"),  # another app's push, however well signed
        lambda: jd_push(PUSH_BODY, at=datetime.now(UTC) - timedelta(minutes=16)),
        lambda: jd_push(PUSH_BODY, at=datetime.now(UTC) + timedelta(minutes=16)),
        lambda: jd_push({"orderId": "o-1", "traceDetails": PUSH_BODY["traceDetails"]}),  # no waybill
        lambda: jd_push({"waybillCode": "JDV1", "traceDetails": []}),
        lambda: jd_push({"waybillCode": "JDV1", "traceDetails": [{"category": "揽收"}]}),
        lambda: (jd_push(PUSH_BODY)[0], {}),
        lambda: (b"\xff", jd_push(PUSH_BODY)[1]),
    ],
)
def test_jd_push_refused(jd: JDLogistics, make: Callable[[], tuple[bytes, dict[str, str]]]) -> None:
    body, query = make()  # built now, as for SF: the window is judged against the clock of the run
    with pytest.raises(InvalidPush) as refused:
        jd.parse_push(body, "application/json", query)
    no_secret_in(refused.value)


def test_jd_push_reply(jd: JDLogistics) -> None:
    body, media = jd.push_reply(ok=True)
    assert (json.loads(body), media) == ({"code": 0, "msg": "success"}, "application/json")
    assert json.loads(jd.push_reply(ok=False)[0])["code"] != 0


def test_jd_repr_keeps_the_secrets(jd: JDLogistics) -> None:
    assert not any(secret in repr(jd) for secret in SECRETS)
