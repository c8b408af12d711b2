"""Each payment handler on the in-memory store and broker, paying through the sandbox gateway (its idempotency
ledger in memory too) or an in-memory cashier provider: no server."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from services.payment.domain import Payment
from services.payment.gateway import SandboxGateway
from services.payment.handlers import (
    CHECK,
    REVIEW,
    Deps,
    ProviderCalls,
    authorize_on_order_accepted,
    capture_on_shipment_scheduled,
    check_at_provider,
    compensate_on_order_cancelled,
    finish_review,
    handlers,
    payment_timers,
    record_provider_notification,
)
from services.payment.provider import PaymentProvider, Trade
from services.payment.store import PaymentStore
from services.payment.tests.doubles import FakeAlipay
from shared import topics
from shared.consumer import NotYet, PermanentError
from shared.events.order import OrderAccepted
from shared.events.payment import (
    PaymentActionRequired,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentDeclined,
    PaymentRefunded,
    PaymentVoided,
    ProviderNotified,
)
from shared.fakes import InMemoryBroker, InMemoryDatabase
from shared.mongo import Timers
from shared.unit_of_work import UnitOfWork
from tests.unit.factories import (
    ORDER_ID,
    cause,
    order_accepted,
    order_cancelled,
    order_placed,
    order_placed_data,
    shipment_scheduled,
)

FAR = datetime(2100, 1, 1, tzinfo=UTC)  # a time every timer set by a test is due at
TOTAL = Decimal("79.80")  # the sample order's total


@dataclass
class World:
    deps: Deps
    broker: InMemoryBroker
    db: InMemoryDatabase
    alipay: FakeAlipay

    def ledger(self) -> dict[str, dict[str, Any]]:
        """The sandbox gateway's record of every call, by idempotency key."""
        return {str(k): v for k, v in self.db["gateway_ledger"].docs.items()}

    async def payment(self) -> Payment:
        doc = await self.deps.store.read(order_id=ORDER_ID)
        assert doc.state is not None
        return doc.state

    async def timers_due(self, kind: str) -> list[str]:
        return await self.deps.timers.due(kind=kind, at=FAR)


@pytest.fixture
def world() -> World:
    """As services/payment/app.py wires them, on an in-memory database and broker; a hold of a risk review ends
    at once, and Alipay is the in-memory cashier."""
    db, broker, alipay = InMemoryDatabase(), InMemoryBroker(), FakeAlipay()
    store = PaymentStore(db.db, "payments", Payment)
    gateway = SandboxGateway(db.db)
    timers = Timers(db.db)
    providers: dict[str, PaymentProvider] = {"alipay": alipay}
    hold = timedelta(0)
    payments = UnitOfWork(
        store,
        broker,
        out_topic=topics.PAYMENT_EVENTS,
        effects=ProviderCalls(gateway, hold, providers=providers),
        timers=timers,
        timers_of=payment_timers,
    )
    deps = Deps(
        payments=payments,
        store=store,
        timers=timers,
        gateway=gateway,
        review_hold=hold,
        providers=providers,
        methods={"alipay": "alipay"},
    )
    return World(deps=deps, broker=broker, db=db, alipay=alipay)


def with_token(token: str) -> OrderAccepted:
    return order_accepted(order_placed(payment={"method": "card", "token": token}))


def at_cashier() -> OrderAccepted:
    data = order_placed_data()
    data["payment"] = {"method": "alipay", "channel": "qr"}
    return order_accepted(order_placed(**data))


def notified(status: str = "paid", *, merchant: str = FakeAlipay.merchant, amount: str = "79.80") -> ProviderNotified:
    event: ProviderNotified = ProviderNotified.caused_by(
        cause(),
        provider="alipay",
        kind="trade",
        status=status,
        trade_no="T-1",
        amount=Decimal(amount),
        merchant=merchant,
        notify_id="n-1",
    )
    return event


def test_every_event_the_service_reads_has_its_handler_here() -> None:
    """A handler registered without a test in this module fails here first."""
    assert handlers.handlers == {
        "OrderAccepted": authorize_on_order_accepted,
        "ShipmentScheduled": capture_on_shipment_scheduled,
        "OrderCancelled": compensate_on_order_cancelled,
        "ProviderNotified": record_provider_notification,
    }
    assert handlers.invalid_handlers == {}


async def test_an_accepted_order_is_authorised_once_under_its_idempotency_key(world: World) -> None:
    accepted = order_accepted()

    await authorize_on_order_accepted(accepted, world.deps)
    await authorize_on_order_accepted(accepted, world.deps)  # redelivered

    assert list(world.ledger()) == [f"{ORDER_ID}:authorize"]
    payment = await world.payment()
    assert payment.status == "AUTHORIZED"
    first, again = world.broker.events(ORDER_ID)
    assert isinstance(first, PaymentAuthorized)
    assert (first.amount, first.authorization_id) == (TOTAL, world.ledger()[f"{ORDER_ID}:authorize"]["reference"])
    assert again.event_id == first.event_id


async def test_a_declined_card_is_announced_as_declined(world: World) -> None:
    await authorize_on_order_accepted(with_token("tok_decline"), world.deps)

    assert (await world.payment()).status == "DECLINED"
    [event] = world.broker.events(ORDER_ID)
    assert isinstance(event, PaymentDeclined)
    assert event.reason == "payment_declined"


async def test_a_payment_held_for_review_waits_for_its_timer_then_is_authorised(world: World) -> None:
    await authorize_on_order_accepted(with_token("tok_review"), world.deps)

    assert (await world.payment()).status == "REVIEW"
    assert world.broker.records == []
    assert await world.timers_due(REVIEW) == [ORDER_ID]

    await finish_review(ORDER_ID, world.deps)

    assert (await world.payment()).status == "AUTHORIZED"
    assert world.broker.types(ORDER_ID) == ["PaymentAuthorized"]
    assert await world.timers_due(REVIEW) == []


async def test_a_review_ending_for_a_payment_cancelled_meanwhile_authorises_nothing(world: World) -> None:
    await authorize_on_order_accepted(with_token("tok_review"), world.deps)
    await compensate_on_order_cancelled(order_cancelled("customer_request"), world.deps)

    await finish_review(ORDER_ID, world.deps)

    assert f"{ORDER_ID}:authorize" not in world.ledger()
    assert "PaymentAuthorized" not in world.broker.types(ORDER_ID)
    assert await world.timers_due(REVIEW) == []


async def test_a_scheduled_shipment_captures_the_authorised_money(world: World) -> None:
    await authorize_on_order_accepted(order_accepted(), world.deps)

    await capture_on_shipment_scheduled(shipment_scheduled(), world.deps)

    assert world.ledger()[f"{ORDER_ID}:capture"]["amount"] == str(TOTAL)
    assert (await world.payment()).status == "CAPTURED"
    captured = world.broker.events(ORDER_ID)[-1]
    assert isinstance(captured, PaymentCaptured)
    assert captured.capture_id == world.ledger()[f"{ORDER_ID}:capture"]["reference"]


async def test_a_capture_before_the_authorisation_is_not_yet_and_calls_nobody(world: World) -> None:
    with pytest.raises(NotYet):
        await capture_on_shipment_scheduled(shipment_scheduled(), world.deps)

    assert world.ledger() == {}
    assert world.broker.records == []


async def test_a_cancellation_voids_an_authorisation(world: World) -> None:
    await authorize_on_order_accepted(order_accepted(), world.deps)

    await compensate_on_order_cancelled(order_cancelled("out_of_stock"), world.deps)

    assert f"{ORDER_ID}:void" in world.ledger()
    assert (await world.payment()).status == "VOIDED"
    assert isinstance(world.broker.events(ORDER_ID)[-1], PaymentVoided)


async def test_a_cancellation_after_capture_refunds(world: World) -> None:
    await authorize_on_order_accepted(order_accepted(), world.deps)
    await capture_on_shipment_scheduled(shipment_scheduled(), world.deps)

    await compensate_on_order_cancelled(order_cancelled("customer_request"), world.deps)

    assert world.ledger()[f"{ORDER_ID}:refund"]["amount"] == str(TOTAL)
    refunded = world.broker.events(ORDER_ID)[-1]
    assert isinstance(refunded, PaymentRefunded)
    assert refunded.refund_id == world.ledger()[f"{ORDER_ID}:refund"]["reference"]


async def test_an_order_at_the_cashier_creates_one_trade_and_says_where_to_pay(world: World) -> None:
    await authorize_on_order_accepted(at_cashier(), world.deps)

    assert world.alipay.calls == [("create", ORDER_ID)]
    assert world.ledger() == {}  # not the token gateway
    [event] = world.broker.events(ORDER_ID)
    assert isinstance(event, PaymentActionRequired)
    assert event.action.code_url == f"https://qr.example/{ORDER_ID}"
    assert await world.timers_due(CHECK) == [ORDER_ID]


async def test_a_verified_payment_notification_authorises_the_payment(world: World) -> None:
    await authorize_on_order_accepted(at_cashier(), world.deps)

    await record_provider_notification(notified("paid"), world.deps)

    assert (await world.payment()).status == "AUTHORIZED"
    assert world.broker.types(ORDER_ID) == ["PaymentActionRequired", "PaymentAuthorized"]
    assert await world.timers_due(CHECK) == []


async def test_a_notification_before_the_trade_is_recorded_is_not_yet(world: World) -> None:
    with pytest.raises(NotYet):
        await record_provider_notification(notified("paid"), world.deps)

    assert world.broker.records == []


@pytest.mark.parametrize(
    "report",
    [notified("paid", merchant="someone-else"), notified("paid", amount="1.00")],
    ids=["another merchant", "another amount"],
)
async def test_a_notification_that_does_not_match_our_record_is_a_permanent_error(
    world: World, report: ProviderNotified
) -> None:
    await authorize_on_order_accepted(at_cashier(), world.deps)

    with pytest.raises(PermanentError):
        await record_provider_notification(report, world.deps)

    assert (await world.payment()).status == "AWAITING_PAYMENT"
    assert world.broker.types(ORDER_ID) == ["PaymentActionRequired"]


async def test_a_check_finds_a_payment_whose_notification_never_came(world: World) -> None:
    await authorize_on_order_accepted(at_cashier(), world.deps)
    world.alipay.trades[ORDER_ID] = Trade(status="paid", trade_no="T-1", amount=TOTAL)

    await check_at_provider(ORDER_ID, world.deps)

    assert ("query", ORDER_ID) in world.alipay.calls
    assert world.broker.types(ORDER_ID) == ["PaymentActionRequired", "PaymentAuthorized"]
    assert await world.timers_due(CHECK) == []


async def test_a_check_that_finds_nothing_new_asks_again_later(world: World) -> None:
    await authorize_on_order_accepted(at_cashier(), world.deps)
    before = (await world.payment()).check_at

    await check_at_provider(ORDER_ID, world.deps)

    after = await world.payment()
    assert after.status == "AWAITING_PAYMENT"
    assert before is not None
    assert after.check_at is not None
    assert after.check_at > before
    assert world.broker.types(ORDER_ID) == ["PaymentActionRequired"]
    assert await world.timers_due(CHECK) == [ORDER_ID]


async def test_a_check_of_a_payment_that_moved_on_only_clears_its_timer(world: World) -> None:
    await world.deps.timers.set(kind=CHECK, key=ORDER_ID, due_at=FAR - timedelta(days=1))  # left by a crash

    await check_at_provider(ORDER_ID, world.deps)

    assert world.alipay.calls == []
    assert await world.timers_due(CHECK) == []
