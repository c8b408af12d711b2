"""Inventory rules: one hold per SKU, reserve only when order and money are both known, release what was held,
and every stock write an intent recorded before it is made and answered after."""

from __future__ import annotations

import pytest

from services.inventory import domain
from services.inventory.domain import Reservation, StockAnswer, StockWrite
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
    assert domain.reserve(domain.cancel(ready())).status == "CANCELLED"


RESERVE, RELEASE, COMMIT = (StockWrite(operation=op) for op in ("reserve", "release", "commit"))


def reserving() -> Reservation:
    return domain.reserve(ready())


def reserved() -> Reservation:
    res, _ = domain.record(reserving(), RESERVE, StockAnswer(), cause())
    return res


def test_a_reservation_is_an_intent_whose_stock_writes_are_pending_until_answered() -> None:
    res = reserving()

    assert res.status == "RESERVING"
    assert domain.pending(res) == RESERVE
    assert domain.pending(ready()) is None  # nothing is written before both facts are known


def test_reservation_is_not_made_twice() -> None:
    assert not domain.should_reserve(reserving())
    assert not domain.should_reserve(reserved())
    assert domain.reserve(reserved()) == reserved()


def test_successful_reservation_announces_the_merged_lines() -> None:
    reservation, events = domain.record(reserving(), RESERVE, StockAnswer(), cause())

    assert reservation.status == "RESERVED"
    assert domain.pending(reservation) is None
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, StockReserved)
    assert event.lines == [StockLine(sku="SKU-A", quantity=1), StockLine(sku="SKU-B", quantity=5)]


def test_an_answer_recorded_already_is_not_recorded_again() -> None:
    # The other copy made the same writes and recorded first: the late answer changes nothing, announces nothing.
    res = reserved()

    assert domain.record(res, RESERVE, StockAnswer(short=["SKU-B"]), cause()) == (res, [])


def test_short_reservation_gives_back_what_it_held_then_names_the_missing_skus() -> None:
    releasing, events = domain.record(reserving(), RESERVE, StockAnswer(short=["SKU-B"]), cause())

    assert (releasing.status, events) == ("RELEASING", [])
    assert domain.pending(releasing) == RELEASE  # SKU-A may be held: given back before anyone hears
    unavailable, events = domain.record(releasing, RELEASE, StockAnswer(), cause())
    assert unavailable.status == "UNAVAILABLE"
    assert domain.pending(unavailable) is None
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, StockUnavailable)
    assert event.skus == ["SKU-B"]


def test_release_of_a_reservation_announces_the_released_lines_once_given_back() -> None:
    releasing = domain.cancel(reserved())

    assert releasing.status == "RELEASING"
    assert domain.pending(releasing) == RELEASE
    released, events = domain.record(releasing, RELEASE, StockAnswer(), cause())
    assert released.status == "RELEASED"
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, StockReleased)
    assert event.lines == reserved().lines


def test_cancellation_before_any_reservation_writes_nothing_and_closes_it() -> None:
    cancelled = domain.cancel(domain.with_order(None, LINES))

    assert cancelled.status == "CANCELLED"
    assert domain.pending(cancelled) is None
    assert domain.cancel(None).status == "CANCELLED"


@pytest.mark.parametrize("short", [[], ["SKU-B"]], ids=["all-held", "one-short"])
def test_cancellation_that_meets_a_reservation_in_flight_gives_it_back_once_answered_unannounced(
    short: list[str],
) -> None:
    noted = domain.cancel(reserving())

    assert (noted.status, noted.cancelled) == ("RESERVING", True)
    assert domain.pending(noted) == RESERVE  # the writes in flight are finished first, by whoever meets them
    releasing, events = domain.record(noted, RESERVE, StockAnswer(short=short), cause())
    assert (releasing.status, events) == ("RELEASING", [])
    cancelled, events = domain.record(releasing, RELEASE, StockAnswer(), cause())
    assert (cancelled.status, events) == ("CANCELLED", [])


@pytest.mark.parametrize("status", ["UNAVAILABLE", "RELEASING", "RELEASED", "COMMITTING", "COMMITTED", "CANCELLED"])
def test_cancellation_gives_back_nothing_unless_an_announced_reservation_holds_it(status: str) -> None:
    # COMMITTING / COMMITTED: a customer may cancel a completed order until its parcel is delivered; its units
    # count as shipped.
    reservation = ready().model_copy(update={"status": status})

    after = domain.cancel(reservation)

    assert after.status == status
    assert domain.pending(after) == domain.pending(reservation)


def test_only_a_reservation_can_be_committed() -> None:
    committing = domain.complete(reserved())

    assert committing.status == "COMMITTING"
    assert domain.pending(committing) == COMMIT
    committed, events = domain.record(committing, COMMIT, StockAnswer(), cause())
    assert (committed.status, events) == ("COMMITTED", [])
    for status in ("UNAVAILABLE", "RELEASING", "RELEASED", "CANCELLED", "COMMITTED"):
        assert domain.complete(ready().model_copy(update={"status": status})).status == status


@pytest.mark.parametrize(
    ("reservation", "waits"),
    [
        (None, True),  # after a restore, the completion may be read before the payment that reserves
        (Reservation(status="AWAITING"), True),
        (Reservation(status="RESERVING"), True),  # its answer is not recorded yet
        (Reservation(status="AWAITING", cancelled=True), False),
        (Reservation(status="RESERVING", cancelled=True), False),
        (Reservation(status="RESERVED"), False),
        (Reservation(status="COMMITTED"), False),
        (Reservation(status="UNAVAILABLE"), False),
    ],
)
def test_a_commit_waits_only_while_its_reservation_is_still_to_come(
    reservation: Reservation | None, waits: bool
) -> None:
    assert domain.awaits_reservation(reservation) is waits
