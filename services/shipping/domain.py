"""Shipping rules, pure: which carrier, which promised date, and when a shipment may be booked.

A shipment is booked once the address (``OrderAccepted``) and the stock (``StockReserved``) are both known.
Carrier by delivery option: ``next_day`` -> SF Express (promised the next day); ``standard`` -> JD Logistics
(three days); ``scheduled`` -> JD Logistics on the customer's date.
States: AWAITING -> SCHEDULED -> CANCELLED (called back); AWAITING -> FAILED | CANCELLED.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from typing import Literal

from pydantic import BaseModel

from shared.events.base import EmittedEvent, Event
from shared.events.shipping import ShipmentCancelled, ShipmentFailed, ShipmentScheduled
from shared.events.storefront import Address, Shipping

Status = Literal["AWAITING", "SCHEDULED", "FAILED", "CANCELLED"]
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


def cancel(s: Shipment | None, cause: Event) -> Decision:
    s = (s or Shipment()).model_copy(update={"cancelled": True})
    if s.status == "SCHEDULED" and s.booking is not None:
        return s.model_copy(update={"status": "CANCELLED"}), [
            ShipmentCancelled.caused_by(cause, tracking_number=s.booking.tracking_number),
        ]
    if s.status == "AWAITING":
        return s.model_copy(update={"status": "CANCELLED"}), []
    return s, []
