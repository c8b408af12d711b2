"""Is the saga behind for an order? Read from Kafka: a consumer group of the saga that has not yet consumed
everything on the partition this order's key maps to may still hold the message that moves the order on.

The deadline asks this before cancelling, so a burst, a Kafka outage or a restore -- the system being behind --
never cancels an order whose own saga is fine. A snapshot of the groups' lag is kept for a few seconds.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

from shared import topics
from shared.kafka import client_options
from shared.settings import ServiceSettings

log = structlog.get_logger(__name__)

SAGA_GROUPS = topics.CONSUMER_GROUPS


class Backlog:
    def __init__(self, settings: ServiceSettings, *, ttl: float = 3.0) -> None:
        self.settings = settings
        self.ttl = ttl
        self._admin: AIOKafkaAdminClient | None = None
        self._reader: AIOKafkaConsumer | None = None
        self._lag: dict[TopicPartition, int] = {}
        self._partitions: dict[str, int] = {}
        self._taken = float("-inf")
        self._lock = asyncio.Lock()
        self._partitioner = DefaultPartitioner()

    async def _refresh(self) -> None:
        if self._admin is None:
            admin = AIOKafkaAdminClient(**client_options(self.settings), client_id="order-backlog")
            await admin.start()
            self._admin = admin
        if self._reader is None:
            reader = AIOKafkaConsumer(**client_options(self.settings), client_id="order-backlog")
            await reader.start()
            self._reader = reader
        admin, reader = self._admin, self._reader
        wanted = {t for ts in SAGA_GROUPS.values() for t in ts}
        described = await admin.describe_topics(list(wanted))
        self._partitions = {d["topic"]: len(d["partitions"]) for d in described if d.get("partitions")}
        ends = await reader.end_offsets([TopicPartition(t, p) for t, n in self._partitions.items() for p in range(n)])
        lag: dict[TopicPartition, int] = {}
        for group, inputs in SAGA_GROUPS.items():
            committed = await admin.list_consumer_group_offsets(group)
            for tp, end in ends.items():
                if tp.topic not in inputs:
                    continue
                meta = committed.get(tp)
                position = meta.offset if meta is not None and meta.offset >= 0 else 0
                lag[tp] = max(lag.get(tp, 0), end - position)
        self._lag = lag
        self._taken = time.monotonic()

    async def behind(self, order_id: str) -> bool:
        """True if some saga group still has unconsumed records on a partition this order's records go to."""
        try:
            async with self._lock:
                if time.monotonic() - self._taken > self.ttl:
                    await self._refresh()
        except Exception as e:  # cannot tell: treat as behind rather than cancel on a guess
            log.warning("saga backlog unknown", error=f"{type(e).__name__}: {e}")
            return True
        key = order_id.encode()
        for topic, count in self._partitions.items():
            partition = self._partitioner(key, list(range(count)), list(range(count)))
            if self._lag.get(TopicPartition(topic, partition), 0) > 0:
                return True
        return False

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.close()
        if self._reader is not None:
            await self._reader.stop()
