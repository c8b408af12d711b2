"""Incident tooling on the real stack: poison messages, store outage, replay, redrive, and the `fulfil` CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared import topics
from tests.e2e.conftest import System, new_order_id, placed
from tools.ops import topic_log

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
DLQ_HEADERS = {
    "x-dlq-original-topic",
    "x-dlq-original-partition",
    "x-dlq-original-offset",
    "x-dlq-original-timestamp",
    "x-dlq-service",
    "x-dlq-group",
    "x-dlq-error-class",
    "x-dlq-error-message",
    "x-dlq-attempts",
    "x-dlq-first-failure-at",
    "x-dlq-last-failure-at",
}
CONSUMERS = {
    topics.ORDER_EVENTS: {"payment", "inventory", "shipping", "notify"},
    topics.PAYMENT_EVENTS: {"order", "inventory"},
    topics.INVENTORY_EVENTS: {"order", "shipping"},
    topics.SHIPPING_EVENTS: {"order", "payment"},
    topics.NOTIFY_EVENTS: {"order"},
}
BROKEN = {  # a known event type missing required fields
    topics.ORDER_EVENTS: "OrderCompleted",
    topics.PAYMENT_EVENTS: "PaymentAuthorized",
    topics.INVENTORY_EVENTS: "StockReserved",
    topics.SHIPPING_EVENTS: "ShipmentScheduled",
    topics.NOTIFY_EVENTS: "NotificationSent",
}


def fulfil(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.fulfil.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200"},
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"fulfil {' '.join(args)} failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
    return proc


def stack(*args: str) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "deploy" / "local" / "stack.py"), *args],
        check=True,
        capture_output=True,
        timeout=180,
    )


async def dead_letters_for(
    system: System, order_id: str, *, expected: int, topic: str | None = None, timeout: float = 30
) -> list[topic_log.DeadLetter]:
    deadline = time.monotonic() + timeout
    found: list[topic_log.DeadLetter] = []
    while time.monotonic() < deadline:
        found = await topic_log.dead_letters(system.endpoints.kafka, topic=topic, order_id=order_id)
        if len(found) >= expected:
            return found
        await asyncio.sleep(0.5)
    raise AssertionError(f"expected {expected} dead letters for {order_id}, found {len(found)}")


async def test_poison_messages_are_dead_lettered_and_orders_behind_them_complete(system: System) -> None:
    key = new_order_id("POISON")
    await system.send(b"{this is not json", key=key)
    await system.send(
        {
            "event_type": "OrderShipped",
            "event_id": str(uuid.uuid4()),
            "order_id": key,
            "occurred_at": "2026-11-25T08:00:00Z",
        },
        key=key,
    )
    started = time.monotonic()
    await system.send(placed(key), key=key)  # same key: same partition, queued right behind the poison
    await system.wait_for(key, status="COMPLETED", timeout=15)  # the poison held the partition only briefly
    print(f"\norder behind two poison records completed in {time.monotonic() - started:.2f}s")

    letters = await dead_letters_for(system, key, expected=2, topic=topics.STOREFRONT_ORDERS)
    assert sorted(d.error_class for d in letters) == ["InvalidJson", "UnknownEventType"]
    for d in letters:
        assert d.rec.topic == "storefront.orders.dlq"
        assert d.rec.key == key
        assert set(d.rec.headers) >= DLQ_HEADERS
        assert d.rec.headers["x-dlq-original-topic"] == topics.STOREFRONT_ORDERS
        assert d.rec.headers["x-dlq-service"] == "order"
    invalid = next(d for d in letters if d.error_class == "InvalidJson")
    assert invalid.rec.value == b"{this is not json"  # the original bytes, untouched

    listed = json.loads(fulfil("dlq", "list", "--order-id", key, "--json").stdout)
    assert sorted(r["error_class"] for r in listed) == ["InvalidJson", "UnknownEventType"]
    shown = json.loads(fulfil("dlq", "show", listed[0]["id"], "--json").stdout)
    assert shown["headers"]["x-dlq-original-topic"] == topics.STOREFRONT_ORDERS
    purge = fulfil("dlq", "purge", "--topic", topics.STOREFRONT_ORDERS, "--order-id", key, "--dry-run")
    assert "(dry run)" in purge.stdout or "kept" in purge.stdout
    assert len(await topic_log.dead_letters(system.endpoints.kafka, order_id=key)) == 2, "a dry run deletes nothing"


@pytest.mark.parametrize("topic", list(CONSUMERS))
async def test_internal_event_failing_its_schema_is_dead_lettered_by_every_consumer(
    system: System,
    topic: str,
) -> None:
    key = new_order_id("SCHEMA")
    await system.send(
        {
            "event_type": BROKEN[topic],
            "event_id": str(uuid.uuid4()),
            "order_id": key,
            "occurred_at": "2026-11-25T08:00:00Z",
        },
        key=key,
        topic=topic,
    )
    letters = await dead_letters_for(system, key, expected=len(CONSUMERS[topic]), topic=topic)
    assert {d.rec.headers["x-dlq-service"] for d in letters} == CONSUMERS[topic]
    assert {d.error_class for d in letters} == {"SchemaViolation"}


async def test_store_outage_delays_orders_but_loses_none(system: System) -> None:
    ids = [new_order_id("OUTAGE") for _ in range(4)]
    await asyncio.to_thread(stack, "stop", "ferretdb")
    try:
        for oid in ids:
            await system.send(placed(oid), key=oid)
        await asyncio.sleep(5)
    finally:
        await asyncio.to_thread(stack, "start", "ferretdb")
    for oid in ids:
        await system.wait_for(oid, status="COMPLETED", timeout=90)
        assert await system.ledger(oid) == {"authorize": 1, "capture": 1}


async def _caught_up(system: System, groups: dict[str, tuple[str, ...]], timeout: float = 120) -> None:
    """Wait until every service's group has committed up to the end of its input topics."""
    admin = AIOKafkaAdminClient(bootstrap_servers=system.endpoints.kafka)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            behind = 0
            for group, names in groups.items():
                committed = await admin.list_consumer_group_offsets(group)
                parts = await topic_log.partitions(system.endpoints.kafka, names)
                ends = await _end_offsets(system, parts)
                behind += sum(ends[tp] - (committed[tp].offset if tp in committed else 0) for tp in parts)
            if behind == 0:
                return
            await asyncio.sleep(1)
        raise AssertionError(f"consumers still {behind} records behind after {timeout}s")
    finally:
        await admin.close()


async def _end_offsets(system: System, parts: list[TopicPartition]) -> dict[TopicPartition, int]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=system.endpoints.kafka)
    await consumer.start()
    try:
        return dict(await consumer.end_offsets(parts))
    finally:
        await consumer.stop()


INPUTS = topics.CONSUMER_GROUPS


async def _latest(system: System, db: str, collection: str) -> dict[str, dict[str, Any]]:
    """The newest version of every document, from its versions (shared/mongo.py): not from the head copies, which
    are written behind and may trail after a crash (the short chaos drill SIGKILLs the services before this runs)."""
    newest: dict[str, dict[str, Any]] = {}
    async for d in system.mongo[db][f"{collection}_versions"].find({}):
        if d["key"] not in newest or d["v"] > newest[d["key"]]["v"]:
            newest[d["key"]] = d
    return newest


async def _snapshot(system: System) -> dict[str, Any]:
    statuses = {k: d["state"]["status"] for k, d in (await _latest(system, "fulfil_order", "orders")).items()}
    ledger: dict[str, int] = {}
    async for d in system.mongo["fulfil_payment"]["gateway_ledger"].find({}):
        ledger[d["op"]] = ledger.get(d["op"], 0) + 1
    stock = {
        k: (d["available"], d["reserved"]) for k, d in (await _latest(system, "fulfil_inventory", "stock")).items()
    }
    mails = (await system.http.get(f"{system.endpoints.smtp_api_url}/api/v1/messages")).json()["total"]
    return {"statuses": statuses, "ledger": ledger, "stock": stock, "mails": mails}


async def test_replaying_every_topic_from_the_start_changes_nothing(system: System) -> None:
    await _caught_up(system, INPUTS)
    # Let in-flight work settle (review holds, compensations, mails of earlier tests): two equal snapshots.
    before, quiet_by = await _snapshot(system), time.monotonic() + 90
    while time.monotonic() < quiet_by:
        await asyncio.sleep(3)
        again = await _snapshot(system)
        if again == before:
            break
        before = again
    assert before["statuses"], "there are orders to replay"
    for topic in topics.MAIN_TOPICS:
        summary = json.loads(fulfil("replay", topic, "--republish", "--from", "earliest", "--yes", "--json").stdout)
        assert summary["records"] > 0, f"{topic} has records to replay"
    await _caught_up(system, INPUTS, timeout=240)
    await asyncio.sleep(2)
    after = await _snapshot(system)
    assert after["statuses"] == before["statuses"]
    assert after["ledger"] == before["ledger"], "no second capture, void or refund"
    assert after["stock"] == before["stock"], "no second reservation or release"
    assert after["mails"] == before["mails"], "no second e-mail"


async def test_record_dead_lettered_for_a_temporary_cause_is_redriven_and_completes(system: System) -> None:
    faults = system.mongo["fulfil_payment"]["sandbox_faults"]
    oid = new_order_id("REDRIVE")
    await faults.replace_one({"_id": "gateway"}, {"_id": "gateway", "unavailable": True}, upsert=True)
    try:
        await system.send(placed(oid), key=oid)
        letters = await dead_letters_for(system, oid, expected=1, topic=topics.ORDER_EVENTS, timeout=60)
    finally:
        await faults.delete_one({"_id": "gateway"})
    assert letters[0].error_class == "TransientError"
    assert letters[0].rec.headers["x-dlq-service"] == "payment"
    assert int(letters[0].rec.headers["x-dlq-attempts"]) >= 2
    assert (await system.order(oid) or {})["status"] == "PENDING"

    dry = fulfil("dlq", "redrive", "--order-id", oid, "--topic", topics.ORDER_EVENTS, "--dry-run")
    assert "(dry run)" in dry.stdout
    assert await system.ledger(oid) == {}
    fulfil("dlq", "redrive", "--order-id", oid, "--topic", topics.ORDER_EVENTS, "--yes")
    await system.wait_for(oid, status="COMPLETED", timeout=30)
    await system.wait_for(oid, until=lambda o: o["notifications"])
    assert await system.ledger(oid) == {"authorize": 1, "capture": 1}
    assert len(await system.mails_to(f"{oid.lower()}@example.com")) == 1


async def test_fulfil_order_shows_the_timeline_status_and_trace(system: System) -> None:
    oid = new_order_id("CLI")
    await system.send(placed(oid, payment__token="tok_decline"), key=oid)
    await system.wait_for(oid, status="CANCELLED")
    await system.wait_for(oid, until=lambda o: o["notifications"])
    out = json.loads(fulfil("order", oid, "--json").stdout)
    assert out["status"] == "CANCELLED"
    assert out["reason"] == "payment_declined"
    assert [e["event_type"] for e in out["events"]][:2] == ["OrderPlaced", "OrderAccepted"]
    by_id = {e["event_id"]: e for e in out["events"]}
    cancelled = next(e for e in out["events"] if e["event_type"] == "OrderCancelled")
    assert by_id[cancelled["causation_id"]]["event_type"] == "PaymentDeclined"
    assert out["trace_link"].endswith(out["trace_id"])
    text = fulfil("order", oid).stdout
    assert "PaymentDeclined" in text
    assert "CANCELLED" in text
    missing = fulfil("order", "NO-SUCH-ORDER-XYZ", check=False)
    assert missing.returncode == 1
    assert "nothing known" in missing.stderr


async def test_fulfil_stuck_lists_an_order_waiting_in_risk_review(system: System) -> None:
    oid = new_order_id("STUCK")
    await system.send(placed(oid, payment__token="tok_review"), key=oid)
    await system.wait_for(oid, until=lambda o: o["stage"] == "ACCEPTED" and len(o["history"]) >= 2)
    await asyncio.sleep(1.5)
    rows = json.loads(fulfil("stuck", "--older-than", "1s", "--json").stdout)
    mine = [r for r in rows if r["order_id"] == oid]
    assert len(mine) == 1
    assert mine[0]["last_step"] == "OrderAccepted"
    assert mine[0]["age_seconds"] >= 1
    assert oid not in fulfil("stuck", "--older-than", "1h").stdout


async def test_fulfil_replay_dry_run_plans_a_rewind_and_refuses_a_live_group(system: System) -> None:
    dry = fulfil("replay", topics.ORDER_EVENTS, "--group", "payment", "--from", "earliest", "--dry-run", "--json")
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] is True
    assert len(plan["partitions"]) >= 3
    assert all(p["target"] == 0 for p in plan["partitions"])
    assert plan["live_members"], "the payment service is running"
    live = fulfil("replay", topics.ORDER_EVENTS, "--group", "payment", "--from", "earliest", "--yes", check=False)
    assert live.returncode == 1
    assert "live member" in live.stderr
