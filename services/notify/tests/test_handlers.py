"""Each notify handler on the in-memory store and broker, mailing through a recording mailer: no server."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.notify.domain import Contact, claim, compose, message_id
from services.notify.handlers import (
    CLAIMANT,
    Deps,
    Mails,
    email_on_order_cancelled,
    email_on_order_completed,
    handlers,
    remember_contact_on_order_accepted,
)
from services.notify.store import ContactStore
from services.notify.tests.doubles import RecordingMailer
from shared import topics
from shared.consumer import Busy
from shared.events.base import now
from shared.events.notify import NotificationFailed, NotificationSent
from shared.fakes import InMemoryBroker, InMemoryDatabase
from shared.unit_of_work import UnitOfWork
from tests.unit.factories import ORDER_ID, order_accepted, order_cancelled, order_completed, order_placed

BOUNCING = "gone@example.com"


@pytest.fixture
def broker() -> InMemoryBroker:
    return InMemoryBroker()


@pytest.fixture
def mailer() -> RecordingMailer:
    return RecordingMailer(bounce=frozenset({BOUNCING}))


@pytest.fixture
def deps(broker: InMemoryBroker, mailer: RecordingMailer) -> Deps:
    """As services/notify/app.py wires them, on an in-memory database and broker."""
    store = ContactStore(InMemoryDatabase().db, "contacts", Contact)
    mails = Mails(mailer)
    return Deps(contacts=UnitOfWork(store, broker, out_topic=topics.NOTIFY_EVENTS, effects=mails), mails=mails)


async def contact(deps: Deps) -> Contact:
    doc = await deps.contacts.store.read(order_id=ORDER_ID)
    assert doc.state is not None
    return doc.state


def test_every_event_the_service_reads_has_its_handler_here() -> None:
    """A handler registered without a test in this module fails here first."""
    assert handlers.handlers == {
        "OrderAccepted": remember_contact_on_order_accepted,
        "OrderCompleted": email_on_order_completed,
        "OrderCancelled": email_on_order_cancelled,
    }
    assert handlers.invalid_handlers == {}


async def test_order_accepted_remembers_whom_to_write_to_and_sends_nothing(
    deps: Deps, broker: InMemoryBroker, mailer: RecordingMailer
) -> None:
    await remember_contact_on_order_accepted(order_accepted(), deps)

    c = await contact(deps)
    assert (c.email, c.name) == ("xm@example.com", "王小明")
    assert mailer.sent == []
    assert broker.records == []


async def test_a_completed_order_is_mailed_once_with_its_message_id_and_announced(
    deps: Deps, broker: InMemoryBroker, mailer: RecordingMailer
) -> None:
    await remember_contact_on_order_accepted(order_accepted(), deps)
    completed = order_completed()

    await email_on_order_completed(completed, deps)
    await email_on_order_completed(completed, deps)  # redelivered

    [(order_id, mail)] = mailer.sent
    assert order_id == ORDER_ID
    # The Message-ID is the send's idempotency key at the receiving end: fixed by order and kind.
    assert mail.message_id == message_id(ORDER_ID, "order_completed")
    assert (mail.to, "SF000000012345" in mail.body) == ("xm@example.com", True)
    assert (await contact(deps)).deliveries["order_completed"].status == "SENT"
    first, again = broker.events(ORDER_ID)
    assert isinstance(first, NotificationSent)
    assert (first.kind, first.message_id) == ("order_completed", mail.message_id)
    assert again.event_id == first.event_id


async def test_a_cancelled_order_is_mailed_with_its_reason(
    deps: Deps, broker: InMemoryBroker, mailer: RecordingMailer
) -> None:
    await remember_contact_on_order_accepted(order_accepted(), deps)

    await email_on_order_cancelled(order_cancelled("out_of_stock"), deps)

    [(_, mail)] = mailer.sent
    assert "out of stock" in mail.body
    assert mail.message_id == message_id(ORDER_ID, "order_cancelled")
    [event] = broker.events(ORDER_ID)
    assert isinstance(event, NotificationSent)
    assert event.kind == "order_cancelled"


async def test_a_bounce_is_recorded_and_announced_as_failed_not_retried(
    deps: Deps, broker: InMemoryBroker, mailer: RecordingMailer
) -> None:
    placed = order_placed()
    customer = placed.customer.model_copy(update={"email": BOUNCING})
    await remember_contact_on_order_accepted(order_accepted(placed.model_copy(update={"customer": customer})), deps)

    await email_on_order_cancelled(order_cancelled("timeout"), deps)

    assert mailer.sent == []
    assert (await contact(deps)).deliveries["order_cancelled"].status == "FAILED"
    [event] = broker.events(ORDER_ID)
    assert isinstance(event, NotificationFailed)
    assert "550" in event.error


async def test_a_mail_another_process_holds_is_waited_for_not_sent_again(
    deps: Deps, broker: InMemoryBroker, mailer: RecordingMailer
) -> None:
    await remember_contact_on_order_accepted(order_accepted(), deps)
    completed = order_completed()
    doc = await deps.contacts.store.load(order_id=ORDER_ID)
    assert doc.state is not None
    kind, mail = compose(doc.state, completed)
    assert CLAIMANT != "another-process"
    held = claim(doc.state, kind, mail, now() - timedelta(seconds=1), "another-process")
    await deps.contacts.store.save(doc, state=held)

    with pytest.raises(Busy):
        await email_on_order_completed(completed, deps)

    assert mailer.sent == []
    assert (await contact(deps)).deliveries[kind].claim_id == "another-process"
    assert broker.records == []
