"""A producer the broker stopped accepting is replaced, and the send is reported as an outage (retried, never a
dead letter) -- found by the chaos drill with two copies of each service after a broker restart."""

from __future__ import annotations

from typing import Any, cast

import pytest
from aiokafka.errors import OutOfOrderSequenceNumber

import shared.runtime
from shared.consumer import HandlerRegistry, Outage
from shared.outbox import OutboxRecord
from shared.runtime import Service
from shared.settings import ServiceSettings
from tests.unit.factories import order_cancelled


class FakeProducer:
    def __init__(self, *, broken: bool) -> None:
        self.broken = broken
        self.sent: list[str] = []
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, topic: str, value: bytes, **_: Any) -> Any:
        if self.broken:
            raise OutOfOrderSequenceNumber()
        self.sent.append(topic)

        async def acked() -> None:
            return None

        return acked()


async def test_a_rejected_producer_is_replaced_and_the_send_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    broken, fresh = FakeProducer(broken=True), FakeProducer(broken=False)
    monkeypatch.setattr(shared.runtime, "make_producer", lambda _settings: fresh)
    service = Service(
        settings=ServiceSettings(service_name="order"), inputs=(), registry=HandlerRegistry(), mongo=cast(Any, None)
    )
    service._producer = broken
    records = [OutboxRecord.of("order.events", order_cancelled("timeout"), {}, cause="c")]

    with pytest.raises(Outage):
        await service.publish(records)
    assert service._producer is fresh
    assert fresh.started
    assert broken.stopped

    await service.publish(records)  # what the consumer's retry does next
    assert fresh.sent == ["order.events"]
