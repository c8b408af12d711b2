"""Issue #19 item 3: a producer replacement that fails to start left an unstarted producer in place -- every later
send waited for metadata for ever (aiokafka's send on an unstarted producer never returns), ``POST /orders`` hung,
nothing was logged and ``/health`` stayed green.

Now the fresh producer is put in place only once it started; a failed start is logged, shown by ``/health`` and
``/ready``, raised as an Outage (retried, never a dead letter), and tried again by the next send. Every send is
bounded in time whatever the producer does.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast
from unittest import mock

import pytest
import structlog
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, OutOfOrderSequenceNumber
from fastapi.testclient import TestClient

import shared.runtime
from shared.consumer import HandlerRegistry, Outage, is_infrastructure_outage
from shared.outbox import OutboxRecord
from shared.runtime import Service, build_http_app
from shared.settings import ServiceSettings
from tests.unit.factories import order_cancelled


class FakeProducer:
    """A producer whose start can fail, whose sends can be rejected by the broker, or hang like an unstarted one."""

    def __init__(self, *, start_fails: bool = False, rejected: bool = False, hangs: bool = False) -> None:
        self.start_fails, self.rejected, self.hangs = start_fails, rejected, hangs
        self.started = self.stopped = False
        self.sent: list[str] = []

    async def start(self) -> None:
        if self.start_fails:
            raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9092)]")
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, topic: str, value: bytes, **_: Any) -> Any:
        if self.hangs or not self.started:
            await asyncio.Event().wait()  # what aiokafka does on a producer that never started: wait for metadata
        if self.rejected:
            raise OutOfOrderSequenceNumber()
        self.sent.append(topic)

        async def acked() -> None:
            return None

        return acked()

    async def send_and_wait(self, topic: str, value: bytes, **kw: Any) -> None:
        await (await self.send(topic, value, **kw))


def service_with(producer: FakeProducer) -> Service:
    mongo = mock.MagicMock()
    mongo.admin.command = mock.AsyncMock(return_value={"ok": 1})
    service = Service(
        settings=ServiceSettings(service_name="order", otel_sdk_disabled=True),
        inputs=(),
        registry=HandlerRegistry(),
        mongo=cast(Any, mongo),
    )
    producer.started = True
    service._producer = cast(Any, producer)
    return service


RECORDS = [OutboxRecord.of("order.events", order_cancelled("timeout"), {}, cause="c")]


async def bounded(coro: Any) -> Any:
    """What the test waits for at most: today's code hung here for ever."""
    return await asyncio.wait_for(coro, timeout=5)


async def test_a_replacement_that_fails_to_start_is_not_put_in_place_and_the_send_is_an_outage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rejected, unstartable = FakeProducer(rejected=True), FakeProducer(start_fails=True)
    monkeypatch.setattr(shared.runtime, "make_producer", lambda _settings: unstartable)
    service = service_with(rejected)

    with structlog.testing.capture_logs() as logs, pytest.raises(Outage) as raised:
        await bounded(service.publish(RECORDS))

    assert service._producer is rejected, "an unstarted producer is never put in place"
    assert unstartable.stopped, "the failed one is closed"
    assert "KafkaConnectionError" in str(raised.value)
    assert any(e["log_level"] == "error" and "could not be replaced" in e["event"] for e in logs)
    assert service.producer_broken is not None


async def test_the_next_send_tries_the_replacement_again_and_sends_once_it_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rejected, unstartable, fresh = FakeProducer(rejected=True), FakeProducer(start_fails=True), FakeProducer()
    made = iter([unstartable, fresh])
    monkeypatch.setattr(shared.runtime, "make_producer", lambda _settings: next(made))
    service = service_with(rejected)
    with pytest.raises(Outage):
        await bounded(service.publish(RECORDS))

    await bounded(service.publish(RECORDS))  # what the consumer's outage retry does next

    assert service._producer is fresh
    assert fresh.sent == ["order.events"]
    assert rejected.stopped
    assert service.producer_broken is None


async def test_a_dead_letter_after_a_failed_replacement_does_not_hang_either(monkeypatch: pytest.MonkeyPatch) -> None:
    rejected = FakeProducer(rejected=True)
    monkeypatch.setattr(shared.runtime, "make_producer", lambda _settings: FakeProducer(start_fails=True))
    service = service_with(rejected)
    with pytest.raises(Outage):
        await bounded(service.publish(RECORDS))

    with pytest.raises(Outage):
        await bounded(service.publish_dead_letter("order.events.dlq", b"k", b"v", {"x-dlq-error-class": "X"}))


async def test_a_send_kafka_never_answers_is_an_outage_after_the_send_timeout() -> None:
    service = service_with(FakeProducer(hangs=True))
    service.send_timeout = 0.05

    with pytest.raises(KafkaTimeoutError) as raised:
        await bounded(service.publish(RECORDS))
    assert is_infrastructure_outage(raised.value), "retried as an outage, never dead-lettered"

    with pytest.raises(KafkaTimeoutError):
        await bounded(service.publish_dead_letter("order.events.dlq", b"k", b"v", {}))


async def test_health_and_ready_report_the_producer_broken_while_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    rejected, fresh = FakeProducer(rejected=True), FakeProducer()
    made = iter([FakeProducer(start_fails=True), fresh])
    monkeypatch.setattr(shared.runtime, "make_producer", lambda _settings: next(made))
    service = service_with(rejected)
    monkeypatch.setattr(shared.runtime, "_kafka_answers", mock.AsyncMock(return_value=True))
    client = TestClient(build_http_app(service, title="order"))  # no lifespan: nothing connects
    assert client.get("/health").status_code == 200

    with pytest.raises(Outage):
        await bounded(service.publish(RECORDS))

    health, ready = client.get("/health"), client.get("/ready")
    assert health.status_code == 503
    assert "KafkaConnectionError" in health.json()["producer"]
    assert ready.status_code == 503
    assert ready.json()["checks"]["producer"] is False

    await bounded(service.publish(RECORDS))

    assert client.get("/health").json() == {"status": "ok", "service": "order"}
    assert client.get("/ready").json()["checks"]["producer"] is True
