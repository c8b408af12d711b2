"""Notify on the real store, Kafka and SMTP sink: one e-mail per outcome of an order, never two, and a bounce
recorded as a failed notification without a mail."""

from __future__ import annotations

import asyncio
import time
from datetime import date, datetime
from decimal import Decimal
from typing import cast

import pytest

from services.conftest import Mailbox, Rig, new_order_id
from services.notify.domain import CLAIM_LEASE, Mail, message_id
from services.notify.handlers import Deps, Mails
from services.notify.mailer import SmtpMailer
from services.notify.tests.doubles import HeldMailer
from shared.events.notify import NotificationFailed, NotificationSent
from shared.events.order import OrderAccepted, OrderCancelled, OrderCompleted, ShipmentInfo
from shared.runtime import Service
from tests.unit.factories import ORDER_PLACED, order_accepted, order_placed

pytestmark = pytest.mark.infra


@pytest.fixture(scope="module")
def deps(rig: Rig) -> Deps:
    """As services/notify/app.py wires them (on the test database and topic, mailing the stack's sink)."""
    built: Deps = rig.deps
    return built


def mails_of(instance: Service) -> Mails:
    """The instance's side effect (sending the claimed mail), to give it another mailer."""
    return cast(Mails, instance.deps.contacts.effects)


def accepted(order_id: str, email: str) -> OrderAccepted:
    return order_accepted(order_placed(order_id=order_id, customer={**ORDER_PLACED["customer"], "email": email}))


def completed(cause: OrderAccepted) -> OrderCompleted:
    shipment = ShipmentInfo(carrier="SF Express", tracking_number="SF000000000042", promised_date=date(2026, 11, 26))
    event: OrderCompleted = OrderCompleted.caused_by(cause, total=Decimal("79.80"), currency="CNY", shipment=shipment)
    return event


async def test_completed_order_gets_exactly_one_mail_however_often_it_is_told(
    rig: Rig, deps: Deps, mailbox: Mailbox
) -> None:
    order_id = new_order_id()
    email = f"{order_id.lower()}@example.com"
    event = accepted(order_id, email)
    assert await rig.deliver(deps, event) == []
    assert await mailbox.to(email) == []  # acceptance alone sends nothing

    done = completed(event)
    record = rig.record(done)
    assert await rig.handle(deps, record) == []
    assert await rig.handle(deps, record) == []  # the same record delivered again
    assert await rig.deliver(deps, completed(event)) == []  # the same fact under a new event_id

    mails = await mailbox.to(email)
    assert len(mails) == 1
    assert mails[0]["Subject"] == f"Your order {order_id} is on its way"
    assert mails[0]["MessageID"] == message_id(order_id, "order_completed")
    published = await rig.events(order_id)
    # The redelivered record publishes its event again (same event_id); the new event_id decides nothing new.
    assert {e.event_id for e in published} == {published[0].event_id}
    sent = published[0]
    assert isinstance(sent, NotificationSent)
    assert (sent.kind, sent.message_id, sent.causation_id) == ("order_completed", mails[0]["MessageID"], done.event_id)


async def test_cancelled_order_gets_one_cancellation_mail(rig: Rig, deps: Deps, mailbox: Mailbox) -> None:
    order_id = new_order_id()
    email = f"{order_id.lower()}@example.com"
    event = accepted(order_id, email)
    assert await rig.deliver(deps, event) == []

    assert await rig.deliver(deps, OrderCancelled.caused_by(event, reason="out_of_stock")) == []
    assert await rig.deliver(deps, OrderCancelled.caused_by(event, reason="out_of_stock")) == []

    mails = await mailbox.to(email)
    assert [m["Subject"] for m in mails] == [f"Your order {order_id} was cancelled"]
    assert await rig.distinct_events(order_id) == ["NotificationSent"]


class SlowSmtpMailer(SmtpMailer):
    """The real mailer whose SMTP hand-off is slow, so a second delivery arrives while it is in flight."""

    async def send(self, mail: Mail, *, order_id: str, start_by: datetime | None = None) -> None:
        await asyncio.sleep(0.3)
        await super().send(mail, order_id=order_id, start_by=start_by)


async def test_same_completion_handled_twice_at_once_sends_one_mail(rig: Rig, deps: Deps, mailbox: Mailbox) -> None:
    # Two replicas holding the same record at once: a rebalance hands the partition to a second process while the
    # first is still sending. The first one's SENDING claim makes the second wait (Busy) instead of mailing again.
    first, second = await rig.replica(), await rig.replica()
    real = mails_of(first).mailer
    mails_of(first).mailer = SlowSmtpMailer(
        host=real.host, port=real.port, sender=real.sender, starttls=False, username="", password=""
    )
    order_id = new_order_id()
    email = f"{order_id.lower()}@example.com"
    event = accepted(order_id, email)
    assert await rig.on(first, event) == []
    record = rig.record(completed(event))

    async def second_replica() -> list[dict[str, str]]:
        await asyncio.sleep(0.1)  # after the first claimed the mail, before its SMTP hand-off returns
        return await rig.on(second, record)

    started = time.monotonic()
    results = await asyncio.gather(rig.on(first, record), second_replica())

    assert list(results) == [[], []]
    # The second waited for the claim to settle, not for its lease to run out.
    assert time.monotonic() - started < CLAIM_LEASE.total_seconds() / 4
    mails = await mailbox.to(email)
    assert len(mails) == 1, f"{len(mails)} mails for one completed order"
    assert await rig.distinct_events(order_id) == ["NotificationSent"]


async def test_a_mail_is_claimed_only_once_a_worker_is_free_to_send_it(rig: Rig, mailbox: Mailbox) -> None:
    # The lease counts from the claim, so a claim must not then wait in a queue for a thread: the handler takes a
    # worker first and claims after. Here the one worker is busy with another order's mail.
    instance = await rig.replica()
    held = HeldMailer(mailbox.host, mailbox.port, senders=1)
    mails_of(instance).mailer = held
    busy, waiting = accepted(new_order_id(), "busy@example.com"), accepted(new_order_id(), "waiting@example.com")
    for event in (busy, waiting):
        assert await rig.on(instance, event) == []

    first = asyncio.create_task(rig.on(instance, completed(busy)))
    await asyncio.to_thread(held.reached.wait, 5)  # the worker holds the first mail
    second = asyncio.create_task(rig.on(instance, completed(waiting)))
    await asyncio.sleep(0.3)
    doc = await rig.deps.contacts.store.read(order_id=waiting.order_id)
    assert doc.state is not None
    assert doc.state.deliveries == {}, "claimed while no worker was free to send it"

    held.go.set()
    assert list(await asyncio.wait_for(asyncio.gather(first, second), 10)) == [[], []]
    assert [len(await mailbox.to(e.customer.email)) for e in (busy, waiting)] == [1, 1]


async def test_bounce_address_is_recorded_as_failed_and_gets_no_mail(rig: Rig, deps: Deps, mailbox: Mailbox) -> None:
    order_id = new_order_id()
    email = f"{order_id.lower()}@bounce.test"
    event = accepted(order_id, email)
    assert await rig.deliver(deps, event) == []

    assert await rig.deliver(deps, completed(event)) == []
    assert await rig.deliver(deps, completed(event)) == []  # settled: not tried again

    assert await mailbox.to(email) == []
    published = await rig.events(order_id)
    assert len(published) == 1
    failed = published[0]
    assert isinstance(failed, NotificationFailed)
    assert failed.kind == "order_completed"
    assert "bounce" in failed.error
    doc = await deps.contacts.store.load(order_id=order_id)
    assert doc.state is not None
    assert doc.state.deliveries["order_completed"].status == "FAILED"
