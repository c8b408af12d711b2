"""Shipping rules, pure: which carrier, which promised date, when a shipment may be booked, and what the carrier's
route steps mean for it.

A shipment is booked once the address (``OrderAccepted``) and the stock (``StockReserved``) are both known. The
carrier is chosen by delivery option and region (``SHIPPING_CARRIERS``: ``option=carrier`` pairs, and
``option@<postal-code prefix>=carrier`` for a region; the longest prefix wins). Promised dates: ``next_day`` the
next day, ``standard`` three days, ``scheduled`` the customer's date -- which the carriers deliver on only 1 to 14
days after the order (outside that the shipment fails before any call).
States: AWAITING -> BOOKING -> SCHEDULED -> DELIVERED; SCHEDULED -> CANCELLING -> CANCELLED (called back before
pickup) | INTERCEPTED (the carrier refused: picked up already; the parcel is to come back); BOOKING -> FAILED;
AWAITING -> CANCELLED. BOOKING and CANCELLING are recorded intents: the carrier call they name (:func:`pending`)
is made after the intent is durable and its answer recorded by :func:`record`. A cancellation that meets a
booking in flight is noted; the booking is finished and then called back, so no parcel stays booked for a
cancelled order. Route steps (pushes, route queries) are taken once each by the carrier's step id; each new step
with a milestone is announced (``ShipmentTracked``), and a route query is due when pushes have been quiet.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Literal

from pydantic import BaseModel

from shared.events.base import EmittedEvent, Event
from shared.events.shipping import (
    CarrierCode,
    Milestone,
    ShipmentCancelled,
    ShipmentFailed,
    ShipmentIntercepted,
    ShipmentScheduled,
    ShipmentTracked,
    TrackingStep,
)
from shared.events.storefront import Address, Shipping

Status = Literal["AWAITING", "BOOKING", "SCHEDULED", "DELIVERED", "FAILED", "CANCELLING", "CANCELLED", "INTERCEPTED"]
Decision = tuple["Shipment", Sequence[EmittedEvent]]

CARRIER_NAMES: dict[str, str] = {"sf": "SF Express", "jd": "JD Logistics"}
DEFAULT_CARRIERS = "next_day=sf,standard=jd,scheduled=jd"
OPTIONS = ("standard", "next_day", "scheduled")
TRANSIT_DAYS = {"next_day": 1, "standard": 3}
SCHEDULE_WINDOW_DAYS = (1, 14)  # a scheduled delivery: this many days after the order, both carriers alike
MAX_STEPS = 200  # route steps kept per shipment (a parcel has a dozen; more is a carrier gone wrong)
TRACKING = ("SCHEDULED", "INTERCEPTED")  # states whose parcel is still on its way somewhere


class Booking(BaseModel):
    carrier: str
    tracking_number: str
    promised_date: date


class Shipment(BaseModel):
    status: Status = "AWAITING"
    option: str = ""
    scheduled_date: date | None = None
    address: Address | None = None
    recipient_phone: str = ""
    order_date: date | None = None
    stock_reserved: bool = False
    cancelled: bool = False
    carrier: CarrierCode | None = None
    booking: Booking | None = None
    steps: list[TrackingStep] = []
    milestone: Milestone | None = None
    track_at: datetime | None = None  # the next route query, while the parcel is on its way
    quiet_checks: int = 0  # route queries in a row that found nothing new
    last_track: str = ""  # the cause id of the last route query (what it emitted goes out again if unsent)


def parse_carriers(text: str) -> dict[str, CarrierCode]:
    """``SHIPPING_CARRIERS`` as rules: ``option`` or ``option@postal-prefix`` -> carrier code."""
    rules: dict[str, CarrierCode] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, _, code = pair.partition("=")
        option, _, prefix = key.strip().partition("@")
        if option not in OPTIONS or code.strip() not in CARRIER_NAMES or (prefix and not prefix.isdigit()):
            raise ValueError(f"{pair!r}: expected option[@postal-prefix]=carrier, option in {OPTIONS}, carrier sf|jd")
        rules[key.strip()] = code.strip()  # type: ignore[assignment]
    missing = [o for o in OPTIONS if o not in rules]
    if missing:
        raise ValueError(f"no carrier for option(s) {', '.join(missing)}")
    return rules


def choose_carrier(rules: Mapping[str, CarrierCode], option: str, postal_code: str) -> CarrierCode:
    regional = [k for k in rules if k.startswith(option + "@") and postal_code.startswith(k.split("@", 1)[1])]
    return rules[max(regional, key=len)] if regional else rules[option]


def carrier_for(option: str) -> str:
    """The carrier's name under the default rules."""
    return CARRIER_NAMES[parse_carriers(DEFAULT_CARRIERS)[option]]


def promised_date(option: str, *, ordered_on: date, scheduled_date: date | None) -> date:
    if option == "scheduled" and scheduled_date is not None:
        return scheduled_date
    return ordered_on + timedelta(days=TRANSIT_DAYS.get(option, 3))


def refused_before_booking(s: Shipment, phone_fallback: str = "") -> str:
    """Why the carrier would refuse this booking whatever we sent, or ''. SF Express and JD Logistics both need a
    number for the recipient: without the customer's, ``phone_fallback`` (the shop's service line) stands in, and
    without that the booking is refused here rather than by the carrier."""
    if not recipient_phone(s, phone_fallback):
        return (
            "shipping_failed: the order has no customer.phone and the carriers need one to deliver "
            "(SHIPPING_RECIPIENT_PHONE_FALLBACK=refuse)"
        )
    if s.option != "scheduled" or s.scheduled_date is None or s.order_date is None:
        return ""
    first, last = (s.order_date + timedelta(days=d) for d in SCHEDULE_WINDOW_DAYS)
    if first <= s.scheduled_date <= last:
        return ""
    return (
        f"shipping_failed: scheduled date {s.scheduled_date} is not one the carriers deliver on "
        f"({first} to {last} for an order of {s.order_date})"
    )


def recipient_phone(s: Shipment, phone_fallback: str = "") -> str:
    """The number the courier calls: the customer's, else the shop's service line when one is configured."""
    return s.recipient_phone or phone_fallback


def with_order(s: Shipment | None, shipping: Shipping, ordered_on: date, phone: str | None = None) -> Shipment:
    return (s or Shipment()).model_copy(
        update={
            "option": shipping.option,
            "scheduled_date": shipping.scheduled_date,
            "address": shipping.address,
            "recipient_phone": phone or "",
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
    rejected: str = ""  # the booking was refused for good: why
    refused: str = ""  # the call-back was refused (picked up already): why


def pending(s: Shipment | None) -> CarrierCall | None:
    if s is not None and s.status == "BOOKING":
        return CarrierCall(operation="book")
    if s is not None and s.status == "CANCELLING":
        return CarrierCall(operation="cancel")
    return None


def book(s: Shipment, rules: Mapping[str, CarrierCode]) -> Shipment:
    """Intend to book once the address and the stock are known (and the order is not cancelled)."""
    if not should_book(s):
        return s
    assert s.address is not None
    return s.model_copy(update={"status": "BOOKING", "carrier": choose_carrier(rules, s.option, s.address.postal_code)})


def record(
    s: Shipment, call: CarrierCall, answer: CarrierAnswer, cause: Event, *, track_at: datetime | None = None
) -> Decision:
    """The carrier answered ``call``; ``track_at``: when to query a booked parcel's route if no push came."""
    if pending(s) != call:
        return s, []  # already recorded by a replica or a redelivery
    if call.operation == "cancel":
        assert s.booking is not None
        if answer.refused:
            return s.model_copy(update={"status": "INTERCEPTED"}), [
                ShipmentIntercepted.caused_by(
                    cause, carrier=s.booking.carrier, tracking_number=s.booking.tracking_number, reason=answer.refused
                ),
            ]
        return s.model_copy(update={"status": "CANCELLED", "track_at": None}), [
            ShipmentCancelled.caused_by(cause, tracking_number=s.booking.tracking_number),
        ]
    if answer.booking is None:
        return record_rejection(s, cause, answer.rejected)
    if s.cancelled:
        # Booked for an order cancelled meanwhile: call it back at once; nobody hears of the booking.
        return s.model_copy(update={"status": "CANCELLING", "booking": answer.booking}), []
    return record_booking(s, cause, answer.booking, track_at=track_at)


def record_booking(s: Shipment, cause: Event, booking: Booking, *, track_at: datetime | None = None) -> Decision:
    return s.model_copy(update={"status": "SCHEDULED", "booking": booking, "track_at": track_at}), [
        ShipmentScheduled.caused_by(
            cause,
            carrier=booking.carrier,
            tracking_number=booking.tracking_number,
            promised_date=booking.promised_date,
        ),
    ]


def record_rejection(s: Shipment, cause: Event, reason: str) -> Decision:
    code, _, detail = reason.partition(":")
    return s.model_copy(update={"status": "FAILED"}), [
        ShipmentFailed.caused_by(cause, reason=code or "shipping_failed", detail=detail.strip())
    ]


def cancel(s: Shipment | None) -> Shipment:
    """OrderCancelled: call a booked shipment back (an intent); a booking in flight is called back once answered.
    A parcel already delivered cannot be called back: that is recorded as an interception too."""
    s = (s or Shipment()).model_copy(update={"cancelled": True})
    if s.status in ("SCHEDULED", "DELIVERED") and s.booking is not None:
        return s.model_copy(update={"status": "CANCELLING"})
    if s.status == "AWAITING":
        return s.model_copy(update={"status": "CANCELLED"})
    return s


def milestone_of(steps: Iterable[TrackingStep]) -> Milestone | None:
    """Where the parcel is: delivered once any step says so, else the milestone of the latest step that has one
    (steps arrive out of order and twice; they are ordered by the carrier's time)."""
    tracked = sorted((s for s in steps if s.milestone is not None), key=lambda s: s.at)
    if any(s.milestone == "DELIVERED" for s in tracked):
        return "DELIVERED"
    return tracked[-1].milestone if tracked else None


def track(s: Shipment, steps: Sequence[TrackingStep], cause: Event) -> Decision:
    """Route steps from a push or a route query: the new ones are kept and those with a milestone announced."""
    if s.status not in (*TRACKING, "DELIVERED", "CANCELLING") or s.booking is None:
        return s, []
    known = {step.step_id for step in s.steps}
    new: list[TrackingStep] = []
    for step in sorted(steps, key=lambda st: st.at):
        if step.step_id not in known and len(s.steps) + len(new) < MAX_STEPS:
            known.add(step.step_id)
            new.append(step)
    if not new:
        return s, []
    kept = [*s.steps, *new]
    milestone = milestone_of(kept)
    update: dict[str, object] = {"steps": kept, "milestone": milestone, "quiet_checks": 0}
    if milestone == "DELIVERED" and s.status == "SCHEDULED":
        update |= {"status": "DELIVERED", "track_at": None}
    booking = s.booking
    return s.model_copy(update=update), [
        ShipmentTracked.caused_by(
            cause,
            carrier=booking.carrier,
            tracking_number=booking.tracking_number,
            milestone=step.milestone,
            at=step.at,
            location=step.location,
            description=step.description,
            code=step.code,
        )
        for step in new
        if step.milestone is not None
    ]


def next_track(s: Shipment, *, at: datetime, interval: timedelta) -> Shipment:
    """After a route query: the next one, backing off while nothing moves (at most 16 intervals apart)."""
    if s.status not in TRACKING:
        return s.model_copy(update={"track_at": None})
    quiet = s.quiet_checks + 1
    return s.model_copy(update={"track_at": at + interval * min(2**quiet, 16), "quiet_checks": quiet})
