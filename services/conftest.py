"""Fixtures for the services' integration tests: each service's handlers on the real store and the real Kafka.

Isolation: every service gets its own database for the test session (``it_<service>_<uuid8>``, dropped at the
end) and every test module its own output topic (``it.<service>.<uuid8>``, 3 partitions, deleted at the end), so
the services running on the same stack never see what these tests write. Records are fed to the handlers through
:class:`shared.consumer.Consumer` (decode, dispatch, failure policy) as in-memory ``ConsumerRecord``s; the
dead-letter publisher is a recorder, so nothing is ever written to the production topics or their ``.dlq``.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import BaseModel
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from shared import topics
from shared.consumer import Consumer
from shared.events import EVENTS_BY_TOPIC, decode, encode, known_event_types
from shared.events.base import Event
from shared.inbox import Aggregates
from shared.kafka import make_broker
from shared.mongo import AggregateStore, Doc, connect
from shared.service import Service
from shared.settings import ServiceSettings
from tests.conftest import Endpoints, endpoints  # noqa: F401  (re-exported: pytest finds fixtures by name)
from tests.unit.factories import DeadLetters

S = TypeVar("S", bound=BaseModel)
PARTITIONS = 3
# What each service's events are checked against when read back from the test topic: its production contract.
OUTPUT_CONTRACT = {
    "order": topics.ORDER_EVENTS,
    "payment": topics.PAYMENT_EVENTS,
    "inventory": topics.INVENTORY_EVENTS,
    "shipping": topics.SHIPPING_EVENTS,
    "notify": topics.NOTIFY_EVENTS,
}


def topic_of(event: Event) -> str:
    """The production topic an event travels on (for the ConsumerRecord handed to the consumer)."""
    return next(t for t in EVENTS_BY_TOPIC if event.event_type in known_event_types(t))


@dataclass
class Rig:
    """One service's plumbing as its ``app.py`` builds it, pointed at a test database and a test topic."""

    name: str
    settings: ServiceSettings
    service: Service
    topic: str
    reader: Any  # AIOKafkaConsumer assigned to every partition of ``topic``
    dead_letters: DeadLetters = field(default_factory=DeadLetters)
    _offset: int = 0

    @property
    def db(self) -> AsyncDatabase[Doc]:
        db: AsyncDatabase[Doc] = self.service.db
        return db

    def aggregates(self, store: AggregateStore[S]) -> Aggregates[S]:
        """The store with a relay publishing to real Kafka, emitting to the test topic (as app.py wires it)."""
        return self.service.aggregates(store, out_topic=self.topic)

    async def ensure_indexes(self) -> None:
        """What the service does at startup for every store that got a relay."""
        for store in self.service.stores:
            await store.ensure_indexes()

    def record(
        self, value: Event | dict[str, Any] | bytes, *, topic: str | None = None, key: str | None = None
    ) -> ConsumerRecord[bytes, bytes]:
        """The record aiokafka would hand over for ``value`` (an event, a JSON object, or raw bytes)."""
        if isinstance(value, Event):
            raw, topic, key = encode(value), topic or topic_of(value), key or value.order_id
        elif isinstance(value, dict):
            raw, key = json.dumps(value, ensure_ascii=False).encode(), key or str(value["order_id"])
        else:
            raw = value
        assert topic is not None, "a raw record needs a topic"
        assert key is not None, "a raw record needs a key"
        self._offset += 1
        k = key.encode()
        return ConsumerRecord(topic, 0, self._offset, int(time.time() * 1000), 0, k, raw, None, len(k), len(raw), [])

    async def handle(self, deps: Any, record: ConsumerRecord[bytes, bytes]) -> list[dict[str, str]]:
        """Run the record through the service's consumer; returns the headers of any records it dead-lettered."""
        before = len(self.dead_letters.calls)
        consumer = Consumer(
            settings=self.settings,
            group=self.name,
            registry=self.service.registry,
            deps=deps,
            publish_raw=self.dead_letters,
        )
        await consumer.handle(record)
        return [headers for _, _, _, headers in self.dead_letters.calls[before:]]

    async def deliver(
        self, deps: Any, value: Event | dict[str, Any] | bytes, *, topic: str | None = None, key: str | None = None
    ) -> list[dict[str, str]]:
        return await self.handle(deps, self.record(value, topic=topic, key=key))

    async def events(self, order_id: str) -> list[Event]:
        """Every event keyed ``order_id`` on the test topic, from the beginning, decoded by the output contract."""
        parts = [TopicPartition(self.topic, p) for p in range(PARTITIONS)]
        await self.reader.seek_to_beginning(*parts)
        ends = await self.reader.end_offsets(parts)
        out: list[Event] = []
        deadline = time.monotonic() + 10
        while any([await self.reader.position(tp) < ends[tp] for tp in parts]):
            assert time.monotonic() < deadline, f"could not read {self.topic} to its end"
            batch = await self.reader.getmany(*parts, timeout_ms=200)
            out += [
                decode(OUTPUT_CONTRACT[self.name], rec.value)
                for recs in batch.values()
                for rec in recs
                if rec.key == order_id.encode()
            ]
        return out

    async def event_types(self, order_id: str) -> list[str]:
        return [e.event_type for e in await self.events(order_id)]


@pytest.fixture(scope="session")
async def test_databases(endpoints: Endpoints) -> AsyncIterator[Callable[[str], str]]:  # noqa: F811
    """One database per service for the whole session, created on first use and dropped at the end."""
    names: dict[str, str] = {}

    def database_for(service: str) -> str:
        return names.setdefault(service, f"it_{service}_{uuid.uuid4().hex[:8]}")

    yield database_for
    client: AsyncMongoClient[Doc] = AsyncMongoClient(endpoints.mongodb_url)
    try:
        for name in names.values():
            await client.drop_database(name)
    finally:
        await client.close()


@pytest.fixture(scope="module")
async def out_topic(request: pytest.FixtureRequest, endpoints: Endpoints) -> AsyncIterator[str]:  # noqa: F811
    """A fresh output topic for this test module (3 partitions), deleted afterwards."""
    topic = f"it.{_service_of(request)}.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=endpoints.kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
        await _wait_until_led(admin, topic)
        yield topic
        await admin.delete_topics([topic])
    finally:
        await admin.close()


@pytest.fixture(scope="module")
async def rig(
    request: pytest.FixtureRequest,
    endpoints: Endpoints,  # noqa: F811
    test_databases: Callable[[str], str],
    out_topic: str,
) -> AsyncIterator[Rig]:
    """The service of the requesting module (``services/<name>/tests``) with a started broker and a topic reader."""
    name = _service_of(request)
    settings = ServiceSettings(
        service_name=name,
        environment="test",
        kafka_bootstrap_servers=endpoints.kafka,
        mongodb_url=endpoints.mongodb_url,
        mongodb_database=test_databases(name),
        otel_sdk_disabled=True,
        # Tight retries so a transient failure reaches the dead-letter recorder in well under a second.
        retry_max_attempts=3,
        retry_initial_delay_seconds=0.01,
        retry_max_delay_seconds=0.02,
    )
    registry = importlib.import_module(f"services.{name}.handlers").handlers
    service = Service(
        settings=settings,
        inputs=(),
        registry=registry,
        broker=make_broker(settings),
        mongo=connect(settings),
    )
    reader = AIOKafkaConsumer(bootstrap_servers=endpoints.kafka, enable_auto_commit=False)
    await service.broker.start()
    await reader.start()
    try:
        reader.assign([TopicPartition(out_topic, p) for p in range(PARTITIONS)])
        yield Rig(name=name, settings=settings, service=service, topic=out_topic, reader=reader)
    finally:
        await reader.stop()
        await service.broker.stop()
        await service.mongo.close()


@dataclass
class Mailbox:
    """The SMTP sink's HTTP API (Mailpit's, or the local sink's)."""

    api_url: str

    async def to(self, address: str) -> list[dict[str, Any]]:
        """Messages addressed to ``address``, newest first."""
        async with httpx.AsyncClient(timeout=10) as http:
            # Mailpit pages its listing (50 by default); the local sink ignores the parameter and lists all.
            r = await http.get(f"{self.api_url}/api/v1/messages", params={"limit": 1000})
            r.raise_for_status()
        return [m for m in r.json()["messages"] if any(t["Address"] == address for t in m["To"])]


@pytest.fixture(scope="session")
def mailbox(endpoints: Endpoints) -> Mailbox:  # noqa: F811
    return Mailbox(endpoints.smtp_api_url)


def new_order_id(prefix: str = "IT") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _service_of(request: pytest.FixtureRequest) -> str:
    package, name, *_ = str(request.module.__name__).split(".")
    assert package == "services", f"not a service test module: {request.module}"
    assert name in OUTPUT_CONTRACT, f"no output contract for service {name!r}"
    return name


async def _wait_until_led(admin: Any, topic: str) -> None:
    """A topic just created may take a moment to have a leader for every partition."""
    deadline = time.monotonic() + 10
    while True:
        [described] = await admin.describe_topics([topic])
        led = [p for p in described["partitions"] if p["error_code"] == 0 and p["leader"] >= 0]
        if described["error_code"] == 0 and len(led) == PARTITIONS:
            return
        assert time.monotonic() < deadline, f"topic {topic} has no leader for every partition: {described}"
        await asyncio.sleep(0.05)
