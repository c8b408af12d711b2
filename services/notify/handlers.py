"""Notify service handlers.

Consumes: order.events (OrderAccepted, OrderCompleted, OrderCancelled)
Produces: notify.events (NotificationSent, NotificationFailed)
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from services.notify import domain
from services.notify.domain import Contact, Mail
from services.notify.mailer import Bounced, SmtpMailer
from shared.consumer import Busy, HandlerRegistry
from shared.events.base import EmittedEvent, now
from shared.events.order import OrderAccepted, OrderCancelled, OrderCompleted
from shared.inbox import Aggregates
from shared.mongo import Loaded

handlers = HandlerRegistry()
Decision = tuple[Contact, Sequence[EmittedEvent]]


@dataclass
class Deps:
    contacts: Aggregates[Contact]
    mailer: SmtpMailer


@handlers.on(OrderAccepted)
async def remember_contact_on_order_accepted(event: OrderAccepted, deps: Deps) -> None:
    async def step(doc: Loaded[Contact]) -> Decision:
        contact = (doc.state or Contact()).model_copy(
            update={"email": event.customer.email, "name": event.customer.name}
        )
        return contact, []

    await deps.contacts.handle(event, step)


async def _notify(event: OrderCompleted | OrderCancelled, deps: Deps) -> None:
    claim_id = uuid.uuid4().hex
    sent: list[Mail] = []  # set once our SMTP hand-off succeeded: a lost race afterwards must not send again

    async def step(doc: Loaded[Contact]) -> Decision:
        contact = doc.state or Contact()
        kind, mail = domain.compose(contact, event)
        if domain.already_sent(contact, kind) or not contact.email:
            return contact, []
        if sent:
            return domain.record_sent(contact, event, kind, mail, now())
        if domain.is_sandbox_bounce(contact.email):
            return domain.record_failed(contact, event, kind, mail, now(), "bounced: sandbox address @bounce.test")
        if domain.held_by_another(contact, kind, claim_id, now()):
            raise Busy(f"{kind} mail for {event.order_id} is being sent by another worker")
        # Claim first: if we die after the SMTP hand-off, the redelivery sees SENDING, not a clean slate.
        claimed = await deps.contacts.save(doc, state=domain.claim(contact, kind, mail, now(), claim_id), emitted=[])
        doc.version, doc.inbox, doc.outbox = claimed.version, claimed.inbox, claimed.outbox
        try:
            await deps.mailer.send(mail, order_id=event.order_id)
        except Bounced as e:
            return domain.record_failed(contact, event, kind, mail, now(), str(e))
        sent.append(mail)
        return domain.record_sent(contact, event, kind, mail, now())

    await deps.contacts.handle(event, step)


@handlers.on(OrderCompleted)
async def email_on_order_completed(event: OrderCompleted, deps: Deps) -> None:
    await _notify(event, deps)


@handlers.on(OrderCancelled)
async def email_on_order_cancelled(event: OrderCancelled, deps: Deps) -> None:
    await _notify(event, deps)
