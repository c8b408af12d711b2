"""Shipping service handlers.

Consumes: order.events (OrderAccepted, OrderCancelled), inventory.events (StockReserved),
          shipping.notifications (CarrierPushed: what the notify endpoints verified)
Produces: shipping.events (ShipmentScheduled, ShipmentFailed, ShipmentCancelled, ShipmentIntercepted,
          ShipmentTracked)
Timers: the next route query of a parcel on its way (``track_at_carrier``), for pushes lost or never sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from services.shipping import domain
from services.shipping.carrier import Carrier, CarrierRefused, CarrierRejected, ParcelOrder, book
from services.shipping.domain import Booking, CarrierAnswer, CarrierCall, Decision, Shipment
from services.shipping.store import ShipmentStore
from shared.consumer import HandlerRegistry, NotYet, PermanentError
from shared.events.base import Event, now, timer_cause
from shared.events.inventory import StockReserved
from shared.events.order import OrderAccepted, OrderCancelled
from shared.events.shipping import CarrierCode, CarrierPushed
from shared.mongo import Loaded, Timers
from shared.unit_of_work import UnitOfWork

handlers = HandlerRegistry()
TRACK = "route-check"


@dataclass
class CarrierCalls:
    """The shipment's side effects: book or call back at its carrier, as its state intends (our order id is the
    carrier's order number, so a repeated booking is found, not made twice)."""

    carriers: Mapping[str, Carrier]
    rules: Mapping[str, CarrierCode] = field(default_factory=lambda: domain.parse_carriers(domain.DEFAULT_CARRIERS))
    track_interval: timedelta = timedelta(seconds=60)
    phone_fallback: str = ""  # the recipient's number when the order has none ("" = refuse such a booking)

    def carrier_of(self, s: Shipment) -> Carrier:
        code = s.carrier or domain.choose_carrier(self.rules, s.option, s.address.postal_code if s.address else "")
        carrier = self.carriers.get(code)
        if carrier is None:
            raise PermanentError(f"carrier {code!r} is not configured on this shipping service")
        return carrier

    def pending(self, state: Shipment | None) -> CarrierCall | None:
        return domain.pending(state)

    async def perform(self, order_id: str, s: Shipment, call: CarrierCall) -> CarrierAnswer:
        carrier = self.carrier_of(s)
        if call.operation == "cancel":
            assert s.booking is not None
            try:
                await carrier.cancel(order_id, s.booking.tracking_number)
            except CarrierRefused as e:
                return CarrierAnswer(booking=s.booking, refused=e.reason)
            return CarrierAnswer(booking=s.booking)
        if reason := domain.refused_before_booking(s, self.phone_fallback):
            return CarrierAnswer(rejected=reason)
        assert s.address is not None
        assert s.order_date is not None
        order = ParcelOrder(
            order_id=order_id,
            recipient_phone=domain.recipient_phone(s, self.phone_fallback),
            option=s.option,
            address=s.address,
            ordered_on=s.order_date,
            scheduled_date=s.scheduled_date,
        )
        try:
            waybill = await book(carrier, order)
        except CarrierRejected as e:
            return CarrierAnswer(rejected=e.reason)
        promised = waybill.promised_date or domain.promised_date(
            s.option, ordered_on=s.order_date, scheduled_date=s.scheduled_date
        )
        return CarrierAnswer(
            booking=Booking(carrier=carrier.name, tracking_number=waybill.tracking_number, promised_date=promised)
        )

    def record(self, state: Shipment, call: CarrierCall, answer: CarrierAnswer, cause: Event) -> Decision:
        return domain.record(state, call, answer, cause, track_at=now() + self.track_interval)


@dataclass
class Deps:
    shipments: UnitOfWork[Shipment]
    store: ShipmentStore
    calls: CarrierCalls
    timers: Timers | None = None


def shipment_timers(s: Shipment) -> dict[str, datetime | None]:
    """A parcel on its way has a timer for its next route query."""
    return {TRACK: s.track_at if s.status in domain.TRACKING else None}


@handlers.on(OrderAccepted)
async def remember_address_on_order_accepted(event: OrderAccepted, deps: Deps) -> None:
    async def step(doc: Loaded[Shipment]) -> Decision:
        s = domain.with_order(doc.state, event.shipping, event.occurred_at.date(), event.customer.phone)
        return domain.book(s, deps.calls.rules), []

    await deps.shipments.handle(event, step)


@handlers.on(StockReserved)
async def book_on_stock_reserved(event: StockReserved, deps: Deps) -> None:
    async def step(doc: Loaded[Shipment]) -> Decision:
        return domain.book(domain.with_stock(doc.state), deps.calls.rules), []

    await deps.shipments.handle(event, step)


@handlers.on(OrderCancelled)
async def call_back_on_order_cancelled(event: OrderCancelled, deps: Deps) -> None:
    async def step(doc: Loaded[Shipment]) -> Decision:
        return domain.cancel(doc.state), []

    await deps.shipments.handle(event, step)


@handlers.on(CarrierPushed)
async def record_route_push(event: CarrierPushed, deps: Deps) -> None:
    async def step(doc: Loaded[Shipment]) -> Decision:
        s = doc.state
        if s is None or (s.booking is None and s.status in ("AWAITING", "BOOKING")):
            raise NotYet(f"{event.carrier} push for {event.order_id} before its booking was recorded")
        if s.booking is None or s.booking.tracking_number != event.tracking_number:
            raise PermanentError(f"push for parcel {event.tracking_number}, which is not this order's")
        return domain.track(s, event.steps, event)

    await deps.shipments.handle(event, step)


async def track_at_carrier(order_id: str, deps: Deps) -> None:
    """Query the route of a parcel whose pushes have been quiet: a push may be lost (carriers give up after a few
    attempts); what it finds is taken like a push, once per step."""
    doc = await deps.store.read(order_id=order_id)
    s = doc.state
    if s is None or s.status not in domain.TRACKING or s.booking is None or s.track_at is None:
        if deps.timers is not None:
            await deps.timers.clear(kind=TRACK, key=order_id)
        return
    if s.last_track:
        # A timer's cause is never redelivered by Kafka: what the last query emitted goes out again (duplicates
        # carry the same event ids) in case its publish failed after the write.
        await deps.shipments.publish(doc.emitted_by(s.last_track))
    steps = await deps.calls.carrier_of(s).routes(order_id, s.booking.tracking_number)
    cause = timer_cause("RouteChecked", order_id=order_id, firing=f"track:{order_id}:{s.track_at.isoformat()}")

    async def step(doc: Loaded[Shipment]) -> Decision:
        if doc.state is None:
            raise NotYet(f"shipment {order_id} not loaded yet")
        tracked, emitted = domain.track(doc.state, steps, cause)
        tracked = domain.next_track(tracked, at=now(), interval=deps.calls.track_interval)
        return tracked.model_copy(update={"last_track": str(cause.event_id) if emitted else ""}), emitted

    await deps.shipments.handle(cause, step)
