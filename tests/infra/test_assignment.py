"""Copies of a service get the same partition numbers of every topic they read, so one order's events reach one copy."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.kafka import make_consumer
from shared.settings import ServiceSettings
from tests.conftest import Endpoints

pytestmark = pytest.mark.infra


async def _assigned(consumers: list[AIOKafkaConsumer], expected: int) -> None:
    for _ in range(300):
        if sum(len(c.assignment()) for c in consumers) == expected and all(c.assignment() for c in consumers):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the group never settled: {[sorted(c.assignment()) for c in consumers]}")


async def test_two_copies_get_the_same_partitions_of_every_topic(endpoints: Endpoints) -> None:
    run = uuid.uuid4().hex[:8]
    names = [f"test.assign.{run}.{t}" for t in ("orders", "payments", "stock")]
    admin = AIOKafkaAdminClient(bootstrap_servers=endpoints.kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, num_partitions=3, replication_factor=1) for n in names])
        settings = ServiceSettings(kafka_bootstrap_servers=endpoints.kafka, service_name="assign-test")
        copies = [make_consumer(settings, *names, group=f"test.assign.{run}") for _ in range(2)]
        try:
            for c in copies:
                await c.start()
            await _assigned(copies, 3 * 3)
            for c in copies:
                by_topic = {n: {tp.partition for tp in c.assignment() if tp.topic == n} for n in names}
                first = by_topic[names[0]]
                assert first, by_topic
                assert all(parts == first for parts in by_topic.values()), by_topic
        finally:
            for c in copies:
                await c.stop()
    finally:
        await admin.delete_topics(names)
        await admin.close()
