"""Inventory rules: one hold per SKU, reserve only when order and money are both known, release what was held."""

from __future__ import annotations

import pytest

from services.inventory import domain
from services.inventory.domain import Reservation
from shared.events.inventory import StockLine, StockReleased, StockReserved, StockUnavailable
from shared.events.storefront import Line
from tests.unit.factories import cause, order_placed

LINES = [
    Line.model_validate({"sku": "SKU-B", "quantity": 2, "unit_price": "1.00"}),
    Line.model_validate({"sku": "SKU-A", "quantity": 1, "unit_price": "2.00"}),
    Line.model_validate({"sku": "SKU-B", "quantity": 3, "unit_price": "1.50"}),
]


def test_merge_lines_adds_up_duplicate_skus_into_one_line_each() -> None:
    assert domain.merge_lines(LINES) == [
        StockLine(sku="SKU-A", quantity=1),
        StockLine(sku="SKU-B", quantity=5),
    ]


def test_merge_lines_keeps_a_single_line_as_is() -> None:
    assert domain.merge_lines(order_placed().lines) == [StockLine(sku="SKU-RED-MUG", quantity=2)]


def ready() -> Reservation:
    return domain.with_payment(domain.with_order(None, LINES))


def test_reservation_waits_for_the_payment_when_only_the_order_is_known() -> None:
    assert not domain.should_reserve(domain.with_order(None, LINES))


def test_reservation_waits_for_the_order_when_only_the_payment_is_known() -> None:
    assert not domain.should_reserve(domain.with_payment(None))


def test_reservation_is_due_once_order_and_payment_are_known_in_either_order() -> None:
    order_first = domain.with_payment(domain.with_order(None, LINES))
    payment_first = domain.with_order(domain.with_payment(None), LINES)

    assert domain.should_reserve(order_first)
    assert domain.should_reserve(payment_first)
    assert payment_first.lines == order_first.lines


def test_cancelled_order_is_never_reserved_even_when_both_facts_arrive() -> None:
    assert not domain.should_reserve(domain.cancel(ready()))


def test_reservation_is_not_made_twice() -> None:
    reserved, _ = domain.record_reservation(ready(), cause(), short=[])

    assert not domain.should_reserve(reserved)


def test_successful_reservation_announces_the_merged_lines() -> None:
    reservation, events = domain.record_reservation(ready(), cause(), short=[])

    assert reservation.status == "RESERVED"
    assert len(events) == 1
    reserved = events[0]
    assert isinstance(reserved, StockReserved)
    assert reserved.lines == [StockLine(sku="SKU-A", quantity=1), StockLine(sku="SKU-B", quantity=5)]


def test_short_reservation_is_unavailable_and_names_the_missing_skus() -> None:
    reservation, events = domain.record_reservation(ready(), cause(), short=["SKU-B"])

    assert reservation.status == "UNAVAILABLE"
    assert len(events) == 1
    unavailable = events[0]
    assert isinstance(unavailable, StockUnavailable)
    assert unavailable.skus == ["SKU-B"]


def test_release_of_a_reservation_announces_the_released_lines() -> None:
    reserved, _ = domain.record_reservation(ready(), cause(), short=[])

    released, events = domain.record_release(domain.cancel(reserved), cause())

    assert released.status == "RELEASED"
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, StockReleased)
    assert event.lines == reserved.lines


def test_release_before_any_reservation_emits_nothing_and_closes_it() -> None:
    released, events = domain.record_release(domain.cancel(domain.with_order(None, LINES)), cause())

    assert events == []
    assert released.status == "CANCELLED"


@pytest.mark.parametrize("status", ["UNAVAILABLE", "RELEASED", "COMMITTED"])
def test_release_emits_nothing_unless_stock_was_reserved(status: str) -> None:
    reservation = ready().model_copy(update={"status": status})

    after, events = domain.record_release(reservation, cause())

    assert events == []
    assert after.status == status


def test_only_a_reservation_can_be_committed() -> None:
    reserved, _ = domain.record_reservation(ready(), cause(), short=[])
    short, _ = domain.record_reservation(ready(), cause(), short=["SKU-A"])

    assert domain.should_commit(reserved)
    assert not domain.should_commit(short)
    assert not domain.should_commit(None)


@pytest.mark.parametrize(
    ("reservation", "waits"),
    [
        (None, True),  # after a restore, the completion may be read before the payment that reserves
        (Reservation(status="AWAITING"), True),
        (Reservation(status="AWAITING", cancelled=True), False),
        (Reservation(status="RESERVED"), False),
        (Reservation(status="COMMITTED"), False),
        (Reservation(status="UNAVAILABLE"), False),
    ],
)
def test_a_commit_waits_only_while_its_reservation_is_still_to_come(
    reservation: Reservation | None, waits: bool
) -> None:
    assert domain.reservation_pending(reservation) is waits
