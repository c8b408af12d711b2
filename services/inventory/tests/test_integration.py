"""Inventory on the real store and Kafka: the stock counters under concurrency, and the reservation saga step."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date
from decimal import Decimal

import pytest

from services.conftest import Rig, new_order_id
from services.inventory import store
from services.inventory.handlers import Deps
from services.inventory.store import StockLevel
from shared.events.inventory import StockLine, StockReleased, StockReserved, StockUnavailable
from shared.events.order import OrderAccepted, OrderCancelled, OrderCompleted, ShipmentInfo
from shared.events.payment import PaymentAuthorized
from tests.unit.factories import order_accepted, order_placed

pytestmark = pytest.mark.infra

ROUNDS = 5


@pytest.fixture(scope="module")
def deps(rig: Rig) -> Deps:
    """As services/inventory/app.py wires them (on the test database and topic)."""
    built: Deps = rig.deps
    return built


def new_sku() -> str:
    return f"SKU-IT-{uuid.uuid4().hex[:10]}"


def accepted(order_id: str, *lines: tuple[str, int]) -> OrderAccepted:
    return order_accepted(
        order_placed(
            order_id=order_id,
            lines=[{"sku": sku, "quantity": qty, "unit_price": "10.00"} for sku, qty in lines],
        )
    )


def authorized(cause: OrderAccepted) -> PaymentAuthorized:
    event: PaymentAuthorized = PaymentAuthorized.caused_by(
        cause, amount=Decimal("79.80"), currency="CNY", authorization_id="auth-it"
    )
    return event


async def level(deps: Deps, sku: str) -> StockLevel:
    found = await deps.stock.get(sku=sku)
    assert found is not None
    return found


async def holds(deps: Deps, sku: str) -> dict[str, int]:
    doc = await deps.stock.docs.latest(sku)
    assert doc is not None
    return dict(doc.get("holds", {}))


async def test_last_unit_goes_to_exactly_one_of_ten_concurrent_orders(deps: Deps) -> None:
    # Several rounds: a lost update between concurrent conditional writes shows up in most rounds, not all.
    for _ in range(ROUNDS):
        sku = new_sku()
        await deps.stock.set_available(sku=sku, available=1)
        orders = [new_order_id() for _ in range(10)]

        won = await asyncio.gather(*(deps.stock.reserve(order_id=o, sku=sku, quantity=1) for o in orders))

        after = await level(deps, sku)
        assert (after.available, after.reserved) == (0, 1)
        winners = [o for o, ok in zip(orders, won, strict=True) if ok]
        # Every order told "reserved" must hold the unit; otherwise the last unit was sold more than once.
        assert winners == list(await holds(deps, sku)), f"{len(winners)} orders were told they hold the last unit"


async def test_concurrent_orders_never_oversell(deps: Deps) -> None:
    for _ in range(ROUNDS):
        sku = new_sku()
        await deps.stock.set_available(sku=sku, available=3)
        orders = [new_order_id() for _ in range(12)]

        won = await asyncio.gather(*(deps.stock.reserve(order_id=o, sku=sku, quantity=2) for o in orders))

        after = await level(deps, sku)
        assert (after.available, after.reserved) == (1, 2)  # one order of 2 fits in 3; a second would oversell
        assert won.count(True) == 1, f"{won.count(True)} orders of 2 were told they hold units out of 3"


async def test_reserving_twice_for_the_same_order_holds_once(deps: Deps) -> None:
    sku, order_id = new_sku(), new_order_id()
    await deps.stock.set_available(sku=sku, available=5)

    assert await deps.stock.reserve(order_id=order_id, sku=sku, quantity=2)
    assert await deps.stock.reserve(order_id=order_id, sku=sku, quantity=2)  # a redelivery
    both = await asyncio.gather(*(deps.stock.reserve(order_id=order_id, sku=sku, quantity=2) for _ in range(5)))

    assert all(both)
    after = await level(deps, sku)
    assert (after.available, after.reserved) == (3, 2)


async def test_release_gives_the_units_back_once(deps: Deps) -> None:
    sku, order_id = new_sku(), new_order_id()
    await deps.stock.set_available(sku=sku, available=5)
    await deps.stock.reserve(order_id=order_id, sku=sku, quantity=2)

    assert await deps.stock.release(order_id=order_id, sku=sku) == 2
    assert await deps.stock.release(order_id=order_id, sku=sku) == 0

    after = await level(deps, sku)
    assert (after.available, after.reserved) == (5, 0)
    assert await holds(deps, sku) == {}


async def test_order_ids_with_dots_hold_and_release_only_their_own_units(deps: Deps) -> None:
    sku = new_sku()
    base = new_order_id("SHOP1.IT")
    dotted, longer = f"{base}.1", f"{base}.1.2"  # unescaped, "holds.<a>.1.2" would be a path inside "holds.<a>.1"
    await deps.stock.set_available(sku=sku, available=10)

    assert await deps.stock.reserve(order_id=dotted, sku=sku, quantity=1)
    assert await deps.stock.reserve(order_id=longer, sku=sku, quantity=3)
    assert await deps.stock.reserve(order_id=dotted, sku=sku, quantity=1)  # redelivery still recognised
    assert len(await holds(deps, sku)) == 2
    after = await level(deps, sku)
    assert (after.available, after.reserved) == (6, 4)

    assert await deps.stock.release(order_id=dotted, sku=sku) == 1
    after = await level(deps, sku)
    assert (after.available, after.reserved) == (7, 3)
    assert await deps.stock.release(order_id=longer, sku=sku) == 3
    after = await level(deps, sku)
    assert (after.available, after.reserved) == (10, 0)


@pytest.mark.parametrize("payment_first", [False, True], ids=["order-then-payment", "payment-then-order"])
async def test_stock_is_reserved_once_order_and_payment_are_both_known(
    rig: Rig, deps: Deps, payment_first: bool
) -> None:
    sku, order_id = new_sku(), new_order_id()
    await deps.stock.set_available(sku=sku, available=5)
    event = accepted(order_id, (sku, 2))
    first, second = (authorized(event), event) if payment_first else (event, authorized(event))

    assert await rig.deliver(deps, first) == []
    assert await rig.event_types(order_id) == []  # one fact alone reserves nothing
    assert (await level(deps, sku)).available == 5
    second_record = rig.record(second)
    assert await rig.handle(deps, second_record) == []
    assert await rig.handle(deps, second_record) == []  # redelivered: published again, reserved once

    published = await rig.events(order_id)
    assert {e.event_id for e in published} == {published[0].event_id}
    reserved = published[0]
    assert isinstance(reserved, StockReserved)
    assert reserved.lines == [StockLine(sku=sku, quantity=2)]
    assert reserved.causation_id == second.event_id
    after = await level(deps, sku)
    assert (after.available, after.reserved) == (3, 2)


async def test_cancellation_releases_reserved_stock_and_announces_it(rig: Rig, deps: Deps) -> None:
    sku, order_id = new_sku(), new_order_id()
    await deps.stock.set_available(sku=sku, available=4)
    event = accepted(order_id, (sku, 3))
    assert await rig.deliver(deps, event) == []
    assert await rig.deliver(deps, authorized(event)) == []
    assert (await level(deps, sku)).available == 1
    assert await deps.stock.holds(sku=sku) == {order_id: 3}

    assert await rig.deliver(deps, OrderCancelled.caused_by(event, reason="shipping_failed")) == []
    assert await deps.stock.holds(sku=sku) == {}

    published = await rig.events(order_id)
    assert [type(e) for e in published] == [StockReserved, StockReleased]
    assert isinstance(published[1], StockReleased)
    assert published[1].lines == [StockLine(sku=sku, quantity=3)]
    after = await level(deps, sku)
    assert (after.available, after.reserved) == (4, 0)
    doc = await deps.reservations.store.load(order_id=order_id)
    assert doc.state is not None
    assert doc.state.status == "RELEASED"


async def test_one_short_line_reserves_nothing_and_names_the_missing_sku(rig: Rig, deps: Deps) -> None:
    plenty, scarce, order_id = new_sku(), new_sku(), new_order_id()
    await deps.stock.set_available(sku=plenty, available=10)
    await deps.stock.set_available(sku=scarce, available=1)
    event = accepted(order_id, (plenty, 2), (scarce, 2))

    assert await rig.deliver(deps, event) == []
    assert await rig.deliver(deps, authorized(event)) == []

    published = await rig.events(order_id)
    assert len(published) == 1
    assert isinstance(published[0], StockUnavailable)
    assert published[0].skus == [scarce]
    assert ((await level(deps, plenty)).available, (await level(deps, plenty)).reserved) == (10, 0)
    assert ((await level(deps, scarce)).available, (await level(deps, scarce)).reserved) == (1, 0)


def balanced(level: StockLevel) -> bool:
    return level.received == level.available + level.reserved + level.shipped


async def test_completed_order_ships_its_units_and_the_counters_balance(rig: Rig, deps: Deps) -> None:
    sku, order_id = new_sku(), new_order_id()
    await deps.stock.set_available(sku=sku, available=5)
    event = accepted(order_id, (sku, 2))
    assert await rig.deliver(deps, event) == []
    assert await rig.deliver(deps, authorized(event)) == []
    shipment = ShipmentInfo(carrier="SF Express", tracking_number="SF000000000009", promised_date=date(2026, 11, 26))
    done = OrderCompleted.caused_by(event, total=Decimal("20.00"), currency="CNY", shipment=shipment)

    record = rig.record(done)
    assert await rig.handle(deps, record) == []
    assert await rig.handle(deps, record) == []  # redelivered: shipped once

    after = await level(deps, sku)
    assert (after.available, after.reserved, after.shipped, after.received) == (3, 0, 2, 5)
    assert await holds(deps, sku) == {}
    doc = await deps.reservations.store.load(order_id=order_id)
    assert doc.state is not None
    assert doc.state.status == "COMMITTED"


async def test_stock_adjustments_count_what_was_received(deps: Deps) -> None:
    sku, order_id = new_sku(), new_order_id()
    await deps.stock.set_available(sku=sku, available=5)
    assert await deps.stock.reserve(order_id=order_id, sku=sku, quantity=2)

    raised = await deps.stock.set_available(sku=sku, available=10)  # an ERP adjustment: 7 more for sale
    assert (raised.available, raised.reserved, raised.received) == (10, 2, 12)
    lowered = await deps.stock.set_available(sku=sku, available=1)  # written off
    assert (lowered.available, lowered.reserved, lowered.received) == (1, 2, 3)
    assert balanced(raised)
    assert balanced(lowered)


async def test_a_released_order_is_closed_on_the_sku_and_never_holds_it_again(deps: Deps) -> None:
    # A slow copy may still be making a reservation's writes after the other copy answered it and gave it back.
    sku, order_id, never_held = new_sku(), new_order_id(), new_order_id()
    await deps.stock.set_available(sku=sku, available=5)
    assert await deps.stock.reserve(order_id=order_id, sku=sku, quantity=2)
    assert await deps.stock.release(order_id=order_id, sku=sku) == 2
    assert await deps.stock.release(order_id=never_held, sku=sku) == 0  # short here, held elsewhere: closed too

    assert not await deps.stock.reserve(order_id=order_id, sku=sku, quantity=2)
    assert not await deps.stock.reserve(order_id=never_held, sku=sku, quantity=1)

    after = await level(deps, sku)
    assert (after.available, after.reserved) == (5, 0)
    assert await holds(deps, sku) == {}
    await deps.stock.set_available(sku=sku, available=6)  # an adjustment keeps what is closed
    assert not await deps.stock.reserve(order_id=order_id, sku=sku, quantity=2)


async def test_a_sku_remembers_only_the_latest_closed_orders(deps: Deps, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "CLOSED_KEEP", 3)
    sku, orders = new_sku(), [new_order_id() for _ in range(4)]
    await deps.stock.set_available(sku=sku, available=5)
    for order_id in orders:
        await deps.stock.release(order_id=order_id, sku=sku)

    doc = await deps.stock.docs.latest(sku)
    assert doc is not None
    assert doc["closed"] == orders[1:]
    assert await deps.stock.reserve(order_id=orders[0], sku=sku, quantity=1)  # forgotten: long over


async def test_a_commit_ships_the_units_and_a_later_cancellation_gives_nothing_back(rig: Rig, deps: Deps) -> None:
    # A customer may cancel a completed order until its parcel is delivered: the units count as shipped.
    sku, order_id = new_sku(), new_order_id()
    await deps.stock.set_available(sku=sku, available=5)
    event = accepted(order_id, (sku, 2))
    assert await rig.deliver(deps, event) == []
    assert await rig.deliver(deps, authorized(event)) == []
    shipment = ShipmentInfo(carrier="SF Express", tracking_number="SF000000000012", promised_date=date(2026, 11, 26))
    done = OrderCompleted.caused_by(event, total=Decimal("20.00"), currency="CNY", shipment=shipment)
    assert await rig.deliver(deps, done) == []

    assert await rig.deliver(deps, OrderCancelled.caused_by(event, reason="customer_request")) == []

    assert await rig.distinct_events(order_id) == ["StockReserved"]
    after = await level(deps, sku)
    assert (after.available, after.reserved, after.shipped) == (3, 0, 2)
    doc = await deps.reservations.store.load(order_id=order_id)
    assert doc.state is not None
    assert doc.state.status == "COMMITTED"
