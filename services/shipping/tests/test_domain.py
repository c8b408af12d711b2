"""Shipping rules and the sandbox carrier: carrier and date by option, the booking and call-back intents, what a
cancellation undoes -- also when it meets a booking in flight."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from services.shipping import domain
from services.shipping.carrier import CarrierRejected, ParcelOrder, SandboxCarrier
from services.shipping.domain import Booking, CarrierAnswer, CarrierCall, Shipment
from shared.events.shipping import ShipmentCancelled, ShipmentFailed, ShipmentScheduled
from shared.events.storefront import Address
from tests.unit.factories import ORDER_ID, cause, order_placed

ORDERED_ON = date(2026, 11, 25)
CHOSEN_DAY = date(2026, 12, 3)
RULES = domain.parse_carriers(domain.DEFAULT_CARRIERS)
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
    cancelled = domain.cancel(awaiting_stock())

    stocked = domain.with_stock(cancelled)
    assert not domain.should_book(stocked)
    assert domain.book(stocked, RULES) == stocked


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


BOOK, CALL_BACK = CarrierCall(operation="book"), CarrierCall(operation="cancel")


def ready() -> Shipment:
    return domain.with_stock(awaiting_stock())


def booking_in_flight() -> Shipment:
    return domain.book(ready(), RULES)


def scheduled() -> Shipment:
    shipment, _ = domain.record(booking_in_flight(), BOOK, CarrierAnswer(booking=BOOKING), cause())
    return shipment


def test_booking_is_an_intent_recorded_before_the_carrier_is_called() -> None:
    shipment = booking_in_flight()

    assert shipment.status == "BOOKING"
    assert domain.pending(shipment) == BOOK
    assert domain.book(shipment, RULES) == shipment  # a second decision does not book again


def test_nothing_is_booked_while_the_address_or_the_stock_is_missing() -> None:
    assert domain.book(awaiting_stock(), RULES).status == "AWAITING"
    assert domain.pending(domain.book(awaiting_stock(), RULES)) is None


@pytest.mark.parametrize(
    ("status", "call"),
    [
        ("AWAITING", None),
        ("BOOKING", BOOK),
        ("SCHEDULED", None),
        ("FAILED", None),
        ("CANCELLING", CALL_BACK),
        ("CANCELLED", None),
    ],
)
def test_pending_names_the_carrier_call_of_each_intent_and_nothing_else(
    status: domain.Status, call: CarrierCall | None
) -> None:
    assert domain.pending(Shipment(status=status, booking=BOOKING)) == call


def test_nothing_is_pending_without_a_shipment() -> None:
    assert domain.pending(None) is None


def test_an_answered_booking_is_scheduled_and_announced() -> None:
    booked = booking_in_flight()

    shipment, events = domain.record(booked, BOOK, CarrierAnswer(booking=BOOKING), cause())

    assert (shipment.status, shipment.booking) == ("SCHEDULED", BOOKING)
    assert [type(e) for e in events] == [ShipmentScheduled]
    assert domain.pending(shipment) is None


def test_a_rejected_booking_fails_the_shipment_with_the_carrier_reason() -> None:
    shipment, events = domain.record(booking_in_flight(), BOOK, CarrierAnswer(rejected="shipping_failed"), cause())

    assert shipment.status == "FAILED"
    assert len(events) == 1
    failed = events[0]
    assert isinstance(failed, ShipmentFailed)
    assert failed.reason == "shipping_failed"


def test_cancelling_a_scheduled_shipment_is_an_intent_to_call_it_back() -> None:
    shipment = domain.cancel(scheduled())

    assert (shipment.status, shipment.cancelled, shipment.booking) == ("CANCELLING", True, BOOKING)
    assert domain.pending(shipment) == CALL_BACK


def test_an_answered_call_back_cancels_the_shipment_and_announces_its_tracking_number() -> None:
    calling_back = domain.cancel(scheduled())

    shipment, events = domain.record(calling_back, CALL_BACK, CarrierAnswer(booking=BOOKING), cause())

    assert shipment.status == "CANCELLED"
    assert len(events) == 1
    cancelled = events[0]
    assert isinstance(cancelled, ShipmentCancelled)
    assert cancelled.tracking_number == BOOKING.tracking_number
    assert domain.pending(shipment) is None


def test_cancelling_before_booking_cancels_at_once() -> None:
    shipment = domain.cancel(awaiting_stock())

    assert (shipment.status, shipment.cancelled) == ("CANCELLED", True)
    assert domain.pending(shipment) is None


def test_cancelling_an_unknown_shipment_remembers_the_cancellation() -> None:
    shipment = domain.cancel(None)

    assert shipment.cancelled
    assert domain.pending(shipment) is None


def test_cancelling_a_booking_in_flight_only_notes_it() -> None:
    shipment = domain.cancel(booking_in_flight())

    assert (shipment.status, shipment.cancelled) == ("BOOKING", True)
    assert domain.pending(shipment) == BOOK  # the booking is finished first, then called back


def test_a_booking_answered_for_a_cancelled_order_is_called_back_without_being_announced() -> None:
    noted = domain.cancel(booking_in_flight())

    shipment, events = domain.record(noted, BOOK, CarrierAnswer(booking=BOOKING), cause())

    assert events == []  # the order never hears of a shipment it cancelled
    assert (shipment.status, shipment.booking) == ("CANCELLING", BOOKING)  # the call-back needs the tracking number
    assert domain.pending(shipment) == CALL_BACK


def test_cancelling_a_failed_shipment_keeps_it_failed() -> None:
    failed, _ = domain.record_rejection(ready(), cause(), "shipping_failed: x")

    shipment = domain.cancel(failed)

    assert shipment.status == "FAILED"
    assert domain.pending(shipment) is None


@pytest.mark.parametrize(
    ("shipment", "call"),
    [
        (Shipment(status="SCHEDULED", booking=BOOKING), BOOK),  # a replica recorded the booking first
        (Shipment(status="CANCELLED", booking=BOOKING), CALL_BACK),
        (Shipment(status="CANCELLING", booking=BOOKING), BOOK),
        (Shipment(status="AWAITING"), BOOK),
    ],
)
def test_an_answer_to_a_call_no_longer_pending_changes_nothing(shipment: Shipment, call: CarrierCall) -> None:
    recorded, events = domain.record(shipment, call, CarrierAnswer(booking=BOOKING), cause())

    assert (recorded, events) == (shipment, [])


def parcel(order_id: str = ORDER_ID, postal_code: str = "100080", option: str = "standard") -> ParcelOrder:
    return ParcelOrder(order_id=order_id, option=option, address=address(postal_code), ordered_on=ORDERED_ON)


async def test_sandbox_carrier_rejects_postal_code_000000() -> None:
    with pytest.raises(CarrierRejected) as rejected:
        await SandboxCarrier("jd").create(parcel(postal_code="000000"))

    assert "000000" in rejected.value.reason


async def test_sandbox_carrier_gives_the_same_order_the_same_tracking_number() -> None:
    carrier = SandboxCarrier("sf")

    first = await carrier.create(parcel(option="next_day"))
    second = await carrier.create(parcel(option="next_day"))

    assert first == second
    assert carrier.name == "SF Express"
    assert first.tracking_number.startswith("SF")


async def test_sandbox_carrier_gives_different_orders_different_tracking_numbers() -> None:
    carrier = SandboxCarrier("jd")

    one = await carrier.create(parcel("SHOP1-000001"))
    two = await carrier.create(parcel("SHOP1-000002"))

    assert one.tracking_number != two.tracking_number
    assert one.tracking_number.startswith("JD")
