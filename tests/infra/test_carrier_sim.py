"""The carrier simulator (deploy/local/provider_sim: SF Express 丰桥 and JD Logistics LOP) against clients signing
as the carrier protocol says.

Requests are signed here by a small signer written from the protocol (Java URLEncoder rules for SF's msgDigest,
the salted MD5 for JD), not with the simulator's code, so that a mistake on one side shows. A simulator of its own
runs for this module (a subprocess on a free port, its own state directory, ``--parcel-time-scale 0.05``: a parcel
is delivered half a second after its booking, a failed push is retried after 0.25 s and 0.75 s) and pushes to a
local HTTP server standing for the shipping service.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote_plus, urlsplit

import httpx
import pytest

from deploy.local.provider_sim import sf as sim_sf
from tests.infra.test_provider_sim import REPO, Received, Sim, free_port, new_no

pytestmark = pytest.mark.infra

SCALE = 0.05  # --parcel-time-scale: the whole schedule takes 10 * SCALE seconds
BEIJING = dt.timezone(dt.timedelta(hours=8))
SF_SUCCESS = (200, json.dumps({"return_code": "0000", "return_msg": "成功"}, ensure_ascii=False))
JD_SUCCESS = (200, json.dumps({"code": 0, "msg": "success"}))
SF_OP_CODES = ["50", "30", "31", "44", "80"]
JD_STATES = [("揽收", "10"), ("分拣", "30"), ("运输", "20"), ("派送", "40"), ("签收", "50")]
CREATE, SEARCH, UPDATE, ROUTES = (
    "EXP_RECE_CREATE_ORDER",
    "EXP_RECE_SEARCH_ORDER_RESP",
    "EXP_RECE_UPDATE_ORDER",
    "EXP_RECE_SEARCH_ROUTES",
)


# ------------------------------------------------------------------ the signers, from the protocol


def java_urlencode(text: str) -> str:
    """java.net.URLEncoder.encode(text, "UTF-8"), character by character."""
    out = []
    for ch in text:
        if ch.isascii() and (ch.isalnum() or ch in ".-*_"):
            out.append(ch)
        elif ch == " ":
            out.append("+")
        else:
            out.extend(f"%{b:02X}" for b in ch.encode())
    return "".join(out)


def sf_digest(msg_data: str, timestamp: str, checkword: str) -> str:
    encoded = java_urlencode(msg_data + timestamp + checkword)
    return base64.b64encode(hashlib.md5(encoded.encode()).digest()).decode()


def jd_sign(secret: str, params: dict[str, str]) -> str:
    content = secret + "".join(f"{k}{params[k]}" for k in sorted(params)) + secret
    return hashlib.md5(content.encode()).hexdigest()


def beijing_text(moment: dt.datetime | None = None) -> str:
    return (moment or dt.datetime.now(BEIJING)).astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")


def beijing_today() -> dt.date:
    return dt.datetime.now(BEIJING).date()


# ------------------------------------------------------------------ the simulator and the push receiver


@dataclass
class Arrival:
    at: float  # time.monotonic()
    path: str
    query: dict[str, str]
    order_id: str
    received: Received

    @property
    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.received.body.decode(), keep_blank_values=True))

    def sf_route(self) -> dict[str, Any]:
        route: dict[str, Any] = json.loads(self.form["msgData"])["WaybillRoute"][0]
        return route

    def jd_trace(self) -> dict[str, Any]:
        trace: dict[str, Any] = json.loads(self.received.body)["traceDetails"][0]
        return trace


@dataclass
class PushReceiver:
    """The shipping service's push endpoints (/sf, /jd): records every delivery and answers from a per-order
    script, then with the carrier's success reply."""

    base: str = ""
    arrivals: list[Arrival] = field(default_factory=list)
    scripts: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def script(self, order_id: str, *replies: tuple[int, str]) -> None:
        with self.lock:
            self.scripts[order_id] = list(replies)

    def of(self, path: str, order_id: str) -> list[Arrival]:
        with self.lock:
            return [a for a in self.arrivals if a.path == path and a.order_id == order_id]

    def wait_for(self, path: str, order_id: str, count: int, timeout: float = 5.0) -> list[Arrival]:
        deadline = time.monotonic() + timeout
        while len(got := self.of(path, order_id)) < count:
            assert time.monotonic() < deadline, f"{path} {order_id}: {len(got)} pushes, wanted {count}"
            time.sleep(0.02)
        return got


def order_of_push(path: str, body: bytes) -> str:
    if path == "/sf":
        msg = json.loads(dict(parse_qsl(body.decode(), keep_blank_values=True))["msgData"])
        return str(msg["WaybillRoute"][0]["orderid"])
    return str(json.loads(body)["orderId"])


@pytest.fixture(scope="module")
def receiver() -> Iterator[PushReceiver]:
    rec = PushReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            parts = urlsplit(self.path)
            order_id = order_of_push(parts.path, body)
            received = Received({k.lower(): v for k, v in self.headers.items()}, body)
            with rec.lock:
                query = dict(parse_qsl(parts.query, keep_blank_values=True))
                rec.arrivals.append(Arrival(time.monotonic(), parts.path, query, order_id, received))
                script = rec.scripts.get(order_id, [])
                status, text = script.pop(0) if script else (SF_SUCCESS if parts.path == "/sf" else JD_SUCCESS)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(text.encode())))
            self.end_headers()
            self.wfile.write(text.encode())

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory, receiver: PushReceiver) -> Iterator[Sim]:
    state = tmp_path_factory.mktemp("carrier-sim")
    log_path = state.parent / "carrier-sim.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "deploy.local.provider_sim", "--state", str(state), "--port", str(port)]
    cmd += ["--parcel-time-scale", str(SCALE), "--sf-push-url", f"{receiver.base}/sf"]
    cmd += ["--jd-push-url", f"{receiver.base}/jd?channel=sim"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"provider-sim did not come up:\n{log_path.read_text()[-3000:]}", pytrace=False)
            time.sleep(0.1)
        lines = (state / "providers.env").read_text().splitlines()
        env = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
        yield Sim(url=url, state=state, env=env)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def parcel(sim: Sim, carrier: str, order_id: str) -> dict[str, Any]:
    r = httpx.get(f"{sim.url}/control/parcels/{carrier}/{order_id}", timeout=10)
    assert r.status_code == 200, r.text
    view: dict[str, Any] = r.json()
    return view


def wait_until(check: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout}s"
        time.sleep(0.02)


# ------------------------------------------------------------------ clients


@dataclass
class SfClient:
    sim: Sim

    @property
    def checkword(self) -> str:
        return self.sim.read("SF_CHECKWORD_FILE").strip()

    def call(
        self,
        service: str,
        msg: dict[str, Any],
        *,
        timestamp: int | None = None,
        checkword: str | None = None,
        partner: str | None = None,
        drop: str | None = None,
    ) -> httpx.Response:
        msg_data = json.dumps(msg, ensure_ascii=False)
        stamp = str(timestamp if timestamp is not None else int(time.time() * 1000))
        form = {
            "partnerID": partner or self.sim.env["SF_PARTNER_ID"],
            "requestID": str(uuid.uuid4()),
            "serviceCode": service,
            "timestamp": stamp,
            "msgData": msg_data,
            "msgDigest": sf_digest(msg_data, stamp, checkword or self.checkword),
        }
        form.pop(drop or "", None)
        url = f"{self.sim.env['SF_API_URL']}/std/service"
        return httpx.post(url, data=form, timeout=10)

    def result(self, service: str, msg: dict[str, Any]) -> dict[str, Any]:
        r = self.call(service, msg)
        assert r.status_code == 200, r.text
        reply = r.json()
        assert reply["apiResultCode"] == "A1000", reply
        result: dict[str, Any] = json.loads(reply["apiResultData"])
        return result

    def data(self, service: str, msg: dict[str, Any]) -> dict[str, Any]:
        result = self.result(service, msg)
        assert (result["success"], result["errorCode"]) == (True, "S0000"), result
        data: dict[str, Any] = result["msgData"]
        return data

    def error(self, service: str, msg: dict[str, Any]) -> str:
        result = self.result(service, msg)
        assert result["success"] is False, result
        assert result["msgData"] is None
        code: str = result["errorCode"]
        return code


def sf_order(order_id: str, *, postcode: str = "100020", express_type: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "language": "zh-CN",
        "orderId": order_id,
        "monthlyCard": "7551234567",
        "expressTypeId": express_type,
        "payMethod": 1,
        "isReturnRoutelabel": 0,
        "cargoDetails": [{"name": "马克杯 mug ~*+&=%", "count": 1}],
        "contactInfoList": [
            {
                "contactType": 1,
                "contact": "Fulfil Warehouse",
                "tel": "02000000000",
                "country": "CN",
                "province": "上海市",
                "city": "上海市",
                "address": "浦东新区 1 号仓",
                "postCode": "200000",
            },
            {
                "contactType": 2,
                "contact": "张三",
                "tel": "13800000000",
                "country": "CN",
                "province": "北京市",
                "city": "北京市",
                "address": "朝阳区建国路 88 号",
                "postCode": postcode,
            },
        ],
        **extra,
    }


@dataclass
class JdClient:
    sim: Sim
    token: str = ""
    refreshes: int = 0

    @property
    def secret(self) -> str:
        return self.sim.read("JD_APP_SECRET_FILE").strip()

    def raw(
        self,
        path: str,
        req: dict[str, Any],
        *,
        token: str | None = None,
        timestamp: str | None = None,
        secret: str | None = None,
    ) -> httpx.Response:
        body = json.dumps([req], ensure_ascii=False)
        params = {
            "access_token": token if token is not None else (self.token or self.sim.env["JD_ACCESS_TOKEN"]),
            "app_key": self.sim.env["JD_APP_KEY"],
            "timestamp": timestamp or beijing_text(),
            "v": "2.0",
        }
        sign = jd_sign(secret or self.secret, {**params, "method": path, "param_json": body})
        query = {"LOP-DN": "ECAP", **params, "algorithm": "md5-salt", "sign": sign}
        headers = {"Content-Type": "application/json;charset=utf-8"}
        return httpx.post(f"{self.sim.env['JD_API_URL']}{path}", params=query, content=body.encode(), headers=headers)

    def refresh(self, refresh_token: str | None = None) -> dict[str, Any]:
        form = {
            "app_key": self.sim.env["JD_APP_KEY"],
            "app_secret": self.secret,
            "refresh_token": refresh_token or self.sim.read("JD_REFRESH_TOKEN_FILE").strip(),
        }
        r = httpx.post(f"{self.sim.env['JD_API_URL']}/oauth/refresh_token", data=form, timeout=10)
        assert r.status_code == 200, r.text
        reply: dict[str, Any] = r.json()
        return reply

    def call(self, path: str, req: dict[str, Any]) -> dict[str, Any]:
        """As the client does: on 1001 refresh once, then repeat the call once."""
        r = self.raw(path, req)
        assert r.status_code == 200, r.text
        reply: dict[str, Any] = r.json()
        if reply["code"] == 1001:
            refreshed = self.refresh()
            assert refreshed["code"] == 0, refreshed
            self.token, self.refreshes = refreshed["data"]["access_token"], self.refreshes + 1
            reply = self.raw(path, req).json()
        return reply

    def data(self, path: str, req: dict[str, Any]) -> dict[str, Any]:
        reply = self.call(path, req)
        assert reply["code"] == 0, reply
        data: dict[str, Any] = reply["data"]
        return data

    def error(self, path: str, req: dict[str, Any]) -> int:
        reply = self.call(path, req)
        assert reply["code"] != 0, reply
        code: int = reply["code"]
        return code


def jd_order(order_id: str, *, postcode: str = "100020", product: str = "ed-m-0002", **extra: Any) -> dict[str, Any]:
    return {
        "orderId": order_id,
        "customerCode": "010K0000001",
        "senderContact": {"name": "Fulfil Warehouse", "mobile": "02000000000", "fullAddress": "上海市浦东新区1号仓"},
        "receiverContact": {
            "name": "李四",
            "mobile": "13900000000",
            "fullAddress": "北京市朝阳区建国路88号",
            "postcode": postcode,
        },
        "productsReq": {"productCode": product},
        "cargoes": [{"name": "马克杯", "quantity": 1}],
        **extra,
    }


@pytest.fixture(scope="module")
def sf(sim: Sim) -> SfClient:
    return SfClient(sim)


@pytest.fixture(scope="module")
def jd(sim: Sim) -> JdClient:
    return JdClient(sim)


def hold(sim: Sim, carrier: str, order_id: str) -> None:
    assert sim.control("parcels/hold", carrier=carrier, order_id=order_id).status_code == 200


def advance(sim: Sim, carrier: str, order_id: str, to: str) -> dict[str, Any]:
    r = sim.control("parcels/advance", carrier=carrier, order_id=order_id, to=to)
    assert r.status_code == 200, r.text
    view: dict[str, Any] = r.json()
    return view


# ------------------------------------------------------------------ SF Express: the platform


def test_sf_digest_is_the_published_example_under_java_urlencoder_rules() -> None:
    # SF's documentation: this msgData, timestamp and checkWord digest to IIKJtuLVzoFTu4kHI8M8vA==.
    msg, stamp, checkword = (
        '{"language":"zh-CN","orderId":"QIAO-20200618-004"}',
        "12312334453453",
        ("fjcg5PGKaNpPSHFAZ4QsCOkV71R3zVci"),
    )
    assert sf_digest(msg, stamp, checkword) == "IIKJtuLVzoFTu4kHI8M8vA=="
    assert sim_sf.msg_digest(msg, stamp, checkword) == "IIKJtuLVzoFTu4kHI8M8vA=="
    # Java's URLEncoder: ~ encoded, * kept, space +, !'() encoded, UTF-8 bytes in upper-case hex.
    text = "a b~*!'()中.-_"
    assert java_urlencode(text) == "a+b%7E*%21%27%28%29%E4%B8%AD.-_"
    assert sim_sf.java_urlencode(text) == java_urlencode(text)
    assert sim_sf.java_urlencode(text) != quote_plus(text)  # what a plain quote_plus would get wrong


def test_sf_create_books_a_parcel_and_the_same_order_id_again_is_8016(sim: Sim, sf: SfClient) -> None:
    no = new_no("SF")
    hold(sim, "sf", no)

    created = sf.data(CREATE, sf_order(no))

    assert created["orderId"] == no
    [waybill] = created["waybillNoInfoList"]
    assert waybill["waybillType"] == 1
    assert waybill["waybillNo"].startswith("SF")
    assert len(waybill["waybillNo"]) == 15
    assert waybill["waybillNo"][2:].isdigit()
    assert created["filterResult"] == 2
    assert (created["originCode"], created["destCode"]) == ("021", "010")
    assert created["promiseTime"] == f"{beijing_today() + dt.timedelta(days=1)} 18:00:00"

    found = sf.data(SEARCH, {"orderId": no, "searchType": 1, "language": "zh-CN"})
    assert found["waybillNoInfoList"] == created["waybillNoInfoList"]
    assert "resStatus" not in found

    assert sf.error(CREATE, sf_order(no)) == "8016"
    view = parcel(sim, "sf", no)
    assert (view["status"], view["waybill"], view["milestone"]) == ("created", waybill["waybillNo"], None)
    assert view["request"]["cargoDetails"][0]["name"] == "马克杯 mug ~*+&=%"


def test_sf_platform_refuses_a_bad_digest_an_expired_timestamp_an_unknown_partner_and_missing_fields(
    sim: Sim, sf: SfClient
) -> None:
    no = new_no("SF")

    def code(r: httpx.Response) -> str:
        assert r.status_code == 200
        reply = r.json()
        assert not reply.get("apiResultData"), reply
        assert reply["apiErrorMsg"]
        result: str = reply["apiResultCode"]
        return result

    assert code(sf.call(CREATE, sf_order(no), checkword="not-the-checkword")) == "A1006"
    stale = int((time.time() - 16 * 60) * 1000)
    assert code(sf.call(CREATE, sf_order(no), timestamp=stale)) == "A1002"
    early = int((time.time() + 16 * 60) * 1000)
    assert code(sf.call(CREATE, sf_order(no), timestamp=early)) == "A1002"
    assert code(sf.call(CREATE, sf_order(no), partner="SOMEONE_ELSE")) == "A1004"
    assert code(sf.call("EXP_RECE_NO_SUCH_SERVICE", sf_order(no))) == "A1004"
    assert code(sf.call(CREATE, sf_order(no), drop="msgDigest")) == "A1001"

    # A digest made with Python's quote_plus (which keeps ~) differs from Java's for this message.
    msg = json.dumps(sf_order(no), ensure_ascii=False)
    stamp = str(int(time.time() * 1000))
    wrong = base64.b64encode(hashlib.md5(quote_plus(msg + stamp + sf.checkword).encode()).digest()).decode()
    form = {"partnerID": sim.env["SF_PARTNER_ID"], "requestID": "r1", "serviceCode": CREATE}
    form |= {"timestamp": stamp, "msgData": msg, "msgDigest": wrong}
    assert code(httpx.post(f"{sim.url}/std/service", data=form, timeout=10)) == "A1006"

    assert sf.error(SEARCH, {"orderId": no, "searchType": 1}) == "8152"  # none of them booked anything
    assert sf.error(SEARCH, {"orderId": new_no("NEVER"), "searchType": 1}) == "8152"


def test_sf_cancel_works_before_pickup_twice_and_is_8252_after(sim: Sim, sf: SfClient) -> None:
    early, late = new_no("SF"), new_no("SF")
    hold(sim, "sf", early)
    hold(sim, "sf", late)
    sf.data(CREATE, sf_order(early))
    sf.data(CREATE, sf_order(late))

    assert sf.data(UPDATE, {"orderId": early, "dealType": 2}) == {"orderId": early, "resStatus": 2}
    assert sf.data(UPDATE, {"orderId": early, "dealType": 2}) == {"orderId": early, "resStatus": 2}
    assert sf.data(SEARCH, {"orderId": early, "searchType": 1})["resStatus"] == 2
    assert sim.control("parcels/release", carrier="sf", order_id=early).status_code == 200
    time.sleep(12 * SCALE)
    assert (parcel(sim, "sf", early)["status"], parcel(sim, "sf", early)["routes"]) == ("cancelled", [])
    assert sim.control("parcels/advance", carrier="sf", order_id=early, to="PICKED_UP").status_code == 409

    advance(sim, "sf", late, "PICKED_UP")
    assert sf.error(UPDATE, {"orderId": late, "dealType": 2}) == "8252"
    view = parcel(sim, "sf", late)
    assert (view["status"], view["milestone"]) == ("created", "PICKED_UP")
    assert sf.error(UPDATE, {"orderId": new_no("NEVER"), "dealType": 2}) == "8152"


def test_sf_routes_by_order_id_and_by_waybill_list_each_step_with_its_op_code(sim: Sim, sf: SfClient) -> None:
    no = new_no("SF")
    hold(sim, "sf", no)
    waybill = sf.data(CREATE, sf_order(no))["waybillNoInfoList"][0]["waybillNo"]
    empty = sf.data(ROUTES, {"language": "zh-CN", "trackingType": 2, "trackingNumber": [no], "methodType": 1})
    assert empty == {"routeResps": [{"mailNo": waybill, "routes": []}]}

    advance(sim, "sf", no, "DELIVERED")
    by_order = sf.data(ROUTES, {"language": "zh-CN", "trackingType": 2, "trackingNumber": [no], "methodType": 1})
    by_waybill = sf.data(ROUTES, {"language": "zh-CN", "trackingType": 1, "trackingNumber": [waybill]})

    [resp] = by_order["routeResps"]
    assert resp["mailNo"] == waybill
    assert [r["opCode"] for r in resp["routes"]] == SF_OP_CODES
    assert all(dt.datetime.strptime(r["acceptTime"], "%Y-%m-%d %H:%M:%S") for r in resp["routes"])
    assert resp["routes"][0]["acceptAddress"] == "上海市"
    assert resp["routes"][-1]["acceptAddress"] == "北京市"
    assert by_waybill == by_order
    assert parcel(sim, "sf", no)["milestone"] == "DELIVERED"


def test_sf_parcel_moves_on_its_own_schedule_and_each_step_is_pushed_signed_in_order(
    sim: Sim, sf: SfClient, receiver: PushReceiver
) -> None:
    no = new_no("SF")
    started = time.monotonic()
    waybill = sf.data(CREATE, sf_order(no))["waybillNoInfoList"][0]["waybillNo"]

    pushes = receiver.wait_for("/sf", no, 5)
    elapsed = pushes[-1].at - started

    assert elapsed >= 10 * SCALE * 0.9  # delivered at 10 s, scaled
    assert pushes[0].at - started >= 2 * SCALE * 0.9  # picked up at 2 s, scaled
    routes = [p.sf_route() for p in pushes]
    assert [r["opCode"] for r in routes] == SF_OP_CODES
    assert {(r["mailno"], r["orderid"]) for r in routes} == {(waybill, no)}
    assert len({r["id"] for r in routes}) == 5
    for push in pushes:
        form = push.form
        assert push.received.headers["content-type"].startswith("application/x-www-form-urlencoded")
        assert abs(int(form["timestamp"]) - time.time() * 1000) < 60_000
        assert form["msgDigest"] == sf_digest(form["msgData"], form["timestamp"], sf.checkword)
    view = parcel(sim, "sf", no)
    assert view["milestone"] == "DELIVERED"
    assert [(p["attempts"], p["delivered"]) for p in view["pushes"]] == [(1, True)] * 5
    assert [r["id"] for r in view["routes"]] == [r["id"] for r in routes]


def test_sf_push_not_answered_0000_is_tried_three_times_in_all_with_growing_gaps(
    sim: Sim, sf: SfClient, receiver: PushReceiver
) -> None:
    given_up, late_ok = new_no("SF"), new_no("SF")
    refused = (200, json.dumps({"return_code": "1000", "return_msg": "失败"}))
    receiver.script(given_up, (500, "error"), refused, (500, "error"), (500, "error"))
    receiver.script(late_ok, (500, "error"), refused)
    for no in (given_up, late_ok):
        hold(sim, "sf", no)
        sf.data(CREATE, sf_order(no))
        advance(sim, "sf", no, "PICKED_UP")

    tries = receiver.wait_for("/sf", given_up, 3)
    time.sleep(20 * SCALE)  # past any further retry

    assert len(receiver.of("/sf", given_up)) == 3
    assert len({t.sf_route()["id"] for t in tries}) == 1
    first_gap, second_gap = tries[1].at - tries[0].at, tries[2].at - tries[1].at
    assert first_gap >= 5 * SCALE * 0.8
    assert second_gap > first_gap
    [push] = parcel(sim, "sf", given_up)["pushes"]
    assert (push["attempts"], push["delivered"], push["state"]) == (3, False, "failed")
    assert [a["status"] for a in push["attempt_log"]] == [500, 200, 500]

    assert len(receiver.wait_for("/sf", late_ok, 3)) == 3
    [push] = parcel(sim, "sf", late_ok)["pushes"]
    assert (push["attempts"], push["delivered"]) == (3, True)
    assert json.loads(push["reply"])["return_code"] == "0000"


def test_sf_hold_keeps_a_parcel_still_until_released(sim: Sim, sf: SfClient, receiver: PushReceiver) -> None:
    no = new_no("SF")
    hold(sim, "sf", no)  # before the booking
    sf.data(CREATE, sf_order(no))

    time.sleep(14 * SCALE)
    view = parcel(sim, "sf", no)
    assert (view["held"], view["milestone"], view["routes"]) == (True, None, [])
    assert receiver.of("/sf", no) == []

    released = sim.control("parcels/release", carrier="sf", order_id=no)
    assert released.json()["held"] is False
    wait_until(lambda: parcel(sim, "sf", no)["milestone"] == "DELIVERED", what="delivered after release")
    assert [r["opCode"] for r in parcel(sim, "sf", no)["routes"]] == SF_OP_CODES


def test_sf_exception_stops_the_parcel_and_pushes_op_code_33(sim: Sim, sf: SfClient, receiver: PushReceiver) -> None:
    no = new_no("SF")
    sf.data(CREATE, sf_order(no))  # moving on its own

    view = advance(sim, "sf", no, "EXCEPTION")  # picked up first if it was not yet
    time.sleep(12 * SCALE)

    assert parcel(sim, "sf", no)["routes"] == view["routes"]  # it stays where it is
    assert (view["milestone"], view["held"]) == ("EXCEPTION", True)
    assert sf.error(UPDATE, {"orderId": no, "dealType": 2}) == "8252"
    pushed = [p.sf_route()["opCode"] for p in receiver.wait_for("/sf", no, len(view["routes"]))]
    assert pushed[0] == "50"
    assert pushed[-1] == "33"


def test_sf_push_modes_duplicate_delay_hold_and_fail(sim: Sim, sf: SfClient, receiver: PushReceiver) -> None:
    duplicated, delayed, held, failing = (new_no("SF") for _ in range(4))
    modes = {duplicated: ("duplicate", 0.0), delayed: ("delay", 0.6), held: ("hold", 0.0), failing: ("fail", 0.0)}
    for no, (mode, delay) in modes.items():
        r = sim.control("pushes", carrier="sf", order_id=no, mode=mode, delay_seconds=delay)
        assert r.status_code == 200
        hold(sim, "sf", no)
        sf.data(CREATE, sf_order(no))

    started = time.monotonic()
    for no in (duplicated, delayed, failing):
        advance(sim, "sf", no, "PICKED_UP")
    advance(sim, "sf", held, "IN_TRANSIT")

    twice = receiver.wait_for("/sf", duplicated, 2)
    assert twice[0].sf_route()["id"] == twice[1].sf_route()["id"]
    assert [(p["copy"], p["delivered"]) for p in parcel(sim, "sf", duplicated)["pushes"]] == [(1, True), (2, True)]

    [late] = receiver.wait_for("/sf", delayed, 1)
    assert late.at - started >= 0.55

    wait_until(lambda: parcel(sim, "sf", failing)["pushes"][0]["state"] == "failed", what="push given up")
    assert receiver.of("/sf", failing) == []
    [failed] = parcel(sim, "sf", failing)["pushes"]
    assert (failed["attempts"], failed["delivered"]) == (3, False)
    assert receiver.of("/sf", held) == []
    assert {p["state"] for p in parcel(sim, "sf", held)["pushes"]} == {"held"}

    assert sim.control("pushes/release", carrier="sf", order_id=held).json() == {"released": 3}
    in_order = receiver.wait_for("/sf", held, 3)
    assert [p.sf_route()["opCode"] for p in in_order] == ["50", "30", "31"]


def test_sf_undeliverable_postal_code_and_a_scheduled_date_outside_1_to_14_days_are_refused(
    sim: Sim, sf: SfClient
) -> None:
    today = beijing_today()
    assert sf.error(CREATE, sf_order(new_no("SF"), postcode="000000")) == "8114"
    for days in (0, 15, -1):
        refused = str(today + dt.timedelta(days=days))
        assert sf.error(CREATE, sf_order(new_no("SF"), express_type=2, specifyDeliveryDate=refused)) == "8196", days
    assert sf.error(CREATE, sf_order(new_no("SF"), express_type=2, specifyDeliveryDate="next friday")) == "8196"

    for days in (1, 14):
        no = new_no("SF")
        day = today + dt.timedelta(days=days)
        created = sf.data(CREATE, sf_order(no, express_type=2, specifyDeliveryDate=str(day)))
        assert created["promiseTime"] == f"{day} 18:00:00"


def test_sf_faults_5xx_lost_reply_and_refuse(sim: Sim, sf: SfClient) -> None:
    unavailable, lost, refused = new_no("SF"), new_no("SF"), new_no("SF")
    for no, kind in ((unavailable, "5xx"), (lost, "lost_reply"), (refused, "refuse")):
        r = sim.control("faults", provider="sf", operation=CREATE, kind=kind, out_trade_no=no)
        assert r.status_code == 200, r.text

    assert sf.call(CREATE, sf_order(unavailable)).status_code == 503
    assert sf.error(SEARCH, {"orderId": unavailable, "searchType": 1}) == "8152"  # nothing was made
    assert sf.data(CREATE, sf_order(unavailable))["orderId"] == unavailable  # the fault is used up

    with pytest.raises(httpx.TransportError):
        sf.call(CREATE, sf_order(lost))
    assert sf.data(SEARCH, {"orderId": lost, "searchType": 1})["orderId"] == lost  # but this one was made
    assert sf.error(CREATE, sf_order(lost)) == "8016"

    assert sf.error(CREATE, sf_order(refused)) == "8114"
    assert sf.error(SEARCH, {"orderId": refused, "searchType": 1}) == "8152"


# ------------------------------------------------------------------ JD Logistics


def test_jd_create_books_a_parcel_and_the_same_order_id_again_is_2001(sim: Sim, jd: JdClient) -> None:
    no = new_no("JD")
    hold(sim, "jd", no)
    assert jd.data("/ecap/v1/orders/precheck", jd_order(no)) == {"serviceable": True}

    created = jd.data("/ecap/v1/orders/create", jd_order(no))

    assert created["orderId"] == no
    assert created["waybillCode"].startswith("JDV")
    assert len(created["waybillCode"]) == 15
    assert created["deliveryPromiseTime"] == f"{beijing_today() + dt.timedelta(days=1)} 18:00:00"
    query = jd.data("/ecap/v1/orders/details/query", {"orderId": no})
    assert query == {"orderId": no, "waybillCode": created["waybillCode"], "orderStatus": "created"}
    assert jd.error("/ecap/v1/orders/create", jd_order(no)) == 2001
    assert jd.error("/ecap/v1/orders/details/query", {"orderId": new_no("NEVER")}) == 2003
    assert parcel(sim, "jd", no)["waybill"] == created["waybillCode"]


def test_jd_gateway_refuses_a_bad_sign_an_expired_timestamp_and_missing_parameters(sim: Sim, jd: JdClient) -> None:
    no = new_no("JD")
    path = "/ecap/v1/orders/create"

    assert jd.raw(path, jd_order(no), secret="not-the-secret").json()["code"] == 1000
    stale = beijing_text(dt.datetime.now(BEIJING) - dt.timedelta(minutes=16))
    assert jd.raw(path, jd_order(no), timestamp=stale).json()["code"] == 1002
    assert jd.raw(path, jd_order(no), timestamp="2026/01/01 00:00").json()["code"] == 1002
    unsigned = httpx.post(f"{sim.url}{path}", content=json.dumps([jd_order(no)]).encode(), timeout=10)
    assert (unsigned.status_code, unsigned.json()["code"]) == (200, 1002)
    assert jd.raw(path, jd_order(no), token="no-such-token").json()["code"] == 1001

    # Signed over another body than the one sent: the sign covers param_json exactly.
    body = json.dumps([jd_order(no)])
    params = {
        "access_token": sim.env["JD_ACCESS_TOKEN"],
        "app_key": sim.env["JD_APP_KEY"],
        "timestamp": beijing_text(),
        "v": "2.0",
    }
    sign = jd_sign(jd.secret, {**params, "method": path, "param_json": body + " "})
    r = httpx.post(f"{sim.url}{path}", params={**params, "algorithm": "md5-salt", "sign": sign}, content=body.encode())
    assert r.json()["code"] == 1000

    assert jd.error("/ecap/v1/orders/details/query", {"orderId": no}) == 2003  # none of them booked anything


def test_jd_cancel_works_before_pickup_twice_and_is_2004_after(sim: Sim, jd: JdClient) -> None:
    early, late = new_no("JD"), new_no("JD")
    waybills = {}
    for no in (early, late):
        hold(sim, "jd", no)
        waybills[no] = jd.data("/ecap/v1/orders/create", jd_order(no))["waybillCode"]

    cancel = {"orderId": early, "waybillCode": waybills[early], "cancelReason": "customer cancelled"}
    assert jd.data("/ecap/v1/orders/cancel", cancel) == {"result": True}
    assert jd.data("/ecap/v1/orders/cancel", cancel) == {"result": True}
    assert jd.data("/ecap/v1/orders/details/query", {"orderId": early})["orderStatus"] == "cancelled"
    assert parcel(sim, "jd", early)["status"] == "cancelled"

    advance(sim, "jd", late, "PICKED_UP")
    cancel = {"orderId": late, "waybillCode": waybills[late], "cancelReason": "customer cancelled"}
    assert jd.error("/ecap/v1/orders/cancel", cancel) == 2004
    assert jd.data("/ecap/v1/orders/details/query", {"orderId": late})["orderStatus"] == "created"
    assert jd.error("/ecap/v1/orders/cancel", {"orderId": new_no("NEVER"), "cancelReason": "x"}) == 2003


def test_jd_trace_query_lists_each_step_with_its_category_and_state(sim: Sim, jd: JdClient) -> None:
    no = new_no("JD")
    hold(sim, "jd", no)
    waybill = jd.data("/ecap/v1/orders/create", jd_order(no))["waybillCode"]
    assert jd.data("/ecap/v1/orders/trace/query", {"waybillCode": waybill})["traceDetails"] == []

    advance(sim, "jd", no, "DELIVERED")
    trace = jd.data("/ecap/v1/orders/trace/query", {"waybillCode": waybill})

    assert trace["waybillCode"] == waybill
    assert [(t["category"], t["state"]) for t in trace["traceDetails"]] == JD_STATES
    assert all(t["operationTitle"] and t["operationRemark"] for t in trace["traceDetails"])
    assert trace["traceDetails"][0]["operationSite"] == "上海市"
    assert jd.error("/ecap/v1/orders/trace/query", {"waybillCode": "JDV000000000000"}) == 2003


def test_jd_parcel_is_pushed_step_by_step_signed_in_order(sim: Sim, jd: JdClient, receiver: PushReceiver) -> None:
    no = new_no("JD")
    waybill = jd.data("/ecap/v1/orders/create", jd_order(no))["waybillCode"]

    pushes = receiver.wait_for("/jd", no, 5)

    traces = [p.jd_trace() for p in pushes]
    assert [(t["category"], t["state"]) for t in traces] == JD_STATES
    assert len({t["traceId"] for t in traces}) == 5
    for push in pushes:
        body = push.received.body.decode()
        assert json.loads(body)["waybillCode"] == waybill
        assert push.query["channel"] == "sim"  # the registered URL's own query is kept
        assert push.query["app_key"] == sim.env["JD_APP_KEY"]
        stamp = dt.datetime.strptime(push.query["timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING)
        assert abs((dt.datetime.now(BEIJING) - stamp).total_seconds()) < 60
        signed = {"app_key": push.query["app_key"], "param_json": body, "timestamp": push.query["timestamp"]}
        assert push.query["sign"] == jd_sign(jd.secret, signed)
    assert [(p["attempts"], p["delivered"]) for p in parcel(sim, "jd", no)["pushes"]] == [(1, True)] * 5


def test_jd_push_modes_for_every_order_hold_until_released(sim: Sim, jd: JdClient, receiver: PushReceiver) -> None:
    first, second = new_no("JD"), new_no("JD")
    assert sim.control("pushes", carrier="jd", order_id="*", mode="hold").status_code == 200
    try:
        for no in (first, second):
            hold(sim, "jd", no)
            jd.data("/ecap/v1/orders/create", jd_order(no))
            advance(sim, "jd", no, "PICKED_UP")
        time.sleep(10 * SCALE)
        assert receiver.of("/jd", first) == receiver.of("/jd", second) == []

        released = sim.control("pushes/release", carrier="jd").json()["released"]
    finally:
        sim.control("pushes", carrier="jd", order_id="*", mode="normal")

    assert released >= 2
    assert len(receiver.wait_for("/jd", first, 1)) == len(receiver.wait_for("/jd", second, 1)) == 1
    third = new_no("JD")  # the hold ended with the release
    hold(sim, "jd", third)
    jd.data("/ecap/v1/orders/create", jd_order(third))
    advance(sim, "jd", third, "PICKED_UP")
    assert len(receiver.wait_for("/jd", third, 1)) == 1


def test_jd_undeliverable_postal_code_and_a_scheduled_date_outside_1_to_14_days_are_refused(
    sim: Sim, jd: JdClient
) -> None:
    today = beijing_today()
    undeliverable = jd_order(new_no("JD"), postcode="000000")
    assert jd.error("/ecap/v1/orders/precheck", undeliverable) == 2002
    assert jd.error("/ecap/v1/orders/create", undeliverable) == 2002
    for days in (0, 15):
        order = jd_order(new_no("JD"), product="ed-m-0001", expectDeliveryDate=str(today + dt.timedelta(days=days)))
        assert jd.error("/ecap/v1/orders/precheck", order) == 2005
        assert jd.error("/ecap/v1/orders/create", order) == 2005
    day = today + dt.timedelta(days=14)
    created = jd.data(
        "/ecap/v1/orders/create", jd_order(new_no("JD"), product="ed-m-0001", expectDeliveryDate=str(day))
    )
    assert created["deliveryPromiseTime"] == f"{day} 18:00:00"


def test_jd_faults_5xx_lost_reply_and_refuse(sim: Sim, jd: JdClient) -> None:
    unavailable, lost, refused = new_no("JD"), new_no("JD"), new_no("JD")
    for no, kind in ((unavailable, "5xx"), (lost, "lost_reply"), (refused, "refuse")):
        r = sim.control("faults", provider="jd", operation="create", kind=kind, out_trade_no=no)
        assert r.status_code == 200, r.text
    r = sim.control("faults", provider="jd", operation="/ecap/v1/orders/details/query", kind="5xx", out_trade_no=lost)
    assert r.json()["pending"][-1]["operation"] == "details/query"  # a full path names the same operation

    assert jd.raw("/ecap/v1/orders/create", jd_order(unavailable)).status_code == 503
    assert jd.error("/ecap/v1/orders/details/query", {"orderId": unavailable}) == 2003

    with pytest.raises(httpx.TransportError):
        jd.raw("/ecap/v1/orders/create", jd_order(lost))
    assert jd.raw("/ecap/v1/orders/details/query", {"orderId": lost}).status_code == 503
    assert jd.data("/ecap/v1/orders/details/query", {"orderId": lost})["orderStatus"] == "created"

    assert jd.error("/ecap/v1/orders/create", jd_order(refused)) == 2002
    assert jd.error("/ecap/v1/orders/details/query", {"orderId": refused}) == 2003


def test_jd_expired_access_token_is_1001_until_refreshed(sim: Sim, jd: JdClient) -> None:
    client = JdClient(sim)  # its own token, starting from providers.env's
    query = {"orderId": new_no("JD")}
    path = "/ecap/v1/orders/details/query"
    assert client.raw(path, query).json()["code"] == 2003  # the token works

    expired = sim.control("jd/expire-token")
    assert expired.status_code == 200
    assert expired.json()["expired"] >= 1
    assert client.raw(path, query).json()["code"] == 1001

    assert client.refresh("not-the-refresh-token")["code"] == 1001
    assert client.refresh(refresh_token=None)["code"] == 0
    assert client.call(path, query)["code"] == 2003  # refreshed once, then repeated
    assert client.refreshes == 1
    assert client.token != sim.env["JD_ACCESS_TOKEN"]
    assert client.raw(path, query, token=sim.env["JD_ACCESS_TOKEN"]).json()["code"] == 1001
    refreshed = client.refresh()["data"]
    assert refreshed["expires_in"] == 86400
    assert refreshed["refresh_token"] == sim.read("JD_REFRESH_TOKEN_FILE").strip()


# ------------------------------------------------------------------ control API, keys, health


def test_control_lists_parcels_and_refuses_what_does_not_apply(sim: Sim, sf: SfClient) -> None:
    no = new_no("SF")
    hold(sim, "sf", no)
    sf.data(CREATE, sf_order(no))

    listed = httpx.get(f"{sim.url}/control/parcels/sf", timeout=10).json()
    assert listed["carrier"] == "sf"
    assert no in {p["order_id"] for p in listed["parcels"]}
    assert httpx.get(f"{sim.url}/control/parcels/ups", timeout=10).status_code == 404
    assert httpx.get(f"{sim.url}/control/parcels/sf/{new_no('NEVER')}", timeout=10).status_code == 404
    assert sim.control("parcels/advance", carrier="sf", order_id=new_no("NEVER"), to="DELIVERED").status_code == 404
    assert sim.control("parcels/advance", carrier="sf", order_id=no, to="LOST").status_code == 422
    assert sim.control("faults", provider="sf", operation=CREATE, kind="decline").status_code == 422
    assert sim.control("faults", provider="alipay", operation="precreate", kind="refuse").status_code == 422
    assert sim.control("pushes", carrier="sf", order_id=no, mode="sometimes").status_code == 422


def test_carrier_credentials_are_kept_private_and_providers_env_names_them(sim: Sim, sf: SfClient) -> None:
    health = httpx.get(f"{sim.url}/health", timeout=10).json()
    assert health["carriers"] == ["jd", "sf"]
    assert {"alipay", "wechatpay", "sf", "jd"} <= set(health["providers"])

    for variable in ("SF_CHECKWORD_FILE", "JD_APP_SECRET_FILE", "JD_REFRESH_TOKEN_FILE"):
        path = Path(sim.env[variable])
        assert path.parent.resolve() == sim.state.resolve()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, variable
        assert len(path.read_text().strip()) >= 16, variable
    assert sim.env["SF_API_URL"] == sim.env["JD_API_URL"] == sim.url
    assert sim.env["SF_PARTNER_ID"]
    assert sim.env["SF_MONTHLY_CARD"].isdigit()
    assert sim.env["JD_APP_KEY"]
    assert sim.env["JD_CUSTOMER_CODE"]
    assert sim.env["JD_ACCESS_TOKEN"]
    assert sim.env["ALIPAY_GATEWAY_URL"] == f"{sim.url}/gateway.do"  # the payment lines are still there
    assert sf.checkword == sim.read("SF_CHECKWORD_FILE").strip()
