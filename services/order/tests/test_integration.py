"""Order on the real store and Kafka: acceptance, rejection of an invalid placement with field-level reasons,
cancellation on a declined payment or at the deadline (unless the saga is behind, or the shipment is scheduled),
dead letters, and the store's compare-and-set."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Collection, Sequence
from datetime import timedelta
from functools import partial
from typing import Any, cast

import pytest
import structlog

from services.conftest import Rig, eventually, new_order_id
from services.order import handlers as order_handlers
from services.order.backlog import Backlog
from services.order.domain import Order
from services.order.handlers import DEADLINE, Deps, deadline_scanner, on_deadline
from shared import metrics, topics
from shared.consumer import NotYet, Outage
from shared.events.base import now
from shared.events.order import OrderAccepted, OrderCancelled, OrderRejected
from shared.events.payment import PaymentAuthorized, PaymentDeclined
from shared.events.shipping import ShipmentScheduled
from shared.events.storefront import OrderPlaced
from shared.mongo import ConcurrentUpdate, Loaded, Timers
from shared.outbox import OutboxRecord
from shared.tasks import cancelled
from shared.unit_of_work import UnitOfWork
from tests.unit.factories import order_placed, order_placed_data, payment_authorized_data

pytestmark = pytest.mark.infra

ROUNDS = 5


class FakeBacklog:
    """Stands in for ``services.order.backlog.Backlog``: whether the saga is behind is what the test says."""

    def __init__(self, behind: bool = False) -> None:
        self.says = behind
        self.asked: list[str] = []

    async def behind(self, order_id: str) -> bool:
        self.asked.append(order_id)
        return self.says


def with_backlog(deps: Deps, backlog: FakeBacklog) -> Deps:
    return dataclasses.replace(deps, backlog=cast(Backlog, backlog))


@pytest.fixture(scope="module")
def deps(rig: Rig) -> Deps:
    """As services/order/app.py wires them (on the test database and topic; deadline from the rig's settings),
    with a backlog that is never behind unless a test says otherwise."""
    return with_backlog(rig.deps, FakeBacklog(behind=False))


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


async def timer_due(deps: Deps, order_id: str) -> bool:
    return order_id in await deps.timers.due(kind=DEADLINE, at=now())


async def timer_of(deps: Deps, order_id: str) -> dict[str, Any] | None:
    return await deps.timers.coll.find_one({"_id": f"{DEADLINE}:{order_id}"})


async def status(deps: Deps, order_id: str) -> str | None:
    doc = await deps.store.load(order_id=order_id)
    return doc.state.status if doc.state is not None else None


async def test_accepted_order_has_a_deadline_timer_until_it_ends(rig: Rig, deps: Deps) -> None:
    order_id = new_order_id()
    event = placed(order_id)
    assert await rig.deliver(deps, event) == []

    doc = await deps.store.load(order_id=order_id)
    assert doc.state is not None
    assert doc.state.accepted_at is not None
    timer = await timer_of(deps, order_id)
    assert timer is not None
    assert abs(timer["due_at"] - (doc.state.accepted_at + deps.deadline)).total_seconds() < 0.001

    assert await rig.deliver(deps, PaymentDeclined.caused_by(event, reason="payment_declined")) == []

    assert await timer_of(deps, order_id) is None  # cleared after the state that ends it


async def test_deadline_scanner_cancels_an_overdue_order_once(rig: Rig, deps: Deps) -> None:
    order_id = new_order_id()
    assert await rig.deliver(deps, placed(order_id)) == []
    await eventually(lambda: timer_due(deps, order_id))

    scanner = asyncio.create_task(deadline_scanner(deps, interval=0.05))
    try:
        await eventually(lambda: _status_is(deps, order_id, "CANCELLED"))
        await asyncio.sleep(0.2)  # a few more scans find nothing left to do
    finally:
        await cancelled(scanner)
    await assert_cancelled(rig, deps, order_id, reason="timeout")
    await on_deadline(order_id, deps)  # a leftover firing is harmless too: nothing decided again

    assert await rig.distinct_events(order_id) == ["OrderAccepted", "OrderCancelled"]
    assert (await deps.store.load(order_id=order_id)).state == (await deps.store.read(order_id=order_id)).state
    assert await timer_of(deps, order_id) is None


async def test_deadline_waits_while_the_saga_is_behind_then_cancels(rig: Rig, deps: Deps) -> None:
    backlog = FakeBacklog(behind=True)
    behind = with_backlog(deps, backlog)
    order_id = new_order_id()
    assert await rig.deliver(behind, placed(order_id)) == []
    await eventually(lambda: timer_due(deps, order_id))

    first = await timer_of(deps, order_id)
    assert first is not None

    await on_deadline(order_id, behind)

    assert backlog.asked == [order_id]
    assert await status(deps, order_id) == "PENDING"
    assert await rig.event_types(order_id) == ["OrderAccepted"]
    timer = await timer_of(deps, order_id)
    assert timer is not None
    assert timer["due_at"] > first["due_at"]  # looked at again later

    backlog.says = False
    await eventually(lambda: timer_due(deps, order_id))
    await on_deadline(order_id, behind)

    await assert_cancelled(rig, deps, order_id, reason="timeout")


async def test_a_deadline_is_postponed_while_the_saga_is_behind_but_not_beyond_its_maximum(
    rig: Rig, deps: Deps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record of the order held for good (a lane that holds it): the deadline waits for it, but only so long."""
    backlog = FakeBacklog(behind=True)  # behind for ever
    limit = timedelta(seconds=1.2)  # three deadlines of the rig's 0.4 s
    held = dataclasses.replace(with_backlog(deps, backlog), max_postpone=limit)
    order_id = new_order_id()
    assert await rig.deliver(held, placed(order_id)) == []
    accepted = (await deps.store.load(order_id=order_id)).state
    assert accepted is not None
    assert accepted.deadline_at is not None

    with structlog.testing.capture_logs() as logs:
        # A logger already used under the services' configuration is cached with its processors (another test may
        # have built a service first): a fresh one takes the capture's.
        monkeypatch.setattr(order_handlers, "log", structlog.get_logger(order_handlers.__name__))
        async with asyncio.timeout(15):
            while await status(deps, order_id) == "PENDING":
                await eventually(lambda: timer_due(deps, order_id))
                await on_deadline(order_id, held)

    await assert_cancelled(rig, deps, order_id, reason="timeout")
    ended = (await deps.store.load(order_id=order_id)).state
    assert ended is not None
    assert ended.terminal_at is not None
    assert ended.terminal_at >= accepted.deadline_at + limit  # not before the maximum postponement...
    assert len(backlog.asked) >= 3  # ...during which it was looked at again and again
    assert await timer_of(deps, order_id) is None
    assert [(e["log_level"], e["order_id"]) for e in logs if "still hold a record" in e["event"]] == [
        ("error", order_id)
    ]


class JournalledTimers:
    """The service's timers, noting each clear of the orders ``of`` in ``journal`` (to see what came before it)."""

    def __init__(self, timers: Timers, journal: list[tuple[str, str]], of: Collection[str]) -> None:
        self.timers = timers
        self.journal = journal
        self.of = of

    async def clear(self, *, kind: str, key: str) -> None:
        if key in self.of:
            self.journal.append(("cleared", kind))
        await self.timers.clear(kind=kind, key=key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.timers, name)


def refusing_once(rig: Rig, deps: Deps, journal: list[tuple[str, str]], *, of: Collection[str]) -> Deps:
    """The deps with a publish that Kafka refuses the first time it carries an OrderCancelled of the orders ``of``
    (a producer being replaced, not enough in-sync replicas), and timers that note when they are cleared; what is
    published for those orders is noted too."""
    refused: list[Sequence[OutboxRecord]] = []

    async def publish(records: Sequence[OutboxRecord]) -> None:
        if not refused and any(r.event_type == "OrderCancelled" and r.key in of for r in records):
            refused.append(records)
            raise Outage("Kafka producer replaced after NotEnoughReplicasError; sending again")
        await rig.service.publish(records)
        journal.extend(("published", r.event_type) for r in records if r.key in of)

    timers = cast(Timers, JournalledTimers(deps.timers, journal, of))
    orders = UnitOfWork(
        deps.store, publish, out_topic=deps.orders.out_topic, timers=timers, timers_of=deps.orders.timers_of
    )
    return dataclasses.replace(deps, orders=orders, timers=timers)


async def test_a_deadline_cancellation_whose_publish_failed_is_published_before_its_timer_is_cleared(
    rig: Rig, deps: Deps
) -> None:
    """Nothing redelivers a timer's cause: once the CANCELLED version is written but Kafka refused OrderCancelled,
    the next firing finds the order terminal -- and must publish OrderCancelled before it clears the timer."""
    journal: list[tuple[str, str]] = []
    order_id = new_order_id()
    flaky = refusing_once(rig, deps, journal, of={order_id})
    assert await rig.deliver(flaky, placed(order_id)) == []
    await eventually(lambda: timer_due(deps, order_id))
    journal.clear()

    with pytest.raises(Outage):
        await on_deadline(order_id, flaky)

    assert await status(deps, order_id) == "CANCELLED"  # stored...
    assert await rig.event_types(order_id) == ["OrderAccepted"]  # ...not published...
    assert journal == []
    assert await timer_due(deps, order_id)  # ...and the timer stays, to fire again
    await eventually(lambda: head_is_current(deps, order_id))  # what the next firing reads: the order terminal

    await on_deadline(order_id, flaky)

    assert journal == [("published", "OrderCancelled"), ("cleared", DEADLINE)]
    await assert_cancelled(rig, deps, order_id, reason="timeout")
    assert await timer_of(deps, order_id) is None


async def test_the_deadline_scanner_fires_again_after_a_publish_failed_and_goes_on_with_the_others(
    rig: Rig, deps: Deps
) -> None:
    journal: list[tuple[str, str]] = []
    first, second = new_order_id(), new_order_id()
    flaky = refusing_once(rig, deps, journal, of={first, second})
    for order_id in (first, second):
        assert await rig.deliver(flaky, placed(order_id)) == []
    await eventually(lambda: timer_due(deps, second))

    scanner = asyncio.create_task(deadline_scanner(flaky, interval=0.05))
    try:
        for order_id in (first, second):
            await eventually(partial(_published, rig, order_id, "OrderCancelled"))
            await eventually(partial(timer_gone, deps, order_id))
    finally:
        await cancelled(scanner)

    for order_id in (first, second):  # one refused and fired again, the other not held up by it
        assert await status(deps, order_id) == "CANCELLED"
        assert await rig.distinct_events(order_id) == ["OrderAccepted", "OrderCancelled"]


async def timer_gone(deps: Deps, order_id: str) -> bool:
    return await timer_of(deps, order_id) is None


async def _published(rig: Rig, order_id: str, event_type: str) -> bool:
    return event_type in await rig.event_types(order_id)


async def test_progress_moves_the_deadline_on(rig: Rig, deps: Deps) -> None:
    order_id = new_order_id()
    event = placed(order_id)
    assert await rig.deliver(deps, event) == []
    await eventually(lambda: timer_due(deps, order_id))
    authorized = PaymentAuthorized.caused_by(
        event, amount=event.lines[0].unit_price, currency="CNY", authorization_id="a"
    )
    assert await rig.deliver(deps, authorized) == []
    await eventually(lambda: head_is_current(deps, order_id))  # what the deadline reads (see test_races.py)

    await on_deadline(order_id, deps)

    doc = await deps.store.load(order_id=order_id)
    assert doc.state is not None
    assert (doc.state.status, doc.state.stage) == ("PENDING", "PAYMENT_AUTHORIZED")
    assert doc.state.deadline_at is not None
    timer = await timer_of(deps, order_id)
    assert timer is not None
    assert abs(timer["due_at"] - doc.state.deadline_at).total_seconds() < 0.001


async def test_deadline_after_the_shipment_is_scheduled_alerts_instead_of_cancelling(rig: Rig, deps: Deps) -> None:
    order_id = new_order_id()
    event = placed(order_id)
    assert await rig.deliver(deps, event) == []
    shipment = ShipmentScheduled.caused_by(
        event, carrier="SF Express", tracking_number="SF000000000007", promised_date=event.occurred_at.date()
    )
    assert await rig.deliver(deps, shipment) == []
    doc = await deps.store.load(order_id=order_id)
    assert doc.state is not None
    assert doc.state.deadline_at is not None
    deadline_at = doc.state.deadline_at
    await eventually(lambda: now() > deadline_at)
    await eventually(lambda: head_is_current(deps, order_id))  # what the deadline reads
    overdue = metrics.ORDERS_OVERDUE._value.get()

    await on_deadline(order_id, deps)

    assert metrics.ORDERS_OVERDUE._value.get() == overdue + 1
    assert await status(deps, order_id) == "PENDING"  # the goods are moving: not cancelled
    assert await rig.event_types(order_id) == ["OrderAccepted"]
    timer = await timer_of(deps, order_id)
    assert timer is not None
    assert timer["due_at"] > now()  # alerts again if it stays overdue


async def head_is_current(deps: Deps, order_id: str) -> bool:
    return (await deps.store.read(order_id=order_id)).version == (await deps.store.load(order_id=order_id)).version


async def _status_is(deps: Deps, order_id: str, wanted: str) -> bool:
    return await status(deps, order_id) == wanted


async def test_event_for_an_unknown_order_waits_for_its_placement_then_is_dead_lettered(rig: Rig, deps: Deps) -> None:
    order_id = new_order_id()
    value = payment_authorized_data(order_id=order_id)

    with pytest.raises(NotYet):  # the pipeline sets it aside until the placement has had its chance
        await rig.deliver(deps, value, topic=topics.PAYMENT_EVENTS)
    assert rig.dead_letters.calls == [] or rig.dead_letters.calls[-1][1] != order_id.encode()

    dead = await rig.deliver(deps, value, topic=topics.PAYMENT_EVENTS, waited=True)  # it never came

    assert len(dead) == 1
    assert dead[0]["x-dlq-error-class"] == "NotYet"
    assert "unknown order" in dead[0]["x-dlq-error-message"]
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
