"""The saga end to end: five services as OS processes, real Kafka, store and SMTP sink."""

from __future__ import annotations

import asyncio
import time

import pytest

from shared import topics
from tests.e2e.conftest import System, distinct, new_order_id, order_body, placed

pytestmark = pytest.mark.e2e


async def test_order_from_a_plain_kafka_client_completes_and_is_emailed(system: System) -> None:
    oid = new_order_id()
    started = time.monotonic()
    await system.send(placed(oid), key=oid)
    order = await system.wait_for(oid, status="COMPLETED", timeout=15)
    elapsed = time.monotonic() - started

    assert order["total"] == "79.80"
    assert order["shipment"]["carrier"] == "SF Express"
    assert order["shipment"]["tracking_number"].startswith("SF")
    steps = [h["event_type"] for h in order["history"]]
    for expected in (
        "OrderAccepted",
        "PaymentAuthorized",
        "StockReserved",
        "ShipmentScheduled",
        "PaymentCaptured",
        "OrderCompleted",
    ):
        assert expected in steps
    order = await system.wait_for(oid, until=lambda o: o["notifications"], timeout=10)
    assert order["notifications"][0]["status"] == "SENT"
    mails = await system.mails_to(f"{oid.lower()}@example.com")
    assert len(mails) == 1
    assert (
        order["shipment"]["tracking_number"]
        in (await system.http.get(f"{system.endpoints.smtp_api_url}/api/v1/message/{mails[0]['ID']}")).json()["Text"]
    )
    # Timing is reported, not asserted (noisy machines); the wait above already bounds it at 15 s.
    print(f"\nplain-client OrderPlaced -> COMPLETED in {elapsed:.2f}s")
    assert await system.ledger(oid) == {"authorize": 1, "capture": 1}


@pytest.mark.parametrize(
    ("overrides", "reason", "money", "released"),
    [
        ({"payment__token": "tok_decline"}, "payment_declined", {"authorize": 1}, 0),
        (
            {"lines": [{"sku": "SKU-SOLD-OUT", "quantity": 1, "unit_price": "9.90"}]},
            "out_of_stock",
            {"authorize": 1, "void": 1},
            0,
        ),
        ({"shipping__address__postal_code": "000000"}, "shipping_failed", {"authorize": 1, "void": 1}, 1),
    ],
    ids=["declined", "out-of-stock", "shipping-failed"],
)
async def test_each_failure_is_compensated_exactly_once(
    system: System,
    overrides: dict[str, object],
    reason: str,
    money: dict[str, int],
    released: int,
) -> None:
    oid = new_order_id()
    await system.send(placed(oid, **overrides), key=oid)
    order = await system.wait_for(oid, status="CANCELLED")
    assert order["reason"] == reason
    # Compensations run after OrderCancelled; wait for the mail, which comes last.
    await system.wait_for(oid, until=lambda o: o["notifications"])
    await asyncio.sleep(1)
    assert await system.ledger(oid) == money
    events = await system.events(oid, topics.INVENTORY_EVENTS, topics.PAYMENT_EVENTS, topics.ORDER_EVENTS)
    assert distinct(events, "StockReleased") == released
    assert distinct(events, "PaymentVoided") == money.get("void", 0)
    assert distinct(events, "OrderCancelled") == 1
    mails = await system.mails_to(f"{oid.lower()}@example.com")
    assert len(mails) == 1
    assert "cancelled" in mails[0]["Subject"]


async def test_bounced_email_is_recorded_and_order_still_completes(system: System) -> None:
    oid = new_order_id()
    await system.send(placed(oid, customer__email=f"{oid.lower()}@bounce.test"), key=oid)
    order = await system.wait_for(oid, status="COMPLETED")
    order = await system.wait_for(oid, until=lambda o: o["notifications"])
    assert order["status"] == "COMPLETED"
    assert order["notifications"][0]["status"] == "FAILED"
    assert "bounce" in order["notifications"][0]["error"]


async def test_customer_cancellation_during_risk_review_wins(system: System) -> None:
    oid = new_order_id()
    await system.send(placed(oid, payment__token="tok_review"), key=oid)
    await system.wait_for(oid, until=lambda o: any(h["event_type"] == "OrderAccepted" for h in o["history"]))
    r = await system.http.post(f"http://127.0.0.1:8080/orders/{oid}/cancel", json={"reason": "changed my mind"})
    assert r.status_code == 202
    order = await system.wait_for(oid, status="CANCELLED")
    assert order["reason"] == "customer_request"
    # Past the 20 s hold: the review must not have authorised anything afterwards.
    await asyncio.sleep(22)
    assert await system.ledger(oid) == {"void": 1}, "the review was called off at the provider; nothing authorised"
    final = await system.order(oid)
    assert final is not None
    assert final["status"] == "CANCELLED"
    assert "PaymentAuthorized" not in [h["event_type"] for h in final["history"]]


async def test_last_unit_goes_to_exactly_one_of_ten_concurrent_orders(system: System) -> None:
    await system.set_stock("SKU-LAST-ONE", 1)
    before = await system.stock("SKU-LAST-ONE")
    ids = [new_order_id("LAST") for _ in range(10)]
    line = [{"sku": "SKU-LAST-ONE", "quantity": 1, "unit_price": "199.00"}]
    await asyncio.gather(*(system.send(placed(oid, lines=line), key=oid) for oid in ids))
    orders = [await system.wait_for(oid, status={"COMPLETED", "CANCELLED"}) for oid in ids]
    assert sorted(o["status"] for o in orders) == ["CANCELLED"] * 9 + ["COMPLETED"]
    assert {o["reason"] for o in orders if o["status"] == "CANCELLED"} == {"out_of_stock"}
    after = await system.stock("SKU-LAST-ONE")
    assert before["available"] == 1
    assert (after["available"], after["reserved"], after["shipped"]) == (0, 0, before["shipped"] + 1)
    assert after["received"] == before["received"]  # stock is conserved: nothing made up, nothing lost


async def test_same_order_placed_three_times_is_one_order(system: System) -> None:
    oid = new_order_id()
    event = placed(oid)
    retry_with_new_id = {**placed(oid), "event_id": "0d3c8d0e-6c5e-4c61-8a0e-8d7c4a8f0001"}
    for value in (event, event, retry_with_new_id):
        await system.send(value, key=oid)
    await system.wait_for(oid, status="COMPLETED")
    await system.wait_for(oid, until=lambda o: o["notifications"])
    await asyncio.sleep(1)
    events = await system.events(oid, topics.ORDER_EVENTS)
    assert distinct(events, "OrderAccepted") == 1
    assert distinct(events, "OrderRejected") == 0, "a retry with a new event_id is the same order, not a conflict"
    assert await system.ledger(oid) == {"authorize": 1, "capture": 1}
    assert len(await system.mails_to(f"{oid.lower()}@example.com")) == 1


async def test_different_order_under_a_known_id_is_rejected_with_a_reason(system: System) -> None:
    oid = new_order_id()
    await system.send(placed(oid), key=oid)
    await system.wait_for(oid, status="COMPLETED")
    other = placed(oid, lines=[{"sku": "SKU-BLUE-MUG", "quantity": 5, "unit_price": "10.00"}])
    await system.send(other, key=oid)
    await asyncio.sleep(1)
    events = await system.events(oid, topics.ORDER_EVENTS)
    rejected = [e for e in events if e["event_type"] == "OrderRejected"]
    assert [e["reason"] for e in rejected] == ["order_id_conflict"]
    assert (await system.order(oid) or {})["status"] == "COMPLETED"
    r = await system.http.post("http://127.0.0.1:8080/orders", json=order_body(oid, currency="USD"))
    assert r.status_code == 409


async def test_invalid_order_is_rejected_with_field_level_reasons(system: System) -> None:
    oid = new_order_id()
    await system.send(placed(oid, lines=[{"sku": "SKU-RED-MUG", "quantity": 0, "unit_price": 39.9}]), key=oid)
    order = await system.wait_for(oid, status="REJECTED")
    locs = {tuple(e["loc"]) for e in order["errors"]}
    assert ("lines", 0, "quantity") in locs
    assert ("lines", 0, "unit_price") in locs
    # The state is written first and its events published right after: wait (bounded) for the event.
    deadline = time.monotonic() + 10
    while not (events := await system.events(oid, topics.ORDER_EVENTS)) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert [e["event_type"] for e in events] == ["OrderRejected"]


async def test_card_number_as_token_is_rejected_and_never_stored(system: System) -> None:
    pan = "4111111111111111"
    oid = new_order_id()
    await system.send(placed(oid, payment__token=pan), key=oid)
    order = await system.wait_for(oid, status="REJECTED")
    assert pan not in str(order)
    assert [e["loc"] for e in order["errors"]] == [["payment"]]
    doc = [d async for d in system.mongo["fulfil_order"]["orders"].find({"key": oid})]
    assert pan not in str(doc)
    r = await system.http.post("http://127.0.0.1:8080/orders", json=order_body(new_order_id(), payment__token=pan))
    assert r.status_code == 422
    assert pan not in r.text


async def test_order_api_places_reads_and_reports_unknown_orders(system: System) -> None:
    oid = new_order_id("API")
    r = await system.http.post("http://127.0.0.1:8080/orders", json=order_body(oid), headers={"Idempotency-Key": "k-1"})
    assert r.status_code == 202
    assert r.json() == {"order_id": oid, "status": "PENDING"}
    order = await system.wait_for(oid, status="COMPLETED")
    assert order["currency"] == "CNY"
    assert (await system.http.get("http://127.0.0.1:8080/orders/NOPE-404")).status_code == 404
    bad = await system.http.post("http://127.0.0.1:8080/orders", json=order_body(oid, currency="yuan"))
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "currency"]
