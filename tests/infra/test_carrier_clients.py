"""The shipping service's carrier clients (services/shipping/sf.py, jd.py) against the carrier simulator.

A simulator of its own runs for this module (deploy/local/provider_sim as a subprocess on a free port, its own state
directory, parcels moving at ``--parcel-time-scale 0.05``); the clients are configured from the providers.env it
writes, as the shipping service is, and a local HTTP server is both carriers' registered push URL. Each test holds
its parcel still and moves it with the simulator's control API, so nothing depends on the automatic schedule.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest

from services.shipping.carrier import (
    Carrier,
    CarrierRefused,
    CarrierRejected,
    CarrierUnavailable,
    InvalidPush,
    ParcelOrder,
    Pushed,
    Sender,
    book,
)
from services.shipping.jd import BEIJING, JDLogistics
from services.shipping.sf import SFExpress
from shared.events.storefront import Address

pytestmark = pytest.mark.infra

REPO = Path(__file__).resolve().parents[2]
JOURNEY = ["PICKED_UP", "IN_TRANSIT", "IN_TRANSIT", "OUT_FOR_DELIVERY", "DELIVERED"]
PUSH_REPLIES = {
    "/sf": (b'{"return_code":"0000","return_msg":"\xe6\x88\x90\xe5\x8a\x9f"}', "application/json"),
    "/jd": (b'{"code":0,"msg":"success"}', "application/json"),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Received:
    path: str
    query: dict[str, str]
    content_type: str
    body: bytes


@dataclass
class Receiver:
    """Both carriers' registered push URL (``/sf``, ``/jd``): keeps every push, answers each as accepted."""

    base: str = ""
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def of(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            url = urlsplit(self.path)
            with rec.lock:
                rec.received.append(
                    Received(url.path, dict(parse_qsl(url.query)), self.headers.get("Content-Type", ""), body)
                )
            reply, media = PUSH_REPLIES.get(url.path, (b"not found", "text/plain"))
            self.send_response(200 if url.path in PUSH_REPLIES else 404)
            self.send_header("Content-Type", media)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


@dataclass(frozen=True)
class Sim:
    url: str
    env: dict[str, str]

    def control(self, path: str, **body: Any) -> httpx.Response:
        return httpx.post(f"{self.url}/control/{path}", json=body, timeout=10)

    def ok(self, path: str, **body: Any) -> Any:
        r = self.control(path, **body)
        assert r.status_code == 200, (path, body, r.status_code, r.text)
        return r.json()

    def parcel(self, carrier: str, order_id: str) -> dict[str, Any] | None:
        r = httpx.get(f"{self.url}/control/parcels/{carrier}/{order_id}", timeout=10)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        view: dict[str, Any] = r.json()
        return view

    def parcels(self, carrier: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/control/parcels/{carrier}", timeout=10)
        r.raise_for_status()
        body = r.json()
        views: list[dict[str, Any]] = body if isinstance(body, list) else body.get("parcels", [])
        return views

    def read(self, variable: str) -> str:
        return Path(self.env[variable]).read_text().strip()


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Sim]:
    if not (REPO / "deploy/local/provider_sim/jd.py").exists():
        pytest.skip("the carrier simulator (deploy/local/provider_sim/sf.py, jd.py) is not there yet")
    state = tmp_path_factory.mktemp("carrier-sim")
    log_path = state.parent / "carrier-sim.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "deploy.local.provider_sim",
        "--state",
        str(state),
        "--port",
        str(port),
        "--time-scale",
        "0.001",
        "--parcel-time-scale",
        "0.05",
        "--sf-push-url",
        f"{receiver.base}/sf",
        "--jd-push-url",
        f"{receiver.base}/jd",
    ]
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
        yield Sim(url=url, env=env)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
async def sf(sim: Sim) -> AsyncIterator[SFExpress]:
    client = SFExpress(
        api_url=sim.env["SF_API_URL"],
        partner_id=sim.env["SF_PARTNER_ID"],
        checkword=sim.read("SF_CHECKWORD_FILE"),
        monthly_card=sim.env["SF_MONTHLY_CARD"],
        sender=Sender(),
        timeout=5.0,
    )
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
async def jd(sim: Sim) -> AsyncIterator[JDLogistics]:
    client = JDLogistics(
        api_url=sim.env["JD_API_URL"],
        app_key=sim.env["JD_APP_KEY"],
        app_secret=sim.read("JD_APP_SECRET_FILE"),
        access_token=sim.env["JD_ACCESS_TOKEN"],
        refresh_token=sim.read("JD_REFRESH_TOKEN_FILE"),
        customer_code=sim.env["JD_CUSTOMER_CODE"],
        sender=Sender(),
        timeout=5.0,
    )
    yield client
    await client.aclose()


@pytest.fixture(params=["sf", "jd"])
def carrier(request: pytest.FixtureRequest, sf: SFExpress, jd: JDLogistics) -> Carrier:
    chosen: Carrier = sf if request.param == "sf" else jd
    return chosen


def new_order_id() -> str:
    return f"ct-{uuid.uuid4().hex[:16]}"


def today() -> date:
    return datetime.now(BEIJING).date()  # the carriers' day


def parcel(
    order_id: str, *, option: str = "standard", postal_code: str = "100020", scheduled: date | None = None
) -> ParcelOrder:
    return ParcelOrder(
        order_id=order_id,
        recipient_phone="13800000000",
        option=option,
        address=Address(
            recipient="张三", line1="朝阳区建国路 1 号 ~*", city="北京市", postal_code=postal_code, country="CN"
        ),
        ordered_on=today(),
        scheduled_date=scheduled,
    )


def held(sim: Sim, carrier: Carrier) -> str:
    """A new order id whose parcel will stay where it is until the test moves it."""
    order_id = new_order_id()
    sim.ok("parcels/hold", carrier=carrier.code, order_id=order_id)
    return order_id


def live_parcels(sim: Sim, carrier: str, order_id: str) -> int:
    return sum(1 for p in sim.parcels(carrier) if p.get("order_id") == order_id)


# ---------------------------------------------------------------------------------------------------- booking


async def test_create_gives_a_waybill_the_carrier_holds(sim: Sim, carrier: Carrier) -> None:
    order_id = held(sim, carrier)
    waybill = await carrier.create(parcel(order_id, option="next_day"))
    assert waybill.tracking_number
    view = sim.parcel(carrier.code, order_id)
    assert view is not None
    assert (view["waybill"], view["status"]) == (waybill.tracking_number, "created")
    found = await carrier.query(order_id)
    assert found is not None
    assert (found.tracking_number, found.cancelled) == (waybill.tracking_number, False)
    assert await carrier.query(new_order_id()) is None


async def test_book_recovers_a_lost_reply_without_a_second_parcel(sim: Sim, carrier: Carrier) -> None:
    order_id = held(sim, carrier)
    sim.ok("faults", provider=carrier.code, operation="create", kind="lost_reply", out_trade_no=order_id)
    with pytest.raises(CarrierUnavailable):
        await carrier.create(parcel(order_id))  # the reply is lost: the outcome is unknown to the client
    view = sim.parcel(carrier.code, order_id)
    assert view is not None  # ... but the carrier booked it
    waybill = await book(carrier, parcel(order_id))  # create again -> duplicate -> query: the same parcel
    assert waybill.tracking_number == view["waybill"]
    assert live_parcels(sim, carrier.code, order_id) == 1


async def test_book_through_a_lost_create_reply(sim: Sim, carrier: Carrier) -> None:
    order_id = held(sim, carrier)
    sim.ok("faults", provider=carrier.code, operation="create", kind="lost_reply", out_trade_no=order_id)
    waybill = await book(carrier, parcel(order_id))  # the lost reply recovered by query at once
    view = sim.parcel(carrier.code, order_id)
    assert view is not None
    assert waybill.tracking_number == view["waybill"]
    assert live_parcels(sim, carrier.code, order_id) == 1


async def test_refusal_is_final(sim: Sim, carrier: Carrier) -> None:
    order_id = held(sim, carrier)
    sim.ok("faults", provider=carrier.code, operation="create", kind="refuse", out_trade_no=order_id)
    with pytest.raises(CarrierRejected) as refused:
        await carrier.create(parcel(order_id))
    assert refused.value.reason.startswith("shipping_failed: ")
    assert sim.parcel(carrier.code, order_id) is None

    with pytest.raises(CarrierRejected) as undeliverable:
        await carrier.create(parcel(new_order_id(), postal_code="000000"))
    assert undeliverable.value.reason.startswith("shipping_failed: ")

    too_late = today() + timedelta(days=30)
    with pytest.raises(CarrierRejected) as date_refused:
        await carrier.create(parcel(new_order_id(), option="scheduled", scheduled=too_late))
    assert date_refused.value.reason.startswith("shipping_failed: ")


async def test_scheduled_delivery_is_booked(sim: Sim, carrier: Carrier) -> None:
    order_id = held(sim, carrier)
    waybill = await carrier.create(parcel(order_id, option="scheduled", scheduled=today() + timedelta(days=3)))
    assert waybill.tracking_number
    assert waybill.promised_date in (None, today() + timedelta(days=3))


async def test_5xx_is_unavailable_and_books_nothing(sim: Sim, carrier: Carrier) -> None:
    order_id = held(sim, carrier)
    sim.ok("faults", provider=carrier.code, operation="create", kind="5xx", out_trade_no=order_id)
    with pytest.raises(CarrierUnavailable):
        await carrier.create(parcel(order_id))
    assert sim.parcel(carrier.code, order_id) is None
    assert (await carrier.create(parcel(order_id))).tracking_number  # the next attempt books it


# ---------------------------------------------------------------------------------------------------- cancel


async def test_cancel_before_pickup_is_idempotent(sim: Sim, carrier: Carrier) -> None:
    order_id = held(sim, carrier)
    waybill = await carrier.create(parcel(order_id))
    await carrier.cancel(order_id, waybill.tracking_number)
    await carrier.cancel(order_id, waybill.tracking_number)
    view = sim.parcel(carrier.code, order_id)
    assert view is not None
    assert view["status"] == "cancelled"
    found = await carrier.query(order_id)
    assert found is not None
    assert found.cancelled


async def test_cancel_after_pickup_is_refused(sim: Sim, carrier: Carrier) -> None:
    order_id = held(sim, carrier)
    waybill = await carrier.create(parcel(order_id))
    sim.ok("parcels/advance", carrier=carrier.code, order_id=order_id, to="PICKED_UP")
    with pytest.raises(CarrierRefused) as refused:
        await carrier.cancel(order_id, waybill.tracking_number)
    assert refused.value.reason == "picked_up"
    view = sim.parcel(carrier.code, order_id)
    assert view is not None
    assert view["status"] == "created"


# ---------------------------------------------------------------------------------------------------- tracking


async def test_routes_carry_the_milestones_in_order(sim: Sim, carrier: Carrier) -> None:
    order_id = held(sim, carrier)
    waybill = await carrier.create(parcel(order_id))
    assert await carrier.routes(order_id, waybill.tracking_number) == []
    sim.ok("parcels/advance", carrier=carrier.code, order_id=order_id, to="DELIVERED")
    steps = await carrier.routes(order_id, waybill.tracking_number)
    assert [s.milestone for s in steps] == JOURNEY
    assert [s.at for s in steps] == sorted(s.at for s in steps)
    assert all(s.at.tzinfo is not None for s in steps)
    assert len({s.step_id for s in steps}) == len(steps)
    again = await carrier.routes(order_id, waybill.tracking_number)
    assert [s.step_id for s in again] == [s.step_id for s in steps]  # stable across queries


def pushed_for(carrier: Carrier, receiver: Receiver, order_id: str) -> list[tuple[Received, Pushed]]:
    found = []
    for received in receiver.of(f"/{carrier.code}"):
        for pushed in carrier.parse_push(received.body, received.content_type, received.query):
            if pushed.order_id == order_id:
                found.append((received, pushed))
    return found


def tampered(received: Received) -> Received:
    """The same push with its first step's remark changed after it was signed (signature and timestamp kept)."""
    if received.path == "/sf":
        fields = dict(parse_qsl(received.body.decode(), keep_blank_values=True))
        msg = json.loads(fields["msgData"])
        msg["WaybillRoute"][0]["remark"] += " (forged)"
        fields["msgData"] = json.dumps(msg, ensure_ascii=False)
        body = urlencode(fields).encode()
    else:
        push = json.loads(received.body)
        push["traceDetails"][0]["operationRemark"] = str(push["traceDetails"][0].get("operationRemark")) + " (forged)"
        body = json.dumps(push, ensure_ascii=False).encode()
    return Received(received.path, received.query, received.content_type, body)


async def test_pushes_parse_into_the_route_steps_and_a_tampered_copy_is_refused(
    sim: Sim, carrier: Carrier, receiver: Receiver
) -> None:
    order_id = held(sim, carrier)
    waybill = await carrier.create(parcel(order_id))
    sim.ok("parcels/advance", carrier=carrier.code, order_id=order_id, to="DELIVERED")

    deadline = time.monotonic() + 20
    while True:
        got = pushed_for(carrier, receiver, order_id)
        milestones = [s.milestone for _, p in got for s in p.steps]
        if "DELIVERED" in milestones or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert milestones == JOURNEY
    assert {p.tracking_number for _, p in got} == {waybill.tracking_number}
    view = sim.parcel(carrier.code, order_id)
    assert view is not None
    # Each pushed step has the id a route query gives the same step (queries carry no ids): taken once.
    queried = await carrier.routes(order_id, waybill.tracking_number)
    assert [s.step_id for _, p in got for s in p.steps] == [s.step_id for s in queried]
    deadline = time.monotonic() + 5
    while not all(p["delivered"] for p in view["pushes"]) and time.monotonic() < deadline:
        time.sleep(0.05)  # the simulator records our answer just after we have the push
        view = sim.parcel(carrier.code, order_id) or view
    assert [p["delivered"] for p in view["pushes"]] == [True] * len(JOURNEY)  # our answer counted as accepted

    received, _ = got[0]
    forged = tampered(received)
    with pytest.raises(InvalidPush):
        carrier.parse_push(forged.body, forged.content_type, forged.query)


async def test_jd_expired_token_is_refreshed_transparently(sim: Sim, jd: JDLogistics) -> None:
    expired = sim.control("jd/expire-token")
    if expired.status_code == 404:
        pytest.skip("the simulator offers no POST /control/jd/expire-token")
    assert expired.status_code == 200, expired.text
    order_id = held(sim, jd)
    waybill = await jd.create(parcel(order_id))  # 1001 -> refresh -> the same call again
    found = await jd.query(order_id)
    assert found is not None
    assert found.tracking_number == waybill.tracking_number
    assert live_parcels(sim, "jd", order_id) == 1
