"""End-to-end throughput benchmark against a running system (``make bench`` / ``fulfil bench``).

It measures, in one run on the same machine:

* the **baseline**: how fast this Kafka moves plain records (produce with ``acks=all``, then consume them);
* the **saga**: how many orders per second go from ``OrderPlaced`` to ``OrderCompleted`` through the five
  services, with placement-to-completion latency percentiles.

Timings on shared machines are noisy, so the figures are printed (with the ratio to the baseline and to the
~740 orders/s target), never asserted.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared import topics
from shared.ops import partitions

TARGET_ORDERS_PER_SECOND = 740


@dataclass
class BenchResult:
    orders: int
    completed: int
    seconds: float
    orders_per_second: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    baseline_records_per_second: float

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "ratio_to_baseline": round(self.orders_per_second / self.baseline_records_per_second, 4)
            if self.baseline_records_per_second
            else None,
            "ratio_to_target": round(self.orders_per_second / TARGET_ORDERS_PER_SECOND, 4),
        }


def _order(order_id: str) -> bytes:
    return json.dumps(
        {
            "event_type": "OrderPlaced",
            "event_id": str(uuid.uuid4()),
            "occurred_at": "2026-11-25T08:00:00Z",
            "order_id": order_id,
            "customer": {"id": "bench", "name": "Bench Mark", "email": "bench@example.com"},
            "lines": [{"sku": "SKU-RED-MUG", "quantity": 1, "unit_price": "39.90"}],
            "currency": "CNY",
            "payment": {"method": "alipay", "token": "tok_bench"},
            "shipping": {
                "option": "standard",
                "scheduled_date": None,
                "address": {
                    "recipient": "Bench Mark",
                    "line1": "1 Test Road",
                    "city": "Beijing",
                    "postal_code": "100080",
                    "country": "CN",
                },
            },
        }
    ).encode()


async def baseline(bootstrap: str, count: int) -> float:
    """Plain records per second through this broker: produce ``count`` (acks=all) and consume them back."""
    topic = f"bench.baseline.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 1)])
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        await producer.start()
        await consumer.start()
        try:
            # Warm up: the first send waits for the new topic's leaders, which is not what we measure.
            for p in range(3):
                await producer.send_and_wait(topic, b"warm-up", partition=p)
            seen = -3
            started = time.perf_counter()
            sends = [await producer.send(topic, _order(f"B-{i}"), key=f"B-{i}".encode()) for i in range(count)]
            await asyncio.gather(*sends)
            while seen < count:
                batch = await consumer.getmany(timeout_ms=1000)
                seen += sum(len(v) for v in batch.values())
            return count / (time.perf_counter() - started)
        finally:
            await producer.stop()
            await consumer.stop()
    finally:
        await admin.delete_topics([topic])
        await admin.close()


async def saga(bootstrap: str, count: int, wait_seconds: float) -> tuple[int, float, list[float]]:
    """Place ``count`` orders at once; returns (completed, seconds, latencies in ms)."""
    run = uuid.uuid4().hex[:6]
    ids = [f"BENCH-{run}-{i:06d}" for i in range(count)]
    parts = await partitions(bootstrap, [topics.ORDER_EVENTS])
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        consumer.assign(parts)
        await consumer.seek_to_end(*parts)
        for tp in parts:
            await consumer.position(tp)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
        await producer.start()
        sent_at: dict[str, float] = {}
        started = time.perf_counter()
        try:
            for oid in ids:
                sent_at[oid] = time.perf_counter()
                await producer.send(topics.STOREFRONT_ORDERS, _order(oid), key=oid.encode())
            await producer.flush()
        finally:
            await producer.stop()
        latencies: list[float] = []
        pending = set(ids)
        deadline = time.perf_counter() + wait_seconds
        while pending and time.perf_counter() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            now = time.perf_counter()
            for records in batch.values():
                for r in records:
                    key = (r.key or b"").decode()
                    if key in pending and b'"OrderCompleted"' in (r.value or b""):
                        pending.discard(key)
                        latencies.append((now - sent_at[key]) * 1000)
        return count - len(pending), time.perf_counter() - started, latencies
    finally:
        await consumer.stop()


def _pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * p))], 1)


async def run(bootstrap: str, *, orders: int, wait_seconds: float) -> BenchResult:
    base = await baseline(bootstrap, orders)
    completed, seconds, latencies = await saga(bootstrap, orders, wait_seconds)
    return BenchResult(
        orders=orders,
        completed=completed,
        seconds=round(seconds, 2),
        orders_per_second=round(completed / seconds, 1) if seconds else 0.0,
        latency_p50_ms=round(statistics.median(latencies), 1) if latencies else 0.0,
        latency_p95_ms=_pct(latencies, 0.95),
        latency_p99_ms=_pct(latencies, 0.99),
        baseline_records_per_second=round(base, 1),
    )
