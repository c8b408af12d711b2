"""Inventory service handlers.

Consumes: order.events (OrderAccepted, OrderCancelled, OrderCompleted), payment.events (PaymentAuthorized)
Produces: inventory.events (StockReserved, StockUnavailable, StockReleased)

A stock hold is a write to a SKU document every copy of the service shares, so it is a side effect like a charge or
a booking: no step writes stock. A step records the intent on the order's reservation (RESERVING, RELEASING,
COMMITTING, see ``services.inventory.domain``); once that is durable, :class:`StockWrites` makes the writes it names
and records what they found. Each write is idempotent per (order, SKU) -- ``holds`` and ``closed`` on the SKU
document are its record -- so the copy that wrote the intent, a redelivery and the other copy may all make them,
and a slow one that reaches a SKU after the units were given back or shipped holds nothing. A race on a hot SKU is
settled per SKU by the stock store, never by going below zero (``services/inventory/tests/test_races.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.inventory import domain
from services.inventory.domain import Decision, Reservation, StockAnswer, StockWrite
from services.inventory.store import StockStore
from shared.consumer import HandlerRegistry, NotYet
from shared.events.base import Event
from shared.events.order import OrderAccepted, OrderCancelled, OrderCompleted
from shared.events.payment import PaymentAuthorized
from shared.mongo import ConcurrentUpdate, Loaded
from shared.unit_of_work import UnitOfWork

handlers = HandlerRegistry()


@dataclass
class StockWrites:
    """The reservation's side effects: hold, give back or ship every line, as its state intends (keyed by the order
    on each SKU, so a write made twice counts once)."""

    stock: StockStore

    def pending(self, state: Reservation | None) -> StockWrite | None:
        return domain.pending(state)

    async def perform(self, order_id: str, res: Reservation, write: StockWrite) -> StockAnswer:
        if write.operation == "reserve":
            # Every line is tried (a shortage names every short SKU); what was held is given back by the RELEASING
            # that follows a shortage, never here, where the other copy may be making the same writes.
            short = [
                ln.sku
                for ln in res.lines
                if not await self.stock.reserve(order_id=order_id, sku=ln.sku, quantity=ln.quantity)
            ]
            return StockAnswer(short=short)
        for ln in res.lines:
            if write.operation == "release":
                await self.stock.release(order_id=order_id, sku=ln.sku)
            else:
                await self.stock.commit(order_id=order_id, sku=ln.sku)
        return StockAnswer()

    def record(self, state: Reservation, write: StockWrite, answer: StockAnswer, cause: Event) -> Decision:
        return domain.record(state, write, answer, cause)


@dataclass
class Deps:
    reservations: UnitOfWork[Reservation]
    stock: StockStore


@handlers.on(OrderAccepted)
async def remember_lines_on_order_accepted(event: OrderAccepted, deps: Deps) -> None:
    async def step(doc: Loaded[Reservation]) -> Decision:
        return domain.reserve(domain.with_order(doc.state, event.lines)), []

    await deps.reservations.handle(event, step)


@handlers.on(PaymentAuthorized)
async def reserve_on_payment_authorized(event: PaymentAuthorized, deps: Deps) -> None:
    async def step(doc: Loaded[Reservation]) -> Decision:
        return domain.reserve(domain.with_payment(doc.state)), []

    await deps.reservations.handle(event, step)


@handlers.on(OrderCancelled)
async def release_on_order_cancelled(event: OrderCancelled, deps: Deps) -> None:
    async def step(doc: Loaded[Reservation]) -> Decision:
        return domain.cancel(doc.state), []

    await deps.reservations.handle(event, step)


@handlers.on(OrderCompleted)
async def commit_on_order_completed(event: OrderCompleted, deps: Deps) -> None:
    read_newest = False

    async def step(doc: Loaded[Reservation]) -> Decision:
        nonlocal read_newest
        if domain.awaits_reservation(doc.state):
            if not read_newest:
                # Waiting writes nothing, so no write would tell that this process's copy is behind the other
                # copy's (which may have recorded the reservation long ago): wait only on the newest version.
                read_newest = True
                deps.reservations.store.docs.forget(event.order_id)
                raise ConcurrentUpdate(event.order_id)
            raise NotYet(f"completion of {event.order_id} before its reservation was answered")
        assert doc.state is not None
        return domain.complete(doc.state), []

    await deps.reservations.handle(event, step)
