"""Payment on the real store and Kafka: authorise once per order, capture on shipment, refund or void on
cancellation, declines, risk-review holds finished by their timer, and a failed publish made good by the
redelivered cause."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest

from services.conftest import Rig, eventually, new_order_id
from services.payment.handlers import REVIEW, Deps, finish_review
from shared.events.order import OrderAccepted, OrderCancelled
from shared.events.payment import PaymentAuthorized, PaymentCaptured, PaymentDeclined, PaymentRefunded
from shared.events.shipping import ShipmentScheduled
from shared.outbox import OutboxRecord
from shared.tasks import cancelled
from tests.unit.factories import order_accepted, order_placed

pytestmark = pytest.mark.infra


@pytest.fixture(scope="module")
def deps(rig: Rig) -> Deps:
    """As services/payment/app.py wires them (on the test database and topic)."""
    built: Deps = rig.deps
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


async def status(deps: Deps, order_id: str) -> str | None:
    doc = await deps.store.load(order_id=order_id)
    return doc.state.status if doc.state is not None else None


async def test_order_accepted_authorizes_once_even_when_delivered_twice(rig: Rig, deps: Deps) -> None:
    order_id = new_order_id()
    event = accepted(order_id)
    record = rig.record(event)

    assert await rig.handle(deps, record) == []
    assert await rig.handle(deps, record) == []  # Kafka redelivers the same record

    entries = await ledger(rig, order_id)
    assert [(e["op"], e["outcome"], e["amount"]) for e in entries] == [("authorize", "approved", "79.80")]
    published = await rig.events(order_id)
    # The redelivery publishes again what its first delivery emitted (it cannot know that publish went through):
    # the same event, which consumers deduplicate by its event_id.
    assert {str(e.event_id) for e in published} == {str(published[0].event_id)}
    authorized = published[0]
    assert isinstance(authorized, PaymentAuthorized)
    assert authorized.causation_id == event.event_id
    assert (authorized.amount, authorized.currency) == (Decimal("79.80"), "CNY")
    assert authorized.authorization_id == entries[0]["reference"]
    doc = await deps.store.load(order_id=order_id)
    assert doc.state is not None
    assert doc.state.status == "AUTHORIZED"
    assert [r.event_id for r in doc.emitted_by(event.event_id)] == [str(authorized.event_id)]


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
    assert await status(deps, order_id) == "REFUNDED"


async def test_cancellation_before_shipment_voids_instead_of_refunding(rig: Rig, deps: Deps) -> None:
    order_id = new_order_id()
    event = accepted(order_id)

    assert await rig.deliver(deps, event) == []
    assert await rig.deliver(deps, OrderCancelled.caused_by(event, reason="out_of_stock")) == []

    assert await rig.event_types(order_id) == ["PaymentAuthorized", "PaymentVoided"]
    assert [e["op"] for e in await ledger(rig, order_id)] == ["authorize", "void"]
    assert await status(deps, order_id) == "VOIDED"


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
    assert await status(deps, order_id) == "DECLINED"


async def test_provider_outage_is_retried_then_dead_lettered_with_the_intent_kept(rig: Rig, deps: Deps) -> None:
    order_id = new_order_id()

    dead = await rig.deliver(deps, accepted(order_id, token="tok_unavailable"))

    assert len(dead) == 1
    assert dead[0]["x-dlq-original-topic"] == "order.events"
    assert dead[0]["x-dlq-error-class"] == "TransientError"
    assert dead[0]["x-dlq-attempts"] == str(rig.settings.retry_max_attempts)
    assert rig.dead_letters.calls[-1][0] == "order.events.dlq"
    assert await rig.events(order_id) == []
    assert await ledger(rig, order_id) == []
    # The intent stays recorded: a redrive of the dead letter (or a cancellation) finishes it with the same key.
    assert await status(deps, order_id) == "AUTHORIZING"


async def test_event_whose_publish_failed_is_published_by_the_redelivered_cause(
    rig: Rig, deps: Deps, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[list[str]] = []
    publish = deps.payments.publish

    async def publish_failing_once(records: list[OutboxRecord]) -> None:
        if records:
            attempts.append([r.event_id for r in records])
            if len(attempts) == 1:
                raise ConnectionError("broker unreachable")
        await publish(records)

    monkeypatch.setattr(deps.payments, "publish", publish_failing_once)
    order_id = new_order_id()
    event = accepted(order_id)

    # The state change is durable before the publish fails; the consumer's retry is a redelivery of the cause,
    # which finds it in the inbox and publishes what it emitted from the document.
    assert await rig.deliver(deps, event) == []

    doc = await deps.store.load(order_id=order_id)
    left = doc.emitted_by(event.event_id)
    assert [r.event_type for r in left] == ["PaymentAuthorized"]
    assert attempts == [[left[0].event_id], [left[0].event_id]]
    published = await rig.events(order_id)
    assert [(e.event_type, str(e.event_id)) for e in published] == [("PaymentAuthorized", left[0].event_id)]
    assert [e["op"] for e in await ledger(rig, order_id)] == ["authorize"]  # decided once, not again


async def test_review_hold_is_authorised_by_its_timer_when_the_hold_ends(rig: Rig, deps: Deps) -> None:
    order_id = new_order_id()
    event = accepted(order_id, token="tok_review")

    assert await rig.deliver(deps, event) == []

    assert await status(deps, order_id) == "REVIEW"
    assert await rig.events(order_id) == []
    assert await ledger(rig, order_id) == []  # a review holds no money yet
    doc = await deps.store.load(order_id=order_id)
    assert doc.state is not None
    timer = await deps.timers.coll.find_one({"_id": f"{REVIEW}:{order_id}"})
    assert timer is not None
    assert doc.state.review_until is not None
    # set with the state that needs it (BSON keeps milliseconds)
    assert abs(timer["due_at"] - doc.state.review_until) < timedelta(milliseconds=1)

    scanner = asyncio.create_task(deps.timers.scanner(REVIEW, lambda key: finish_review(key, deps), interval=0.05)())
    try:
        await eventually(lambda: _is(deps, order_id, "AUTHORIZED"))
        # The timer is cleared after the state and its events (a scanner stopped in between leaves it to its next
        # firing), so the scanner keeps running until then, as it does in the service.
        await eventually(lambda: _timer_gone(deps, order_id))
    finally:
        await cancelled(scanner)

    published = await rig.events(order_id)
    assert [e.event_type for e in published] == ["PaymentAuthorized"]
    assert [(e["op"], e["outcome"]) for e in await ledger(rig, order_id)] == [("authorize", "approved")]


async def test_cancellation_during_a_review_hold_wins_over_the_timer(rig: Rig, deps: Deps) -> None:
    order_id = new_order_id()
    event = accepted(order_id, token="tok_review")
    assert await rig.deliver(deps, event) == []

    assert await rig.deliver(deps, OrderCancelled.caused_by(event, reason="customer_request")) == []
    await asyncio.sleep(rig.settings.payment_review_hold_seconds)
    scanner = asyncio.create_task(deps.timers.scanner(REVIEW, lambda key: finish_review(key, deps), interval=0.05)())
    try:
        await eventually(lambda: _timer_gone(deps, order_id))
    finally:
        await cancelled(scanner)

    assert "PaymentAuthorized" not in await rig.event_types(order_id)
    assert "authorize" not in [e["op"] for e in await ledger(rig, order_id)]
    assert await status(deps, order_id) in ("VOIDED", "CANCELLED")


async def _is(deps: Deps, order_id: str, wanted: str) -> bool:
    return await status(deps, order_id) == wanted


async def _timer_gone(deps: Deps, order_id: str) -> bool:
    return await deps.timers.coll.count_documents({"_id": f"{REVIEW}:{order_id}"}) == 0
