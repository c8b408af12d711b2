"""Each order handler on the in-memory store and broker: the real store, timers and unit of work, no server."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from aiokafka import ConsumerRecord

from services.order.backlog import Backlog
from services.order.domain import Order
from services.order.handlers import (
    DEADLINE,
    Deps,
    accept_on_order_placed,
    cancel_on_customer_request,
    deadline_timer,
    handlers,
    on_deadline,
    reject_on_invalid_order_placed,
    track_progress,
)
from services.order.store import OrderStore
from shared import topics
from shared.consumer import InvalidEvent, NotYet, PermanentError
from shared.events import UndecodableMessage, decode
from shared.events.base import Event
from shared.events.order import OrderAccepted, OrderCancelled, OrderCompleted, OrderRejected
from shared.fakes import InMemoryBroker, InMemoryDatabase
from shared.mongo import Timers
from shared.unit_of_work import UnitOfWork
from tests.unit.factories import (
    ORDER_ID,
    cancellation_requested,
    notification_sent,
    order_placed,
    order_placed_data,
    payment_authorized,
    payment_captured,
    payment_declined,
    retry_of,
    shipment_failed,
    shipment_scheduled,
    shipment_tracked,
    stock_reserved,
    stock_unavailable,
    to_json,
)

FAR = datetime(2100, 1, 1, tzinfo=UTC)  # a time every timer set by a test is due at
DEADLINE_FOR_TESTS = timedelta(minutes=5)


@dataclass
class FakeBacklog:
    """Stands in for the order topics' backlog: how far behind the saga is, as the test says."""

    is_behind: bool = False
    unread: list[str] | None = field(default_factory=list)  # None: cannot tell
    asked: list[str] = field(default_factory=list)

    async def behind(self, order_id: str) -> bool:
        self.asked.append(order_id)
        return self.is_behind

    async def unread_before(self, order_id: str, *, before: datetime) -> list[str] | None:
        self.asked.append(order_id)
        return self.unread


@dataclass
class World:
    deps: Deps
    broker: InMemoryBroker
    backlog: FakeBacklog

    async def order(self) -> Order:
        doc = await self.deps.store.read(order_id=ORDER_ID)
        assert doc.state is not None
        return doc.state

    async def deadlines_due(self) -> list[str]:
        return await self.deps.timers.due(kind=DEADLINE, at=FAR)


def build(deadline: timedelta = DEADLINE_FOR_TESTS, *, max_postpone: timedelta | None = None) -> World:
    """As services/order/app.py wires them, on an in-memory database and broker, with a backlog the test sets."""
    db, broker, backlog = InMemoryDatabase().db, InMemoryBroker(), FakeBacklog()
    store = OrderStore(db, "orders", Order)
    timers = Timers(db)
    orders = UnitOfWork(store, broker, out_topic=topics.ORDER_EVENTS, timers=timers, timers_of=deadline_timer(deadline))
    deps = Deps(
        orders=orders,
        store=store,
        timers=timers,
        backlog=cast(Backlog, backlog),
        deadline=deadline,
        max_postpone=max_postpone,
    )
    return World(deps=deps, broker=broker, backlog=backlog)


@pytest.fixture
def world() -> World:
    return build()


async def accepted(world: World) -> None:
    await accept_on_order_placed(order_placed(), world.deps)


def invalid(**overrides: object) -> InvalidEvent:
    """An OrderPlaced that fails its schema, as the consumer hands it to the invalid-placement handler."""
    raw = to_json(order_placed_data(**overrides))
    with pytest.raises(UndecodableMessage) as failed:
        decode(topics.STOREFRONT_ORDERS, raw)
    key = ORDER_ID.encode()
    record = ConsumerRecord(
        topics.STOREFRONT_ORDERS, 0, 1, int(time.time() * 1000), 0, key, raw, None, len(key), len(raw), []
    )
    return InvalidEvent(record=record, error=failed.value)


def test_every_downstream_fact_is_taken_by_track_progress() -> None:
    """Adding an event type the order service reads means deciding where it goes (and testing it here)."""
    own = {
        "OrderPlaced": accept_on_order_placed,
        "OrderCancellationRequested": cancel_on_customer_request,
    }
    tracked = {name for name, fn in handlers.handlers.items() if fn is track_progress}
    assert {name: fn for name, fn in handlers.handlers.items() if name not in tracked} == own
    assert tracked == {
        *(f"Payment{s}" for s in ("ActionRequired", "Authorized", "Declined", "Captured", "Voided", "Refunded")),
        *(f"Stock{s}" for s in ("Reserved", "Unavailable", "Released")),
        *(f"Shipment{s}" for s in ("Scheduled", "Failed", "Cancelled", "Intercepted", "Tracked")),
        "NotificationSent",
        "NotificationFailed",
    }
    assert handlers.invalid_handlers == {"OrderPlaced": reject_on_invalid_order_placed}


async def test_a_placement_is_accepted_once_and_its_deadline_timer_set(world: World) -> None:
    placed = order_placed()

    await accept_on_order_placed(placed, world.deps)
    await accept_on_order_placed(placed, world.deps)  # redelivered

    order = await world.order()
    assert (order.status, order.stage) == ("PENDING", "ACCEPTED")
    first, again = world.broker.events(ORDER_ID)
    assert isinstance(first, OrderAccepted)
    assert (first.causation_id, first.total) == (placed.event_id, order.total)
    assert again.event_id == first.event_id
    assert await world.deadlines_due() == [ORDER_ID]


async def test_a_storefront_retry_of_the_same_order_is_not_accepted_twice(world: World) -> None:
    placed = order_placed()
    await accept_on_order_placed(placed, world.deps)

    await accept_on_order_placed(retry_of(placed), world.deps)

    assert world.broker.types(ORDER_ID) == ["OrderAccepted"]


async def test_a_different_order_under_a_known_id_is_rejected_and_the_first_kept(world: World) -> None:
    await accepted(world)

    await accept_on_order_placed(
        order_placed(event_id="0c7e4a2e-0000-4000-8000-000000000001", currency="USD"), world.deps
    )

    assert world.broker.types(ORDER_ID) == ["OrderAccepted", "OrderRejected"]
    rejected = world.broker.events(ORDER_ID)[-1]
    assert isinstance(rejected, OrderRejected)
    assert rejected.reason == "order_id_conflict"
    assert (await world.order()).status == "PENDING"


async def test_an_invalid_placement_is_stored_rejected_with_its_field_errors(world: World) -> None:
    lines = [dict(order_placed_data()["lines"][0], quantity=-1)]

    await reject_on_invalid_order_placed(invalid(lines=lines), world.deps)

    order = await world.order()
    assert (order.status, order.reason) == ("REJECTED", "invalid_order")
    [event] = world.broker.events(ORDER_ID)
    assert isinstance(event, OrderRejected)
    assert [e.loc for e in event.errors] == [["lines", 0, "quantity"]]
    assert await world.deadlines_due() == []


async def test_an_invalid_placement_whose_order_id_is_itself_invalid_is_a_permanent_error(world: World) -> None:
    bad = invalid(order_id="4111 1111 1111 1111")

    with pytest.raises(PermanentError):
        await reject_on_invalid_order_placed(bad, world.deps)

    assert world.broker.records == []


async def test_a_customer_cancellation_cancels_a_pending_order(world: World) -> None:
    await accepted(world)

    await cancel_on_customer_request(cancellation_requested(), world.deps)

    order = await world.order()
    assert (order.status, order.reason) == ("CANCELLED", "customer_request")
    cancelled = world.broker.events(ORDER_ID)[-1]
    assert isinstance(cancelled, OrderCancelled)
    assert cancelled.reason == "customer_request"
    assert await world.deadlines_due() == []


async def test_a_customer_cancellation_of_an_unknown_order_is_a_permanent_error(world: World) -> None:
    with pytest.raises(PermanentError):
        await cancel_on_customer_request(cancellation_requested(), world.deps)

    assert world.broker.records == []


async def test_a_customer_cancellation_waits_while_earlier_facts_of_the_order_are_unread(world: World) -> None:
    await accepted(world)
    world.backlog.unread = ["an-earlier-fact"]

    with pytest.raises(NotYet):
        await cancel_on_customer_request(cancellation_requested(), world.deps)

    assert (await world.order()).status == "PENDING"
    assert world.broker.types(ORDER_ID) == ["OrderAccepted"]


async def test_payment_and_shipment_complete_the_order_in_either_order(world: World) -> None:
    await accepted(world)
    for fact in (payment_authorized(), stock_reserved(), payment_captured()):
        await track_progress(fact, world.deps)
    assert world.broker.types(ORDER_ID) == ["OrderAccepted"]

    await track_progress(shipment_scheduled(), world.deps)

    order = await world.order()
    assert (order.status, order.stage) == ("COMPLETED", "DONE")
    completed = world.broker.events(ORDER_ID)[-1]
    assert isinstance(completed, OrderCompleted)
    assert completed.shipment.tracking_number == "SF000000012345"
    assert await world.deadlines_due() == []  # completed: no deadline any more


@pytest.mark.parametrize(
    ("fact", "reason"),
    [
        (payment_declined, "payment_declined"),
        (stock_unavailable, "out_of_stock"),
        (shipment_failed, "shipping_failed"),
    ],
)
async def test_a_failed_step_cancels_the_order_with_its_reason(
    world: World, fact: Callable[[], Event], reason: str
) -> None:
    await accepted(world)

    await track_progress(fact(), world.deps)

    assert (await world.order()).reason == reason
    cancelled = world.broker.events(ORDER_ID)[-1]
    assert isinstance(cancelled, OrderCancelled)
    assert cancelled.reason == reason


async def test_progress_moves_the_deadline_on(world: World) -> None:
    await accepted(world)
    before = (await world.order()).deadline_at

    await track_progress(payment_authorized(), world.deps)

    order = await world.order()
    assert order.stage == "PAYMENT_AUTHORIZED"
    assert before is not None
    assert order.deadline_at is not None
    assert order.deadline_at > before


async def test_facts_after_completion_are_noted_without_a_word(world: World) -> None:
    await accepted(world)
    for fact in (payment_captured(), shipment_scheduled()):
        await track_progress(fact, world.deps)
    world.broker.clear()

    await track_progress(notification_sent(), world.deps)
    await track_progress(shipment_tracked("DELIVERED", 90), world.deps)

    order = await world.order()
    assert [n.kind for n in order.notifications] == ["order_cancelled"]
    assert order.delivered
    assert world.broker.records == []


async def test_a_fact_for_an_order_not_yet_seen_is_not_yet(world: World) -> None:
    with pytest.raises(NotYet):
        await track_progress(payment_authorized(), world.deps)

    assert (await world.deps.store.read(order_id=ORDER_ID)).state is None


async def test_the_deadline_cancels_an_order_that_made_no_progress() -> None:
    world = build(deadline=timedelta(0))
    await accepted(world)

    await on_deadline(ORDER_ID, world.deps)

    assert (await world.order()).reason == "timeout"
    assert world.broker.types(ORDER_ID) == ["OrderAccepted", "OrderCancelled"]
    assert await world.deadlines_due() == []


async def test_a_deadline_not_yet_reached_only_sets_the_timer_to_it(world: World) -> None:
    await accepted(world)
    world.broker.clear()

    await on_deadline(ORDER_ID, world.deps)

    assert (await world.order()).status == "PENDING"
    assert world.broker.records == []
    deadline_at = (await world.order()).deadline_at
    assert deadline_at is not None
    assert await world.deps.timers.due(kind=DEADLINE, at=deadline_at - timedelta(seconds=1)) == []
    assert await world.deadlines_due() == [ORDER_ID]


async def test_a_deadline_is_postponed_while_the_sagas_queues_hold_a_record_of_the_order() -> None:
    world = build(deadline=timedelta(0), max_postpone=timedelta(minutes=1))
    await accepted(world)
    world.backlog.is_behind = True

    await on_deadline(ORDER_ID, world.deps)

    assert world.backlog.asked == [ORDER_ID]
    assert (await world.order()).status == "PENDING"
    assert world.broker.types(ORDER_ID) == ["OrderAccepted"]
    assert await world.deadlines_due() == [ORDER_ID]


async def test_a_deadline_postponed_past_its_limit_cancels_all_the_same() -> None:
    world = build(deadline=timedelta(0), max_postpone=timedelta(0))
    await accepted(world)
    world.backlog.is_behind = True

    await on_deadline(ORDER_ID, world.deps)

    assert (await world.order()).reason == "timeout"
    assert world.broker.types(ORDER_ID) == ["OrderAccepted", "OrderCancelled"]


async def test_a_deadline_after_the_shipment_was_scheduled_alerts_instead_of_cancelling() -> None:
    world = build(deadline=timedelta(0))
    await accepted(world)
    await track_progress(shipment_scheduled(), world.deps)

    await on_deadline(ORDER_ID, world.deps)

    assert (await world.order()).status == "PENDING"
    assert "OrderCancelled" not in world.broker.types(ORDER_ID)
    assert await world.deadlines_due() == [ORDER_ID]


async def test_a_deadline_of_an_ended_order_publishes_its_ending_again_then_clears(world: World) -> None:
    await accepted(world)
    world.broker.refuse = 1  # Kafka does not take the OrderCancelled: the request is redelivered, the timer stays
    with pytest.raises(Exception, match="refuse"):
        await cancel_on_customer_request(cancellation_requested(), world.deps)
    assert (await world.order()).status == "CANCELLED"
    await world.deps.timers.set(kind=DEADLINE, key=ORDER_ID, due_at=FAR - timedelta(days=1))

    await on_deadline(ORDER_ID, world.deps)

    assert world.broker.types(ORDER_ID) == ["OrderAccepted", "OrderCancelled"]
    assert await world.deadlines_due() == []
