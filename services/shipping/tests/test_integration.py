"""Shipping on the real store and Kafka: a shipment is booked once the address and the stock are both known,
with the carrier the delivery option calls for; an undeliverable address fails the shipment."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest

from services.conftest import Rig, new_order_id
from services.shipping.handlers import Deps
from shared.events.inventory import StockLine, StockReserved
from shared.events.order import OrderAccepted, OrderCancelled
from shared.events.shipping import ShipmentCancelled, ShipmentFailed, ShipmentScheduled
from tests.unit.factories import ORDER_PLACED, order_accepted, order_placed

pytestmark = pytest.mark.infra

SCHEDULED_FOR = date.today() + timedelta(days=5)  # within what the carriers deliver on (1 to 14 days)


@pytest.fixture(scope="module")
def deps(rig: Rig) -> Deps:
    """As services/shipping/app.py wires them (on the test database and topic)."""
    built: Deps = rig.deps
    return built


async def bookings(rig: Rig, order_id: str) -> list[dict[str, Any]]:
    """The sandbox carrier's own record of this order's parcels."""
    return [d async for d in rig.db["carrier_bookings"].find({"_id": order_id})]


def accepted(order_id: str, *, option: str = "next_day", postal_code: str = "100080") -> OrderAccepted:
    shipping: dict[str, Any] = {
        "option": option,
        "scheduled_date": SCHEDULED_FOR.isoformat() if option == "scheduled" else None,
        "address": {**ORDER_PLACED["shipping"]["address"], "postal_code": postal_code},
    }
    return order_accepted(order_placed(order_id=order_id, shipping=shipping))


def reserved(cause: OrderAccepted) -> StockReserved:
    event: StockReserved = StockReserved.caused_by(cause, lines=[StockLine(sku="SKU-RED-MUG", quantity=2)])
    return event


@pytest.mark.parametrize(
    ("option", "carrier", "prefix", "transit"),
    [
        ("next_day", "SF Express", "SF", timedelta(days=1)),
        ("standard", "JD Logistics", "JD", timedelta(days=3)),
        ("scheduled", "JD Logistics", "JD", None),
    ],
)
async def test_shipment_is_scheduled_with_the_carrier_of_the_delivery_option(
    rig: Rig, deps: Deps, option: str, carrier: str, prefix: str, transit: timedelta | None
) -> None:
    order_id = new_order_id()
    event = accepted(order_id, option=option)

    assert await rig.deliver(deps, event) == []
    assert await rig.event_types(order_id) == []  # no stock yet: nothing to ship
    stock = rig.record(reserved(event))
    assert await rig.handle(deps, stock) == []
    assert await rig.handle(deps, stock) == []  # redelivered: still one booking

    published = await rig.events(order_id)
    # The redelivery publishes its event again (it cannot know the first publish went through): the same event_id.
    assert {e.event_id for e in published} == {published[0].event_id}
    scheduled = published[0]
    assert isinstance(scheduled, ShipmentScheduled)
    assert scheduled.carrier == carrier
    assert scheduled.tracking_number.startswith(prefix)
    assert scheduled.promised_date == (event.occurred_at.date() + transit if transit else SCHEDULED_FOR)
    [booking] = await bookings(rig, order_id)
    assert (booking["status"], booking["carrier"], booking["tracking_number"]) == (
        "booked",
        carrier,
        scheduled.tracking_number,
    )


async def test_stock_before_address_books_when_the_address_arrives(rig: Rig, deps: Deps) -> None:
    order_id = new_order_id()
    event = accepted(order_id)

    assert await rig.deliver(deps, reserved(event)) == []
    assert await rig.deliver(deps, event) == []

    assert await rig.event_types(order_id) == ["ShipmentScheduled"]


async def test_undeliverable_postal_code_fails_the_shipment(rig: Rig, deps: Deps) -> None:
    order_id = new_order_id()
    event = accepted(order_id, postal_code="000000")

    assert await rig.deliver(deps, event) == []
    assert await rig.deliver(deps, reserved(event)) == []

    published = await rig.events(order_id)
    assert len(published) == 1
    assert isinstance(published[0], ShipmentFailed)
    assert published[0].reason == "shipping_failed"
    doc = await deps.shipments.store.load(order_id=order_id)
    assert doc.state is not None
    assert doc.state.status == "FAILED"
    assert doc.state.booking is None
    assert await bookings(rig, order_id) == []


async def test_cancellation_calls_a_scheduled_shipment_back(rig: Rig, deps: Deps) -> None:
    order_id = new_order_id()
    event = accepted(order_id)
    assert await rig.deliver(deps, event) == []
    assert await rig.deliver(deps, reserved(event)) == []

    assert await rig.deliver(deps, OrderCancelled.caused_by(event, reason="payment_declined")) == []

    published = await rig.events(order_id)
    assert [type(e) for e in published] == [ShipmentScheduled, ShipmentCancelled]
    scheduled, cancelled = published
    assert isinstance(scheduled, ShipmentScheduled)
    assert isinstance(cancelled, ShipmentCancelled)
    assert cancelled.tracking_number == scheduled.tracking_number
    [booking] = await bookings(rig, order_id)
    assert booking["status"] == "cancelled"


async def test_cancellation_before_the_stock_books_nothing(rig: Rig, deps: Deps) -> None:
    order_id = new_order_id()
    event = accepted(order_id)
    assert await rig.deliver(deps, event) == []

    assert await rig.deliver(deps, OrderCancelled.caused_by(event, reason="payment_declined")) == []
    assert await rig.deliver(deps, reserved(event)) == []  # a reservation released later still arrives

    assert await rig.event_types(order_id) == []
    assert await bookings(rig, order_id) == []
    doc = await deps.shipments.store.load(order_id=order_id)
    assert doc.state is not None
    assert doc.state.status == "CANCELLED"
