"""Notify races the SENDING claim settles, with a lease of seconds (``short_lease``).

A process dies holding a fresh claim; two other processes meet it: they wait while its lease runs (Busy), then take
it over -- and only one of them sends the mail. A process whose send is late (it waited for a worker thread, or
retried through an SMTP outage after its partition went to another copy) meets a claim taken over meanwhile: it
sends nothing, so the customer gets one mail, from the process that took the claim over.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from datetime import date, datetime
from decimal import Decimal
from typing import Any, cast

import pytest
from aiokafka import ConsumerRecord

from services.conftest import Mailbox, Pause, Rig, eventually, killed, new_order_id
from services.notify import domain
from services.notify.domain import Mail
from services.notify.handlers import Mails
from services.notify.mailer import SmtpMailer
from services.notify.tests.conftest import Lease
from shared.events.order import OrderAccepted, OrderCompleted, ShipmentInfo
from shared.runtime import Service
from tests.unit.factories import ORDER_PLACED, order_accepted, order_placed

pytestmark = pytest.mark.infra


class HangingMailer(SmtpMailer):
    """A mailer whose process dies mid-send: it reaches ``pause`` and never hands the mail over."""

    def __init__(self, pause: Pause) -> None:
        super().__init__(host="127.0.0.1", port=1, sender="x@example.com", starttls=False, username="", password="")
        self.pause = pause

    async def send(self, mail: Mail, *, order_id: str, start_by: datetime | None = None) -> None:
        await self.pause()


class LateMailer(SmtpMailer):
    """The real mailer whose worker thread gets to the mail ``late_by`` seconds after it was asked to send it: the
    threads were busy with other sends (the queue the issue saw), or the machine stalled."""

    def __init__(self, mailbox: Mailbox, *, late_by: float) -> None:
        super().__init__(
            host=mailbox.host, port=mailbox.port, sender="shop@example.com", starttls=False, username="", password=""
        )
        self.late_by = late_by
        self.waiting = threading.Event()

    def _send_blocking(self, *args: Any, **kwargs: Any) -> None:
        self.waiting.set()
        time.sleep(self.late_by)
        super()._send_blocking(*args, **kwargs)


def mails_of(instance: Service) -> Mails:
    return cast(Mails, instance.deps.contacts.effects)


def unreachable_smtp() -> SmtpMailer:
    """A mailer whose server does not answer (a closed port): every send is an Outage, retried in place."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    return SmtpMailer(host="127.0.0.1", port=port, sender="shop@example.com", starttls=False, username="", password="")


async def accepted_order(rig: Rig, instance: Service) -> tuple[str, OrderAccepted]:
    order_id = new_order_id()
    email = f"{order_id.lower()}@example.com"
    accepted = order_accepted(order_placed(order_id=order_id, customer={**ORDER_PLACED["customer"], "email": email}))
    assert await rig.on(instance, accepted) == []
    return email, accepted


def completed_record(rig: Rig, accepted: OrderAccepted) -> ConsumerRecord[bytes, bytes]:
    shipment = ShipmentInfo(carrier="SF Express", tracking_number="SF000000000077", promised_date=date(2026, 11, 26))
    return rig.record(OrderCompleted.caused_by(accepted, total=Decimal("79.80"), currency="CNY", shipment=shipment))


async def test_fresh_claim_of_a_dead_process_is_waited_out_then_taken_over_once(
    rig: Rig, mailbox: Mailbox, short_lease: Lease
) -> None:
    dead, second, third = await rig.replica(), await rig.replica(), await rig.replica()
    pause = Pause()
    mails_of(dead).mailer = HangingMailer(pause)
    email, accepted = await accepted_order(rig, dead)
    order_id = accepted.order_id
    completed = completed_record(rig, accepted)

    sending = asyncio.create_task(rig.on(dead, completed))
    await asyncio.wait_for(pause.reached.wait(), 10)
    claimed_at = time.monotonic()
    await killed(sending)  # dies holding a fresh SENDING claim

    racers = [asyncio.create_task(rig.on(p, completed)) for p in (second, third)]  # the record comes again
    await asyncio.sleep(short_lease.seconds / 3)
    assert not any(r.done() for r in racers)  # both wait (Busy) while the lease runs
    assert await mailbox.to(email) == []

    results = await asyncio.wait_for(asyncio.gather(*racers), 20)

    assert results == [[], []]
    assert time.monotonic() - claimed_at >= short_lease.seconds * 0.9
    mails = await mailbox.to(email)
    assert len(mails) == 1, f"{len(mails)} mails after two processes took the claim over"
    assert mails[0]["MessageID"] == domain.message_id(order_id, "order_completed")
    assert await rig.distinct_events(order_id) == ["NotificationSent"]


async def test_a_send_that_waited_past_its_lease_for_a_worker_sends_nothing_once_another_copy_took_over(
    rig: Rig, mailbox: Mailbox, short_lease: Lease
) -> None:
    # The first copy claims the mail, but its worker thread gets to it only after the lease ran out; meanwhile the
    # record reached a second copy (a rebalance), which found the claim lapsed, took it over and sent the mail.
    late, other = await rig.replica(), await rig.replica()
    mailer = LateMailer(mailbox, late_by=short_lease.seconds + 0.5)
    mails_of(late).mailer = mailer
    email, accepted = await accepted_order(rig, late)
    completed = completed_record(rig, accepted)

    first = asyncio.create_task(rig.on(late, completed))
    await eventually(mailer.waiting.is_set)  # claimed; its send waits for the thread
    await asyncio.sleep(short_lease.seconds)  # the lease runs out
    assert await rig.on(other, completed) == []
    assert len(await mailbox.to(email)) == 1  # the copy that took the claim over sent it

    assert await asyncio.wait_for(first, 10) == []

    mails = await mailbox.to(email)
    assert len(mails) == 1, f"{len(mails)} mails: the late send went out after the claim was taken over"
    assert await rig.distinct_events(accepted.order_id) == ["NotificationSent"]


async def test_a_handler_that_lost_its_claim_during_an_smtp_outage_sends_nothing_when_smtp_answers_again(
    rig: Rig, mailbox: Mailbox, short_lease: Lease
) -> None:
    # The first copy claims the mail but cannot reach SMTP, and retries in place (an outage is waited out). Its
    # partition goes to a second copy -- the revoke gives up waiting and does not cancel the handler -- which takes
    # the claim over once it lapses, and sends. Then SMTP answers the first copy again.
    zombie, owner = await rig.replica(), await rig.replica()
    mails_of(zombie).mailer = cut_off = unreachable_smtp()
    email, accepted = await accepted_order(rig, zombie)
    completed = completed_record(rig, accepted)

    first = asyncio.create_task(rig.on(zombie, completed))
    assert await asyncio.wait_for(rig.on(owner, completed), 30) == []  # waits the claim out, takes it over, sends
    assert len(await mailbox.to(email)) == 1
    assert not first.done()  # still retrying through its outage
    cut_off.port = mailbox.port  # SMTP answers the first copy again

    assert await asyncio.wait_for(first, 10) == []

    mails = await mailbox.to(email)
    assert len(mails) == 1, f"{len(mails)} mails: the first copy sent again after its claim was taken over"
    assert await rig.distinct_events(accepted.order_id) == ["NotificationSent"]
