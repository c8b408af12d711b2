"""The saga's backlog as the deadline reads it, on the real Kafka: behind for an order only while a saga group has
yet to consume a record *of that order* -- not while records of other orders wait on the same partition (under
steady traffic some always do). The saga's groups and topics are a test topic and two test groups here."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.conftest import new_order_id
from services.order import backlog as backlog_module
from services.order.backlog import Backlog
from shared.settings import ServiceSettings
from tests.conftest import Endpoints

pytestmark = pytest.mark.infra


@dataclass
class Lane:
    """One partition of a test topic, read by two saga groups."""

    settings: ServiceSettings
    tp: TopicPartition
    groups: tuple[str, str]
    producer: AIOKafkaProducer

    async def send(self, *keys: str) -> None:
        for key in keys:
            await self.producer.send_and_wait(self.tp.topic, b"{}", key=key.encode(), partition=self.tp.partition)

    async def commit(self, group: str, offset: int) -> None:
        """``group`` consumed (or dead-lettered) everything before ``offset``."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign([self.tp])
            await consumer.commit({self.tp: offset})
        finally:
            await consumer.stop()


@pytest.fixture
async def lane(endpoints: Endpoints, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Lane]:
    name = f"it.order-backlog.{uuid.uuid4().hex[:8]}"
    groups = (f"{name}.a", f"{name}.b")
    monkeypatch.setattr(backlog_module, "SAGA_GROUPS", dict.fromkeys(groups, (name,)))
    settings = ServiceSettings(environment="test", kafka_bootstrap_servers=endpoints.kafka)
    admin = AIOKafkaAdminClient(bootstrap_servers=endpoints.kafka)
    await admin.start()
    producer = AIOKafkaProducer(bootstrap_servers=endpoints.kafka)
    try:
        await admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
        await led(admin, name)
        await producer.start()
        yield Lane(settings=settings, tp=TopicPartition(name, 0), groups=groups, producer=producer)
        await admin.delete_topics([name])
    finally:
        await producer.stop()
        await admin.close()


async def led(admin: AIOKafkaAdminClient, topic: str) -> None:
    """A topic just created may take a moment to have a leader."""
    async with asyncio.timeout(10):
        while True:
            [described] = await admin.describe_topics([topic])
            if described["error_code"] == 0 and all(
                p["leader"] >= 0 for p in described["partitions"] or [{"leader": -1}]
            ):
                return
            await asyncio.sleep(0.05)


async def test_records_of_other_orders_waiting_on_the_partition_do_not_hold_an_order_back(lane: Lane) -> None:
    stuck, waiting = new_order_id("STUCK"), new_order_id("WAITING")
    await lane.send(stuck)  # offset 0: its step was consumed and set aside (dead-lettered), committed
    for group in lane.groups:
        await lane.commit(group, 1)
    await lane.send(*(new_order_id("OTHER") for _ in range(3)), waiting)  # offsets 1-3 other orders, 4 waiting
    backlog = Backlog(lane.settings, ttl=0)
    try:
        assert not await backlog.behind(stuck)  # nothing of its own waits: the deadline may cancel it
        assert await backlog.behind(waiting)
        assert not await backlog.behind(new_order_id("NEVER-SEEN"))

        await lane.commit(lane.groups[0], 5)
        assert await backlog.behind(waiting)  # one group has read it, the other not yet

        await lane.commit(lane.groups[1], 5)
        assert not await backlog.behind(waiting)
    finally:
        await backlog.close()


async def test_a_tail_too_long_to_read_is_taken_as_holding_every_order(lane: Lane) -> None:
    stuck = new_order_id("STUCK")
    await lane.send(stuck)
    for group in lane.groups:
        await lane.commit(group, 1)
    await lane.send(*(new_order_id("OTHER") for _ in range(3)))
    backlog = Backlog(lane.settings, ttl=0, scan_limit=2)
    try:
        assert await backlog.behind(stuck)  # cannot tell cheaply: behind (the deadline's maximum still bounds it)
    finally:
        await backlog.close()
