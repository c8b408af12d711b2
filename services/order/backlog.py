"""Is the saga behind for an order? Read from Kafka: the saga is behind for an order while a consumer group of the
saga has yet to consume a record *of that order* (keyed by its id) -- a record that may move the order on. A step
commits its input only after publishing what it caused, so while any step of an order's saga is under way or
waiting in a queue, some group has such a record before it.

The deadline asks this before cancelling, so a burst, a Kafka outage or a restore -- the system being behind with
this order's records -- never cancels an order whose own saga is fine. Records of *other* orders waiting on the
same partitions do not count: under steady traffic some always are, and an order whose step was dead-lettered (its
record consumed, set aside, committed) would otherwise be held for ever, keeping its payment hold and its stock.

How: a snapshot, kept a few seconds, of each saga group's committed offsets and each partition's end; for a
partition some group has not consumed to its end, the keys of the records not yet consumed by every group, each
with its last offset, read once per snapshot. A tail longer than ``scan_limit`` records (or one that cannot be read
in time) is not read: it is taken as holding every order's record -- the deadline bounds how long it waits anyway.

The same snapshot tells a customer's cancellation request which facts of its order (records of the services that
report on it) occurred before it and are still to be read by the order service: a re-read after a restore reads the
topics side by side, and the request must be answered against what preceded it, as it was the first time.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from datetime import UTC, datetime

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

from shared import topics
from shared.events.base import Event, now
from shared.kafka import client_options
from shared.settings import ServiceSettings

log = structlog.get_logger(__name__)

SAGA_GROUPS = topics.CONSUMER_GROUPS
ORDER_GROUP = "order"
# Where the facts that can change the answer to a cancellation request come from (mail never does).
FACT_TOPICS = (topics.PAYMENT_EVENTS, topics.INVENTORY_EVENTS, topics.SHIPPING_EVENTS)
FACTS_KEPT = 10_000  # (partition, offset) -> event id and time of records read for their facts: the log never changes


class Backlog:
    def __init__(
        self, settings: ServiceSettings, *, ttl: float = 3.0, scan_limit: int = 10_000, scan_seconds: float = 5.0
    ) -> None:
        self.settings = settings
        self.ttl = ttl
        self.scan_limit = scan_limit
        self.scan_seconds = scan_seconds
        self._admin: AIOKafkaAdminClient | None = None
        self._reader: AIOKafkaConsumer | None = None
        self._partitions: dict[str, int] = {}
        self._ends: dict[TopicPartition, int] = {}
        self._committed: dict[str, dict[TopicPartition, int]] = {}  # group -> partition -> next offset it reads
        # (partition, first offset) -> key -> the offsets of its records from there to the snapshot's end
        self._tails: dict[tuple[TopicPartition, int], dict[bytes, list[int]] | None] = {}
        self._facts: OrderedDict[tuple[TopicPartition, int], tuple[str, datetime] | None] = OrderedDict()
        self._taken = float("-inf")
        self._taken_at = datetime.min.replace(tzinfo=UTC)
        self._lock = asyncio.Lock()
        self._partitioner = DefaultPartitioner()

    async def _refresh(self) -> None:
        if self._admin is None:
            admin = AIOKafkaAdminClient(**client_options(self.settings), client_id="order-backlog")
            await admin.start()
            self._admin = admin
        if self._reader is None:
            reader = AIOKafkaConsumer(
                **client_options(self.settings),
                client_id="order-backlog",
                enable_auto_commit=False,
                auto_offset_reset="earliest",  # a tail whose start was deleted is read from what is left
            )
            await reader.start()
            self._reader = reader
        admin, reader = self._admin, self._reader
        taken_at = now()  # every record written before this is in the snapshot
        groups = SAGA_GROUPS
        wanted = {t for ts in groups.values() for t in ts}
        described = await admin.describe_topics(list(wanted))
        partitions = {d["topic"]: len(d["partitions"]) for d in described if d.get("partitions")}
        ends = await reader.end_offsets([TopicPartition(t, p) for t, n in partitions.items() for p in range(n)])
        committed: dict[str, dict[TopicPartition, int]] = {}
        for group, inputs in groups.items():
            offsets = await admin.list_consumer_group_offsets(group)
            positions = committed.setdefault(group, {})
            for tp in ends:
                if tp.topic in inputs:
                    meta = offsets.get(tp)
                    positions[tp] = meta.offset if meta is not None and meta.offset >= 0 else 0
        self._partitions, self._ends, self._committed, self._tails = partitions, ends, committed, {}
        self._taken, self._taken_at = time.monotonic(), taken_at

    def _unconsumed_from(self, tp: TopicPartition) -> int | None:
        """The lowest offset on ``tp`` some saga group has not consumed (None: every group is at its end)."""
        end = self._ends.get(tp, 0)
        behind = [p for positions in self._committed.values() if (p := positions.get(tp, end)) < end]
        return min(behind) if behind else None

    async def _tail(self, tp: TopicPartition, start: int) -> dict[bytes, list[int]] | None:
        """Keys of the records on ``tp`` from ``start`` to the snapshot's end, each with its offsets; None if there
        are too many to read (or they cannot be read in time). Read once per snapshot."""
        if (tp, start) not in self._tails:
            end = self._ends[tp]
            keys = None
            if end - start <= self.scan_limit:
                try:
                    keys = await asyncio.wait_for(self._read(tp, start, end), self.scan_seconds)
                except TimeoutError:
                    log.warning("saga backlog too slow to read", topic=tp.topic, partition=tp.partition)
            self._tails[(tp, start)] = keys
        return self._tails[(tp, start)]

    async def _read(self, tp: TopicPartition, start: int, end: int) -> dict[bytes, list[int]]:
        assert self._reader is not None
        reader = self._reader
        keys: dict[bytes, list[int]] = {}
        reader.assign([tp])
        try:
            reader.seek(tp, start)
            while await reader.position(tp) < end:
                batch = await reader.getmany(tp, timeout_ms=200)
                for record in batch.get(tp, []):
                    if record.offset < end and record.key is not None:
                        keys.setdefault(record.key, []).append(record.offset)
        finally:
            reader.unsubscribe()  # no fetch left waiting at the partition's end: the next read starts at once
        return keys

    async def _read_facts(self, tp: TopicPartition, offsets: list[int]) -> None:
        """Event id and time of the records at ``offsets`` on ``tp`` (kept: a record never changes)."""
        assert self._reader is not None
        reader = self._reader
        wanted = {o for o in offsets if (tp, o) not in self._facts}
        if not wanted:
            return
        reader.assign([tp])
        try:
            for offset in sorted(wanted):
                if (tp, offset) in self._facts:
                    continue  # came with an earlier fetch
                reader.seek(tp, offset)
                while await reader.position(tp) <= offset:
                    batch = await reader.getmany(tp, timeout_ms=200)
                    for record in batch.get(tp, []):
                        if record.offset in wanted:
                            self._facts[(tp, record.offset)] = _fact(record.value)
        finally:
            reader.unsubscribe()
        while len(self._facts) > FACTS_KEPT:
            self._facts.popitem(last=False)

    def _partition(self, key: bytes, topic: str) -> TopicPartition:
        count = list(range(self._partitions[topic]))
        return TopicPartition(topic, self._partitioner(key, count, count))

    async def behind(self, order_id: str) -> bool:
        """True if some saga group has yet to consume a record of this order on the partitions its records go to
        (or if that cannot be told)."""
        key = order_id.encode()
        try:
            async with self._lock:
                if time.monotonic() - self._taken > self.ttl:
                    await self._refresh()
                for topic in self._partitions:
                    tp = self._partition(key, topic)
                    start = self._unconsumed_from(tp)
                    if start is None:
                        continue
                    tail = await self._tail(tp, start)
                    if tail is None:
                        return True  # too long to look through: it may hold this order's record
                    last = tail[key][-1] if key in tail else None
                    if last is not None and any(
                        positions.get(tp, last + 1) <= last for positions in self._committed.values()
                    ):
                        return True
        except Exception as e:  # cannot tell: treat as behind rather than cancel on a guess
            log.warning("saga backlog unknown", order_id=order_id, error=f"{type(e).__name__}: {e}")
            return True
        return False

    async def unread_before(self, order_id: str, *, before: datetime) -> list[str] | None:
        """Event ids of this order's facts (its records on ``FACT_TOPICS``) that occurred before ``before`` and that
        the order service has yet to consume; None if that cannot be told."""
        key = order_id.encode()
        try:
            async with self._lock:
                # The snapshot must hold every record written before the request (a live request: a fresh one).
                if time.monotonic() - self._taken > self.ttl or self._taken_at <= min(before, now()):
                    await self._refresh()
                found: list[str] = []
                for topic in FACT_TOPICS:
                    if topic not in self._partitions:
                        continue
                    tp = self._partition(key, topic)
                    end = self._ends.get(tp, 0)
                    start = self._committed.get(ORDER_GROUP, {}).get(tp, end)
                    if start >= end:
                        continue
                    tail = await self._tail(tp, start)
                    if tail is None:
                        return None
                    offsets = tail.get(key, [])
                    await asyncio.wait_for(self._read_facts(tp, offsets), self.scan_seconds)
                    for offset in offsets:
                        fact = self._facts.get((tp, offset))
                        if fact is not None and fact[1] < before:
                            found.append(fact[0])
        except Exception as e:  # cannot tell: the caller waits rather than answer on a guess
            log.warning("order's unread facts unknown", order_id=order_id, error=f"{type(e).__name__}: {e}")
            return None
        return found

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.close()
        if self._reader is not None:
            await self._reader.stop()


def _fact(value: bytes | None) -> tuple[str, datetime] | None:
    """A record's event id and time, or None for a record the order service cannot read (it sets it aside)."""
    try:
        event = Event.model_validate_json(value or b"")
    except Exception:
        return None
    return str(event.event_id), event.occurred_at
