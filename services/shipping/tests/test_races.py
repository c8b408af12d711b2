"""Shipping race the booking intent settles: a cancellation handled by another instance while a booking is in
flight. The old design booked inside a step a cancellation could overtake, leaving a parcel booked (and
ShipmentScheduled published) for a cancelled order."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from services.conftest import Pause, Rig, killed, new_order_id
from services.shipping.carrier import Carrier, ParcelOrder, Waybill
from services.shipping.handlers import CarrierCalls
from shared.events.inventory import StockLine, StockReserved
from shared.events.order import OrderAccepted, OrderCancelled
from shared.runtime import Service
from tests.unit.factories import order_accepted, order_placed

pytestmark = pytest.mark.infra


class HeldCarrier:
    """The instance's real carrier with ``create`` held at ``pause``: before the carrier gets the booking, or after
    it recorded it (``after=True``); every other call is the real carrier's."""

    def __init__(self, real: Carrier, pause: Pause, *, after: bool) -> None:
        self.real, self.pause, self.after = real, pause, after

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def create(self, order: ParcelOrder) -> Waybill:
        if not self.after:
            await self.pause()
        waybill = await self.real.create(order)
        if self.after:
            await self.pause()
        return waybill


def hold_booking(instance: Service, *, after: bool) -> Pause:
    pause = Pause()
    calls = cast(CarrierCalls, instance.deps.shipments.effects)
    calls.carriers = {code: cast(Carrier, HeldCarrier(c, pause, after=after)) for code, c in calls.carriers.items()}
    return pause


@pytest.mark.parametrize("after", [False, True], ids=["before-the-carrier-books", "after-the-carrier-booked"])
async def test_cancellation_while_a_booking_is_in_flight_calls_the_parcel_back(rig: Rig, after: bool) -> None:
    one, other = await rig.replica(), await rig.replica()
    order_id = new_order_id()
    event: OrderAccepted = order_accepted(order_placed(order_id=order_id))
    assert await rig.on(one, event) == []
    pause = hold_booking(one, after=after)

    booking = asyncio.create_task(
        rig.on(one, StockReserved.caused_by(event, lines=[StockLine(sku="SKU-RED-MUG", quantity=2)]))
    )
    try:
        await asyncio.wait_for(pause.reached.wait(), 10)
        assert await rig.on(other, OrderCancelled.caused_by(event, reason="payment_declined")) == []
        pause.release.set()
        assert await booking == []
    finally:
        pause.release.set()
        if not booking.done():
            await killed(booking)

    parcels = [d async for d in rig.db["carrier_bookings"].find({"_id": order_id})]
    assert [p["status"] for p in parcels] == ["cancelled"]
    assert await rig.distinct_events(order_id) == ["ShipmentCancelled"]
    published = await rig.events(order_id)
    assert getattr(published[0], "tracking_number", None) == parcels[0]["tracking_number"]
