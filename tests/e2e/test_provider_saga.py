"""Sagas paid at a provider's cashier, end to end: the five services as OS processes, the payment service speaking
the real Alipay and WeChat Pay protocols (python-alipay-sdk, wechatpayv3) to the provider simulator on 8070, which
signs its replies and notifications as the providers do. The customer's side is the simulator's control API."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from typing import Any

import httpx
import pytest

from shared import topics
from tests.e2e.conftest import System, distinct, fulfil, new_order_id, order_body

pytestmark = pytest.mark.e2e
SIM = "http://127.0.0.1:8070"
PAYMENT_API = "http://127.0.0.1:8081"
PROVIDER = {"alipay": "alipay", "wechat_pay": "wechatpay"}


@pytest.fixture(scope="module", autouse=True)
async def simulator() -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        try:
            ok = (await http.get(f"{SIM}/health")).status_code == 200
        except httpx.HTTPError:
            ok = False
    if not ok:
        pytest.fail("the provider simulator does not answer on 127.0.0.1:8070: run `make up` first", pytrace=False)


def cashier_order(order_id: str, method: str, **payment: Any) -> dict[str, Any]:
    body = order_body(order_id)
    body["payment"] = {"method": method, **payment}
    return body


async def place(system: System, body: dict[str, Any]) -> None:
    r = await system.http.post("http://127.0.0.1:8080/orders", json=body, headers={"Idempotency-Key": body["order_id"]})
    assert r.status_code == 202, r.text


async def awaiting_payment(system: System, order_id: str) -> dict[str, Any]:
    return await system.wait_for(order_id, until=lambda o: o.get("payment_action") is not None, timeout=20)


async def control(path: str, **body: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(f"{SIM}/control/{path}", json=body)


async def trade(provider: str, order_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(f"{SIM}/control/trades/{provider}/{order_id}")
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("method", "channel", "shown"), [("alipay", "qr", "code_url"), ("wechat_pay", "native", "code_url")]
)
async def test_an_order_paid_at_the_provider_completes_with_the_money_taken_once(
    system: System, method: str, channel: str, shown: str
) -> None:
    oid = new_order_id("PAY")
    await place(system, cashier_order(oid, method, channel=channel))

    order = await awaiting_payment(system, oid)
    action = order["payment_action"]
    assert order["stage"] == "AWAITING_PAYMENT"
    assert action["provider"] == PROVIDER[method]
    assert action[shown]
    assert order["status"] == "PENDING"

    assert (await control("pay", provider=PROVIDER[method], out_trade_no=oid)).status_code == 200
    done = await system.wait_for(oid, status="COMPLETED", timeout=30)

    steps = [h["event_type"] for h in done["history"]]
    assert steps.index("PaymentActionRequired") < steps.index("PaymentAuthorized") < steps.index("PaymentCaptured")
    events = await system.events(oid, topics.ORDER_EVENTS, topics.PAYMENT_EVENTS)
    assert distinct(events, "OrderAwaitingPayment") == 1
    assert distinct(events, "PaymentRefunded") == 0
    authorized = [e for e in events if e.get("event_type") == "PaymentAuthorized"]
    assert {(e["settled"], e["provider"]) for e in authorized} == {(True, PROVIDER[method])}
    seen = await trade(PROVIDER[method], oid)
    assert seen["status"] in ("TRADE_SUCCESS", "SUCCESS", "paid")
    await system.wait_for(oid, until=lambda o: o["notifications"], timeout=15)
    assert len(await system.mails_to(f"{oid.lower()}@example.com")) == 1


async def test_alipay_page_channel_gives_a_signed_cashier_url_that_a_browser_opens(system: System) -> None:
    oid = new_order_id("PAY")
    await place(system, cashier_order(oid, "alipay", channel="page", return_url="https://shop.example/paid"))

    action = (await awaiting_payment(system, oid))["payment_action"]

    assert action["pay_url"].startswith(f"{SIM}/gateway.do?")
    assert "sign=" in action["pay_url"]
    async with httpx.AsyncClient(timeout=10) as http:
        page = await http.get(action["pay_url"])
    assert page.status_code == 200
    assert "79.80" in page.text
    await control("pay", provider="alipay", out_trade_no=oid)
    await system.wait_for(oid, status="COMPLETED", timeout=30)


async def test_cancelling_before_payment_closes_the_trade_and_nothing_is_charged(system: System) -> None:
    oid = new_order_id("PAY")
    await place(system, cashier_order(oid, "wechat_pay"))
    await awaiting_payment(system, oid)

    r = await system.http.post(f"http://127.0.0.1:8080/orders/{oid}/cancel", json={"reason": "changed my mind"})
    assert r.status_code in (200, 202), r.text
    await system.wait_for(oid, status="CANCELLED", timeout=20)

    events = await system.events(oid, topics.PAYMENT_EVENTS)
    await _eventually(lambda: _has(system, oid, "PaymentVoided"))
    assert distinct(events, "PaymentAuthorized") == 0
    assert (await trade("wechatpay", oid))["status"] in ("CLOSED", "closed")
    assert (await control("pay", provider="wechatpay", out_trade_no=oid)).status_code == 409  # closed: cannot pay


@pytest.mark.parametrize(
    ("method", "failure", "reason"),
    [("alipay", "sold_out", "out_of_stock"), ("wechat_pay", "undeliverable", "shipping_failed")],
)
async def test_a_failure_after_payment_refunds_once(system: System, method: str, failure: str, reason: str) -> None:
    oid = new_order_id("PAY")
    body = cashier_order(oid, method)
    if failure == "sold_out":
        body["lines"] = [{"sku": "SKU-SOLD-OUT", "quantity": 1, "unit_price": "9.90"}]
    else:
        body["shipping"]["address"]["postal_code"] = "000000"  # the carrier refuses it
    await place(system, body)
    await awaiting_payment(system, oid)

    await control("pay", provider=PROVIDER[method], out_trade_no=oid)
    order = await system.wait_for(oid, status="CANCELLED", timeout=30)

    assert order["reason"] == reason
    await _eventually(lambda: _has(system, oid, "PaymentRefunded"), timeout=40)  # WeChat: PROCESSING, then SUCCESS
    events = await system.events(oid, topics.PAYMENT_EVENTS)
    assert distinct(events, "PaymentRefunded") == 1
    seen = await trade(PROVIDER[method], oid)
    assert len(seen["refunds"]) == 1


async def test_an_abandoned_trade_expires_and_the_order_is_cancelled(system: System) -> None:
    oid = new_order_id("PAY")
    await place(system, cashier_order(oid, "alipay"))
    await awaiting_payment(system, oid)

    assert (await control("abandon", provider="alipay", out_trade_no=oid)).status_code == 200
    assert (await control("expire", provider="alipay", out_trade_no=oid)).status_code == 200
    order = await system.wait_for(oid, status="CANCELLED", timeout=60)

    assert order["reason"] == "payment_declined"
    declined = [e for e in await system.events(oid, topics.PAYMENT_EVENTS) if e["event_type"] == "PaymentDeclined"]
    assert {e["reason"] for e in declined} == {"payment_expired"}


async def test_a_forged_notification_is_refused_and_changes_nothing(system: System) -> None:
    oid = new_order_id("PAY")
    await place(system, cashier_order(oid, "alipay"))
    await awaiting_payment(system, oid)
    forged = {
        "notify_time": dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).strftime("%Y-%m-%d %H:%M:%S"),
        "notify_type": "trade_status_sync",
        "notify_id": uuid.uuid4().hex,
        "app_id": "2021000000000001",
        "trade_no": "2026FORGED",
        "out_trade_no": oid,
        "trade_status": "TRADE_SUCCESS",
        "total_amount": "79.80",
        "sign_type": "RSA2",
        "sign": "Zm9yZ2Vk",
    }
    async with httpx.AsyncClient(timeout=10) as http:
        alipay = await http.post(f"{PAYMENT_API}/payments/notify/alipay", data=forged)
        wechat = await http.post(
            f"{PAYMENT_API}/payments/notify/wechatpay",
            content=json.dumps({"id": "x", "resource": {}}),
            headers={"Wechatpay-Timestamp": "1", "Wechatpay-Signature": "x", "Content-Type": "application/json"},
        )

    assert alipay.text != "success"
    assert wechat.status_code >= 400
    await asyncio.sleep(2)
    order = await system.order(oid)
    assert order is not None
    assert (order["status"], order["stage"]) == ("PENDING", "AWAITING_PAYMENT")
    assert distinct(await system.events(oid, topics.PAYMENT_EVENTS), "PaymentAuthorized") == 0
    await control("abandon", provider="alipay", out_trade_no=oid)


async def test_duplicate_and_out_of_order_notifications_take_the_money_once(system: System) -> None:
    oid = new_order_id("PAY")
    await place(system, cashier_order(oid, "wechat_pay"))
    await awaiting_payment(system, oid)
    await control("notifications", provider="wechatpay", out_trade_no=oid, mode="duplicate")

    await control("pay", provider="wechatpay", out_trade_no=oid)
    await system.wait_for(oid, status="COMPLETED", timeout=30)

    events = await system.events(oid, topics.PAYMENT_EVENTS)
    assert distinct(events, "PaymentAuthorized") == 1
    assert distinct(events, "PaymentCaptured") == 1


async def test_reconcile_finds_a_planted_difference_and_nothing_otherwise(system: System) -> None:
    oid = new_order_id("PAY")
    await place(system, cashier_order(oid, "alipay"))
    await awaiting_payment(system, oid)
    await control("pay", provider="alipay", out_trade_no=oid)
    await system.wait_for(oid, status="COMPLETED", timeout=30)
    today = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date().isoformat()

    clean = fulfil("reconcile", "--provider", "alipay", "--date", today, "--json")
    found = json.loads(clean.stdout)["differences"] if clean.stdout else clean.stderr
    planted_id = new_order_id("GHOST")
    async with httpx.AsyncClient(timeout=10) as http:
        planted = await http.post(
            f"{SIM}/control/bill-rows",
            json={
                "provider": "alipay",
                "date": today,
                "row": {"out_trade_no": planted_id, "amount": "12.34", "kind": "payment"},
            },
        )
        assert planted.status_code == 200, planted.text
        try:
            dirty = fulfil("reconcile", "--provider", "alipay", "--date", today, "--json")
        finally:
            await http.delete(f"{SIM}/control/bill-rows")

    assert clean.returncode == 0, found
    assert dirty.returncode == 1, dirty.stderr
    differences = json.loads(dirty.stdout)["differences"]
    assert [(d["kind"], d["order_id"]) for d in differences] == [("extra", planted_id)]


async def _has(system: System, order_id: str, event_type: str) -> bool:
    return distinct(await system.events(order_id, topics.PAYMENT_EVENTS), event_type) > 0


async def _eventually(check: Any, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "never happened"
        await asyncio.sleep(0.3)
