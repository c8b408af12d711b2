"""Payment at a provider's cashier on the real store and Kafka, with an in-memory provider: the trade created once,
a payment found by the check timer when no notification came, and a check whose publish failed made good by the
timer's next firing (a timer's cause is never redelivered by Kafka)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.conftest import Rig, eventually, new_order_id
from services.payment.handlers import CHECK, Deps, check_at_provider
from services.payment.provider import PaymentProvider, Trade
from services.payment.tests.doubles import FakeAlipay
from shared.events.order import OrderAccepted
from shared.outbox import OutboxRecord
from tests.unit.factories import order_accepted, order_placed

pytestmark = pytest.mark.infra


@pytest.fixture
def provider(deps: Deps, monkeypatch: pytest.MonkeyPatch) -> FakeAlipay:
    fake = FakeAlipay()
    typed: PaymentProvider = fake
    monkeypatch.setitem(deps.providers, "alipay", typed)
    monkeypatch.setitem(deps.methods, "alipay", "alipay")
    effects = deps.payments.effects
    assert effects is not None
    monkeypatch.setitem(effects.providers, "alipay", typed)  # type: ignore[attr-defined]
    return fake


@pytest.fixture(scope="module")
def deps(rig: Rig) -> Deps:
    built: Deps = rig.deps
    return built


def at_cashier(order_id: str) -> OrderAccepted:
    return order_accepted(order_placed(order_id=order_id, payment={"method": "alipay", "channel": "qr"}))


async def test_a_payment_whose_notification_never_came_is_found_by_the_check(
    rig: Rig, deps: Deps, provider: FakeAlipay
) -> None:
    order_id = new_order_id()
    assert await rig.deliver(deps, at_cashier(order_id)) == []
    assert await rig.event_types(order_id) == ["PaymentActionRequired"]
    assert await deps.timers.coll.count_documents({"_id": f"{CHECK}:{order_id}"}) == 1

    provider.trades[order_id] = Trade(status="paid", trade_no="T-1", amount=Decimal("79.80"))
    await check_at_provider(order_id, deps)

    assert await rig.event_types(order_id) == ["PaymentActionRequired", "PaymentAuthorized"]
    assert provider.calls.count(("create", order_id)) == 1
    await check_at_provider(order_id, deps)  # a leftover firing: clears, changes nothing
    assert await deps.timers.coll.count_documents({"_id": f"{CHECK}:{order_id}"}) == 0
    assert await rig.distinct_events(order_id) == ["PaymentActionRequired", "PaymentAuthorized"]


async def test_a_check_whose_publish_failed_publishes_before_its_timer_is_cleared(
    rig: Rig, deps: Deps, provider: FakeAlipay, monkeypatch: pytest.MonkeyPatch
) -> None:
    order_id = new_order_id()
    assert await rig.deliver(deps, at_cashier(order_id)) == []
    provider.trades[order_id] = Trade(status="paid", trade_no="T-2", amount=Decimal("79.80"))
    publish = deps.payments.publish
    failed: list[str] = []

    async def publish_failing_once(records: list[OutboxRecord]) -> None:
        if any(r.event_type == "PaymentAuthorized" for r in records) and not failed:
            failed.append(records[0].event_id)
            raise ConnectionError("broker unreachable")
        await publish(records)

    monkeypatch.setattr(deps.payments, "publish", publish_failing_once)
    with pytest.raises(ConnectionError):
        await check_at_provider(order_id, deps)
    assert await rig.event_types(order_id) == ["PaymentActionRequired"]  # recorded AUTHORIZED, not published
    assert await deps.timers.coll.count_documents({"_id": f"{CHECK}:{order_id}"}) == 1

    await check_at_provider(order_id, deps)

    await eventually(lambda: _published(rig, order_id))
    assert await deps.timers.coll.count_documents({"_id": f"{CHECK}:{order_id}"}) == 0
    assert [str(e.event_id) for e in await rig.events(order_id) if e.event_type == "PaymentAuthorized"] == failed


async def _published(rig: Rig, order_id: str) -> bool:
    return "PaymentAuthorized" in await rig.event_types(order_id)
