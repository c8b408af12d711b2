"""Payment at a provider's cashier, pure: the trade's life from creation to payment, expiry, close or refund, and
what notifications may do to it (only move it forward) -- plus the daily reconciliation's comparison."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from services.payment import domain
from services.payment.domain import Call, GatewayResult, Observation, Payment
from services.payment.provider import BillRow
from shared.events.order import OrderAccepted
from shared.events.payment import (
    PaymentActionRequired,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentDeclined,
    PaymentRefunded,
    PaymentVoided,
)
from tests.unit.factories import AT, cause, order_accepted, order_placed, order_placed_data

HOLD = timedelta(seconds=30)
EXPIRY = timedelta(minutes=15)
METHODS = {"alipay": "alipay", "wechat_pay": "wechatpay"}
CREATE, CLOSE, REFUND = Call(operation="authorize"), Call(operation="void"), Call(operation="refund")
PAID = Observation(kind="trade", status="paid", trade_no="T-1", amount=Decimal("79.80"))


def cashier_order(method: str = "alipay", **payment: str) -> OrderAccepted:
    data = order_placed_data()
    data["payment"] = {"method": method, **payment}
    return order_accepted(order_placed(**data))


def record(payment: Payment, call: Call, result: GatewayResult) -> tuple[Payment, list[object]]:
    state, events = domain.record(payment, call, result, cause(), at=AT, review_hold=HOLD)
    return state, list(events)


def awaiting(method: str = "alipay") -> Payment:
    intent = domain.authorize(cashier_order(method), None, at=AT, providers=METHODS, trade_expiry=EXPIRY)
    state, _ = record(intent, CREATE, GatewayResult(outcome="created", code_url="https://qr.example/abc"))
    return state


def test_an_order_without_a_token_intends_a_trade_at_the_provider_its_method_is_configured_for() -> None:
    payment = domain.authorize(cashier_order("wechat_pay"), None, at=AT, providers=METHODS, trade_expiry=EXPIRY)

    assert (payment.status, payment.provider, payment.channel) == ("AUTHORIZING", "wechatpay", "native")
    assert payment.expires_at == AT + EXPIRY
    assert domain.pending(payment) == CREATE


def test_a_token_order_stays_with_the_token_gateway() -> None:
    payment = domain.authorize(order_accepted(), None, at=AT, providers=METHODS, trade_expiry=EXPIRY)

    assert payment.provider == "sandbox"
    assert not payment.settled
    assert payment.expires_at is None


def test_a_created_trade_tells_the_storefront_where_to_pay_and_schedules_a_check() -> None:
    intent = domain.authorize(cashier_order(), None, at=AT, providers=METHODS, trade_expiry=EXPIRY)

    state, events = record(intent, CREATE, GatewayResult(outcome="created", code_url="https://qr.example/abc"))

    assert state.status == "AWAITING_PAYMENT"
    assert [type(e) for e in events] == [PaymentActionRequired]
    action = events[0].action  # type: ignore[attr-defined]
    assert (action.provider, action.code_url, action.expires_at) == ("alipay", "https://qr.example/abc", AT + EXPIRY)
    assert state.check_at is not None
    assert AT < state.check_at <= AT + EXPIRY


def test_payment_moves_the_saga_on_with_money_already_taken() -> None:
    state, events = domain.observe(awaiting(), PAID, cause(), at=AT)

    assert state.status == "AUTHORIZED"
    assert (state.authorization_id, state.paid_day) == ("T-1", "2026-11-25")
    assert [type(e) for e in events] == [PaymentAuthorized]
    assert events[0].settled  # type: ignore[attr-defined]
    assert events[0].provider == "alipay"  # type: ignore[attr-defined]


def test_a_duplicate_or_late_report_of_the_same_payment_changes_nothing() -> None:
    paid, _ = domain.observe(awaiting(), PAID, cause(), at=AT)

    again, events = domain.observe(paid, PAID, cause(), at=AT)
    stale, stale_events = domain.observe(paid, Observation(kind="trade", status="unpaid"), cause(), at=AT)

    assert (again, list(events)) == (paid, [])
    assert (stale, list(stale_events)) == (paid, [])


def test_a_shipment_captures_money_taken_at_the_cashier_without_a_provider_call() -> None:
    paid, _ = domain.observe(awaiting(), PAID, cause(), at=AT)

    captured, events = domain.capture(paid, cause())

    assert captured.status == "CAPTURED"
    assert domain.pending(captured) is None
    assert [type(e) for e in events] == [PaymentCaptured]
    assert events[0].capture_id == "T-1"  # type: ignore[attr-defined]


def test_cancelling_before_payment_closes_the_trade_and_voids() -> None:
    closing = domain.cancel(awaiting())
    assert domain.pending(closing) == CLOSE

    closed, events = record(closing, CLOSE, GatewayResult(outcome="closed"))

    assert closed.status == "VOIDED"
    assert [type(e) for e in events] == [PaymentVoided]


def test_a_close_that_finds_the_trade_paid_refunds_it_instead() -> None:
    closing = domain.cancel(awaiting())

    state, events = record(closing, CLOSE, GatewayResult(outcome="paid", reference="T-9"))

    assert (state.status, state.late_money, state.authorization_id) == ("REFUNDING", True, "T-9")
    assert events == []
    assert domain.pending(state) == REFUND


def test_cancelling_after_payment_refunds_and_a_pending_refund_waits_for_the_provider() -> None:
    paid, _ = domain.observe(awaiting("wechat_pay"), PAID, cause(), at=AT)
    refunding = domain.cancel(paid)
    assert domain.pending(refunding) == REFUND

    pending, none = record(refunding, REFUND, GatewayResult(outcome="pending", reference="R-1"))
    done, events = domain.observe(pending, Observation(kind="refund", status="refunded"), cause(), at=AT)

    assert (pending.status, none) == ("REFUND_PENDING", [])
    assert done.status == "REFUNDED"
    assert [type(e) for e in events] == [PaymentRefunded]
    assert done.refund_day == "2026-11-25"


@pytest.mark.parametrize("ended", ["VOIDED", "DECLINED", "CANCELLED"])
def test_money_that_arrives_after_the_order_ended_is_refunded(ended: str) -> None:
    over = awaiting().model_copy(update={"status": ended})

    state, events = domain.observe(over, PAID, cause(), at=AT)

    assert (state.status, state.late_money) == ("REFUNDING", True)
    assert events == []


def test_an_unpaid_trade_past_its_expiry_is_closed_and_then_declined_as_expired() -> None:
    payment = awaiting()
    assert domain.expire(payment, at=AT + EXPIRY - timedelta(seconds=1)) is None

    expiring = domain.expire(payment, at=AT + EXPIRY)
    assert expiring is not None
    state, events = record(expiring, CLOSE, GatewayResult(outcome="closed"))

    assert state.status == "DECLINED"
    assert [getattr(e, "reason", None) for e in events] == ["payment_expired"]


def test_a_payment_found_when_closing_an_expired_trade_still_goes_through() -> None:
    expiring = domain.expire(awaiting(), at=AT + EXPIRY)
    assert expiring is not None

    state, events = record(expiring, CLOSE, GatewayResult(outcome="paid", reference="T-1"))

    assert state.status == "AUTHORIZED"
    assert [type(e) for e in events] == [PaymentAuthorized]


def test_a_refused_trade_declines_the_payment() -> None:
    intent = domain.authorize(cashier_order(), None, at=AT, providers=METHODS, trade_expiry=EXPIRY)

    state, events = record(intent, CREATE, GatewayResult(outcome="declined", reason="provider_refused:X"))

    assert state.status == "DECLINED"
    assert [type(e) for e in events] == [PaymentDeclined]


@pytest.mark.parametrize(
    ("seen", "merchant", "problem"),
    [
        (PAID, "someone-else", "merchant"),
        (PAID.model_copy(update={"amount": Decimal("0.01")}), "2021", "amount"),
        (Observation(kind="refund", status="refunded", amount=Decimal("999")), "2021", "refund amount"),
    ],
)
def test_a_report_that_does_not_match_our_record_is_named(seen: Observation, merchant: str, problem: str) -> None:
    found = domain.mismatch(awaiting(), seen, merchant=merchant, ours="2021")

    assert found is not None
    assert problem in found


def test_a_matching_report_has_no_mismatch() -> None:
    assert domain.mismatch(awaiting(), PAID, merchant="2021", ours="2021") is None


def test_checks_back_off_but_never_past_the_trade_expiry() -> None:
    payment = awaiting()
    gaps = []
    at = AT
    for _ in range(6):
        payment = domain.next_check(payment, at=at, interval=timedelta(seconds=30))
        assert payment.check_at is not None
        gaps.append(payment.check_at - at)
        at = payment.check_at
    assert gaps[0] < gaps[1] < gaps[2]
    assert at <= AT + EXPIRY


@pytest.mark.parametrize(
    ("order_id", "provider", "accepted"),
    [
        ("SHOP1-000123", "wechatpay", True),
        ("A.B-000123", "wechatpay", False),  # WeChat Pay takes no dot
        ("x" * 33, "wechatpay", False),
        ("SHOP1_000123", "alipay", True),
        ("SHOP1.000123", "alipay", False),
    ],
)
def test_order_ids_are_checked_against_what_the_provider_takes_as_out_trade_no(
    order_id: str, provider: str, accepted: bool
) -> None:
    assert domain.accepted_trade_no(order_id, provider) is accepted


def _ledger(**states: Payment) -> dict[str, Payment]:
    return dict(states)


def test_reconciliation_finds_nothing_when_bill_and_ledger_agree() -> None:
    paid, _ = domain.observe(awaiting(), PAID, cause(), at=AT)
    bill = [BillRow(kind="payment", order_id="O1", reference="T-1", amount=Decimal("79.80"))]

    assert domain.reconcile(bill, _ledger(O1=paid), day="2026-11-25") == []


def test_reconciliation_names_missing_extra_amount_and_refund_differences() -> None:
    paid, _ = domain.observe(awaiting(), PAID, cause(), at=AT)
    refunded = paid.model_copy(update={"status": "REFUNDED", "refund_day": "2026-11-25"})
    bill = [
        BillRow(kind="payment", order_id="O2", reference="T-2", amount=Decimal("50.00")),  # not ours
        BillRow(kind="payment", order_id="O3", reference="T-3", amount=Decimal("70.00")),  # another sum
        BillRow(kind="payment", order_id="O4", reference="T-4", amount=Decimal("79.80")),
    ]

    found = domain.reconcile(bill, _ledger(O1=paid, O3=paid, O4=refunded), day="2026-11-25")

    assert [(d.kind, d.order_id) for d in found] == [
        ("missing", "O1"),
        ("extra", "O2"),
        ("amount", "O3"),
        ("refund", "O4"),
    ]


def test_a_trade_the_provider_reports_closed_is_closed_by_us_and_declined_as_expired() -> None:
    closing, none = domain.observe(awaiting(), Observation(kind="trade", status="closed"), cause(), at=AT)
    assert (closing.status, closing.expiring, none) == ("VOIDING", True, [])

    state, events = record(closing, CLOSE, GatewayResult(outcome="closed"))

    assert [getattr(e, "reason", None) for e in events] == ["payment_expired"]
    assert state.status == "DECLINED"


class _Named:
    name = "wechatpay"


@pytest.mark.parametrize(
    ("order_id", "currency", "provider", "reason"),
    [
        ("SHOP1-000123", "CNY", _Named(), None),
        ("SHOP1-000123", "CNY", None, "payment_provider_unavailable"),
        ("SHOP1.000123", "CNY", _Named(), "order_id_not_accepted_by_provider"),
        ("SHOP1-000123", "USD", _Named(), "currency_not_accepted_by_provider"),
    ],
)
def test_a_trade_the_provider_would_refuse_is_declined_before_any_call(
    order_id: str, currency: str, provider: object | None, reason: str | None
) -> None:
    payment = awaiting().model_copy(update={"currency": currency})

    assert domain.refused_before_create(order_id, payment, provider) == reason
