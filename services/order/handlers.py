"""Order service handlers.

Consumes: storefront.orders (OrderPlaced, OrderCancellationRequested), payment.events, inventory.events,
          shipping.events, notify.events (every event: the order keeps the saga's history)
Produces: order.events (OrderAccepted, OrderRejected, OrderAwaitingPayment, OrderCompleted, OrderCancelled,
          OrderCancellationRefused)
"""

from __future__ import annotations

import asyncio
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
from shared.events.base import Event, now, timer_cause
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
from shared.events.shipping import (
    ShipmentCancelled,
    ShipmentFailed,
    ShipmentIntercepted,
    ShipmentScheduled,
    ShipmentTracked,
)
from shared.events.storefront import OrderCancellationRequested, OrderPlaced
from shared.mongo import ConcurrentUpdate, Loaded, Timers
from shared.outbox import OutboxRecord
from shared.unit_of_work import UnitOfWork

log = structlog.get_logger(__name__)
handlers = HandlerRegistry()


@dataclass
class Deps:
    orders: UnitOfWork[Order]
    store: OrderStore
    timers: Timers
    backlog: Backlog
    deadline: timedelta
    # How long past its deadline an order may wait while the saga's queues hold a record of it (None: that many
    # deadlines, MAX_POSTPONE_DEADLINES). Past it the order is cancelled all the same, with an error logged.
    max_postpone: timedelta | None = None

    @property
    def postpone_limit(self) -> timedelta:
        return self.max_postpone if self.max_postpone is not None else MAX_POSTPONE_DEADLINES * self.deadline


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
        if not domain.cancellation_settled(doc.state):
            await earlier_facts_read(event, deps)
        before[0] = doc.state
        return domain.request_cancellation(doc.state, event, event.reason, at=now())

    saved = await deps.orders.handle(event, step)
    _record_outcome(before[0], saved.state if saved else None)


async def earlier_facts_read(event: Event, deps: Deps) -> None:
    """NotYet while a fact of the order that occurred before ``event`` is still to be read. A re-read (restore,
    rewind) reads the topics side by side and may bring a request before the delivery that preceded it; answered
    then, it would cancel (refund, recall) an order it refused the first time."""
    earlier = await deps.backlog.unread_before(event.order_id, before=event.occurred_at)
    if earlier is None:
        raise NotYet(f"{event.event_type}: cannot tell whether facts of order {event.order_id} before it are unread")
    if earlier:
        # Handled is not yet committed (a partition's offset trails its oldest unfinished record): the order's
        # inbox says, read exactly -- another copy may have handled them.
        handled = await deps.store.read(order_id=event.order_id)
        unread = [e for e in earlier if not handled.seen(e)]
        if unread:
            raise NotYet(f"{event.event_type}: {len(unread)} facts of order {event.order_id} before it are unread")


@handlers.on(PaymentActionRequired)
@handlers.on(PaymentAuthorized)
@handlers.on(PaymentDeclined)
@handlers.on(PaymentCaptured)
@handlers.on(PaymentVoided)
@handlers.on(PaymentRefunded)
@handlers.on(StockReserved)
@handlers.on(StockUnavailable)
@handlers.on(StockReleased)
@handlers.on(ShipmentScheduled)
@handlers.on(ShipmentFailed)
@handlers.on(ShipmentCancelled)
@handlers.on(ShipmentIntercepted)
@handlers.on(ShipmentTracked)
@handlers.on(NotificationSent)
@handlers.on(NotificationFailed)
async def track_progress(event: Event, deps: Deps) -> None:
    """What the payment, inventory, shipping and notify services report moves the order on (domain.progress)."""
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


DEADLINE = "deadline"
MAX_POSTPONE_DEADLINES = 4
ENDINGS = ("OrderCancelled", "OrderCompleted", "OrderRejected")


def deadline_timer(deadline: timedelta) -> Callable[[Order], dict[str, datetime | None]]:
    """Every order not yet terminal has a deadline timer, set once at acceptance; when it fires before the
    order's (moving) ``deadline_at``, ``on_deadline`` moves it on."""

    def timers_of(order: Order) -> dict[str, datetime | None]:
        if order.terminal or order.accepted_at is None:
            return {DEADLINE: None}
        return {DEADLINE: order.accepted_at + deadline}

    return timers_of


def ending_records(doc: Loaded[Order]) -> list[OutboxRecord]:
    """What the write that ended the order emitted, as far as the document still carries it (records Kafka
    acknowledged are not carried on): every record of the cause whose OrderCancelled, OrderCompleted or
    OrderRejected ended it."""
    order = doc.state
    if order is None or not order.terminal:
        return []
    ended_by = {h.event_id for h in order.history if h.event_type in ENDINGS}
    causes = {r.cause for r in doc.outbox if r.event_id in ended_by}
    return [r for r in doc.outbox if r.cause in causes]


async def on_deadline(order_id: str, deps: Deps) -> None:
    """The deadline timer fired: cancel an order whose saga made no progress for the deadline, unless a record that
    could move it is still waiting in a queue (then we are behind, not the saga: look again later -- for at most
    ``deps.postpone_limit`` past the deadline)."""
    at = now()
    doc = await deps.store.read(order_id=order_id)
    order = doc.state
    if order is None or order.terminal:
        # The timer goes only once what ended the order is published: the state may have been written while its
        # events were not (Kafka refused them, the store's reply was lost), and nothing redelivers a timer's cause.
        # Raises if Kafka does not take them: the timer stays and fires again.
        records = ending_records(doc)
        await deps.orders.publish(records)
        deps.store.acknowledged(records)
        await deps.timers.clear(kind=DEADLINE, key=order_id)
        return
    if order.deadline_at is not None and order.deadline_at > at:
        await deps.timers.set(kind=DEADLINE, key=order_id, due_at=order.deadline_at)
        return
    # One decision per deadline passed: a deadline moved on by progress is a new one (and a new event id).
    passed = order.deadline_at or at
    retry_at = at + min(deps.deadline / 4, timedelta(seconds=30))
    held_back = False
    if await deps.backlog.behind(order_id):
        limit = passed + deps.postpone_limit
        if at < limit:
            metrics.DEADLINES_POSTPONED.inc()
            await deps.timers.set(kind=DEADLINE, key=order_id, due_at=min(retry_at, limit))
            return
        # Behind for longer than any burst or outage should last: a record of it is held for good (a lane that
        # holds a record, a step set aside). Waiting on would keep its payment hold and stock and tell no one.
        held_back = True
    if not domain.deadline_cancels(order):
        # The goods are moving; only the capture is outstanding and it cannot be cancelled: someone must look.
        metrics.ORDERS_OVERDUE.inc()
        log.error("order overdue after its shipment was scheduled", order_id=order_id, stage=order.stage)
        await deps.timers.set(kind=DEADLINE, key=order_id, due_at=at + deps.deadline)
        return
    cause = timer_cause("DeadlinePassed", order_id=order_id, firing=f"deadline:{order_id}:{passed.isoformat()}", at=at)

    async def step(d: Loaded[Order]) -> Decision:
        if d.state is None:
            raise PermanentError(f"deadline of unknown order {order_id}")
        if not domain.deadline_passed(d.state, at=at) or not domain.deadline_cancels(d.state):
            return d.state, []  # moved on meanwhile: the timer fires again at the new deadline
        return domain.cancel(d.state, cause, "timeout", at=at)

    saved = await deps.orders.handle(cause, step)
    if saved is not None and saved.state is not None and saved.state.reason == "timeout" and saved.state.terminal:
        _record_outcome(order, saved.state)
        if held_back:
            metrics.DEADLINES_FORCED.inc()
            log.error(
                "order cancelled at its deadline although the saga's queues still hold a record of it",
                order_id=order_id,
                stage=order.stage,
                postponed_seconds=round((at - passed).total_seconds(), 1),
            )
        else:
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
            except Exception as e:
                # Kafka refused the records, the store did not answer: the timer stays and fires again, and the
                # other orders due are not held up by this one.
                log.warning(
                    "deadline fired without effect, will retry", order_id=order_id, error=f"{type(e).__name__}: {e}"
                )
        await asyncio.sleep(interval)
