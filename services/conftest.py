"""Fixtures for the services' integration tests: each service as its ``app.py`` builds it, on the real store and
the real Kafka.

The service under test is made by its own ``create_service(settings)`` -- the production wiring, not a copy --
with test settings. Isolation: every service gets its own database for the test session (``it_<service>_<uuid8>``,
dropped at the end) and every test module its own output topic (``it.<service>.<uuid8>``, 3 partitions, deleted at
the end), so the services running on the same stack never see what these tests write. The output topic is the one
thing redirected after ``create_service``: the ``out_topic`` of every ``UnitOfWork`` in the service's deps.
Records are fed to the handlers through :class:`shared.consumer.Consumer` (decode, dispatch, failure policy) as
in-memory ``ConsumerRecord``s; the dead-letter publisher is a recorder, so nothing is ever written to the
production topics or their ``.dlq``.

Races need a second process: :meth:`Rig.replica` builds another instance of the service on the same database and
topic, from modules imported anew (so module-level process state, like notify's ``CLAIMANT``, is its own) and with
caches of its own; it shares the first instance's store client, so its writes queue behind the same write gate
(concurrent writers to one database can wedge FerretDB's SQLite backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import importlib
import json
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.utils import getaddresses
from types import ModuleType
from typing import Any
from unittest import mock

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiosmtpd.controller import Controller
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

import shared.runtime
from shared import topics
from shared.consumer import Consumer
from shared.events import EVENTS_BY_TOPIC, decode, encode, known_event_types
from shared.events.base import Event
from shared.mongo import Doc
from shared.runtime import Service
from shared.tasks import cancelled
from shared.unit_of_work import UnitOfWork
from tests.conftest import Endpoints, endpoints  # noqa: F401  (re-exported: pytest finds fixtures by name)
from tests.unit.factories import DeadLetters

PARTITIONS = 3
# What each service's events are checked against when read back from the test topic: its production contract.
OUTPUT_CONTRACT = {
    "order": topics.ORDER_EVENTS,
    "payment": topics.PAYMENT_EVENTS,
    "inventory": topics.INVENTORY_EVENTS,
    "shipping": topics.SHIPPING_EVENTS,
    "notify": topics.NOTIFY_EVENTS,
}
# Service settings the tests need besides the common ones: short holds and deadlines, so timers come due in a test.
SERVICE_SETTINGS: dict[str, dict[str, Any]] = {
    "order": {"order_deadline_seconds": 0.4},
    "payment": {"payment_review_hold_seconds": 0.3},
}


def topic_of(event: Event) -> str:
    """The production topic an event travels on (for the ConsumerRecord handed to the consumer)."""
    return next(t for t in EVENTS_BY_TOPIC if event.event_type in known_event_types(t))


@dataclass
class Rig:
    """One service as its ``app.py`` builds it, pointed at a test database and a test topic."""

    name: str
    settings: Any  # the service's own Settings (services/<name>/app.py)
    service: Service
    topic: str
    reader: Any  # AIOKafkaConsumer assigned to every partition of ``topic``
    dead_letters: DeadLetters = field(default_factory=DeadLetters)
    replicas: list[Service] = field(default_factory=list)
    _offset: int = 0

    @property
    def db(self) -> AsyncDatabase[Doc]:
        db: AsyncDatabase[Doc] = self.service.db
        return db

    @property
    def deps(self) -> Any:
        """The service's deps as ``create_service`` wired them."""
        return self.service.deps

    async def replica(self) -> Service:
        """Another instance of the service on the same database and topic, as a second process would run it."""
        module = _fresh_app_module(self.name)
        with mock.patch.object(shared.runtime, "connect", return_value=self.service.mongo):
            service = _create(module, self.settings, self.topic)
        await service.start_producer()
        self.replicas.append(service)
        return service

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

    async def handle(
        self,
        deps: Any,
        record: ConsumerRecord[bytes, bytes],
        *,
        instance: Service | None = None,
        waited: bool = False,
    ) -> list[dict[str, str]]:
        """Run the record through the consumer of ``instance`` (default: the service under test) with ``deps``;
        returns the headers of any records it dead-lettered."""
        before = len(self.dead_letters.calls)
        consumer = Consumer(
            settings=self.settings,
            group=self.name,
            registry=(instance or self.service).registry,
            deps=deps,
            publish_raw=self.dead_letters,
        )
        await consumer.handle(record, waited=waited)
        return [headers for _, _, _, headers in self.dead_letters.calls[before:]]

    async def deliver(
        self,
        deps: Any,
        value: Event | dict[str, Any] | bytes,
        *,
        topic: str | None = None,
        key: str | None = None,
        instance: Service | None = None,
        waited: bool = False,
    ) -> list[dict[str, str]]:
        return await self.handle(deps, self.record(value, topic=topic, key=key), instance=instance, waited=waited)

    async def on(self, instance: Service, value: Event | ConsumerRecord[bytes, bytes]) -> list[dict[str, str]]:
        """Deliver to ``instance`` (a replica) with its own deps."""
        record = value if isinstance(value, ConsumerRecord) else self.record(value)
        return await self.handle(instance.deps, record, instance=instance)

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

    async def distinct_events(self, order_id: str) -> list[str]:
        """Event types on the topic, each event counted once (a republished event keeps its ``event_id``)."""
        seen: dict[str, str] = {}
        for e in await self.events(order_id):
            seen.setdefault(str(e.event_id), e.event_type)
        return list(seen.values())


def _fresh_app_module(name: str) -> ModuleType:
    """``services.<name>.app`` and ``.handlers`` imported anew (another process's module state), leaving the
    modules the tests import untouched."""
    package = importlib.import_module(f"services.{name}")
    names = [f"services.{name}.app", f"services.{name}.handlers"]
    saved = {n: sys.modules.get(n) for n in names}
    attrs = {n: getattr(package, n.rsplit(".", 1)[1], None) for n in names}
    try:
        for n in names:
            sys.modules.pop(n, None)
        return importlib.import_module(f"services.{name}.app")
    finally:
        for n in names:
            if saved[n] is not None:
                sys.modules[n] = saved[n]  # type: ignore[assignment]
            if attrs[n] is not None:
                setattr(package, n.rsplit(".", 1)[1], attrs[n])


def _create(module: ModuleType, settings: Any, topic: str) -> Service:
    """``create_service`` of the service's app module, its events sent to ``topic`` instead of the production one."""
    service: Service = module.create_service(settings)
    redirected = [a for a in vars(service.deps).values() if isinstance(a, UnitOfWork)]
    assert redirected, f"{module.__name__}: no UnitOfWork in the deps to redirect"
    for aggregates in redirected:
        aggregates.out_topic = topic
    return service


async def _startup(service: Service) -> None:
    """What the service does at startup before it consumes (its store answering is a precondition here)."""
    await service.prepare_store()


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
    async with _fresh_topic(endpoints.kafka, f"it.{_service_of(request)}.{uuid.uuid4().hex[:8]}") as topic:
        yield topic


@pytest.fixture(scope="module")
async def in_topic(request: pytest.FixtureRequest, endpoints: Endpoints) -> AsyncIterator[str]:  # noqa: F811
    """A fresh topic for this module's input records, for code that reads Kafka itself (the order stream's tail);
    the production input topics stay untouched. 3 partitions, deleted afterwards."""
    async with _fresh_topic(endpoints.kafka, f"it.{_service_of(request)}-in.{uuid.uuid4().hex[:8]}") as topic:
        yield topic


@contextlib.asynccontextmanager
async def _fresh_topic(kafka: str, topic: str) -> AsyncIterator[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
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
    """The service of the requesting module (``services/<name>/tests``), built by its ``create_service`` with a
    started producer, and a reader of its test topic."""
    name = _service_of(request)
    app = importlib.import_module(f"services.{name}.app")
    extra: dict[str, Any] = dict(SERVICE_SETTINGS.get(name, {}))
    if name == "notify":
        box: Mailbox = request.getfixturevalue("mailbox")
        extra.update(smtp_host=box.host, smtp_port=box.port)
    settings = app.Settings(
        environment="test",
        kafka_bootstrap_servers=endpoints.kafka,
        mongodb_url=endpoints.mongodb_url,
        mongodb_database=test_databases(name),
        otel_sdk_disabled=True,
        log_format="console",
        # Tight retries so a transient failure reaches the dead-letter recorder in well under a second.
        retry_max_attempts=3,
        retry_initial_delay_seconds=0.01,
        retry_max_delay_seconds=0.02,
        **extra,
    )
    service = _create(app, settings, out_topic)
    reader = AIOKafkaConsumer(bootstrap_servers=endpoints.kafka, enable_auto_commit=False)
    await _startup(service)
    await service.start_producer()
    await reader.start()
    rig = Rig(name=name, settings=settings, service=service, topic=out_topic, reader=reader)
    try:
        reader.assign([TopicPartition(out_topic, p) for p in range(PARTITIONS)])
        yield rig
    finally:
        await reader.stop()
        for replica in rig.replicas:
            await replica.stop_producer()
        await service.stop_producer()
        backlog = getattr(service.deps, "backlog", None)
        if backlog is not None:
            await backlog.close()
        await service.mongo.close()


@dataclass
class Pause:
    """A call that stops until released: ``reached`` is set when the call got there."""

    reached: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self) -> None:
        self.reached.set()
        await self.release.wait()


async def eventually(check: Callable[[], Any], *, within: float = 10.0, interval: float = 0.02) -> None:
    """Wait until ``check()`` (sync or async) is truthy."""
    async with asyncio.timeout(within):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(interval)


async def killed(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` as if its process died, and wait until it is gone."""
    await cancelled(task)


@dataclass
class Mailbox:
    """An SMTP server of the test session (real SMTP on 127.0.0.1) and what it received.

    Not the stack's sink: its listing parses every stored message (~30 s with the thousands a benchmark leaves),
    and like the databases and topics, the tests' mail is kept apart from what the running services send.
    """

    host: str
    port: int
    received: list[dict[str, Any]] = field(default_factory=list)

    async def to(self, address: str) -> list[dict[str, Any]]:
        """Messages addressed to ``address``, in the order received (the sink's summary fields)."""
        return [m for m in list(self.received) if any(t["Address"] == address for t in m["To"])]

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd API)
        msg = message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        self.received.append(
            {
                "MessageID": str(msg.get("Message-ID", "")),
                "To": [{"Name": n, "Address": a} for n, a in getaddresses([str(v) for v in msg.get_all("To", [])])],
                "Subject": str(msg.get("Subject", "")),
            }
        )
        return "250 Message accepted for delivery"


@pytest.fixture(scope="session")
def mailbox() -> Iterator[Mailbox]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    box = Mailbox(host="127.0.0.1", port=port)
    controller = Controller(box, hostname=box.host, port=box.port)
    controller.start()
    yield box
    controller.stop()


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
