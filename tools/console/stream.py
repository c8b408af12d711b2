"""Kafka for the console: tail every topic from the beginning into the fold, poll lag and dead letters, read an
order's records back by position.

The tail uses no consumer group (assign + seek), so the console never moves a service's offsets and every console
process rebuilds the same state from the log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from aiokafka import TopicPartition

from shared import topics
from shared.kafka import header_map, new_admin, new_consumer
from shared.settings import ServiceSettings
from tools.console.fold import SagaFold, decode_position
from tools.ops import topic_log

log = structlog.get_logger("console.stream")


def decode_value(value: bytes | None) -> dict[str, Any] | None:
    try:
        data = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


@dataclass
class Offsets:
    """Consumer lag per service group and dead letters held per topic, as last polled (with when)."""

    lag: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    polled_at: float = 0.0
    error: str | None = None


Feed = Callable[[str, dict[str, Any], datetime], None]


class Tail:
    """Reads every topic from the beginning, for ever, into a :class:`SagaFold` (and an optional KPI feed)."""

    def __init__(self, kafka: ServiceSettings, fold: SagaFold, *, kpi: Feed | None = None) -> None:
        self.kafka = kafka
        self.fold = fold
        self.kpi = kpi
        self.caught_up = False
        self.offsets = Offsets()

    async def run(self) -> None:
        """Consume until cancelled; reconnects after a broker failure."""
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("console tail failed; retrying in 2 s", error=f"{type(e).__name__}: {e}")
                await asyncio.sleep(2)

    async def _consume(self) -> None:
        parts = await topic_log.partitions(self.kafka, topics.ALL_TOPICS)
        # A board refreshed every quarter second needs no fetch answered per record: under load, fetches wait for
        # 64 KB (or 250 ms), which cut the console's CPU per order (each fetch is decoded in Python).
        consumer = new_consumer(
            self.kafka, enable_auto_commit=False, group_id=None, fetch_min_bytes=64 * 1024, fetch_max_wait_ms=250
        )
        await consumer.start()
        try:
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            ends = await consumer.end_offsets(parts)
            behind = {tp for tp in parts if ends[tp] > 0}
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=5000)
                for tp, records in batch.items():
                    for r in records:
                        self._apply(r)
                    if behind and records and records[-1].offset + 1 >= ends[tp]:
                        behind.discard(tp)
                if behind and not batch:
                    behind = {tp for tp in behind if await consumer.position(tp) < ends[tp]}
                if not behind and not self.caught_up:
                    self.caught_up = True
                    log.info("console caught up", records=self.fold.records, orders=len(self.fold.orders))
        finally:
            await consumer.stop()

    def _apply(self, r: Any) -> None:
        data = decode_value(r.value)
        headers = header_map(r)
        self.fold.apply(
            topic=r.topic,
            partition=r.partition,
            offset=r.offset,
            timestamp=r.timestamp / 1000,
            key=r.key.decode("utf-8", "replace") if r.key is not None else None,
            data=data,
            headers=headers,
        )
        if self.kpi is not None and data is not None and not r.topic.endswith(topics.DLQ_SUFFIX):
            try:
                self.kpi(r.topic, data, datetime.fromtimestamp(r.timestamp / 1000, tz=UTC))
            except Exception as e:  # one odd record must not stop the board
                log.warning("kpi feed refused a record", topic=r.topic, error=f"{type(e).__name__}: {e}")

    async def poll_offsets(self, every: float = 3.0) -> None:
        """Lag (end offset - committed) per service group and records held per dead-letter topic, every few s."""
        while True:
            try:
                self.offsets = await read_offsets(self.kafka)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.offsets.error = f"{type(e).__name__}: {e}"
            await asyncio.sleep(every)


async def read_offsets(kafka: ServiceSettings) -> Offsets:
    parts = await topic_log.partitions(kafka, topics.ALL_TOPICS)
    consumer = new_consumer(kafka, enable_auto_commit=False, group_id=None)
    admin = new_admin(kafka, request_timeout_ms=5000)
    await consumer.start()
    await admin.start()
    try:
        ends = await consumer.end_offsets(parts)
        starts = await consumer.beginning_offsets(parts)
        lag: dict[str, int] = {}
        for group, names in topics.CONSUMER_GROUPS.items():
            committed = await admin.list_consumer_group_offsets(group)
            lag[group] = sum(
                max(ends[tp] - (committed[tp].offset if tp in committed else starts[tp]), 0)
                for tp in parts
                if tp.topic in names
            )
        held = dict.fromkeys(topic_log.dlq_topics(None), 0)
        for tp in parts:
            if tp.topic in held:
                held[tp.topic] += ends[tp] - starts[tp]
        return Offsets(lag=lag, dead_letters=held, polled_at=time.time())
    finally:
        await admin.close()
        await consumer.stop()


async def read_positions(kafka: ServiceSettings, positions: list[int], *, within: float = 5.0) -> list[topic_log.Rec]:
    """The records at the given packed positions (an order's), read without a group; purged ones are skipped."""
    wanted: dict[TopicPartition, set[int]] = {}
    for code in positions:
        topic, partition, offset = decode_position(code)
        wanted.setdefault(TopicPartition(topic, partition), set()).add(offset)
    if not wanted:
        return []
    consumer = new_consumer(kafka, enable_auto_commit=False, group_id=None)
    await consumer.start()
    out: list[topic_log.Rec] = []
    try:
        consumer.assign(list(wanted))
        starts = await consumer.beginning_offsets(list(wanted))
        deadline = time.monotonic() + within
        for tp, offsets in wanted.items():
            todo = sorted(o for o in offsets if o >= starts[tp])
            while todo and time.monotonic() < deadline:
                consumer.seek(tp, todo[0])
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=500)
                if not batch.get(tp):
                    break
                for r in batch[tp]:
                    while todo and todo[0] < r.offset:
                        todo.pop(0)  # gone (compacted or deleted) since the fold saw it
                    if todo and r.offset == todo[0]:
                        out.append(topic_log.Rec.of(r))
                        todo.pop(0)
    finally:
        await consumer.stop()
    return out
