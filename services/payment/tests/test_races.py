"""Payment races the intents settle: two instances (two processes' deps over one database) with a provider call
held in flight, or a process killed between the provider's answer and its record.

Each failed on the old design (a capture decided and made inside a step that a cancellation could overtake: a
capture without its refund, or a void of captured money) and must hold now.
"""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Any, cast

import pytest
from pymongo.errors import AutoReconnect

from services.conftest import Pause, Rig, killed, new_order_id
from services.payment.domain import GatewayResult
from services.payment.gateway import PaymentGateway
from services.payment.handlers import ProviderCalls
from shared.events.order import OrderAccepted, OrderCancelled
from shared.events.shipping import ShipmentScheduled
from shared.mongo import Doc
from shared.runtime import Service
from tests.unit.factories import order_accepted, order_placed

pytestmark = pytest.mark.infra


class HeldGateway:
    """The instance's real gateway, with ``capture`` held at ``pause``: before the provider gets the call, or
    after it answered (``after=True``)."""

    def __init__(self, real: PaymentGateway, pause: Pause, *, after: bool = False) -> None:
        self.real, self.pause, self.after = real, pause, after

    async def authorize(self, **kw: Any) -> GatewayResult:
        return await self.real.authorize(**kw)

    async def capture(self, **kw: Any) -> str:
        if not self.after:
            await self.pause()
        ref = await self.real.capture(**kw)
        if self.after:
            await self.pause()
        return ref

    async def void(self, **kw: Any) -> str:
        return await self.real.void(**kw)

    async def refund(self, **kw: Any) -> str:
        return await self.real.refund(**kw)


def calls_of(instance: Service) -> ProviderCalls:
    return cast(ProviderCalls, instance.deps.payments.effects)


def hold_capture(instance: Service, *, after: bool = False) -> Pause:
    pause = Pause()
    calls = calls_of(instance)
    calls.gateway = HeldGateway(calls.gateway, pause, after=after)
    return pause


def accepted(order_id: str) -> OrderAccepted:
    return order_accepted(order_placed(order_id=order_id, payment={"method": "alipay", "token": "tok_ok"}))


def scheduled(cause: OrderAccepted) -> ShipmentScheduled:
    event: ShipmentScheduled = ShipmentScheduled.caused_by(
        cause, carrier="SF Express", tracking_number="SF000000000001", promised_date=date(2026, 11, 26)
    )
    return event


async def ledger_ops(rig: Rig, order_id: str) -> list[str]:
    return sorted([d["op"] async for d in rig.db["gateway_ledger"].find({"order_id": order_id})])


async def payment_status(instance: Service, order_id: str) -> str | None:
    doc = await instance.deps.store.load(order_id=order_id)
    return doc.state.status if doc.state is not None else None


async def settled(rig: Rig, order_id: str) -> None:
    """Exactly one capture and one refund, REFUNDED, each money event once (by event_id), no void."""
    assert await ledger_ops(rig, order_id) == ["authorize", "capture", "refund"]
    fresh = await rig.replica()  # reads the store, not a cache that saw the race
    await rig.on(fresh, accepted(order_id))  # any event makes it load; an accepted payment stays as it is
    assert await payment_status(fresh, order_id) == "REFUNDED"
    assert await rig.distinct_events(order_id) == ["PaymentAuthorized", "PaymentCaptured", "PaymentRefunded"]


async def test_cancellation_while_a_capture_is_in_flight_refunds_it_once(rig: Rig) -> None:
    one, other = await rig.replica(), await rig.replica()
    order_id = new_order_id()
    event = accepted(order_id)
    assert await rig.on(one, event) == []
    pause = hold_capture(one)

    capturing = asyncio.create_task(rig.on(one, scheduled(event)))
    try:
        await asyncio.wait_for(pause.reached.wait(), 10)
        assert await rig.on(other, OrderCancelled.caused_by(event, reason="customer_request")) == []
        pause.release.set()
        assert await capturing == []
    finally:
        pause.release.set()
        if not capturing.done():
            await killed(capturing)

    await settled(rig, order_id)


async def test_crash_after_the_capture_then_cancellation_then_redelivery_refunds_once(rig: Rig) -> None:
    one, other = await rig.replica(), await rig.replica()
    order_id = new_order_id()
    event = accepted(order_id)
    assert await rig.on(one, event) == []
    pause = hold_capture(one, after=True)  # the provider captured; the answer never gets recorded
    shipment = rig.record(scheduled(event))

    capturing = asyncio.create_task(rig.on(one, shipment))
    await asyncio.wait_for(pause.reached.wait(), 10)
    await killed(capturing)  # the process dies with the capture made and not recorded
    assert await ledger_ops(rig, order_id) == ["authorize", "capture"]

    assert await rig.on(other, OrderCancelled.caused_by(event, reason="customer_request")) == []
    restarted = await rig.replica()
    assert await rig.on(restarted, shipment) == []  # the shipment's record comes again after the crash

    await settled(rig, order_id)


async def test_store_error_after_the_result_was_written_still_publishes_it(rig: Rig) -> None:
    """The write that records the provider's answer (with PaymentAuthorized) reaches the store, then the
    connection drops: the consumer's retry must publish the event, not leave it in the document."""
    instance = await rig.replica()
    store = instance.deps.store
    inserts = store.docs._inserts
    failed: list[Doc] = []

    class ReachesStoreThenDrops:
        async def insert(self, doc: Doc) -> None:
            await inserts.insert(doc)
            if doc.get("outbox") and not failed:
                failed.append(doc)
                raise AutoReconnect("connection reset after the insert")

        def __getattr__(self, name: str) -> Any:
            return getattr(inserts, name)

    store.docs._inserts = cast(Any, ReachesStoreThenDrops())
    order_id = new_order_id()

    assert await rig.on(instance, accepted(order_id)) == []

    assert len(failed) == 1
    assert await rig.distinct_events(order_id) == ["PaymentAuthorized"]
    assert await ledger_ops(rig, order_id) == ["authorize"]
