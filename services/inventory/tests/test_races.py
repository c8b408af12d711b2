"""Inventory races: re-seeding the units on hand while orders hold (and take) units.

``received == available + reserved + shipped`` must hold after every change, and seeding ``on_hand`` units must
leave exactly ``on_hand`` in the warehouse (``available + reserved``): held units are not counted twice.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.conftest import Rig, new_order_id
from services.inventory.handlers import Deps
from services.inventory.store import StockLevel

pytestmark = pytest.mark.infra


@pytest.fixture(scope="module")
def deps(rig: Rig) -> Deps:
    built: Deps = rig.deps
    return built


def new_sku() -> str:
    return f"SKU-RACE-{uuid.uuid4().hex[:10]}"


async def level(deps: Deps, sku: str) -> StockLevel:
    found = await deps.stock.get(sku=sku)
    assert found is not None
    return found


def balanced(s: StockLevel) -> bool:
    return s.received == s.available + s.reserved + s.shipped


async def test_reseeding_while_units_are_held_keeps_the_counters_and_adds_nothing(deps: Deps) -> None:
    sku, held, shipped = new_sku(), new_order_id(), new_order_id()
    await deps.stock.set_on_hand(sku=sku, on_hand=10)
    assert await deps.stock.reserve(order_id=held, sku=sku, quantity=3)
    assert await deps.stock.reserve(order_id=shipped, sku=sku, quantity=2)
    assert await deps.stock.commit(order_id=shipped, sku=sku) == 2  # 2 left the warehouse: 8 on hand

    again = await deps.stock.set_on_hand(sku=sku, on_hand=8)  # the same count seeded again

    assert (again.available, again.reserved, again.shipped, again.received) == (5, 3, 2, 10)
    assert balanced(again)
    counted = await deps.stock.set_on_hand(sku=sku, on_hand=9)  # a stock-take finds one more
    assert (counted.available, counted.reserved, counted.received) == (6, 3, 11)
    assert balanced(counted)


@pytest.mark.parametrize("rounds", [5])
async def test_reseeding_concurrently_with_reservations_never_creates_units(deps: Deps, rounds: int) -> None:
    # The seed and the reservations reach the SKU's writer together: whichever order they are applied in, the
    # warehouse holds what was seeded -- a reservation taken between the seed's reading and writing of the
    # stock must not be added on top.
    for _ in range(rounds):
        sku = new_sku()
        await deps.stock.set_on_hand(sku=sku, on_hand=10)
        orders = [new_order_id() for _ in range(3)]

        results = await asyncio.gather(
            *(deps.stock.reserve(order_id=o, sku=sku, quantity=2) for o in orders),
            deps.stock.set_on_hand(sku=sku, on_hand=10),
        )

        assert all(results[:3])
        after = await level(deps, sku)
        assert balanced(after)
        assert (after.available + after.reserved, after.reserved) == (10, 6), f"{after}: units created by a seed"


async def test_a_replay_in_a_fresh_process_never_takes_stock_again_for_a_shipped_order(rig: Rig, deps: Deps) -> None:
    # A process that has not read the order yet must not decide on a guess: a replayed PaymentAuthorized decided
    # on the order's first version would take the units again.
    from datetime import date
    from decimal import Decimal

    from services.inventory.tests.test_integration import accepted, authorized
    from shared.events.order import OrderCompleted, ShipmentInfo

    sku, order_id = new_sku(), new_order_id()
    await deps.stock.set_available(sku=sku, available=5)
    event = accepted(order_id, (sku, 2))
    paid = authorized(event)
    shipment = ShipmentInfo(carrier="SF Express", tracking_number="SF000000000010", promised_date=date(2026, 11, 26))
    done = OrderCompleted.caused_by(event, total=Decimal("20.00"), currency="CNY", shipment=shipment)
    for e in (event, paid, done):
        assert await rig.deliver(deps, e) == []
    shipped = await level(deps, sku)

    fresh = await rig.replica()  # another process: nothing cached
    for e in (event, paid, done):
        assert await rig.deliver(fresh.deps, e) == []

    after = await level(fresh.deps, sku)
    assert (after.available, after.reserved, after.shipped) == (shipped.available, shipped.reserved, shipped.shipped)
    assert (after.available, after.shipped) == (3, 2)
