"""A re-read (after a restore or a rewind) answers a customer's cancellation request as the first reading did.

The order service reads its topics side by side, so a re-read may bring a request before a fact of its order that
occurred before it -- the delivery that made the first answer a refusal, the decline that cancelled the order
first. The request waits for those facts (``NotYet``) and is answered after them. Here the history is on a test
topic of the real Kafka, read by a consumer group that has not consumed it yet (as after a restore), and the
re-read hands the records to the order service's own pipeline in the order that flips the outcome.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition

from services.conftest import Rig, eventually, new_order_id
from services.order import backlog as backlog_module
from services.order.backlog import Backlog
from services.order.handlers import Deps
from shared.consumer import Pipeline
from shared.events import encode
from shared.events.base import Event, now
from shared.events.inventory import StockReserved
from shared.events.payment import PaymentAuthorized, PaymentCaptured, PaymentDeclined
from shared.events.shipping import ShipmentCancelled, ShipmentScheduled, ShipmentTracked
from shared.events.storefront import OrderCancellationRequested, OrderPlaced
from tests.conftest import Endpoints
from tests.unit.factories import order_placed

pytestmark = pytest.mark.infra


@dataclass
class History:
    """The order service's deps, with a backlog that reads the facts of the orders from ``topic``."""

    deps: Deps
    topic: str
    producer: AIOKafkaProducer

    async def written(self, *events: Event) -> None:
        """These facts are on Kafka, not yet consumed by the order service (as after a restore)."""
        for event in events:
            await self.producer.send_and_wait(self.topic, encode(event), key=event.order_id.encode())


@pytest.fixture
async def history(
    rig: Rig, in_topic: str, endpoints: Endpoints, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[History]:
    group = f"it.order-reread.{uuid.uuid4().hex[:8]}"  # never commits: every record of the topic is unread
    monkeypatch.setattr(backlog_module, "SAGA_GROUPS", {group: (in_topic,)})
    monkeypatch.setattr(backlog_module, "ORDER_GROUP", group)
    monkeypatch.setattr(backlog_module, "FACT_TOPICS", (in_topic,))
    backlog = Backlog(rig.settings, ttl=0)
    producer = AIOKafkaProducer(bootstrap_servers=endpoints.kafka)
    await producer.start()
    try:
        yield History(deps=dataclasses.replace(rig.deps, backlog=backlog), topic=in_topic, producer=producer)
    finally:
        await producer.stop()
        await backlog.close()


async def reread(rig: Rig, deps: Deps, *events: Event) -> None:
    """Hand ``events`` to the order service's pipeline in this order, as a re-read may fetch them side by side,
    and wait until each is done."""
    records = [rig.record(e) for e in events]

    async def handle(record: ConsumerRecord[bytes, bytes], *, waited: bool = False) -> None:
        await rig.handle(deps, record, waited=waited)

    pipeline = Pipeline(cast(Any, None), handle, max_in_flight=100)
    await pipeline.on_partitions_assigned({TopicPartition(r.topic, r.partition) for r in records})
    for record in records:
        pipeline._submit(TopicPartition(record.topic, record.partition), record)
    await eventually(lambda: pipeline.in_flight == 0, within=20)
    await pipeline.drain(grace=0.1)


def cancellation(order_id: str) -> OrderCancellationRequested:
    return OrderCancellationRequested(event_id=uuid.uuid4(), order_id=order_id, occurred_at=now())


async def completed(rig: Rig, deps: Deps) -> tuple[OrderPlaced, ShipmentScheduled]:
    """An order that completed (shipped and paid) on its first reading."""
    placed = order_placed(order_id=new_order_id("REREAD"), event_id=str(uuid.uuid4()))
    total = Decimal("79.80")
    scheduled = ShipmentScheduled.caused_by(
        placed, carrier="SF Express", tracking_number="SF-REREAD", promised_date=date(2026, 11, 26)
    )
    for event in (
        placed,
        PaymentAuthorized.caused_by(placed, amount=total, currency="CNY", authorization_id="auth-reread"),
        StockReserved.caused_by(placed, lines=[{"sku": line.sku, "quantity": line.quantity} for line in placed.lines]),
        scheduled,
        PaymentCaptured.caused_by(placed, amount=total, currency="CNY", capture_id="cap-reread"),
    ):
        assert await rig.deliver(deps, event) == []
    doc = await deps.store.load(order_id=placed.order_id)
    assert doc.state is not None
    assert doc.state.status == "COMPLETED"
    return placed, scheduled


async def test_a_cancellation_reread_before_the_delivery_that_preceded_it_is_refused_as_it_was(
    rig: Rig, history: History
) -> None:
    placed, scheduled = await completed(rig, history.deps)
    delivered = ShipmentTracked.caused_by(
        scheduled, carrier="SF Express", tracking_number="SF-REREAD", milestone="DELIVERED", at=now()
    )
    request = cancellation(placed.order_id)  # the customer asked after the delivery: refused the first time
    await history.written(delivered)
    dead_before = len(rig.dead_letters.calls)

    await reread(rig, history.deps, request, delivered)  # the re-read fetched the request first

    doc = await history.deps.store.load(order_id=placed.order_id)
    assert doc.state is not None
    assert (doc.state.status, doc.state.stage, doc.state.reason) == ("COMPLETED", "DELIVERED", None)
    assert await rig.event_types(placed.order_id) == ["OrderAccepted", "OrderCompleted", "OrderCancellationRefused"]
    assert len(rig.dead_letters.calls) == dead_before


async def test_a_cancellation_reread_before_the_decline_that_preceded_it_leaves_the_order_declined(
    rig: Rig, history: History
) -> None:
    placed = order_placed(order_id=new_order_id("REREAD"), event_id=str(uuid.uuid4()))
    assert await rig.deliver(history.deps, placed) == []
    declined = PaymentDeclined.caused_by(placed, reason="payment_declined")
    request = cancellation(placed.order_id)
    await history.written(declined)

    await reread(rig, history.deps, request, declined)

    doc = await history.deps.store.load(order_id=placed.order_id)
    assert doc.state is not None
    assert (doc.state.status, doc.state.reason) == ("CANCELLED", "payment_declined")


async def test_facts_that_occurred_after_the_request_do_not_hold_it(rig: Rig, history: History) -> None:
    placed, _ = await completed(rig, history.deps)
    request = cancellation(placed.order_id)
    called_back = ShipmentCancelled.caused_by(placed, tracking_number="SF-REREAD")
    called_back = called_back.model_copy(update={"occurred_at": request.occurred_at + timedelta(seconds=1)})
    await history.written(called_back)  # what the first answer caused: unread, but after the request

    assert await rig.deliver(history.deps, request) == []  # answered at once, no NotYet

    doc = await history.deps.store.load(order_id=placed.order_id)
    assert doc.state is not None
    assert (doc.state.status, doc.state.reason) == ("CANCELLED", "customer_request")
