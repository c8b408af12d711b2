"""Each inventory handler on the in-memory store and broker: the real stores and unit of work, no server."""

from __future__ import annotations

import pytest

from services.inventory.domain import Reservation
from services.inventory.handlers import (
    Deps,
    StockWrites,
    commit_on_order_completed,
    handlers,
    release_on_order_cancelled,
    remember_lines_on_order_accepted,
    reserve_on_payment_authorized,
)
from services.inventory.store import ReservationStore, StockStore
from shared import topics
from shared.consumer import NotYet
from shared.events.inventory import StockLine, StockReleased, StockReserved, StockUnavailable
from shared.fakes import InMemoryBroker, InMemoryDatabase
from shared.unit_of_work import UnitOfWork
from tests.unit.factories import ORDER_ID, order_accepted, order_cancelled, order_completed, payment_authorized

SKU = "SKU-RED-MUG"  # the sample order's one line: two of them


@pytest.fixture
def broker() -> InMemoryBroker:
    return InMemoryBroker()


@pytest.fixture
def deps(broker: InMemoryBroker) -> Deps:
    """As services/inventory/app.py wires them, on an in-memory database and broker."""
    db = InMemoryDatabase().db
    stock = StockStore(db)
    store = ReservationStore(db, "reservations", Reservation)
    return Deps(
        reservations=UnitOfWork(store, broker, out_topic=topics.INVENTORY_EVENTS, effects=StockWrites(stock)),
        stock=stock,
    )


async def stocked(deps: Deps, units: int) -> None:
    await deps.stock.set_on_hand(sku=SKU, on_hand=units)


async def reservation(deps: Deps) -> Reservation:
    doc = await deps.reservations.store.read(order_id=ORDER_ID)
    assert doc.state is not None
    return doc.state


async def reserved(deps: Deps) -> None:
    await remember_lines_on_order_accepted(order_accepted(), deps)
    await reserve_on_payment_authorized(payment_authorized(), deps)


def test_every_event_the_service_reads_has_its_handler_here() -> None:
    """A handler registered without a test in this module fails here first."""
    assert handlers.handlers == {
        "OrderAccepted": remember_lines_on_order_accepted,
        "PaymentAuthorized": reserve_on_payment_authorized,
        "OrderCancelled": release_on_order_cancelled,
        "OrderCompleted": commit_on_order_completed,
    }
    assert handlers.invalid_handlers == {}


async def test_order_accepted_alone_remembers_the_lines_and_holds_nothing(deps: Deps, broker: InMemoryBroker) -> None:
    await stocked(deps, 5)

    await remember_lines_on_order_accepted(order_accepted(), deps)

    res = await reservation(deps)
    assert (res.status, res.lines) == ("AWAITING", [StockLine(sku=SKU, quantity=2)])
    level = await deps.stock.get(sku=SKU)
    assert level is not None
    assert (level.available, level.reserved) == (5, 0)
    assert broker.records == []


async def test_payment_after_the_order_holds_every_line_and_announces_stock_reserved(
    deps: Deps, broker: InMemoryBroker
) -> None:
    await stocked(deps, 5)
    await remember_lines_on_order_accepted(order_accepted(), deps)

    await reserve_on_payment_authorized(payment_authorized(), deps)

    assert (await reservation(deps)).status == "RESERVED"
    level = await deps.stock.get(sku=SKU)
    assert level is not None
    assert (level.available, level.reserved) == (3, 2)
    [event] = broker.events(ORDER_ID)
    assert isinstance(event, StockReserved)
    assert event.lines == [StockLine(sku=SKU, quantity=2)]


async def test_payment_before_the_order_waits_for_the_lines_then_reserves(deps: Deps, broker: InMemoryBroker) -> None:
    await stocked(deps, 5)

    await reserve_on_payment_authorized(payment_authorized(), deps)
    assert (await reservation(deps)).status == "AWAITING"
    await remember_lines_on_order_accepted(order_accepted(), deps)

    assert broker.types(ORDER_ID) == ["StockReserved"]


async def test_a_redelivered_payment_holds_nothing_twice_and_republishes_the_same_event(
    deps: Deps, broker: InMemoryBroker
) -> None:
    await stocked(deps, 5)
    await remember_lines_on_order_accepted(order_accepted(), deps)
    authorized = payment_authorized()

    await reserve_on_payment_authorized(authorized, deps)
    await reserve_on_payment_authorized(authorized, deps)

    level = await deps.stock.get(sku=SKU)
    assert level is not None
    assert level.reserved == 2
    first, again = broker.events(ORDER_ID)
    assert first.event_id == again.event_id  # published again from the outbox, not decided again


async def test_a_shortage_gives_back_what_was_held_and_announces_stock_unavailable(
    deps: Deps, broker: InMemoryBroker
) -> None:
    await stocked(deps, 1)

    await reserved(deps)

    assert (await reservation(deps)).status == "UNAVAILABLE"
    level = await deps.stock.get(sku=SKU)
    assert level is not None
    assert (level.available, level.reserved) == (1, 0)
    [event] = broker.events(ORDER_ID)
    assert isinstance(event, StockUnavailable)
    assert event.skus == [SKU]


async def test_a_cancellation_gives_the_reserved_units_back_and_announces_it(
    deps: Deps, broker: InMemoryBroker
) -> None:
    await stocked(deps, 5)
    await reserved(deps)

    await release_on_order_cancelled(order_cancelled("payment_declined"), deps)

    assert (await reservation(deps)).status == "RELEASED"
    level = await deps.stock.get(sku=SKU)
    assert level is not None
    assert (level.available, level.reserved) == (5, 0)
    assert broker.types(ORDER_ID) == ["StockReserved", "StockReleased"]
    assert isinstance(broker.events(ORDER_ID)[-1], StockReleased)


async def test_a_cancellation_before_any_hold_closes_the_reservation_without_a_word(
    deps: Deps, broker: InMemoryBroker
) -> None:
    await stocked(deps, 5)
    await remember_lines_on_order_accepted(order_accepted(), deps)

    await release_on_order_cancelled(order_cancelled("customer_request"), deps)
    await reserve_on_payment_authorized(payment_authorized(), deps)

    assert (await reservation(deps)).status == "CANCELLED"
    level = await deps.stock.get(sku=SKU)
    assert level is not None
    assert level.reserved == 0
    assert broker.records == []


async def test_completion_ships_the_held_units(deps: Deps, broker: InMemoryBroker) -> None:
    await stocked(deps, 5)
    await reserved(deps)

    await commit_on_order_completed(order_completed(), deps)

    assert (await reservation(deps)).status == "COMMITTED"
    level = await deps.stock.get(sku=SKU)
    assert level is not None
    assert (level.available, level.reserved, level.shipped) == (3, 0, 2)
    assert broker.types(ORDER_ID) == ["StockReserved"]  # shipping the units is nobody else's news


async def test_completion_before_the_reservation_was_answered_is_not_yet_and_changes_nothing(
    deps: Deps, broker: InMemoryBroker
) -> None:
    await stocked(deps, 5)
    await remember_lines_on_order_accepted(order_accepted(), deps)

    with pytest.raises(NotYet):
        await commit_on_order_completed(order_completed(), deps)

    assert (await reservation(deps)).status == "AWAITING"
    level = await deps.stock.get(sku=SKU)
    assert level is not None
    assert level.shipped == 0
