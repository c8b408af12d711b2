"""Notify service handlers.

Consumes: order.events (OrderAccepted, OrderCompleted, OrderCancelled)
Produces: notify.events (NotificationSent, NotificationFailed)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from services.notify import domain
from services.notify.domain import Contact, Decision, SendCall, SendResult
from services.notify.mailer import Bounced, SmtpMailer, TooLate
from shared.consumer import Busy, HandlerRegistry
from shared.events.base import Event, now
from shared.events.order import OrderAccepted, OrderCancelled, OrderCompleted
from shared.mongo import Loaded
from shared.unit_of_work import UnitOfWork

handlers = HandlerRegistry()
CLAIMANT = uuid.uuid4().hex  # this process: its claims survive its retries, not its death


@dataclass
class Mails:
    """The contact's side effect: send the claimed mail -- only by the claimant, and only while its claim is young
    enough for the send to end before the lease does (else it is claimed anew first)."""

    mailer: SmtpMailer

    def pending(self, state: Contact | None) -> SendCall | None:
        return domain.pending(state)

    async def perform(self, order_id: str, contact: Contact, call: SendCall) -> SendResult:
        step = domain.next_step(contact, call, at=now(), claimant=CLAIMANT)
        if step == "send":
            mail = contact.deliveries[call.kind].mail
            assert mail is not None
            try:
                # start_by is checked again on the worker thread, right before the first byte goes to the server.
                await self.mailer.send(mail, order_id=order_id, start_by=domain.start_by(call))
            except Bounced as e:
                return SendResult(outcome="failed", error=str(e))
            except TooLate:
                step = domain.next_step(contact, call, at=now(), claimant=CLAIMANT)
            else:
                return SendResult(outcome="sent")
        if step == "wait":
            holder = "this process, until its lease ends" if call.claimant == CLAIMANT else "another process"
            raise Busy(f"{call.kind} mail for {order_id} is claimed by {holder}")
        return SendResult(outcome="take_over")  # a claim of our own; the write fails if another took it meanwhile

    def record(self, state: Contact, call: SendCall, result: SendResult, cause: Event) -> Decision:
        return domain.record(state, call, result, cause, at=now(), claimant=CLAIMANT)


@dataclass
class Deps:
    contacts: UnitOfWork[Contact]
    mails: Mails  # the contacts' side effect, also asked for a worker before a mail is claimed


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

    # A worker for the send first, then the claim: its lease counts from (about) when the send starts, not from
    # a place in a queue for a thread.
    async with deps.mails.mailer.slot():
        await deps.contacts.handle(event, step)


@handlers.on(OrderCompleted)
async def email_on_order_completed(event: OrderCompleted, deps: Deps) -> None:
    await _notify(event, deps)


@handlers.on(OrderCancelled)
async def email_on_order_cancelled(event: OrderCancelled, deps: Deps) -> None:
    await _notify(event, deps)
