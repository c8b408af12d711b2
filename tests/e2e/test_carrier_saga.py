"""Parcels end to end: the five services as OS processes, the shipping service speaking the SF Express and JD
Logistics open-platform protocols (services/shipping/sf.py, jd.py) to the simulator on 8070, which verifies their
signatures, answers as the carriers do and pushes each parcel's route, signed, to the shipping service. Tests steer
a parcel through the simulator's control API (hold it, move it on, inject faults)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from typing import Any
from urllib.parse import quote_plus

import httpx
import pytest

from shared import topics
from tests.e2e.conftest import ORDER_API, System, distinct, new_order_id, order_body
from tests.sse import read_stream

pytestmark = pytest.mark.e2e
SIM = "http://127.0.0.1:8070"
SHIPPING_API = "http://127.0.0.1:8083"
# Delivery option -> (carrier code, its name, the simulator's name of its create operation)
CARRIERS = {
    "next_day": ("sf", "SF Express", "EXP_RECE_CREATE_ORDER"),
    "standard": ("jd", "JD Logistics", "create"),
}


@pytest.fixture(scope="module", autouse=True)
async def simulator() -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        try:
            health = (await http.get(f"{SIM}/health")).json()
        except (httpx.HTTPError, ValueError):
            health = {}
    if not {"sf", "jd"} <= set(health.get("carriers", [])):
        pytest.fail("the carrier simulator does not answer on 127.0.0.1:8070: run `make up` first", pytrace=False)


async def control(path: str, **body: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(f"{SIM}/control/{path}", json=body)
        r.raise_for_status()
        return r


async def parcel(carrier: str, order_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(f"{SIM}/control/parcels/{carrier}/{order_id}")
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]


async def place(system: System, order_id: str, option: str, **shipping: Any) -> None:
    body = order_body(order_id)
    body["shipping"] = {**body["shipping"], "option": option, **shipping}
    r = await system.http.post(f"{ORDER_API}/orders", json=body)
    assert r.status_code == 202, r.text


def delivery(status: str) -> Any:
    return lambda o: (o.get("delivery") or {}).get("status") == status


@pytest.mark.parametrize("option", list(CARRIERS))
async def test_an_order_reaches_completed_then_delivered_on_its_stream(system: System, option: str) -> None:
    code, name, _ = CARRIERS[option]
    oid = new_order_id("SHIP")
    await place(system, oid, option)

    got = await read_stream(
        f"{ORDER_API}/orders/{oid}/stream", headers={}, timeout=httpx.Timeout(10, read=60), within=90
    )

    views = [d for _, _, d in got.events]
    statuses = [v["status"] for v in views]
    assert "COMPLETED" in statuses
    done = statuses.index("COMPLETED")
    after = [v["stage"] for v in views[done:]]
    assert after[-1] == "DELIVERED"
    # The parcel's milestones in the carrier's order, after completion (a version may show two steps at once).
    order_of = ["DONE", "PICKED_UP", "IN_TRANSIT", "OUT_FOR_DELIVERY", "DELIVERED"]
    assert after == sorted(after, key=order_of.index)
    final = views[-1]
    assert final["shipment"]["carrier"] == name
    assert final["delivery"]["delivered_at"]
    assert [s["milestone"] for s in final["delivery"]["steps"]][-1] == "DELIVERED"
    held = await parcel(code, oid)
    assert held["waybill"] == final["shipment"]["tracking_number"]
    tracked = [e for e in await system.events(oid, topics.SHIPPING_EVENTS) if e["event_type"] == "ShipmentTracked"]
    assert {e["milestone"] for e in tracked} >= {"PICKED_UP", "DELIVERED"}


@pytest.mark.parametrize("option", list(CARRIERS))
async def test_cancel_before_pickup_calls_the_parcel_back_and_refunds(system: System, option: str) -> None:
    code, _, _ = CARRIERS[option]
    oid = new_order_id("SHIP")
    await control("parcels/hold", carrier=code, order_id=oid)
    await place(system, oid, option)
    await system.wait_for(oid, status="COMPLETED", timeout=30)

    r = await system.http.post(f"{ORDER_API}/orders/{oid}/cancel", json={"reason": "changed my mind"})
    assert r.status_code == 202, r.text
    cancelled = await system.wait_for(oid, status="CANCELLED", timeout=30)

    assert cancelled["reason"] == "customer_request"
    events = await system.events(oid, topics.SHIPPING_EVENTS, topics.PAYMENT_EVENTS)
    await system.wait_for(oid, until=lambda o: any(h["event_type"] == "PaymentRefunded" for h in o["history"]))
    assert distinct(await system.events(oid, topics.SHIPPING_EVENTS), "ShipmentCancelled") == 1
    assert distinct(events, "ShipmentIntercepted") == 0
    assert (await parcel(code, oid))["status"] == "cancelled"


@pytest.mark.parametrize("option", list(CARRIERS))
async def test_cancel_after_pickup_records_an_interception_and_still_refunds(system: System, option: str) -> None:
    code, _, _ = CARRIERS[option]
    oid = new_order_id("SHIP")
    await control("parcels/hold", carrier=code, order_id=oid)
    await place(system, oid, option)
    await system.wait_for(oid, status="COMPLETED", timeout=30)
    await control("parcels/advance", carrier=code, order_id=oid, to="PICKED_UP")
    await system.wait_for(oid, until=delivery("PICKED_UP"), timeout=30)

    r = await system.http.post(f"{ORDER_API}/orders/{oid}/cancel", json={"reason": "too late?"})
    assert r.status_code == 202, r.text
    await system.wait_for(oid, status="CANCELLED", timeout=30)
    order = await system.wait_for(
        oid,
        until=lambda o: {"PaymentRefunded", "ShipmentIntercepted"} <= {h["event_type"] for h in o["history"]},
        timeout=30,
    )

    assert order["delivery"]["status"] == "INTERCEPTED"
    events = await system.events(oid, topics.SHIPPING_EVENTS)
    assert distinct(events, "ShipmentCancelled") == 0
    intercepted = [e for e in events if e["event_type"] == "ShipmentIntercepted"]
    assert intercepted[0]["reason"] == "picked_up"
    assert (await parcel(code, oid))["status"] != "cancelled"  # the carrier refused: it is on its way back


async def test_a_delivered_order_cannot_be_cancelled(system: System) -> None:
    oid = new_order_id("SHIP")
    await control("parcels/hold", carrier="sf", order_id=oid)
    await place(system, oid, "next_day")
    await system.wait_for(oid, status="COMPLETED", timeout=30)
    await control("parcels/advance", carrier="sf", order_id=oid, to="DELIVERED")
    await system.wait_for(oid, until=delivery("DELIVERED"), timeout=30)

    await system.http.post(f"{ORDER_API}/orders/{oid}/cancel", json={})
    order = await system.wait_for(
        oid, until=lambda o: any(h["event_type"] == "OrderCancellationRequested" for h in o["history"]), timeout=20
    )

    assert order["status"] == "COMPLETED"
    refused = [
        e for e in await system.events(oid, topics.ORDER_EVENTS) if e["event_type"] == "OrderCancellationRefused"
    ]
    assert [e["reason"] for e in refused] == ["parcel_already_delivered"]


@pytest.mark.parametrize("option", list(CARRIERS))
async def test_a_lost_create_reply_is_recovered_without_a_second_parcel(system: System, option: str) -> None:
    code, _, create = CARRIERS[option]
    oid = new_order_id("SHIP")
    await control("faults", provider=code, operation=create, kind="lost_reply", out_trade_no=oid)
    await place(system, oid, option)

    done = await system.wait_for(oid, status="COMPLETED", timeout=45)

    held = await parcel(code, oid)
    assert held["waybill"] == done["shipment"]["tracking_number"]
    scheduled = [e for e in await system.events(oid, topics.SHIPPING_EVENTS) if e["event_type"] == "ShipmentScheduled"]
    assert {e["tracking_number"] for e in scheduled} == {held["waybill"]}


def sf_digest(msg_data: str, timestamp: str, checkword: str) -> str:
    encoded = quote_plus(msg_data + timestamp + checkword, safe="*").replace("~", "%7E")
    return base64.b64encode(hashlib.md5(encoded.encode()).digest()).decode()


async def test_a_forged_push_is_refused_and_changes_nothing(system: System) -> None:
    oid = new_order_id("SHIP")
    await control("parcels/hold", carrier="sf", order_id=oid)
    await place(system, oid, "next_day")
    done = await system.wait_for(oid, status="COMPLETED", timeout=30)
    waybill = done["shipment"]["tracking_number"]
    route = {
        "id": "FORGED-1",
        "mailno": waybill,
        "orderid": oid,
        "acceptTime": time.strftime("%Y-%m-%d %H:%M:%S"),
        "acceptAddress": "深圳",
        "remark": "已签收",
        "opCode": "80",
    }
    msg = json.dumps({"WaybillRoute": [route]}, ensure_ascii=False)
    ts = str(int(time.time() * 1000))

    async with httpx.AsyncClient(timeout=10) as http:
        forged = await http.post(
            f"{SHIPPING_API}/shipping/notify/sf",
            data={"msgData": msg, "timestamp": ts, "msgDigest": sf_digest(msg, ts, "not-the-checkword")},
        )
        jd_forged = await http.post(
            f"{SHIPPING_API}/shipping/notify/jd",
            params={"app_key": "x", "timestamp": time.strftime("%Y-%m-%d %H:%M:%S"), "sign": "0" * 32},
            content=json.dumps({"waybillCode": waybill, "orderId": oid, "traceDetails": []}),
            headers={"content-type": "application/json"},
        )

    assert forged.json().get("return_code") != "0000"
    assert jd_forged.json().get("code") != 0
    await asyncio.sleep(2)  # time for a push that was wrongly taken to reach the order
    order = await system.order(oid)
    assert order is not None
    assert order["stage"] == "DONE"
    assert order.get("delivery") is None
    assert distinct(await system.events(oid, topics.SHIPPING_EVENTS), "ShipmentTracked") == 0


async def test_a_scheduled_date_the_carriers_do_not_deliver_on_fails_the_shipment(system: System) -> None:
    oid = new_order_id("SHIP")
    await place(system, oid, "scheduled", scheduled_date="2099-01-01")

    order = await system.wait_for(oid, status="CANCELLED", timeout=30)

    assert order["reason"] == "shipping_failed"
    failed = [e for e in await system.events(oid, topics.SHIPPING_EVENTS) if e["event_type"] == "ShipmentFailed"]
    assert "scheduled date" in failed[0]["detail"]
