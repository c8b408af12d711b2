"""Inventory with two copies on the real store: the interleavings of one order's events across copies that each
decide from their own cached version of the reservation, forced one by one.

With two copies the consumer group always puts ``order.events`` and ``payment.events`` on different copies, so an
order's payment is handled by one copy and its acceptance, cancellation and completion by the other; after a
rebalance a record may be handled again by the copy that takes its partition. Whatever the interleaving, a
reservation that ends without shipping leaves no unit held, and one that ships commits what it held.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from services.conftest import Pause, Rig, killed, new_order_id
from services.inventory import store
from services.inventory.store import StockStore
from services.inventory.tests.test_integration import accepted, authorized
from shared.consumer import NotYet, PermanentError
from shared.events.order import OrderCancelled, OrderCompleted, ShipmentInfo
from shared.mongo import Doc
from shared.runtime import Service

pytestmark = pytest.mark.infra


def new_sku() -> str:
    return f"SKU-COPY-{uuid.uuid4().hex[:10]}"


async def stock(rig: Rig, sku: str) -> Doc:
    """The SKU's newest version in the store (not a copy's cache, which may be behind the other copy's writes)."""
    doc: Doc | None = await rig.deps.stock.docs.read(sku)
    assert doc is not None
    return doc


async def counts(rig: Rig, sku: str) -> tuple[int, int, int]:
    doc = await stock(rig, sku)
    return int(doc["available"]), int(doc["reserved"]), int(doc.get("shipped", 0))


async def status(rig: Rig, order_id: str) -> str:
    doc = await rig.deps.reservations.store.read(order_id=order_id)
    assert doc.state is not None
    return str(doc.state.status)


def completed(event: Any) -> OrderCompleted:
    shipment = ShipmentInfo(carrier="SF Express", tracking_number="SF000000000011", promised_date=date(2026, 11, 26))
    done: OrderCompleted = OrderCompleted.caused_by(event, total=Decimal("10.00"), currency="CNY", shipment=shipment)
    return done


def hold_reservations(instance: Service, pause: Pause, *, after: bool) -> None:
    """The copy's stock store with ``reserve`` held at ``pause``: before the SKU is written, or after it was."""
    store: StockStore = instance.deps.stock
    real = store.reserve

    async def reserve(**kwargs: Any) -> bool:
        if not after:
            await pause()
        held = await real(**kwargs)
        if after:
            await pause()
        return held

    store.reserve = reserve  # type: ignore[method-assign]


async def test_a_payment_handled_again_on_a_stale_copy_after_the_release_holds_nothing(rig: Rig) -> None:
    # `one` read the order when it handled its acceptance; the payment and the cancellation were handled by
    # `other`; then the payment is handled again by `one` (a rebalance handed it the partition before the offset
    # was committed), deciding on the version it has: the order as accepted, not yet paid.
    one, other = await rig.replica(), await rig.replica()
    sku, order_id = new_sku(), new_order_id()
    await rig.deps.stock.set_available(sku=sku, available=5)
    event = accepted(order_id, (sku, 1))
    paid = authorized(event)
    assert await rig.on(one, event) == []
    assert await rig.on(other, paid) == []
    assert await rig.on(other, OrderCancelled.caused_by(event, reason="customer_request")) == []

    assert await rig.on(one, paid) == []

    assert await rig.distinct_events(order_id) == ["StockReserved", "StockReleased"]
    assert await status(rig, order_id) == "RELEASED"
    assert (await stock(rig, sku))["holds"] == {}
    assert await counts(rig, sku) == (5, 0, 0)


@pytest.mark.parametrize("ending", ["cancelled", "completed"])
async def test_a_reservation_still_running_on_a_copy_that_lost_its_partition_holds_nothing_once_the_order_ended(
    rig: Rig, ending: str
) -> None:
    # `one` is reserving for the payment when its partition goes to `other` (a rebalance while the store was slow):
    # `other` handles the payment again, the order ends there -- cancelled, or completed and its units shipped --
    # and only then does `one` get to the SKU.
    one, other = await rig.replica(), await rig.replica()
    sku, order_id = new_sku(), new_order_id()
    await rig.deps.stock.set_available(sku=sku, available=5)
    event = accepted(order_id, (sku, 1))
    paid = authorized(event)
    assert await rig.on(other, event) == []
    pause = Pause()
    hold_reservations(one, pause, after=False)

    slow = asyncio.create_task(rig.on(one, paid))
    try:
        await asyncio.wait_for(pause.reached.wait(), 10)
        assert await rig.on(other, paid) == []
        end = OrderCancelled.caused_by(event, reason="customer_request") if ending == "cancelled" else completed(event)
        assert await rig.on(other, end) == []
        pause.release.set()
        assert await slow == []
    finally:
        pause.release.set()
        if not slow.done():
            await killed(slow)

    assert (await stock(rig, sku))["holds"] == {}
    if ending == "cancelled":
        assert await rig.distinct_events(order_id) == ["StockReserved", "StockReleased"]
        assert await status(rig, order_id) == "RELEASED"
        assert await counts(rig, sku) == (5, 0, 0)
    else:
        assert await rig.distinct_events(order_id) == ["StockReserved"]
        assert await status(rig, order_id) == "COMMITTED"
        assert await counts(rig, sku) == (4, 0, 1)


async def test_a_copy_whose_reservation_shows_writes_pending_makes_them_only_from_the_stored_version(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `one` wrote the intent but could not make its writes (dead-lettered); `other` made them and the order was
    # shipped long ago -- so long that the SKU no longer remembers the order as closed. The record is replayed
    # from the dead-letter topic on `one`, whose own copy still shows the reservation in flight.
    monkeypatch.setattr(store, "CLOSED_KEEP", 1)
    one, other = await rig.replica(), await rig.replica()
    sku, order_id = new_sku(), new_order_id()
    await rig.deps.stock.set_available(sku=sku, available=5)
    event = accepted(order_id, (sku, 1))
    paid = authorized(event)
    assert await rig.on(other, event) == []
    real = one.deps.stock.reserve

    async def refused(**_: Any) -> bool:
        raise PermanentError("the store refused the write")

    one.deps.stock.reserve = refused
    assert len(await rig.on(one, paid)) == 1  # dead-lettered with the intent recorded
    one.deps.stock.reserve = real
    assert await rig.on(other, paid) == []
    assert await rig.on(other, completed(event)) == []
    await rig.deps.stock.release(order_id=new_order_id(), sku=sku)  # another order closed here since

    assert await rig.on(one, paid) == []

    assert await rig.distinct_events(order_id) == ["StockReserved"]
    assert await status(rig, order_id) == "COMMITTED"
    assert (await stock(rig, sku))["holds"] == {}
    assert await counts(rig, sku) == (4, 0, 1)


@pytest.mark.parametrize("after", [False, True], ids=["before-the-sku-is-written", "after-the-sku-was-written"])
async def test_a_cancellation_on_one_copy_while_the_other_reserves_leaves_nothing_held(rig: Rig, after: bool) -> None:
    # The interleaving of the report: the payment on one copy, the cancellation 250 ms later on the other, while
    # the reservation is in flight. Nobody heard of a reservation, so nothing is announced.
    one, other = await rig.replica(), await rig.replica()
    sku, order_id = new_sku(), new_order_id()
    await rig.deps.stock.set_available(sku=sku, available=5)
    event = accepted(order_id, (sku, 2))
    assert await rig.on(other, event) == []
    pause = Pause()
    hold_reservations(one, pause, after=after)

    reserving = asyncio.create_task(rig.on(one, authorized(event)))
    try:
        await asyncio.wait_for(pause.reached.wait(), 10)
        assert await rig.on(other, OrderCancelled.caused_by(event, reason="customer_request")) == []
        pause.release.set()
        assert await reserving == []
    finally:
        pause.release.set()
        if not reserving.done():
            await killed(reserving)

    assert await rig.distinct_events(order_id) == []
    assert await status(rig, order_id) == "CANCELLED"
    assert (await stock(rig, sku))["holds"] == {}
    assert await counts(rig, sku) == (5, 0, 0)


async def test_a_completion_on_the_copy_that_saw_only_the_acceptance_commits_the_units(rig: Rig) -> None:
    # `other` has the order as accepted in its cache; the reservation was recorded by `one`. The completion must
    # be decided on the reservation as stored, not wait for ever for a reservation that was made long ago.
    one, other = await rig.replica(), await rig.replica()
    sku, order_id = new_sku(), new_order_id()
    await rig.deps.stock.set_available(sku=sku, available=5)
    event = accepted(order_id, (sku, 2))
    assert await rig.on(other, event) == []
    assert await rig.on(one, authorized(event)) == []

    assert await rig.on(other, completed(event)) == []

    assert await rig.distinct_events(order_id) == ["StockReserved"]
    assert await status(rig, order_id) == "COMMITTED"
    assert (await stock(rig, sku))["holds"] == {}
    assert await counts(rig, sku) == (3, 0, 2)


async def test_a_completion_while_the_other_copy_reserves_waits_for_the_answer_then_commits(rig: Rig) -> None:
    # Only after a restore can a completion come this early (topics re-read side by side): it waits for the
    # reservation's answer instead of finishing the reservation itself, then ships what it holds.
    one, other = await rig.replica(), await rig.replica()
    sku, order_id = new_sku(), new_order_id()
    await rig.deps.stock.set_available(sku=sku, available=5)
    event = accepted(order_id, (sku, 2))
    assert await rig.on(other, event) == []
    pause = Pause()
    hold_reservations(one, pause, after=True)
    done = rig.record(completed(event))

    reserving = asyncio.create_task(rig.on(one, authorized(event)))
    try:
        await asyncio.wait_for(pause.reached.wait(), 10)
        with pytest.raises(NotYet):
            await rig.handle(other.deps, done, instance=other)
        pause.release.set()
        assert await reserving == []
    finally:
        pause.release.set()
        if not reserving.done():
            await killed(reserving)
    assert await rig.handle(other.deps, done, instance=other) == []

    assert await rig.distinct_events(order_id) == ["StockReserved"]
    assert await status(rig, order_id) == "COMMITTED"
    assert (await stock(rig, sku))["holds"] == {}
    assert await counts(rig, sku) == (3, 0, 2)


async def test_a_cancellation_after_the_completion_on_a_stale_copy_releases_nothing(rig: Rig) -> None:
    # A customer may cancel a completed order until its parcel is delivered: its units count as shipped.
    one, other = await rig.replica(), await rig.replica()
    sku, order_id = new_sku(), new_order_id()
    await rig.deps.stock.set_available(sku=sku, available=5)
    event = accepted(order_id, (sku, 2))
    assert await rig.on(other, event) == []
    assert await rig.on(one, authorized(event)) == []
    assert await rig.on(one, completed(event)) == []

    assert await rig.on(other, OrderCancelled.caused_by(event, reason="customer_request")) == []

    assert await rig.distinct_events(order_id) == ["StockReserved"]
    assert await status(rig, order_id) == "COMMITTED"
    assert await counts(rig, sku) == (3, 0, 2)
