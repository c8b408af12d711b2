"""Notification rules, pure: one e-mail per outcome of an order, never two, and what it says.

Outcomes: ``order_completed`` (with carrier, tracking number and promised date) and ``order_cancelled`` (with
the reason). Each is claimed (SENDING: the mail, the claimant's process id and a lease) before the mail goes out
and marked SENT or FAILED after, so a redelivery never sends a second mail, and another process waits while the
lease runs. A claim still SENDING after its lease ran out was left by a crash (or by a process that lost its
partition): it is taken over (a write that only one taker wins) and that mail is sent with the same ``Message-ID``.

Two copies never send the same mail at once: a send may only *start* while its whole run (``SEND_TIMEOUT``, which
the mailer enforces: nothing is written to the server after it) still ends ``CLOCK_MARGIN`` before the lease does
(``start_by``). A send that could not start by then -- a claim that waited for a worker, a slow store, retries
through an SMTP outage -- claims the mail anew first (its own claim renewed for at most ``MAX_HOLD``, then let lapse
so another copy may take it), and a process whose claim was taken over meanwhile finds out in that write and sends
nothing. What remains is SMTP's: it has no idempotency key, so a mail handed over whose answer (or whose SENT mark)
was lost is sent again, with the same ``Message-ID`` that lets receiving systems drop the duplicate.
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
from shared.events.order import CancellationReason, OrderCancelled, OrderCompleted

Decision = tuple["Contact", Sequence[EmittedEvent]]

CANCEL_REASONS: dict[CancellationReason, str] = {
    "payment_declined": "your payment was declined",
    "out_of_stock": "an item in your order is out of stock",
    "shipping_failed": "the carrier could not deliver to your address",
    "timeout": "we could not complete it in time",
    "customer_request": "you asked us to cancel it",
}


SMTP_TIMEOUT = timedelta(seconds=4)  # per socket operation (connect, a command, its answer)
SEND_TIMEOUT = timedelta(seconds=10)  # a whole send, connect to the answer to DATA: cut off there by the mailer
CLOCK_MARGIN = timedelta(seconds=5)  # how far the copies' clocks may disagree (NTP keeps them within milliseconds)
# Outlasts a send with the margin to spare: a send starts only while SEND_TIMEOUT + CLOCK_MARGIN of it remain.
CLAIM_LEASE = timedelta(seconds=30)
MAX_HOLD = timedelta(minutes=2)  # a claimant renews its own claim for this long, then lets it lapse for others


class Mail(BaseModel):
    to: str
    subject: str
    body: str
    message_id: str


class Delivery(BaseModel):
    status: Literal["SENDING", "SENT", "FAILED"]
    message_id: str
    at: datetime
    error: str = ""
    claim_id: str = ""
    lease_until: datetime | None = None
    mail: Mail | None = None


class Contact(BaseModel):
    email: str = ""
    name: str = ""
    deliveries: dict[str, Delivery] = {}


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
        why = CANCEL_REASONS[event.reason]
        subject = f"Your order {event.order_id} was cancelled"
        body = (
            f"Hello {contact.name},\n\nYour order {event.order_id} was cancelled: {why}.\n"
            "Any payment taken has been released or refunded.\n"
        )
    return kind, Mail(to=contact.email, subject=subject, body=body, message_id=message_id(event.order_id, kind))


def is_sandbox_bounce(email: str) -> bool:
    return email.lower().endswith("@bounce.test")


class SendCall(BaseModel):
    """A mail this contact has claimed and not yet sent: ``claimant`` is the process holding the claim, and
    ``lease_until`` tells this claim from a later one of the same process (a renewal)."""

    model_config = {"frozen": True}

    kind: NotificationKind
    claimant: str
    lease_until: datetime | None = None


class SendResult(BaseModel):
    """``take_over``: claim the mail anew for the recording process (another's stale claim, or its own renewed)."""

    outcome: Literal["sent", "failed", "take_over"]
    error: str = ""


def pending(contact: Contact | None) -> SendCall | None:
    for kind, d in (contact.deliveries if contact else {}).items():
        if d.status == "SENDING":
            return SendCall.model_validate({"kind": kind, "claimant": d.claim_id, "lease_until": d.lease_until})
    return None


def claim(
    contact: Contact, kind: str, mail: Mail, at: datetime, claim_id: str = "", *, since: datetime | None = None
) -> Contact:
    """Claim ``mail`` for ``claim_id`` with a lease from ``at``; ``since``: when this claimant first claimed it."""
    delivery = Delivery(
        status="SENDING",
        message_id=mail.message_id,
        at=since or at,
        claim_id=claim_id,
        lease_until=at + CLAIM_LEASE,
        mail=mail,
    )
    return contact.model_copy(update={"deliveries": {**contact.deliveries, kind: delivery}})


def notify(contact: Contact | None, event: OrderCompleted | OrderCancelled, *, at: datetime, claimant: str) -> Decision:
    """An outcome to tell the customer: claim its mail (or record a sandbox bounce); once per outcome."""
    contact = contact or Contact()
    kind, mail = compose(contact, event)
    if kind in contact.deliveries or not contact.email:
        return contact, []
    if is_sandbox_bounce(contact.email):
        return record_failed(contact, event, kind, mail, at, "bounced: sandbox address @bounce.test")
    return claim(contact, kind, mail, at, claimant), []


def lease_running(contact: Contact, call: SendCall, at: datetime) -> bool:
    d = contact.deliveries.get(call.kind)
    return d is not None and d.lease_until is not None and at < d.lease_until


def start_by(call: SendCall) -> datetime | None:
    """The last moment a send under this claim may start: cut off after ``SEND_TIMEOUT``, it then ends
    ``CLOCK_MARGIN`` before the lease, so no other process can take the claim over while it runs."""
    return None if call.lease_until is None else call.lease_until - CLOCK_MARGIN - SEND_TIMEOUT


def next_step(contact: Contact, call: SendCall, *, at: datetime, claimant: str) -> Literal["send", "claim", "wait"]:
    """What ``claimant`` does at ``at`` about the pending ``call``: send the mail (its own claim, young enough),
    claim it anew (a lapsed claim, or its own too old to start a send, renewed for up to ``MAX_HOLD``), or wait
    (another's lease runs; or its own, held too long, runs out so that every process may take it over)."""
    deadline = start_by(call)
    if call.claimant == claimant and deadline is not None and at <= deadline:
        return "send"
    if not lease_running(contact, call, at):
        return "claim"
    d = contact.deliveries[call.kind]
    if call.claimant == claimant and at - d.at < MAX_HOLD:
        return "claim"
    return "wait"


def record(
    contact: Contact, call: SendCall, result: SendResult, cause: Event, *, at: datetime, claimant: str
) -> Decision:
    """The mail of ``call`` went out, bounced, or is claimed anew by ``claimant`` (taken over, or renewed)."""
    if pending(contact) != call:
        return contact, []  # already recorded, or claimed again meanwhile (taken over, or renewed)
    d = contact.deliveries[call.kind]
    assert d.mail is not None
    if result.outcome == "take_over":
        since = d.at if d.claim_id == claimant else at  # a renewal counts towards MAX_HOLD from the first claim
        return claim(contact, call.kind, d.mail, at, claimant, since=since), []
    if result.outcome == "failed":
        return record_failed(contact, cause, call.kind, d.mail, at, result.error)
    return record_sent(contact, cause, call.kind, d.mail, at)


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
