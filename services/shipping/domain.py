"""Shipping rules, pure: which carrier, which promised date, and when a shipment may be booked.

A shipment is booked once the address (``OrderAccepted``) and the stock (``StockReserved``) are both known.
Carrier by delivery option: ``next_day`` -> SF Express (promised the next day); ``standard`` -> JD Logistics
(three days); ``scheduled`` -> JD Logistics on the customer's date.
States: AWAITING -> BOOKING -> SCHEDULED -> CANCELLING -> CANCELLED (called back); BOOKING -> FAILED;
AWAITING -> CANCELLED. BOOKING and CANCELLING are recorded intents: the carrier call they name (:func:`pending`)
is made after the intent is durable and its answer recorded by :func:`record`. A cancellation that meets a
booking in flight is noted; the booking is finished and then called back, so no parcel stays booked for a
cancelled order.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from typing import Literal

from pydantic import BaseModel

from shared.events.base import EmittedEvent, Event
from shared.events.shipping import ShipmentCancelled, ShipmentFailed, ShipmentScheduled
from shared.events.storefront import Address, Shipping

Status = Literal["AWAITING", "BOOKING", "SCHEDULED", "FAILED", "CANCELLING", "CANCELLED"]
Decision = tuple["Shipment", Sequence[EmittedEvent]]

CARRIERS = {"next_day": "SF Express", "standard": "JD Logistics", "scheduled": "JD Logistics"}
TRANSIT_DAYS = {"next_day": 1, "standard": 3}


class Booking(BaseModel):
    carrier: str
    tracking_number: str
    promised_date: date


class Shipment(BaseModel):
    status: Status = "AWAITING"
    option: str = ""
    scheduled_date: date | None = None
    address: Address | None = None
    order_date: date | None = None
    stock_reserved: bool = False
    cancelled: bool = False
    booking: Booking | None = None


def carrier_for(option: str) -> str:
    return CARRIERS[option]


def promised_date(option: str, *, ordered_on: date, scheduled_date: date | None) -> date:
    if option == "scheduled" and scheduled_date is not None:
        return scheduled_date
    return ordered_on + timedelta(days=TRANSIT_DAYS.get(option, 3))


def with_order(s: Shipment | None, shipping: Shipping, ordered_on: date) -> Shipment:
    return (s or Shipment()).model_copy(
        update={
            "option": shipping.option,
            "scheduled_date": shipping.scheduled_date,
            "address": shipping.address,
            "order_date": ordered_on,
        }
    )


def with_stock(s: Shipment | None) -> Shipment:
    return (s or Shipment()).model_copy(update={"stock_reserved": True})


def should_book(s: Shipment) -> bool:
    return s.status == "AWAITING" and s.address is not None and s.stock_reserved and not s.cancelled


class CarrierCall(BaseModel):
    """A carrier call a shipment has pending."""

    model_config = {"frozen": True}

    operation: Literal["book", "cancel"]


class CarrierAnswer(BaseModel):
    booking: Booking | None = None
    rejected: str = ""


def pending(s: Shipment | None) -> CarrierCall | None:
    if s is not None and s.status == "BOOKING":
        return CarrierCall(operation="book")
    if s is not None and s.status == "CANCELLING":
        return CarrierCall(operation="cancel")
    return None


def book(s: Shipment) -> Shipment:
    """Intend to book once the address and the stock are known (and the order is not cancelled)."""
    return s.model_copy(update={"status": "BOOKING"}) if should_book(s) else s


def record(s: Shipment, call: CarrierCall, answer: CarrierAnswer, cause: Event) -> Decision:
    """The carrier answered ``call``."""
    if pending(s) != call:
        return s, []  # already recorded by a replica or a redelivery
    if call.operation == "cancel":
        assert s.booking is not None
        return s.model_copy(update={"status": "CANCELLED"}), [
            ShipmentCancelled.caused_by(cause, tracking_number=s.booking.tracking_number),
        ]
    if answer.booking is None:
        return record_rejection(s, cause, answer.rejected)
    if s.cancelled:
        # Booked for an order cancelled meanwhile: call it back at once; nobody hears of the booking.
        return s.model_copy(update={"status": "CANCELLING", "booking": answer.booking}), []
    return record_booking(s, cause, answer.booking)


def record_booking(s: Shipment, cause: Event, booking: Booking) -> Decision:
    return s.model_copy(update={"status": "SCHEDULED", "booking": booking}), [
        ShipmentScheduled.caused_by(
            cause,
            carrier=booking.carrier,
            tracking_number=booking.tracking_number,
            promised_date=booking.promised_date,
        ),
    ]


def record_rejection(s: Shipment, cause: Event, reason: str) -> Decision:
    return s.model_copy(update={"status": "FAILED"}), [ShipmentFailed.caused_by(cause, reason=reason)]


def cancel(s: Shipment | None) -> Shipment:
    """OrderCancelled: call a booked shipment back (an intent); a booking in flight is called back once answered."""
    s = (s or Shipment()).model_copy(update={"cancelled": True})
    if s.status == "SCHEDULED" and s.booking is not None:
        return s.model_copy(update={"status": "CANCELLING"})
    if s.status == "AWAITING":
        return s.model_copy(update={"status": "CANCELLED"})
    return s
