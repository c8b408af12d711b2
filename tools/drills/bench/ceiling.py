"""The broker ceiling: the records a happy path produces and consumes, through the same broker with no processing."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared import topics
from shared.kafka import new_admin, new_consumer, new_producer
from shared.settings import ServiceSettings
from tools.drills.bench.plan import (
    RECORDS_PER_ORDER,
    RECORDS_PRODUCED_PER_ORDER,
    SAGA_FLOW,
    OrderMix,
)


async def ceiling(settings: ServiceSettings, mix: OrderMix, *, orders: int, max_seconds: float) -> dict[str, Any]:
    """Records/s the broker and client move with no processing: per order, what a happy path produces and reads.

    A private topic per saga topic (same partition counts, deleted afterwards); ``orders`` x 8 records produced
    with order-id keys, acks=all and idempotence, with many sends in flight; then read back by one reader per
    consuming group (18 records per order). Each half is bounded by ``max_seconds``.
    """
    run = f"bench-ceiling.{mix.run}"
    admin = new_admin(settings, request_timeout_ms=15_000)
    await admin.start()
    names = {t: f"{run}.{t}" for t in SAGA_FLOW}
    try:
        described = {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics(list(SAGA_FLOW))}
        counts = {t: described.get(t) or 3 for t in SAGA_FLOW}
        await admin.create_topics([NewTopic(names[t], counts[t], 1) for t in SAGA_FLOW])
        try:
            await _leaders_elected(admin, list(names.values()))
            return await _ceiling_on(settings, mix, names, counts, orders=orders, max_seconds=max_seconds)
        finally:
            await admin.delete_topics(list(names.values()))
    finally:
        await admin.close()


async def _leaders_elected(admin: AIOKafkaAdminClient, names: list[str], *, seconds: float = 15.0) -> None:
    """Wait (bounded) until every partition of new topics has a leader, so the first sends need no retry."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        described = await admin.describe_topics(names)
        if all(d.get("error_code", 0) == 0 and d["partitions"] for d in described) and all(
            p.get("leader", -1) >= 0 for d in described for p in d["partitions"]
        ):
            return
        await asyncio.sleep(0.2)


async def _ceiling_on(
    settings: ServiceSettings,
    mix: OrderMix,
    names: dict[str, str],
    counts: dict[str, int],
    *,
    orders: int,
    max_seconds: float,
) -> dict[str, Any]:
    samples = [mix.next() for _ in range(min(orders, 500))]  # payloads built before the clock starts
    small = orjson.dumps({"event_type": "X", "event_id": str(uuid.uuid4()), "pad": "x" * 280})
    producer = new_producer(
        settings,
        client_id="fulfil-bench-ceiling",
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=256 * 1024,
        request_timeout_ms=15_000,
    )
    await producer.start()
    try:
        for t, name in names.items():  # the first send to a new topic waits for its leaders: not measured
            for p in range(counts[t]):
                await producer.send_and_wait(name, b"warm-up", partition=p)
        produced = 0
        started = time.monotonic()
        in_flight: list[asyncio.Future[Any]] = []
        done_orders = 0
        for i in range(orders):
            order_id, value, _ = samples[i % len(samples)]
            key = f"{order_id}-{i}".encode()
            for t, (n, _groups) in SAGA_FLOW.items():
                # OrderPlaced and OrderAccepted carry the whole order; the other events are small
                payload = value if t in (topics.STOREFRONT_ORDERS, topics.ORDER_EVENTS) else small
                for _ in range(n):
                    in_flight.append(await producer.send(names[t], payload, key=key))
            produced += RECORDS_PRODUCED_PER_ORDER
            done_orders += 1
            if len(in_flight) >= 20_000:
                await asyncio.gather(*in_flight)
                in_flight.clear()
                if time.monotonic() - started > max_seconds:
                    break
        await asyncio.gather(*in_flight)
        produce_seconds = time.monotonic() - started
    finally:
        await producer.stop()

    readers = [(names[t], counts[t], n * done_orders) for t, (n, groups) in SAGA_FLOW.items() for _ in range(groups)]
    started = time.monotonic()
    consumed = sum(await asyncio.gather(*(_read_all(settings, *r, deadline=started + max_seconds) for r in readers)))
    consume_seconds = time.monotonic() - started
    records_per_s = (produced + consumed) / (produce_seconds + consume_seconds)
    return {
        "orders": done_orders,
        "records_produced": produced,
        "produce_seconds": round(produce_seconds, 3),
        "produce_records_per_s": round(produced / produce_seconds),
        "records_consumed": consumed,
        "consume_seconds": round(consume_seconds, 3),
        "consume_records_per_s": round(consumed / consume_seconds),
        "records_per_s": round(records_per_s),
        "orders_per_s_equivalent": round(records_per_s / RECORDS_PER_ORDER, 1),
        "client": "aiokafka, one process, asyncio",
    }


async def _read_all(settings: ServiceSettings, topic: str, partitions: int, expected: int, *, deadline: float) -> int:
    """Read one topic from the beginning like one consuming group does; the records read (warm-ups excluded)."""
    consumer = new_consumer(
        settings,
        client_id="fulfil-bench-ceiling",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        seen = -partitions
        while seen < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            seen += sum(len(v) for v in batch.values())
        return max(seen, 0)
    finally:
        await consumer.stop()
