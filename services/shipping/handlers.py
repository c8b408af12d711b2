"""Shipping service handlers.

Consumes: order.events (OrderAccepted, OrderCancelled), inventory.events (StockReserved)
Produces: shipping.events (ShipmentScheduled, ShipmentFailed, ShipmentCancelled)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.shipping import domain
from services.shipping.carrier import Carrier, CarrierRejected
from services.shipping.domain import Shipment
from shared.consumer import HandlerRegistry
from shared.events.base import EmittedEvent, Event
from shared.events.inventory import StockReserved
from shared.events.order import OrderAccepted, OrderCancelled
from shared.inbox import Aggregates
from shared.mongo import Loaded

handlers = HandlerRegistry()
Decision = tuple[Shipment, Sequence[EmittedEvent]]


@dataclass
class Deps:
    shipments: Aggregates[Shipment]
    carrier: Carrier


async def _book_if_ready(s: Shipment, cause: Event, order_id: str, deps: Deps) -> Decision:
    if not domain.should_book(s) or s.address is None or s.order_date is None:
        return s, []
    try:
        booking = await deps.carrier.book(
            order_id=order_id,
            option=s.option,
            address=s.address,
            ordered_on=s.order_date,
            scheduled_date=s.scheduled_date,
        )
    except CarrierRejected as e:
        return domain.record_rejection(s, cause, e.reason.split(":", 1)[0])
    return domain.record_booking(s, cause, booking)


@handlers.on(OrderAccepted)
async def remember_address_on_order_accepted(event: OrderAccepted, deps: Deps) -> None:
    async def step(doc: Loaded[Shipment]) -> Decision:
        s = domain.with_order(doc.state, event.shipping, event.occurred_at.date())
        return await _book_if_ready(s, event, event.order_id, deps)

    await deps.shipments.handle(event, step)


@handlers.on(StockReserved)
async def book_on_stock_reserved(event: StockReserved, deps: Deps) -> None:
    async def step(doc: Loaded[Shipment]) -> Decision:
        return await _book_if_ready(domain.with_stock(doc.state), event, event.order_id, deps)

    await deps.shipments.handle(event, step)


@handlers.on(OrderCancelled)
async def call_back_on_order_cancelled(event: OrderCancelled, deps: Deps) -> None:
    async def step(doc: Loaded[Shipment]) -> Decision:
        s, emitted = domain.cancel(doc.state, event)
        if emitted and s.booking is not None:
            await deps.carrier.cancel(order_id=event.order_id, tracking_number=s.booking.tracking_number)
        return s, emitted

    await deps.shipments.handle(event, step)
