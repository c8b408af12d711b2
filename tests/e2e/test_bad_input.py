"""The bad-input table (tests/unit/test_bad_input.py) against the running services: each case sent on
``storefront.orders`` and to ``POST /orders``, each with its clear outcome, and a valid order behind them all."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared import topics
from tests.e2e.conftest import ORDER_API, System, new_order_id, order_body, placed
from tests.unit.test_bad_input import CARD, CASES, Case, envelope
from tools.ops import topic_log

pytestmark = pytest.mark.e2e


async def _outcome(system: System, case: Case, key: str, dead: dict[str, str]) -> str:
    """What became of the record keyed ``key``: the order's status, or the dead letter's error class."""
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline:
        if key in dead:
            return f"DLQ:{dead[key]}"
        found = await system.order(key)
        if found is not None:
            return "REJECTED" if found["status"] == "REJECTED" else "ACCEPTED"
        await asyncio.sleep(0.3)
    return "nothing"


async def test_every_bad_record_on_storefront_orders_gets_its_outcome_and_a_valid_order_behind_them_completes(
    system: System,
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=5)
    keys: dict[str, Case] = {}
    for case in CASES:
        key = new_order_id("BADK")
        body = case.build(key)
        # The record key is always our id; the body may name a broken one (that is the case being tested).
        await system.send(envelope(body, key), key=key)
        keys[key] = case
    good = new_order_id("GOODK")
    await system.send(placed(good), key=good)

    await system.wait_for(good, status="COMPLETED", timeout=30)
    dead: dict[str, str] = {}
    for _ in range(10):
        letters = await topic_log.dead_letters(system.endpoints.kafka, topic=topics.STOREFRONT_ORDERS, since=since)
        dead = {d.rec.key or "": d.error_class for d in letters if (d.rec.key or "") in keys}
        if len(dead) >= sum(1 for c in CASES if c.kafka.startswith("DLQ")):
            break
        await asyncio.sleep(1)
    outcomes = await asyncio.gather(*(_outcome(system, case, key, dead) for key, case in keys.items()))

    table = {case.name: got for (key, case), got in zip(keys.items(), outcomes, strict=True)}
    print("\n" + "\n".join(f"{name:40} {got}" for name, got in table.items()))
    assert table == {c.name: c.kafka for c in CASES}
    for key, case in keys.items():
        if case.kafka == "REJECTED":
            order = await system.order(key)
            assert order is not None
            assert order["reason"] == "invalid_order"
            assert order["errors"], case.name
            assert CARD not in json.dumps(order)


async def test_every_bad_body_on_post_orders_gets_its_status_never_a_500(system: System) -> None:
    got: dict[str, int] = {}
    for case in CASES:
        if case.http is None:
            continue
        order_id = new_order_id("BADH")
        body = case.build(order_id)
        content = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
        r = await system.http.post(f"{ORDER_API}/orders", content=content, headers={"content-type": "application/json"})
        got[case.name] = r.status_code
        assert "4111" not in r.text, case.name

    assert got == {c.name: c.http for c in CASES if c.http is not None}


async def test_a_5_mb_body_is_refused_with_413_before_it_is_parsed(system: System) -> None:
    r = await system.http.post(
        f"{ORDER_API}/orders", content=b"{" + b" " * 5_000_000, headers={"content-type": "application/json"}
    )

    assert r.status_code == 413


async def test_the_same_event_id_with_different_content_is_a_redelivery_the_first_wins(system: System) -> None:
    oid = new_order_id("EVID")
    first = placed(oid)
    await system.send(first, key=oid)
    await system.wait_for(oid, status={"PENDING", "COMPLETED"})
    second = {**placed(oid, customer__name="Someone Else"), "event_id": first["event_id"]}

    await system.send(second, key=oid)
    marker = new_order_id("EVID")  # same partition order is not guaranteed across keys: wait on the order itself
    await system.send(placed(marker), key=marker)
    await system.wait_for(marker, status={"PENDING", "COMPLETED"})
    order = await system.wait_for(oid, status="COMPLETED")

    assert not any(h.get("outcome") == "refused" for h in order["history"])
    assert [h["event_type"] for h in order["history"]].count("OrderPlaced") == 1


async def test_a_known_order_id_with_different_content_is_rejected_on_kafka_and_409_on_http(system: System) -> None:
    oid = new_order_id("CONFLICT")
    await system.send(placed(oid), key=oid)
    await system.wait_for(oid, status={"PENDING", "COMPLETED"})

    await system.send(placed(oid, currency="USD"), key=oid)
    r = await system.http.post(f"{ORDER_API}/orders", json=order_body(oid, currency="EUR"))

    assert r.status_code == 409
    order = await system.wait_for(oid, until=lambda o: any(h.get("outcome") == "refused" for h in o["history"]))
    assert order["status"] in {"PENDING", "COMPLETED"}, "the existing order is untouched"


async def test_a_cancel_for_an_unknown_order_is_404_on_http_and_a_dead_letter_on_kafka(system: System) -> None:
    oid = new_order_id("NOSUCH")
    since = datetime.now(UTC) - timedelta(seconds=5)
    cancel: dict[str, Any] = {
        "event_type": "OrderCancellationRequested",
        "event_id": str(uuid.uuid4()),
        "order_id": oid,
        "occurred_at": "2026-11-25T08:00:00Z",
    }

    r = await system.http.post(f"{ORDER_API}/orders/{oid}/cancel")
    await system.send(cancel, key=oid)

    assert r.status_code == 404
    for _ in range(40):
        letters = await topic_log.dead_letters(system.endpoints.kafka, order_id=oid, since=since)
        if letters:
            break
        await asyncio.sleep(0.5)
    assert [d.error_class for d in letters] == ["PermanentError"]


@pytest.mark.parametrize(
    ("body", "status"),
    [({"available": -1}, 422), ({"available": "5"}, 422), ({"on_hand": 10**12}, 422), ({"$set": {"x": 1}}, 422)],
)
async def test_put_stock_refuses_bad_bodies_with_422(system: System, body: dict[str, Any], status: int) -> None:
    r = await system.http.put("http://127.0.0.1:8082/stock/SKU-RED-MUG", json=body)

    assert r.status_code == status


async def test_a_key_with_non_ascii_bytes_is_401_not_500(system: System) -> None:
    r = await system.http.get(f"{ORDER_API}/orders/ANY-1", headers={b"X-API-Key": "clé".encode()})

    assert r.status_code == 401
