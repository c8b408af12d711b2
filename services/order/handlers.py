"""Order service handlers.

Consumes: storefront.orders (OrderPlaced, OrderCancellationRequested), payment.events, inventory.events,
          shipping.events, notify.events (every event: the order keeps the saga's history)
Produces: order.events (OrderAccepted, OrderRejected, OrderCompleted, OrderCancelled, OrderCancellationRefused)
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import timedelta

import structlog

from services.order import domain
from services.order.domain import Decision, Order
from services.order.store import OrderStore
from shared import metrics, telemetry
from shared.consumer import HandlerRegistry, InvalidEvent, PermanentError
from shared.events.base import Event, now
from shared.events.inventory import StockReleased, StockReserved, StockUnavailable
from shared.events.notify import NotificationFailed, NotificationSent
from shared.events.order import FieldError
from shared.events.payment import (
    PaymentAuthorized,
    PaymentCaptured,
    PaymentDeclined,
    PaymentRefunded,
    PaymentVoided,
)
from shared.events.shipping import ShipmentCancelled, ShipmentFailed, ShipmentScheduled
from shared.events.storefront import OrderCancellationRequested, OrderPlaced
from shared.inbox import Aggregates
from shared.mongo import ConcurrentUpdate, Loaded

log = structlog.get_logger(__name__)
handlers = HandlerRegistry()


@dataclass
class Deps:
    orders: Aggregates[Order]
    store: OrderStore
    deadline: timedelta


def _record_outcome(before: Order | None, after: Order | None) -> None:
    """Saga metrics, counted once: on the write that made the order terminal."""
    if after is None or not after.terminal or (before is not None and before.terminal):
        return
    metrics.SAGAS.labels(after.status, after.reason or "").inc()
    if after.terminal_at is not None:
        started = after.accepted_at or after.placed_at
        metrics.SAGA_SECONDS.labels(after.status).observe((after.terminal_at - started).total_seconds())


@handlers.on(OrderPlaced)
async def accept_on_order_placed(event: OrderPlaced, deps: Deps) -> None:
    async def step(doc: Loaded[Order]) -> Decision:
        return domain.place(doc.state, event, at=now(), deadline=deps.deadline, trace_id=telemetry.current_trace_id())

    saved = await deps.orders.handle(event, step)
    _record_outcome(None, saved.state if saved else None)


@handlers.on_invalid(OrderPlaced)
async def reject_on_invalid_order_placed(event: InvalidEvent, deps: Deps) -> None:
    cause = Event(event_type="OrderPlaced", event_id=event.event_id, order_id=event.order_id, occurred_at=now())
    errors = [FieldError.model_validate(e) for e in event.errors]

    async def step(doc: Loaded[Order]) -> Decision:
        return domain.reject_invalid(
            doc.state,
            order_id=event.order_id,
            cause=cause,
            errors=errors,
            at=now(),
            trace_id=telemetry.current_trace_id(),
        )

    saved = await deps.orders.handle(cause, step)
    _record_outcome(None, saved.state if saved else None)


@handlers.on(OrderCancellationRequested)
async def cancel_on_customer_request(event: OrderCancellationRequested, deps: Deps) -> None:
    before: list[Order | None] = [None]

    async def step(doc: Loaded[Order]) -> Decision:
        if doc.state is None:
            raise PermanentError(f"cancellation for unknown order {event.order_id}")
        before[0] = doc.state
        return domain.request_cancellation(doc.state, event, event.reason, at=now())

    saved = await deps.orders.handle(event, step)
    _record_outcome(before[0], saved.state if saved else None)


async def track_progress(event: Event, deps: Deps) -> None:
    before: list[Order | None] = [None]

    async def step(doc: Loaded[Order]) -> Decision:
        if doc.state is None:
            # Downstream events only follow our OrderAccepted; its absence means another order store was lost.
            raise PermanentError(f"{event.event_type} for unknown order {event.order_id}")
        before[0] = doc.state
        return domain.progress(doc.state, event, at=now())

    saved = await deps.orders.handle(event, step)
    _record_outcome(before[0], saved.state if saved else None)


for _event_type in (
    PaymentAuthorized,
    PaymentDeclined,
    PaymentCaptured,
    PaymentVoided,
    PaymentRefunded,
    StockReserved,
    StockUnavailable,
    StockReleased,
    ShipmentScheduled,
    ShipmentFailed,
    ShipmentCancelled,
    NotificationSent,
    NotificationFailed,
):
    handlers.on(_event_type)(track_progress)


async def cancel_overdue_orders(deps: Deps) -> None:
    """Cancel (reason ``timeout``) every order not terminal by its deadline; compensation follows."""
    for order_id in await deps.store.past_deadline(at=now()):
        try:
            doc = await deps.store.load(order_id=order_id)
            if doc.state is None or not domain.deadline_passed(doc.state, at=now()):
                continue
            cause = Event(
                event_type="DeadlinePassed",
                order_id=order_id,
                occurred_at=now(),
                event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"deadline:{order_id}"),
            )
            state, emitted = domain.cancel(doc.state, cause, "timeout", at=now())
            await deps.orders.save(doc, state=state, emitted=emitted)
            _record_outcome(doc.state, state)
            log.warning("order cancelled at its deadline", order_id=order_id)
        except ConcurrentUpdate:
            continue  # something happened to the order meanwhile; the next scan decides again


async def deadline_scanner(deps: Deps, interval: float) -> None:
    while True:
        await cancel_overdue_orders(deps)
        await asyncio.sleep(interval)
