"""Payment on the real store and Kafka: authorise once per order, capture on shipment, refund or void on
cancellation, declines, and the outbox catching up after a failed publish."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest

from services.conftest import Rig, new_order_id
from services.payment.domain import Payment
from services.payment.gateway import SandboxGateway
from services.payment.handlers import Deps
from services.payment.store import PaymentStore
from shared.events.order import OrderAccepted, OrderCancelled
from shared.events.payment import PaymentAuthorized, PaymentCaptured, PaymentDeclined, PaymentRefunded
from shared.events.shipping import ShipmentScheduled
from shared.inbox import Aggregates
from shared.outbox import OutboxRecord, OutboxRelay
from tests.unit.factories import order_accepted, order_placed

pytestmark = pytest.mark.infra


@pytest.fixture(scope="module")
async def deps(rig: Rig) -> Deps:
    """Wired as services/payment/app.py does, but on the test database and topic."""
    store = PaymentStore(rig.db, "payments", Payment)
    built = Deps(
        payments=rig.aggregates(store),
        store=store,
        gateway=SandboxGateway(rig.db),
        review_hold=timedelta(seconds=20),
    )
    await rig.ensure_indexes()
    return built


def accepted(order_id: str, token: str = "tok_ok") -> OrderAccepted:
    return order_accepted(order_placed(order_id=order_id, payment={"method": "alipay", "token": token}))


def scheduled(cause: OrderAccepted) -> ShipmentScheduled:
    event: ShipmentScheduled = ShipmentScheduled.caused_by(
        cause, carrier="SF Express", tracking_number="SF000000000001", promised_date=date(2026, 11, 26)
    )
    return event


async def ledger(rig: Rig, order_id: str) -> list[dict[str, Any]]:
    return [d async for d in rig.db["gateway_ledger"].find({"order_id": order_id}).sort("at", 1)]


async def test_order_accepted_authorizes_once_even_when_delivered_twice(rig: Rig, deps: Deps) -> None:
    order_id = new_order_id()
    event = accepted(order_id)
    record = rig.record(event)

    assert await rig.handle(deps, record) == []
    assert await rig.handle(deps, record) == []  # Kafka redelivers the same record

    entries = await ledger(rig, order_id)
    assert [(e["op"], e["outcome"], e["amount"]) for e in entries] == [("authorize", "approved", "79.80")]
    published = await rig.events(order_id)
    assert len(published) == 1
    authorized = published[0]
    assert isinstance(authorized, PaymentAuthorized)
    assert authorized.causation_id == event.event_id
    assert (authorized.amount, authorized.currency) == (Decimal("79.80"), "CNY")
    assert authorized.authorization_id == entries[0]["reference"]
    doc = await deps.store.load(order_id=order_id)
    assert doc.state is not None
    assert doc.state.status == "AUTHORIZED"
    assert doc.outbox == []  # acknowledged by Kafka, so gone from the document


async def test_shipment_scheduled_captures_and_a_later_cancellation_refunds(rig: Rig, deps: Deps) -> None:
    order_id = new_order_id()
    event = accepted(order_id)

    assert await rig.deliver(deps, event) == []
    assert await rig.deliver(deps, scheduled(event)) == []
    assert await rig.deliver(deps, OrderCancelled.caused_by(event, reason="customer_request")) == []

    published = await rig.events(order_id)
    assert [e.event_type for e in published] == ["PaymentAuthorized", "PaymentCaptured", "PaymentRefunded"]
    captured, refunded = published[1], published[2]
    assert isinstance(captured, PaymentCaptured)
    assert isinstance(refunded, PaymentRefunded)
    assert captured.amount == refunded.amount == Decimal("79.80")
    entries = await ledger(rig, order_id)
    assert [e["op"] for e in entries] == ["authorize", "capture", "refund"]
    assert refunded.refund_id == entries[2]["reference"]
    doc = await deps.store.load(order_id=order_id)
    assert doc.state is not None
    assert doc.state.status == "REFUNDED"


async def test_cancellation_before_shipment_voids_instead_of_refunding(rig: Rig, deps: Deps) -> None:
    order_id = new_order_id()
    event = accepted(order_id)

    assert await rig.deliver(deps, event) == []
    assert await rig.deliver(deps, OrderCancelled.caused_by(event, reason="out_of_stock")) == []

    assert await rig.event_types(order_id) == ["PaymentAuthorized", "PaymentVoided"]
    assert [e["op"] for e in await ledger(rig, order_id)] == ["authorize", "void"]


async def test_declined_token_emits_payment_declined_and_nothing_to_capture(rig: Rig, deps: Deps) -> None:
    order_id = new_order_id()
    event = accepted(order_id, token="tok_decline")

    assert await rig.deliver(deps, event) == []
    assert await rig.deliver(deps, scheduled(event)) == []  # a stray shipment must not capture a declined payment

    published = await rig.events(order_id)
    assert len(published) == 1
    assert isinstance(published[0], PaymentDeclined)
    assert published[0].reason == "payment_declined"
    assert [(e["op"], e["outcome"]) for e in await ledger(rig, order_id)] == [("authorize", "declined")]


async def test_provider_outage_is_retried_then_dead_lettered_without_an_event(rig: Rig, deps: Deps) -> None:
    order_id = new_order_id()

    dead = await rig.deliver(deps, accepted(order_id, token="tok_unavailable"))

    assert len(dead) == 1
    assert dead[0]["x-dlq-original-topic"] == "order.events"
    assert dead[0]["x-dlq-error-class"] == "TransientError"
    assert dead[0]["x-dlq-attempts"] == str(rig.settings.retry_max_attempts)
    assert rig.dead_letters.calls[-1][0] == "order.events.dlq"
    assert await rig.events(order_id) == []
    assert await ledger(rig, order_id) == []
    assert (await deps.store.load(order_id=order_id)).state is None


async def test_outbox_left_by_a_failed_publish_is_relayed_by_the_scan_and_removed(rig: Rig, deps: Deps) -> None:
    calls: list[str] = []

    async def publish_failing_once(record: OutboxRecord) -> None:
        calls.append(record.event_id)
        if len(calls) == 1:
            raise ConnectionError("broker unreachable")
        await rig.service.publish_record(record)

    relay = OutboxRelay(deps.store, publish_failing_once, interval=0.05, grace=0.0)
    flaky = dataclasses.replace(deps, payments=Aggregates(deps.store, relay, out_topic=rig.topic))
    order_id = new_order_id()

    assert await rig.deliver(flaky, accepted(order_id)) == []  # the state change is durable; the publish is not

    left = await deps.store.load(order_id=order_id)
    assert [r.event_type for r in left.outbox] == ["PaymentAuthorized"]
    assert await rig.events(order_id) == []
    assert order_id in await deps.store.with_pending_outbox(older_than=timedelta(0))

    scan = asyncio.create_task(relay.run())
    try:
        async with asyncio.timeout(10):
            while (await deps.store.load(order_id=order_id)).outbox:
                await asyncio.sleep(0.05)
    finally:
        scan.cancel()
        await asyncio.gather(scan, return_exceptions=True)

    published = await rig.events(order_id)
    assert [e.event_type for e in published] == ["PaymentAuthorized"]
    assert str(published[0].event_id) == left.outbox[0].event_id == calls[0] == calls[1]
    assert order_id not in await deps.store.with_pending_outbox(older_than=timedelta(0))
    raw = await deps.store.docs.latest(order_id)
    assert raw is not None
    assert "outbox_since" not in raw
