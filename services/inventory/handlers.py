"""Inventory service handlers.

Consumes: order.events (OrderAccepted, OrderCancelled, OrderCompleted), payment.events (PaymentAuthorized)
Produces: inventory.events (StockReserved, StockUnavailable, StockReleased)

Unlike a charge or a booking, a stock hold is not an external side effect: it is this service's own state, in its
own store, and keyed by the order (``holds[order_id]`` on each SKU). Reserving, releasing or committing again for
the same order changes nothing, so a step that holds stock may run twice (a lost race, a redelivery) without
holding twice -- which is why these steps write holds directly instead of recording an intent first, as the
payment and shipping services must. A race on a hot SKU is settled per SKU by the stock store, never by going below
zero (``services/inventory/tests/test_races.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.inventory import domain
from services.inventory.domain import Reservation
from services.inventory.store import StockStore
from shared.consumer import HandlerRegistry, NotYet
from shared.events.base import EmittedEvent, Event
from shared.events.order import OrderAccepted, OrderCancelled, OrderCompleted
from shared.events.payment import PaymentAuthorized
from shared.mongo import Loaded
from shared.unit_of_work import Aggregates

handlers = HandlerRegistry()
Decision = tuple[Reservation, Sequence[EmittedEvent]]


@dataclass
class Deps:
    reservations: Aggregates[Reservation]
    stock: StockStore


async def _reserve_if_ready(res: Reservation, cause: Event, order_id: str, deps: Deps) -> Decision:
    if res.cancelled:
        await deps.stock.release_all(order_id=order_id, lines=res.lines)  # undo a hold a racing replica left
        return domain.record_release(res, cause)
    if not domain.should_reserve(res):
        return res, []
    short = await deps.stock.reserve_all(order_id=order_id, lines=res.lines)
    return domain.record_reservation(res, cause, short)


@handlers.on(OrderAccepted)
async def remember_lines_on_order_accepted(event: OrderAccepted, deps: Deps) -> None:
    async def step(doc: Loaded[Reservation]) -> Decision:
        return await _reserve_if_ready(domain.with_order(doc.state, event.lines), event, event.order_id, deps)

    await deps.reservations.handle(event, step)


@handlers.on(PaymentAuthorized)
async def reserve_on_payment_authorized(event: PaymentAuthorized, deps: Deps) -> None:
    async def step(doc: Loaded[Reservation]) -> Decision:
        return await _reserve_if_ready(domain.with_payment(doc.state), event, event.order_id, deps)

    await deps.reservations.handle(event, step)


@handlers.on(OrderCancelled)
async def release_on_order_cancelled(event: OrderCancelled, deps: Deps) -> None:
    async def step(doc: Loaded[Reservation]) -> Decision:
        res = domain.cancel(doc.state)
        await deps.stock.release_all(order_id=event.order_id, lines=res.lines)
        return domain.record_release(res, event)

    await deps.reservations.handle(event, step)


@handlers.on(OrderCompleted)
async def commit_on_order_completed(event: OrderCompleted, deps: Deps) -> None:
    async def step(doc: Loaded[Reservation]) -> Decision:
        if domain.reservation_pending(doc.state):
            raise NotYet(f"completion of {event.order_id} before its reservation")
        res = doc.state or Reservation()
        if not domain.should_commit(res):
            return res, []
        await deps.stock.commit_all(order_id=event.order_id, lines=res.lines)
        return res.model_copy(update={"status": "COMMITTED"}), []

    await deps.reservations.handle(event, step)
