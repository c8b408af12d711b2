"""Notify race the SENDING claim settles: a process dies holding a fresh claim; two other processes meet it. They
wait while its lease runs (Busy), then take it over -- and only one of them sends the mail."""

from __future__ import annotations

import asyncio
import time
from datetime import date, timedelta
from decimal import Decimal
from typing import cast

import pytest

from services.conftest import Mailbox, Pause, Rig, killed, new_order_id
from services.notify import domain
from services.notify.domain import Mail
from services.notify.handlers import Mails
from services.notify.mailer import SmtpMailer
from shared.events.order import OrderCompleted, ShipmentInfo
from shared.service import Service
from tests.unit.factories import ORDER_PLACED, order_accepted, order_placed

pytestmark = pytest.mark.infra

LEASE = timedelta(seconds=1.5)


class HangingMailer(SmtpMailer):
    """A mailer whose process dies mid-send: it reaches ``pause`` and never hands the mail over."""

    def __init__(self, pause: Pause) -> None:
        super().__init__(host="127.0.0.1", port=1, sender="x@example.com", starttls=False, username="", password="")
        self.pause = pause

    async def send(self, mail: Mail, *, order_id: str) -> None:
        await self.pause()


def mails_of(instance: Service) -> Mails:
    return cast(Mails, instance.deps.contacts.effects)


async def test_fresh_claim_of_a_dead_process_is_waited_out_then_taken_over_once(
    rig: Rig, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(domain, "CLAIM_LEASE", LEASE)
    dead, second, third = await rig.replica(), await rig.replica(), await rig.replica()
    pause = Pause()
    mails_of(dead).mailer = HangingMailer(pause)
    order_id = new_order_id()
    email = f"{order_id.lower()}@example.com"
    accepted = order_accepted(order_placed(order_id=order_id, customer={**ORDER_PLACED["customer"], "email": email}))
    assert await rig.on(dead, accepted) == []
    shipment = ShipmentInfo(carrier="SF Express", tracking_number="SF000000000077", promised_date=date(2026, 11, 26))
    completed = rig.record(
        OrderCompleted.caused_by(accepted, total=Decimal("79.80"), currency="CNY", shipment=shipment)
    )

    sending = asyncio.create_task(rig.on(dead, completed))
    await asyncio.wait_for(pause.reached.wait(), 10)
    claimed_at = time.monotonic()
    await killed(sending)  # dies holding a fresh SENDING claim

    racers = [asyncio.create_task(rig.on(p, completed)) for p in (second, third)]  # the record comes again
    await asyncio.sleep(LEASE.total_seconds() / 3)
    assert not any(r.done() for r in racers)  # both wait (Busy) while the lease runs
    assert await mailbox.to(email) == []

    results = await asyncio.wait_for(asyncio.gather(*racers), 20)

    assert results == [[], []]
    assert time.monotonic() - claimed_at >= LEASE.total_seconds() * 0.9
    mails = await mailbox.to(email)
    assert len(mails) == 1, f"{len(mails)} mails after two processes took the claim over"
    assert mails[0]["MessageID"] == domain.message_id(order_id, "order_completed")
    assert await rig.distinct_events(order_id) == ["NotificationSent"]
