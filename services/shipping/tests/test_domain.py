"""Shipping rules and the sandbox carrier: carrier and date by option, when to book, what a cancellation undoes."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from services.shipping import domain
from services.shipping.carrier import CarrierRejected, SandboxCarrier
from services.shipping.domain import Booking, Shipment
from shared.events.shipping import ShipmentCancelled, ShipmentScheduled
from shared.events.storefront import Address
from tests.unit.factories import ORDER_ID, cause, order_placed

ORDERED_ON = date(2026, 11, 25)
CHOSEN_DAY = date(2026, 12, 3)
BOOKING = Booking(carrier="SF Express", tracking_number="SF000000000042", promised_date=date(2026, 11, 26))


@pytest.mark.parametrize(
    ("option", "scheduled_date", "carrier", "promised"),
    [
        ("next_day", None, "SF Express", ORDERED_ON + timedelta(days=1)),
        ("standard", None, "JD Logistics", ORDERED_ON + timedelta(days=3)),
        ("scheduled", CHOSEN_DAY, "JD Logistics", CHOSEN_DAY),
    ],
)
def test_carrier_and_promised_date_follow_the_delivery_option(
    option: str,
    scheduled_date: date | None,
    carrier: str,
    promised: date,
) -> None:
    assert domain.carrier_for(option) == carrier
    assert domain.promised_date(option, ordered_on=ORDERED_ON, scheduled_date=scheduled_date) == promised


def address(postal_code: str = "100080") -> Address:
    return order_placed().shipping.address.model_copy(update={"postal_code": postal_code})


def awaiting_stock() -> Shipment:
    return domain.with_order(None, order_placed().shipping, ORDERED_ON)


def test_booking_waits_for_the_stock_when_only_the_address_is_known() -> None:
    assert not domain.should_book(awaiting_stock())


def test_booking_waits_for_the_address_when_only_the_stock_is_known() -> None:
    assert not domain.should_book(domain.with_stock(None))


def test_booking_is_due_once_address_and_stock_are_known_in_either_order() -> None:
    shipping = order_placed().shipping

    assert domain.should_book(domain.with_stock(domain.with_order(None, shipping, ORDERED_ON)))
    assert domain.should_book(domain.with_order(domain.with_stock(None), shipping, ORDERED_ON))


def test_cancelled_shipment_is_never_booked() -> None:
    cancelled, _ = domain.cancel(awaiting_stock(), cause())

    assert not domain.should_book(domain.with_stock(cancelled))


def test_booked_shipment_is_not_booked_twice() -> None:
    booked, _ = domain.record_booking(domain.with_stock(awaiting_stock()), cause(), BOOKING)

    assert not domain.should_book(booked)


def test_booking_announces_carrier_tracking_number_and_promised_date() -> None:
    shipment, events = domain.record_booking(domain.with_stock(awaiting_stock()), cause(), BOOKING)

    assert shipment.status == "SCHEDULED"
    assert len(events) == 1
    scheduled = events[0]
    assert isinstance(scheduled, ShipmentScheduled)
    assert (scheduled.carrier, scheduled.tracking_number, scheduled.promised_date) == (
        BOOKING.carrier,
        BOOKING.tracking_number,
        BOOKING.promised_date,
    )


def test_cancelling_a_scheduled_shipment_calls_it_back_by_tracking_number() -> None:
    booked, _ = domain.record_booking(domain.with_stock(awaiting_stock()), cause(), BOOKING)

    shipment, events = domain.cancel(booked, cause())

    assert shipment.status == "CANCELLED"
    assert len(events) == 1
    cancelled = events[0]
    assert isinstance(cancelled, ShipmentCancelled)
    assert cancelled.tracking_number == BOOKING.tracking_number


def test_cancelling_before_booking_emits_nothing() -> None:
    shipment, events = domain.cancel(awaiting_stock(), cause())

    assert events == []
    assert shipment.status == "CANCELLED"


def test_cancelling_an_unknown_shipment_remembers_the_cancellation() -> None:
    shipment, events = domain.cancel(None, cause())

    assert events == []
    assert shipment.cancelled


def test_cancelling_a_failed_shipment_emits_nothing_and_keeps_it_failed() -> None:
    failed, _ = domain.record_rejection(domain.with_stock(awaiting_stock()), cause(), "shipping_failed: x")

    shipment, events = domain.cancel(failed, cause())

    assert events == []
    assert shipment.status == "FAILED"


async def test_sandbox_carrier_rejects_postal_code_000000() -> None:
    with pytest.raises(CarrierRejected) as rejected:
        await SandboxCarrier().book(
            order_id=ORDER_ID,
            option="standard",
            address=address("000000"),
            ordered_on=ORDERED_ON,
            scheduled_date=None,
        )

    assert "000000" in rejected.value.reason


async def test_sandbox_carrier_gives_the_same_order_the_same_tracking_number() -> None:
    carrier = SandboxCarrier()

    first = await carrier.book(
        order_id=ORDER_ID,
        option="next_day",
        address=address(),
        ordered_on=ORDERED_ON,
        scheduled_date=None,
    )
    second = await carrier.book(
        order_id=ORDER_ID,
        option="next_day",
        address=address(),
        ordered_on=ORDERED_ON,
        scheduled_date=None,
    )

    assert first == second
    assert first.carrier == "SF Express"
    assert first.tracking_number.startswith("SF")
    assert first.promised_date == ORDERED_ON + timedelta(days=1)


async def test_sandbox_carrier_gives_different_orders_different_tracking_numbers() -> None:
    carrier = SandboxCarrier()

    one = await carrier.book(
        order_id="SHOP1-000001",
        option="standard",
        address=address(),
        ordered_on=ORDERED_ON,
        scheduled_date=None,
    )
    two = await carrier.book(
        order_id="SHOP1-000002",
        option="standard",
        address=address(),
        ordered_on=ORDERED_ON,
        scheduled_date=None,
    )

    assert one.tracking_number != two.tracking_number
    assert one.tracking_number.startswith("JD")
