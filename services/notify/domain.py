"""Notification rules, pure: one e-mail per outcome of an order, never two, and what it says.

Outcomes: ``order_completed`` (with carrier, tracking number and promised date) and ``order_cancelled`` (with
the reason). Each is claimed (SENDING, with the claimant's id) before the mail goes out and marked SENT or FAILED
after, so a redelivery never sends a second mail, and a second worker waits while a fresh claim is held by another.
A claim older than ``CLAIM_TTL`` was left by a crash and is taken over: that mail is sent again with the same
``Message-ID`` (the one at-least-once window, between the SMTP hand-off and the SENT mark), which lets receiving
systems drop the duplicate.
Sandbox: addresses at ``bounce.test`` bounce (a hard failure, recorded, no retry).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel

from shared.events.base import EmittedEvent, Event
from shared.events.notify import NotificationFailed, NotificationKind, NotificationSent
from shared.events.order import OrderCancelled, OrderCompleted

Decision = tuple["Contact", Sequence[EmittedEvent]]

CANCEL_REASONS = {
    "payment_declined": "your payment was declined",
    "out_of_stock": "an item in your order is out of stock",
    "shipping_failed": "the carrier could not deliver to your address",
    "timeout": "we could not complete it in time",
    "customer_request": "you asked us to cancel it",
}


CLAIM_TTL = timedelta(seconds=10)


class Delivery(BaseModel):
    status: Literal["SENDING", "SENT", "FAILED"]
    message_id: str
    at: datetime
    error: str = ""
    claim_id: str = ""


class Contact(BaseModel):
    email: str = ""
    name: str = ""
    deliveries: dict[str, Delivery] = {}


class Mail(BaseModel):
    to: str
    subject: str
    body: str
    message_id: str


def message_id(order_id: str, kind: str) -> str:
    digest = hashlib.sha256(f"{order_id}:{kind}".encode()).hexdigest()[:24]
    return f"<{digest}.{kind}@fulfil.local>"


def compose(contact: Contact, event: OrderCompleted | OrderCancelled) -> tuple[NotificationKind, Mail]:
    if isinstance(event, OrderCompleted):
        kind: NotificationKind = "order_completed"
        subject = f"Your order {event.order_id} is on its way"
        body = (
            f"Hello {contact.name},\n\nThank you for your order {event.order_id} "
            f"({event.total} {event.currency}).\nIt ships with {event.shipment.carrier}, tracking number "
            f"{event.shipment.tracking_number}, expected on {event.shipment.promised_date.isoformat()}.\n"
        )
    else:
        kind = "order_cancelled"
        why = CANCEL_REASONS.get(event.reason, event.reason)
        subject = f"Your order {event.order_id} was cancelled"
        body = (
            f"Hello {contact.name},\n\nYour order {event.order_id} was cancelled: {why}.\n"
            "Any payment taken has been released or refunded.\n"
        )
    return kind, Mail(to=contact.email, subject=subject, body=body, message_id=message_id(event.order_id, kind))


def already_sent(contact: Contact | None, kind: str) -> bool:
    """SENT or FAILED: this outcome is settled. SENDING means a crash interrupted it, so it is tried again."""
    return contact is not None and kind in contact.deliveries and contact.deliveries[kind].status != "SENDING"


def is_sandbox_bounce(email: str) -> bool:
    return email.lower().endswith("@bounce.test")


def held_by_another(contact: Contact, kind: str, claim_id: str, at: datetime) -> bool:
    """A fresh SENDING claim of someone else: wait rather than send a second mail."""
    d = contact.deliveries.get(kind)
    return d is not None and d.status == "SENDING" and d.claim_id != claim_id and at - d.at < CLAIM_TTL


def claim(contact: Contact, kind: str, mail: Mail, at: datetime, claim_id: str = "") -> Contact:
    delivery = Delivery(status="SENDING", message_id=mail.message_id, at=at, claim_id=claim_id)
    return contact.model_copy(update={"deliveries": {**contact.deliveries, kind: delivery}})


def record_sent(contact: Contact, cause: Event, kind: NotificationKind, mail: Mail, at: datetime) -> Decision:
    return contact.model_copy(
        update={
            "deliveries": {
                **contact.deliveries,
                kind: Delivery(status="SENT", message_id=mail.message_id, at=at),
            },
        }
    ), [NotificationSent.caused_by(cause, kind=kind, message_id=mail.message_id)]


def record_failed(
    contact: Contact, cause: Event, kind: NotificationKind, mail: Mail, at: datetime, error: str
) -> Decision:
    return contact.model_copy(
        update={
            "deliveries": {
                **contact.deliveries,
                kind: Delivery(status="FAILED", message_id=mail.message_id, at=at, error=error),
            },
        }
    ), [NotificationFailed.caused_by(cause, kind=kind, error=error)]
