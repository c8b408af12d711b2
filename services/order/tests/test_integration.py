"""Order on the real store and Kafka: acceptance, rejection of an invalid placement with field-level reasons,
cancellation on a declined payment or a passed deadline, dead letters, and the store's compare-and-set."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import timedelta

import pytest

from services.conftest import Rig, new_order_id
from services.order.domain import Order
from services.order.handlers import Deps, cancel_overdue_orders
from services.order.store import OrderStore
from shared import topics
from shared.events.base import now
from shared.events.order import OrderAccepted, OrderCancelled, OrderRejected
from shared.events.payment import PaymentDeclined
from shared.events.storefront import OrderPlaced
from shared.mongo import ConcurrentUpdate, Loaded
from tests.unit.factories import order_placed, order_placed_data, payment_authorized_data

pytestmark = pytest.mark.infra

ROUNDS = 5


@pytest.fixture(scope="module")
async def deps(rig: Rig) -> Deps:
    """Wired as services/order/app.py does, but on the test database and topic."""
    store = OrderStore(rig.db, "orders", Order)
    built = Deps(
        orders=rig.aggregates(store),
        store=store,
        deadline=timedelta(minutes=5),
    )
    await rig.ensure_indexes()
    return built


def placed(order_id: str) -> OrderPlaced:
    return order_placed(order_id=order_id, event_id=str(uuid.uuid4()))


async def assert_cancelled(rig: Rig, deps: Deps, order_id: str, *, reason: str) -> None:
    """The order is CANCELLED for ``reason``, and OrderCancelled followed its OrderAccepted on Kafka, once."""
    doc = await deps.store.load(order_id=order_id)
    assert doc.state is not None
    assert (doc.state.status, doc.state.reason) == ("CANCELLED", reason)
    published = await rig.events(order_id)
    assert [type(e) for e in published] == [OrderAccepted, OrderCancelled]
    assert isinstance(published[1], OrderCancelled)
    assert published[1].reason == reason


async def test_order_placed_is_accepted_and_pending(rig: Rig, deps: Deps) -> None:
    order_id = new_order_id()
    event = placed(order_id)

    assert await rig.deliver(deps, event) == []

    doc = await deps.store.load(order_id=order_id)
    assert doc.state is not None
    assert (doc.state.status, doc.state.stage) == ("PENDING", "ACCEPTED")
    published = await rig.events(order_id)
    assert len(published) == 1
    accepted = published[0]
    assert isinstance(accepted, OrderAccepted)
    assert accepted.causation_id == event.event_id
    assert accepted.total == doc.state.total == sum(ln.unit_price * ln.quantity for ln in event.lines)
    assert (accepted.customer, accepted.lines, accepted.shipping) == (event.customer, event.lines, event.shipping)


async def test_invalid_order_placed_is_rejected_with_field_errors(rig: Rig, deps: Deps) -> None:
    order_id = new_order_id()
    data = order_placed_data(
        order_id=order_id,
        event_id=str(uuid.uuid4()),
        lines=[{"sku": "SKU-RED-MUG", "quantity": 0, "unit_price": "39.90"}],
    )

    assert await rig.deliver(deps, data, topic=topics.STOREFRONT_ORDERS) == []  # handled, not dead-lettered

    doc = await deps.store.load(order_id=order_id)
    assert doc.state is not None
    assert (doc.state.status, doc.state.reason) == ("REJECTED", "invalid_order")
    assert [(e.loc, e.type) for e in doc.state.errors] == [(["lines", 0, "quantity"], "greater_than_equal")]
    published = await rig.events(order_id)
    assert len(published) == 1
    rejected = published[0]
    assert isinstance(rejected, OrderRejected)
    assert rejected.reason == "invalid_order"
    assert rejected.errors == doc.state.errors
    assert str(rejected.causation_id) == data["event_id"]


async def test_payment_declined_cancels_the_order(rig: Rig, deps: Deps) -> None:
    order_id = new_order_id()
    event = placed(order_id)
    assert await rig.deliver(deps, event) == []

    assert await rig.deliver(deps, PaymentDeclined.caused_by(event, reason="payment_declined")) == []

    await assert_cancelled(rig, deps, order_id, reason="payment_declined")


async def test_deadline_scanner_cancels_an_overdue_order_once(rig: Rig, deps: Deps) -> None:
    hurried = dataclasses.replace(deps, deadline=timedelta(milliseconds=1))
    order_id = new_order_id()
    assert await rig.deliver(hurried, placed(order_id)) == []
    await asyncio.sleep(0.01)

    await cancel_overdue_orders(hurried)
    await cancel_overdue_orders(hurried)  # the next scan finds nothing left to do

    await assert_cancelled(rig, deps, order_id, reason="timeout")
    assert order_id not in await deps.store.past_deadline(at=now())


async def test_event_for_an_unknown_order_is_dead_lettered_at_once(rig: Rig, deps: Deps) -> None:
    order_id = new_order_id()

    dead = await rig.deliver(deps, payment_authorized_data(order_id=order_id), topic=topics.PAYMENT_EVENTS)

    assert len(dead) == 1
    assert dead[0]["x-dlq-error-class"] == "PermanentError"
    assert dead[0]["x-dlq-attempts"] == "1"
    assert rig.dead_letters.calls[-1][:2] == ("payment.events.dlq", order_id.encode())
    assert (await deps.store.load(order_id=order_id)).state is None
    assert await rig.events(order_id) == []


async def test_unknown_event_type_is_dead_lettered_untouched(rig: Rig, deps: Deps) -> None:
    order_id = new_order_id()
    value = b'{"event_type": "OrderTeleported", "order_id": "%s"}' % order_id.encode()

    dead = await rig.deliver(deps, value, topic=topics.STOREFRONT_ORDERS, key=order_id)

    assert [h["x-dlq-error-class"] for h in dead] == ["UnknownEventType"]
    assert rig.dead_letters.calls[-1][:3] == ("storefront.orders.dlq", order_id.encode(), value)
    assert (await deps.store.load(order_id=order_id)).state is None


@pytest.mark.parametrize("existing", [False, True], ids=["new-document", "existing-document"])
async def test_two_saves_from_the_same_loaded_version_one_wins(rig: Rig, deps: Deps, existing: bool) -> None:
    # Several rounds: a race between two conditional writes is not lost every time when the store gets it wrong.
    for _ in range(ROUNDS):
        order_id = new_order_id()
        if existing:
            assert await rig.deliver(deps, placed(order_id)) == []
        loaded = await deps.store.load(order_id=order_id)
        base = loaded.state or Order(order_id=order_id, placed_at=now())
        mine, theirs = (base.model_copy(update={"reason": who}) for who in ("mine", "theirs"))

        results = await asyncio.gather(
            deps.store.save(loaded, state=mine),
            deps.store.save(loaded, state=theirs),
            return_exceptions=True,
        )

        lost = [r for r in results if isinstance(r, ConcurrentUpdate)]
        won = [r for r in results if isinstance(r, Loaded)]
        assert (len(won), len(lost)) == (1, 1), f"{len(won)} saves from version {loaded.version} both succeeded"
        stored = await deps.store.load(order_id=order_id)
        assert stored.version == loaded.version + 1
        assert stored.state == won[0].state
