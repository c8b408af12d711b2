"""Payment service handlers.

Consumes: order.events (OrderAccepted, OrderCancelled), shipping.events (ShipmentScheduled)
Produces: payment.events (PaymentAuthorized, PaymentDeclined, PaymentCaptured, PaymentVoided, PaymentRefunded)
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from services.payment import domain
from services.payment.domain import Decision, GatewayResult, Payment
from services.payment.gateway import PaymentGateway
from services.payment.store import PaymentStore
from shared.consumer import HandlerRegistry, NotYet
from shared.events.base import Event, now
from shared.events.order import OrderAccepted, OrderCancelled
from shared.events.shipping import ShipmentScheduled
from shared.mongo import Loaded, Timers
from shared.unit_of_work import Aggregates

log = structlog.get_logger(__name__)
handlers = HandlerRegistry()
REVIEW = "review"


@dataclass
class Deps:
    payments: Aggregates[Payment]
    store: PaymentStore
    timers: Timers
    gateway: PaymentGateway
    review_hold: timedelta


@dataclass
class ProviderCalls:
    """The payment's side effects: the provider call its state intends, made with the order's idempotency key."""

    gateway: PaymentGateway
    review_hold: timedelta

    def pending(self, state: Payment | None) -> domain.Call | None:
        return domain.pending(state)

    async def perform(self, order_id: str, payment: Payment, call: domain.Call) -> GatewayResult:
        key = f"{order_id}:{call.operation}"
        if call.operation == "authorize":
            return await self.gateway.authorize(
                idempotency_key=key,
                order_id=order_id,
                method=payment.method,
                token=payment.token,
                amount=payment.amount,
                currency=payment.currency,
                after_review=call.after_review,
            )
        if call.operation == "capture":
            ref = await self.gateway.capture(
                idempotency_key=key, order_id=order_id, authorization_id=payment.authorization_id, amount=payment.amount
            )
        elif call.operation == "void":
            ref = await self.gateway.void(
                idempotency_key=key, order_id=order_id, authorization_id=payment.authorization_id
            )
        else:
            ref = await self.gateway.refund(
                idempotency_key=key, order_id=order_id, capture_id=payment.capture_id, amount=payment.amount
            )
        return GatewayResult(outcome="approved", reference=ref)

    def record(self, state: Payment, call: domain.Call, result: GatewayResult, cause: Event) -> Decision:
        return domain.record(state, call, result, cause, at=now(), review_hold=self.review_hold)


@handlers.on(OrderAccepted)
async def authorize_on_order_accepted(event: OrderAccepted, deps: Deps) -> None:
    async def step(doc: Loaded[Payment]) -> Decision:
        return domain.authorize(event, doc.state), []

    await deps.payments.handle(event, step)


@handlers.on(ShipmentScheduled)
async def capture_on_shipment_scheduled(event: ShipmentScheduled, deps: Deps) -> None:
    async def step(doc: Loaded[Payment]) -> Decision:
        if domain.authorization_pending(doc.state):
            raise NotYet(f"capture of {event.order_id} before its authorisation")
        return domain.capture(doc.state) or Payment(), []

    await deps.payments.handle(event, step)


@handlers.on(OrderCancelled)
async def compensate_on_order_cancelled(event: OrderCancelled, deps: Deps) -> None:
    async def step(doc: Loaded[Payment]) -> Decision:
        return domain.cancel(doc.state), []

    await deps.payments.handle(event, step)


async def finish_review(order_id: str, deps: Deps) -> None:
    """A risk-review hold ended: authorise (after review), unless the order was cancelled meanwhile."""
    cause = Event(
        event_type="ReviewHoldEnded",
        event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"review:{order_id}"),
        order_id=order_id,
        occurred_at=now(),
    )

    async def step(doc: Loaded[Payment]) -> Decision:
        if doc.state is None:
            return Payment(status="CANCELLED"), []
        return domain.claim_review(doc.state, at=now()) or doc.state, []

    saved = await deps.payments.handle(cause, step)
    payment = saved.state if saved is not None else (await deps.store.read(order_id=order_id)).state
    if payment is None or payment.status not in ("REVIEW", "AUTHORIZING"):
        await deps.timers.clear(kind=REVIEW, key=order_id)
    log.info("risk review finished", order_id=order_id, status=payment.status if payment else None)


def review_timer(payment: Payment) -> dict[str, datetime | None]:
    """A review hold has a timer until its authorisation is answered (so a crash mid-call is picked up again)."""
    if payment.status in ("REVIEW", "AUTHORIZING") and payment.review_until is not None:
        return {REVIEW: payment.review_until}
    return {REVIEW: None}


async def review_scanner(deps: Deps, interval: float = 1.0) -> None:
    """Finish due reviews; one failing review is logged and retried on the next tick, never blocks the others."""
    while True:
        for order_id in await deps.timers.due(kind=REVIEW, at=now()):
            try:
                await finish_review(order_id, deps)
            except Exception as e:
                log.warning("risk review not finished, will retry", order_id=order_id, error=f"{type(e).__name__}: {e}")
        await asyncio.sleep(interval)
