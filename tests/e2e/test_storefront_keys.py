"""Storefront keys against the running services: issued by `fulfil keys`, each order owned by its storefront,
another storefront's order answered 404, stock changes for operators only; and `fulfil forget` erasing a customer.

The local stack runs without static API_KEYS, so a request without a key is still let through (development);
a presented key must be valid and decides what the caller sees.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.e2e.conftest import INVENTORY_API, ORDER_API, System, fulfil, issue, new_order_id, order_body, placed

pytestmark = pytest.mark.e2e


async def test_each_storefront_sees_only_its_own_orders(system: System, shops: Any) -> None:
    a, b, op = shops
    oid = new_order_id("SHOPA")
    as_a, as_b, as_op = ({"X-API-Key": k["token"]} for k in (a, b, op))

    placed_r = await system.http.post(f"{ORDER_API}/orders", json=order_body(oid), headers=as_a)
    assert placed_r.status_code == 202
    order = await system.wait_for(oid, status={"PENDING", "COMPLETED"})

    assert order["storefront_id"] == a["storefront"]
    assert (await system.http.get(f"{ORDER_API}/orders/{oid}", headers=as_a)).status_code == 200
    assert (await system.http.get(f"{ORDER_API}/orders/{oid}", headers=as_b)).status_code == 404
    assert (await system.http.post(f"{ORDER_API}/orders/{oid}/cancel", headers=as_b)).status_code == 404
    assert (await system.http.get(f"{ORDER_API}/orders/{oid}", headers=as_op)).status_code == 200
    listed = await system.http.get(f"{ORDER_API}/orders", params={"older_than_seconds": 0}, headers=as_b)
    assert oid not in [o["order_id"] for o in listed.json()["orders"]]
    again_as_b = await system.http.post(f"{ORDER_API}/orders", json=order_body(oid), headers=as_b)
    assert again_as_b.status_code == 409


async def test_stock_changes_need_an_operator_key(system: System, shops: Any) -> None:
    a, _, op = shops
    level = await system.stock("SKU-TEA-SET")
    on_hand = level["available"] + level["reserved"]

    as_shop = await system.http.put(
        f"{INVENTORY_API}/stock/SKU-TEA-SET", json={"on_hand": on_hand}, headers={"X-API-Key": a["token"]}
    )
    as_operator = await system.http.put(
        f"{INVENTORY_API}/stock/SKU-TEA-SET", json={"on_hand": on_hand}, headers={"X-API-Key": op["token"]}
    )

    assert as_shop.status_code == 403
    assert as_operator.status_code == 200


async def test_a_wrong_or_revoked_key_is_401(system: System) -> None:
    key = issue(f"shop-r-{uuid.uuid4().hex[:6]}")
    assert fulfil("keys", "revoke", key["key_id"], "--yes").returncode == 0

    revoked = await system.http.get(f"{ORDER_API}/orders/ANY-1", headers={"X-API-Key": key["token"]})
    wrong = await system.http.get(f"{ORDER_API}/orders/ANY-1", headers={"X-API-Key": "fk_" + "x" * 43})

    assert revoked.status_code == 401
    assert wrong.status_code == 401


async def test_forget_erases_a_customers_personal_data_from_every_store(system: System) -> None:
    customer = f"forget-{uuid.uuid4().hex[:8]}"
    oid = new_order_id("FORGET")
    await system.send(placed(oid, customer__id=customer, customer__name="Forget Me"), key=oid)
    await system.wait_for(oid, status="COMPLETED", until=lambda o: o["notifications"])

    done = fulfil("forget", customer, "--settled-after", "0s", "--yes", "--json")  # one scan (~20 s here)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["orders"] == [oid]
    mongo = system.mongo
    stored = [
        await mongo["fulfil_order"]["orders"].find_one({"_id": oid}),
        await mongo["fulfil_shipping"]["shipments"].find_one({"_id": oid}),
        await mongo["fulfil_notify"]["contacts"].find_one({"_id": oid}),
        await mongo["fulfil_order"]["orders_versions"].find_one({"_id": f"{oid}@000000000001"}),
    ]
    text = json.dumps(stored, default=str, ensure_ascii=False)
    for personal in ("Forget Me", f"{oid.lower()}@example.com", "中关村", customer):
        assert personal not in text
