"""Order service handlers.

Consumes: storefront.orders (OrderPlaced, OrderCancellationRequested), payment.events, inventory.events,
          shipping.events, notify.events (every event: the order keeps the saga's history)
Produces: order.events (OrderAccepted, OrderRejected, OrderAwaitingPayment, OrderCompleted, OrderCancelled,
          OrderCancellationRefused)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from services.order import domain
from services.order.backlog import Backlog
from services.order.domain import Decision, Order
from services.order.store import OrderStore
from shared import metrics, telemetry
from shared.consumer import HandlerRegistry, InvalidEvent, NotYet, PermanentError
from shared.events.base import Event, now
from shared.events.inventory import StockReleased, StockReserved, StockUnavailable
from shared.events.notify import NotificationFailed, NotificationSent
from shared.events.order import FieldError
from shared.events.payment import (
    PaymentActionRequired,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentDeclined,
    PaymentRefunded,
    PaymentVoided,
)
from shared.events.shipping import ShipmentCancelled, ShipmentFailed, ShipmentScheduled
from shared.events.storefront import OrderCancellationRequested, OrderPlaced
from shared.mongo import ConcurrentUpdate, Loaded, Timers
from shared.unit_of_work import Aggregates

log = structlog.get_logger(__name__)
handlers = HandlerRegistry()


@dataclass
class Deps:
    orders: Aggregates[Order]
    store: OrderStore
    timers: Timers
    backlog: Backlog
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
    if any(list(e.get("loc", []))[:1] == ["order_id"] for e in event.errors):
        # An order_id that is itself invalid (e.g. a card number) must not become a stored order's key.
        raise PermanentError("OrderPlaced with an invalid order_id: not stored; see the record's storefront")
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
            # Downstream events only follow our OrderAccepted: its placement is still to be read (a restore or a
            # rewind re-reads the topics side by side), or -- if it never comes -- our order store was lost.
            raise NotYet(f"{event.event_type} for unknown order {event.order_id}")
        before[0] = doc.state
        at = now()
        order, emitted = domain.progress(doc.state, event, at=at)
        return domain.rearm_deadline(order, at=at, deadline=deps.deadline), emitted

    saved = await deps.orders.handle(event, step)
    _record_outcome(before[0], saved.state if saved else None)


for _event_type in (
    PaymentActionRequired,
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


DEADLINE = "deadline"


def deadline_timer(deadline: timedelta) -> Callable[[Order], dict[str, datetime | None]]:
    """Every order not yet terminal has a deadline timer, set once at acceptance; when it fires before the
    order's (moving) ``deadline_at``, ``on_deadline`` moves it on."""

    def timers_of(order: Order) -> dict[str, datetime | None]:
        if order.terminal or order.accepted_at is None:
            return {DEADLINE: None}
        return {DEADLINE: order.accepted_at + deadline}

    return timers_of


async def on_deadline(order_id: str, deps: Deps) -> None:
    """The deadline timer fired: cancel an order whose saga made no progress for the deadline, unless a message
    that could move it is still waiting in a queue (then we are behind, not the saga: look again later)."""
    at = now()
    doc = await deps.store.read(order_id=order_id)
    order = doc.state
    if order is None or order.terminal:
        await deps.timers.clear(kind=DEADLINE, key=order_id)
        return
    if order.deadline_at is not None and order.deadline_at > at:
        await deps.timers.set(kind=DEADLINE, key=order_id, due_at=order.deadline_at)
        return
    retry_at = at + min(deps.deadline / 4, timedelta(seconds=30))
    if await deps.backlog.behind(order_id):
        metrics.DEADLINES_POSTPONED.inc()
        await deps.timers.set(kind=DEADLINE, key=order_id, due_at=retry_at)
        return
    if not domain.deadline_cancels(order):
        # The goods are moving; only the capture is outstanding and it cannot be cancelled: someone must look.
        metrics.ORDERS_OVERDUE.inc()
        log.error("order overdue after its shipment was scheduled", order_id=order_id, stage=order.stage)
        await deps.timers.set(kind=DEADLINE, key=order_id, due_at=at + deps.deadline)
        return
    # One decision per deadline passed: a deadline moved on by progress is a new one (and a new event id).
    passed = order.deadline_at or at
    cause = Event(
        event_type="DeadlinePassed",
        order_id=order_id,
        occurred_at=at,
        event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"deadline:{order_id}:{passed.isoformat()}"),
    )

    async def step(d: Loaded[Order]) -> Decision:
        if d.state is None:
            raise PermanentError(f"deadline of unknown order {order_id}")
        if not domain.deadline_passed(d.state, at=at) or not domain.deadline_cancels(d.state):
            return d.state, []  # moved on meanwhile: the timer fires again at the new deadline
        return domain.cancel(d.state, cause, "timeout", at=at)

    saved = await deps.orders.handle(cause, step)
    if saved is not None and saved.state is not None and saved.state.reason == "timeout" and saved.state.terminal:
        _record_outcome(order, saved.state)
        log.warning("order cancelled at its deadline", order_id=order_id)
    elif saved is not None and saved.state is not None and not saved.state.terminal:
        await deps.timers.set(kind=DEADLINE, key=order_id, due_at=saved.state.deadline_at or at + deps.deadline)


async def deadline_scanner(deps: Deps, interval: float) -> None:
    """Fire due deadline timers (the timers collection holds only orders in flight, so the scan stays small)."""
    while True:
        for order_id in await deps.timers.due(kind=DEADLINE, at=now()):
            try:
                await on_deadline(order_id, deps)
            except ConcurrentUpdate:
                continue  # something happened to the order meanwhile; the timer fires again
        await asyncio.sleep(interval)
