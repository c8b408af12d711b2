"""Payment service handlers.

Consumes: order.events (OrderAccepted, OrderCancelled), shipping.events (ShipmentScheduled),
          payment.notifications (ProviderNotified: what the notify endpoints verified)
Produces: payment.events (PaymentActionRequired, PaymentAuthorized, PaymentDeclined, PaymentCaptured, PaymentVoided,
          PaymentRefunded)
Timers: a risk-review hold ending; the next check of a trade or refund at its provider (``check_at_provider``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from services.payment import domain
from services.payment.domain import Decision, GatewayResult, Observation, Payment
from services.payment.gateway import PaymentGateway
from services.payment.provider import PaymentProvider, ProviderRefused
from services.payment.store import PaymentStore
from shared import metrics
from shared.consumer import HandlerRegistry, NotYet, PermanentError
from shared.events.base import Event, now, timer_cause
from shared.events.order import OrderAccepted, OrderCancelled
from shared.events.payment import ProviderNotified
from shared.events.shipping import ShipmentScheduled
from shared.mongo import Loaded, Timers
from shared.unit_of_work import UnitOfWork

log = structlog.get_logger(__name__)
handlers = HandlerRegistry()
REVIEW = "review"
CHECK = "provider-check"


@dataclass
class Deps:
    payments: UnitOfWork[Payment]
    store: PaymentStore
    timers: Timers
    gateway: PaymentGateway
    review_hold: timedelta
    providers: dict[str, PaymentProvider] = field(default_factory=dict)
    methods: dict[str, str] = field(default_factory=dict)  # payment method -> provider name
    trade_expiry: timedelta = timedelta(minutes=15)
    check_interval: timedelta = timedelta(seconds=30)


def refund_no(order_id: str) -> str:
    """The refund's request number: one per order, the same on every retry (the provider refunds it once)."""
    return f"{order_id[:62]}-R"


@dataclass
class ProviderCalls:
    """The payment's side effects: the provider call its state intends, made with the order's idempotency key
    (at a provider's cashier: the order id is the trade's ``out_trade_no``, the refund has :func:`refund_no`)."""

    gateway: PaymentGateway
    review_hold: timedelta
    providers: dict[str, PaymentProvider] = field(default_factory=dict)
    check_interval: timedelta = timedelta(seconds=30)

    def pending(self, state: Payment | None) -> domain.Call | None:
        return domain.pending(state)

    async def perform(self, order_id: str, payment: Payment, call: domain.Call) -> GatewayResult:
        if payment.settled:
            return await self._at_provider(order_id, payment, call)
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

    async def _at_provider(self, order_id: str, payment: Payment, call: domain.Call) -> GatewayResult:
        provider = self.providers.get(payment.provider)
        if call.operation == "authorize" and (reason := domain.refused_before_create(order_id, payment, provider)):
            return GatewayResult(outcome="declined", reason=reason)
        if provider is None:
            raise PermanentError(f"payment provider {payment.provider!r} is not configured: cannot {call.operation}")
        if call.operation == "authorize":
            assert payment.expires_at is not None
            try:
                checkout = await provider.create(
                    order_id=order_id,
                    amount=payment.amount,
                    subject=payment.subject,
                    channel=payment.channel,
                    expires_at=payment.expires_at,
                    openid=payment.openid,
                    return_url=payment.return_url,
                )
            except ProviderRefused as e:
                log.warning("provider refused the trade", order_id=order_id, provider=provider.name, code=e.code)
                return GatewayResult(outcome="declined", reason=f"provider_refused:{e.code}")
            if checkout.pay_url or checkout.code_url or checkout.jsapi:
                return GatewayResult(
                    outcome="created", pay_url=checkout.pay_url, code_url=checkout.code_url, jsapi=checkout.jsapi
                )
            trade = await provider.query(order_id=order_id)  # nothing to show: the customer paid already
            return GatewayResult(outcome="paid" if trade.status == "paid" else "created", reference=trade.trade_no)
        if call.operation == "void":
            trade = await provider.close(order_id=order_id)
            return GatewayResult(outcome="paid" if trade.status == "paid" else "closed", reference=trade.trade_no)
        if call.operation == "refund":
            number = refund_no(order_id)
            try:
                refund = await provider.refund(
                    order_id=order_id, refund_no=number, amount=payment.amount, total=payment.amount
                )
            except ProviderRefused as e:
                metrics.PAYMENT_ALERTS.labels(provider.name, "refund_refused").inc()
                log.error("provider refused a refund: money is held", order_id=order_id, code=e.code, error=str(e))
                raise PermanentError(f"refund refused by {provider.name}: {e}") from None
            if refund.status == "failed":
                metrics.PAYMENT_ALERTS.labels(provider.name, "refund_failed").inc()
                raise PermanentError(f"refund {number} failed at {provider.name}: money is held, see the runbook")
            outcome = "approved" if refund.status == "refunded" else "pending"
            return GatewayResult(outcome=outcome, reference=refund.refund_id or number)
        raise PermanentError(f"no {call.operation} call for a payment taken at the provider's cashier")

    def record(self, state: Payment, call: domain.Call, result: GatewayResult, cause: Event) -> Decision:
        return domain.record(
            state, call, result, cause, at=now(), review_hold=self.review_hold, check_interval=self.check_interval
        )


@handlers.on(OrderAccepted)
async def authorize_on_order_accepted(event: OrderAccepted, deps: Deps) -> None:
    async def step(doc: Loaded[Payment]) -> Decision:
        return domain.authorize(event, doc.state, at=now(), providers=deps.methods, trade_expiry=deps.trade_expiry), []

    await deps.payments.handle(event, step)


@handlers.on(ShipmentScheduled)
async def capture_on_shipment_scheduled(event: ShipmentScheduled, deps: Deps) -> None:
    async def step(doc: Loaded[Payment]) -> Decision:
        if domain.authorization_pending(doc.state):
            raise NotYet(f"capture of {event.order_id} before its authorisation")
        return domain.capture(doc.state, event)

    await deps.payments.handle(event, step)


@handlers.on(OrderCancelled)
async def compensate_on_order_cancelled(event: OrderCancelled, deps: Deps) -> None:
    async def step(doc: Loaded[Payment]) -> Decision:
        return domain.cancel(doc.state), []

    await deps.payments.handle(event, step)


async def finish_review(order_id: str, deps: Deps) -> None:
    """A risk-review hold ended: authorise (after review), unless the order was cancelled meanwhile."""
    cause = timer_cause("ReviewHoldEnded", order_id=order_id, firing=f"review:{order_id}")

    async def step(doc: Loaded[Payment]) -> Decision:
        if doc.state is None:
            return Payment(status="CANCELLED"), []
        return domain.claim_review(doc.state, at=now()) or doc.state, []

    saved = await deps.payments.handle(cause, step)
    payment = saved.state if saved is not None else (await deps.store.read(order_id=order_id)).state
    if payment is None or payment.status not in ("REVIEW", "AUTHORIZING"):
        await deps.timers.clear(kind=REVIEW, key=order_id)
    log.info("risk review finished", order_id=order_id, status=payment.status if payment else None)


@handlers.on(ProviderNotified)
async def record_provider_notification(event: ProviderNotified, deps: Deps) -> None:
    """A verified notification: the money was taken, or a refund finished. A report that does not match our record
    (another merchant, another amount) is never acted on: an alert, and the record goes to the dead letters."""
    provider = deps.providers.get(event.provider)
    seen = Observation(
        kind=event.kind, status=event.status, trade_no=event.trade_no, refund_no=event.refund_no, amount=event.amount
    )

    async def step(doc: Loaded[Payment]) -> Decision:
        if doc.state is None or (doc.state.status == "AUTHORIZING" and seen.status == "paid"):
            raise NotYet(f"{event.provider} notification for {event.order_id} before its trade was recorded")
        ours = provider.merchant if provider is not None else ""
        if problem := domain.mismatch(doc.state, seen, merchant=event.merchant, ours=ours):
            metrics.PAYMENT_ALERTS.labels(event.provider, "notification_mismatch").inc()
            log.error("provider notification does not match our record", order_id=event.order_id, problem=problem)
            raise PermanentError(f"notification does not match the payment: {problem}")
        return domain.observe(doc.state, seen, event, at=now())

    await deps.payments.handle(event, step)


async def check_at_provider(order_id: str, deps: Deps) -> None:
    """Ask the provider about a trade awaiting payment or a refund in process: a notification may be lost, and a
    trade whose time is up is closed (a payment found then still goes through)."""
    doc = await deps.store.read(order_id=order_id)
    payment = doc.state
    provider = deps.providers.get(payment.provider) if payment is not None else None
    if payment is None or provider is None or payment.status not in ("AWAITING_PAYMENT", "REFUND_PENDING"):
        if payment is not None and payment.last_check:
            # Moved on, maybe by a check whose publish failed: a timer's cause is never redelivered by Kafka, so
            # what it emitted goes out again before the timer is cleared (duplicates carry the same event_id).
            await deps.payments.publish(doc.emitted_by(payment.last_check))
        await deps.timers.clear(kind=CHECK, key=order_id)
        return
    if payment.status == "AWAITING_PAYMENT":
        trade = await provider.query(order_id=order_id)
        seen = Observation(kind="trade", status=trade.status, trade_no=trade.trade_no, amount=trade.amount)
    else:
        refund = await provider.query_refund(order_id=order_id, refund_no=refund_no(order_id))
        status = {"refunded": "refunded", "failed": "refund_failed"}.get(refund.status, "refund_processing")
        seen = Observation(kind="refund", status=status, amount=refund.amount)
    cause = timer_cause(
        "ProviderChecked", order_id=order_id, firing=f"check:{order_id}:{payment.status}:{payment.checks}"
    )

    async def step(doc: Loaded[Payment]) -> Decision:
        if doc.state is None:  # not in this process's cache (a restart): the unit of work reads it and asks again
            raise NotYet(f"payment {order_id} not loaded yet")
        at = now()
        if problem := domain.mismatch(doc.state, seen, merchant=provider.merchant, ours=provider.merchant):
            metrics.PAYMENT_ALERTS.labels(provider.name, "query_mismatch").inc()
            log.error("provider's trade does not match our record", order_id=order_id, problem=problem)
            return domain.next_check(doc.state, at=at, interval=deps.check_interval), []
        state, emitted = domain.observe(doc.state, seen, cause, at=at)
        if state is doc.state:
            state = domain.expire(doc.state, at=at) or domain.next_check(doc.state, at=at, interval=deps.check_interval)
        return state.model_copy(update={"last_check": str(cause.event_id)}), emitted

    await deps.payments.handle(cause, step)


def payment_timers(payment: Payment) -> dict[str, datetime | None]:
    """A review hold has a timer until its authorisation is answered (so a crash mid-call is picked up again); a
    trade awaiting payment or a refund in process has one for its next check at the provider."""
    review = payment.review_until if payment.status in ("REVIEW", "AUTHORIZING") else None
    check = payment.check_at if payment.status in ("AWAITING_PAYMENT", "REFUND_PENDING") else None
    return {REVIEW: review, CHECK: check}
