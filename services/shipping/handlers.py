"""Shipping service handlers.

Consumes: order.events (OrderAccepted, OrderCancelled), inventory.events (StockReserved)
Produces: shipping.events (ShipmentScheduled, ShipmentFailed, ShipmentCancelled)
"""

from __future__ import annotations

from dataclasses import dataclass

from services.shipping import domain
from services.shipping.carrier import Carrier, CarrierRejected
from services.shipping.domain import CarrierAnswer, CarrierCall, Decision, Shipment
from shared.consumer import HandlerRegistry
from shared.events.base import Event
from shared.events.inventory import StockReserved
from shared.events.order import OrderAccepted, OrderCancelled
from shared.mongo import Loaded
from shared.unit_of_work import Aggregates

handlers = HandlerRegistry()


@dataclass
class Deps:
    shipments: Aggregates[Shipment]
    carrier: Carrier


@dataclass
class CarrierCalls:
    """The shipment's side effects: book or call back, as its state intends (the carrier dedupes by order)."""

    carrier: Carrier

    def pending(self, state: Shipment | None) -> CarrierCall | None:
        return domain.pending(state)

    async def perform(self, order_id: str, s: Shipment, call: CarrierCall) -> CarrierAnswer:
        if call.operation == "cancel":
            assert s.booking is not None
            await self.carrier.cancel(order_id=order_id, tracking_number=s.booking.tracking_number)
            return CarrierAnswer(booking=s.booking)
        assert s.address is not None
        assert s.order_date is not None
        try:
            booking = await self.carrier.book(
                order_id=order_id,
                option=s.option,
                address=s.address,
                ordered_on=s.order_date,
                scheduled_date=s.scheduled_date,
            )
        except CarrierRejected as e:
            return CarrierAnswer(rejected=e.reason.split(":", 1)[0])
        return CarrierAnswer(booking=booking)

    def record(self, state: Shipment, call: CarrierCall, answer: CarrierAnswer, cause: Event) -> Decision:
        return domain.record(state, call, answer, cause)


@handlers.on(OrderAccepted)
async def remember_address_on_order_accepted(event: OrderAccepted, deps: Deps) -> None:
    async def step(doc: Loaded[Shipment]) -> Decision:
        return domain.book(domain.with_order(doc.state, event.shipping, event.occurred_at.date())), []

    await deps.shipments.handle(event, step)


@handlers.on(StockReserved)
async def book_on_stock_reserved(event: StockReserved, deps: Deps) -> None:
    async def step(doc: Loaded[Shipment]) -> Decision:
        return domain.book(domain.with_stock(doc.state)), []

    await deps.shipments.handle(event, step)


@handlers.on(OrderCancelled)
async def call_back_on_order_cancelled(event: OrderCancelled, deps: Deps) -> None:
    async def step(doc: Loaded[Shipment]) -> Decision:
        return domain.cancel(doc.state), []

    await deps.shipments.handle(event, step)
