"""Notify service handlers.

Consumes: order.events (OrderAccepted, OrderCompleted, OrderCancelled)
Produces: notify.events (NotificationSent, NotificationFailed)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from services.notify import domain
from services.notify.domain import Contact, Decision, SendCall, SendResult
from services.notify.mailer import Bounced, SmtpMailer
from shared.consumer import Busy, HandlerRegistry
from shared.events.base import Event, now
from shared.events.order import OrderAccepted, OrderCancelled, OrderCompleted
from shared.mongo import Loaded
from shared.unit_of_work import Aggregates

handlers = HandlerRegistry()
CLAIMANT = uuid.uuid4().hex  # this process: its claims survive its retries, not its death


@dataclass
class Deps:
    contacts: Aggregates[Contact]
    mailer: SmtpMailer


@dataclass
class Mails:
    """The contact's side effect: send the claimed mail -- only by the claimant, or after its lease ran out."""

    mailer: SmtpMailer

    def pending(self, state: Contact | None) -> SendCall | None:
        return domain.pending(state)

    async def perform(self, order_id: str, contact: Contact, call: SendCall) -> SendResult:
        if call.claimant != CLAIMANT:
            if domain.lease_running(contact, call, now()):
                raise Busy(f"{call.kind} mail for {order_id} is being sent by another process")
            return SendResult(outcome="take_over")
        mail = contact.deliveries[call.kind].mail
        assert mail is not None
        try:
            await self.mailer.send(mail, order_id=order_id)
        except Bounced as e:
            return SendResult(outcome="failed", error=str(e))
        return SendResult(outcome="sent")

    def record(self, state: Contact, call: SendCall, result: SendResult, cause: Event) -> Decision:
        return domain.record(state, call, result, cause, at=now(), claimant=CLAIMANT)


@handlers.on(OrderAccepted)
async def remember_contact_on_order_accepted(event: OrderAccepted, deps: Deps) -> None:
    async def step(doc: Loaded[Contact]) -> Decision:
        contact = (doc.state or Contact()).model_copy(
            update={"email": event.customer.email, "name": event.customer.name}
        )
        return contact, []

    await deps.contacts.handle(event, step)


async def _notify(event: OrderCompleted | OrderCancelled, deps: Deps) -> None:
    async def step(doc: Loaded[Contact]) -> Decision:
        return domain.notify(doc.state, event, at=now(), claimant=CLAIMANT)

    await deps.contacts.handle(event, step)


@handlers.on(OrderCompleted)
async def email_on_order_completed(event: OrderCompleted, deps: Deps) -> None:
    await _notify(event, deps)


@handlers.on(OrderCancelled)
async def email_on_order_cancelled(event: OrderCancelled, deps: Deps) -> None:
    await _notify(event, deps)
