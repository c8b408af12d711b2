"""Live order tracking against the running services: ``GET /orders/{id}/stream`` follows a placed order through
the saga to COMPLETED and on to its parcel's delivery (the carriers of the simulator deliver ~10 s after booking),
resumes with ``Last-Event-ID`` without repeating anything, ends with CANCELLED for a
cancelled order, and answers keys exactly like ``GET /orders/{id}``.

Orders pay with ``tok_review`` (held ~20 s in risk review), so the stream opens while the order is still at
ACCEPTED and sees every later stage. ``FULFIL_ORDER_API`` points these tests at another copy of the order service
(one started by hand on another port); by default they use the stack's.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ORDER_API, System, new_order_id, order_body
from tests.sse import Stream, read_stream

pytestmark = pytest.mark.e2e

API = os.environ.get("FULFIL_ORDER_API", ORDER_API).rstrip("/")
SAGA = ["ACCEPTED", "PAYMENT_AUTHORIZED", "STOCK_RESERVED", "SHIPMENT_SCHEDULED", "DONE"]
PARCEL = ["PICKED_UP", "IN_TRANSIT", "OUT_FOR_DELIVERY", "DELIVERED"]


async def follow(order_id: str, key: str, *, last_event_id: int | None = None, then: Any = None) -> Stream:
    """Read the order's stream to its end (bounded); after the first event, await ``then()`` once."""
    headers = {"X-API-Key": key}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    url = f"{API}/orders/{order_id}/stream"
    return await read_stream(url, headers=headers, then=then, timeout=httpx.Timeout(10, read=60), within=90)


async def shown_changes(system: System, order_id: str, *, since: int) -> list[int]:
    """The stored versions from ``since`` on whose status, stage, shipment or delivery differ from the one before."""
    versions = system.mongo["fulfil_order"]["orders_versions"]
    changed: list[int] = []
    shown: tuple[Any, ...] | None = None
    v = since
    while (doc := await versions.find_one({"_id": f"{order_id}@{v:012d}"})) is not None:
        state = doc["state"]
        now = (state["status"], state["stage"], state["shipment"], state.get("delivery"))
        if now != shown:
            changed.append(v)
            shown = now
        delivered = (state.get("delivery") or {}).get("delivered_at") is not None
        if state["status"] in ("CANCELLED", "REJECTED") or (state["status"] == "COMPLETED" and delivered):
            break
        v += 1
    return changed


async def place_in_review(system: System, key: str) -> str:
    """A placed order held in payment review: PENDING at ACCEPTED for a while."""
    order_id = new_order_id("TRACK")
    r = await system.http.post(
        f"{API}/orders", json=order_body(order_id, payment__token="tok_review"), headers={"X-API-Key": key}
    )
    assert r.status_code == 202, r.text
    await system.wait_for(order_id, status="PENDING")
    return order_id


async def test_stream_follows_a_placed_order_to_completed_then_to_delivered_and_ends(
    system: System, shops: Any
) -> None:
    shop = shops[0]["token"]
    order_id = await place_in_review(system, shop)

    got = await follow(order_id, shop)

    assert got.status == 200
    stages = [d["stage"] for _, _, d in got.events]
    assert stages[0] == "ACCEPTED"
    # In saga order; SHIPMENT_SCHEDULED is not always a version of its own (the capture may be recorded first).
    assert stages == sorted(stages, key=(SAGA + PARCEL).index)
    assert {"PAYMENT_AUTHORIZED", "STOCK_RESERVED", "DONE", "PICKED_UP", "DELIVERED"} <= set(stages)
    assert stages[-1] == "DELIVERED"
    statuses = [d["status"] for _, _, d in got.events]
    assert statuses[statuses.index("COMPLETED") :] == ["COMPLETED"] * (len(statuses) - statuses.index("COMPLETED"))
    assert got.events[-1][2]["delivery"]["delivered_at"]
    # Exactly the versions that changed what a storefront shows, each sent once, none skipped:
    assert [i for i, _, _ in got.events] == await shown_changes(system, order_id, since=got.events[0][0])
    assert {name for _, name, _ in got.events} == {"order"}
    ids = [i for i, _, _ in got.events]
    assert ids == sorted(set(ids))
    assert got.events[-1][2]["shipment"]["tracking_number"]
    final = (await system.http.get(f"{API}/orders/{order_id}", headers={"X-API-Key": shop})).json()
    assert final["status"] == "COMPLETED"
    assert final["shipment"] == got.events[-1][2]["shipment"]

    # Resuming sends nothing the client already has: from the second event on, only what is newer ...
    resumed = await follow(order_id, shop, last_event_id=ids[1])
    assert resumed.status == 200
    assert all(i > ids[1] for i, _, _ in resumed.events)
    assert [(d["status"], d["stage"]) for _, _, d in resumed.events] == [("COMPLETED", "DELIVERED")]
    # ... and after the last event, nothing at all (204: an EventSource stops reconnecting).
    assert (await follow(order_id, shop, last_event_id=ids[-1])).status == 204


async def test_a_cancelled_orders_stream_ends_with_cancelled(system: System, shops: Any) -> None:
    shop = shops[0]["token"]
    order_id = await place_in_review(system, shop)

    async def cancel() -> None:
        r = await system.http.post(f"{API}/orders/{order_id}/cancel", headers={"X-API-Key": shop})
        assert r.status_code == 202

    got = await follow(order_id, shop, then=cancel)

    assert [(d["status"], d["reason"]) for _, _, d in got.events] == [
        ("PENDING", None),
        ("CANCELLED", "customer_request"),
    ]


async def test_stream_keys_are_those_of_the_order_api(system: System, shops: Any) -> None:
    a, b, _ = shops
    order_id = await place_in_review(system, a["token"])

    other_shop = await follow(order_id, b["token"])
    wrong_key = await follow(order_id, "fk_" + "x" * 43)
    unknown = await follow(new_order_id("NONE"), a["token"])

    assert (other_shop.status, wrong_key.status, unknown.status) == (404, 401, 404)
    cancel = await system.http.post(f"{API}/orders/{order_id}/cancel", headers={"X-API-Key": a["token"]})
    assert cancel.status_code == 202  # leave nothing in review behind
