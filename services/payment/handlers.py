"""Payment service handlers.

Consumes: order.events (OrderAccepted, OrderCancelled), shipping.events (ShipmentScheduled)
Produces: payment.events (PaymentAuthorized, PaymentDeclined, PaymentCaptured, PaymentVoided, PaymentRefunded)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import structlog

from services.payment import domain
from services.payment.domain import Payment
from services.payment.gateway import PaymentGateway
from services.payment.store import PaymentStore
from shared.consumer import Busy, HandlerRegistry
from shared.events.base import EmittedEvent, Event, now
from shared.events.order import OrderAccepted, OrderCancelled
from shared.events.shipping import ShipmentScheduled
from shared.inbox import Aggregates
from shared.mongo import ConcurrentUpdate, Loaded

log = structlog.get_logger(__name__)
handlers = HandlerRegistry()


@dataclass
class Deps:
    payments: Aggregates[Payment]
    store: PaymentStore
    gateway: PaymentGateway
    review_hold: timedelta


@handlers.on(OrderAccepted)
async def authorize_on_order_accepted(event: OrderAccepted, deps: Deps) -> None:
    async def step(doc: Loaded[Payment]) -> tuple[Payment, Sequence[EmittedEvent]]:
        if not domain.needs_authorization(doc.state):
            return doc.state or domain.start(event), []
        payment = domain.start(event)
        result = await deps.gateway.authorize(
            idempotency_key=f"{event.order_id}:authorize",
            order_id=event.order_id,
            method=payment.method,
            token=payment.token,
            amount=payment.amount,
            currency=payment.currency,
        )
        return domain.record_authorization(payment, event, result, at=now(), review_hold=deps.review_hold)

    await deps.payments.handle(event, step)


@handlers.on(ShipmentScheduled)
async def capture_on_shipment_scheduled(event: ShipmentScheduled, deps: Deps) -> None:
    async def step(doc: Loaded[Payment]) -> tuple[Payment, Sequence[EmittedEvent]]:
        payment = doc.state
        if payment is None or not domain.capture_due(payment):
            return payment or Payment(), []
        capture_id = await deps.gateway.capture(
            idempotency_key=f"{event.order_id}:capture",
            order_id=event.order_id,
            authorization_id=payment.authorization_id,
            amount=payment.amount,
        )
        return domain.record_capture(payment, event, capture_id)

    await deps.payments.handle(event, step)


@handlers.on(OrderCancelled)
async def compensate_on_order_cancelled(event: OrderCancelled, deps: Deps) -> None:
    async def step(doc: Loaded[Payment]) -> tuple[Payment, Sequence[EmittedEvent]]:
        action = domain.compensation_for(doc.state)
        if action == "wait":
            raise Busy("authorisation in flight; voiding once it has an answer")
        reference = ""
        if action == "void" and doc.state is not None:
            reference = await deps.gateway.void(
                idempotency_key=f"{event.order_id}:void",
                order_id=event.order_id,
                authorization_id=doc.state.authorization_id,
            )
        elif action == "refund" and doc.state is not None:
            reference = await deps.gateway.refund(
                idempotency_key=f"{event.order_id}:refund",
                order_id=event.order_id,
                capture_id=doc.state.capture_id,
                amount=doc.state.amount,
            )
        return domain.record_compensation(doc.state, event, action, reference)

    await deps.payments.handle(event, step)


async def finish_due_reviews(deps: Deps) -> None:
    """Authorise payments whose risk-review hold has ended, unless the order was cancelled meanwhile."""
    for order_id in await deps.store.due_reviews(at=now()):
        try:
            await _finish_review(order_id, deps)
        except ConcurrentUpdate:
            continue  # a cancellation or another replica got there first; the next scan looks again


async def _finish_review(order_id: str, deps: Deps) -> None:
    doc = await deps.store.load(order_id=order_id)
    if doc.state is None:
        return
    if doc.state.status == "REVIEW":
        claimed = domain.claim_review(doc.state, at=now())
        if claimed is None:
            return
        doc = await deps.payments.save(doc, state=claimed, emitted=[])
    if doc.state is None or doc.state.status != "AUTHORIZING":
        return
    payment = doc.state
    result = await deps.gateway.authorize(
        idempotency_key=f"{order_id}:authorize",
        order_id=order_id,
        method=payment.method,
        token=payment.token,
        amount=payment.amount,
        currency=payment.currency,
        after_review=True,
    )
    cause = Event(
        event_type="OrderAccepted",
        event_id=payment.accepted_event_id,
        order_id=order_id,
        occurred_at=now(),
    )
    state, emitted = domain.record_authorization(payment, cause, result, at=now(), review_hold=deps.review_hold)
    await deps.payments.save(doc, state=state, emitted=emitted)
    log.info("risk review finished", order_id=order_id, outcome=result.outcome)


async def review_scanner(deps: Deps, interval: float = 2.0) -> None:
    while True:
        await finish_due_reviews(deps)
        await asyncio.sleep(interval)
