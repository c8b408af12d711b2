"""Events the shipping service writes to ``shipping.events``, and the carriers' pushes on its own topic."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import Field

from shared.events.base import Contract, EmittedEvent, UtcDatetime

CarrierCode = Literal["sf", "jd"]
# Where a parcel is, in the carriers' common terms (each carrier's own operation codes map onto these).
Milestone = Literal["PICKED_UP", "IN_TRANSIT", "OUT_FOR_DELIVERY", "DELIVERED", "EXCEPTION"]


class ShipmentScheduled(EmittedEvent):
    event_type: Literal["ShipmentScheduled"] = "ShipmentScheduled"
    carrier: str
    tracking_number: str
    promised_date: date


class ShipmentFailed(EmittedEvent):
    event_type: Literal["ShipmentFailed"] = "ShipmentFailed"
    reason: str
    detail: str = ""  # the carrier's words, or ours when a booking is refused before any call (schema addition)


class ShipmentCancelled(EmittedEvent):
    """A booked parcel was called back at its carrier before pickup, because the order was cancelled."""

    event_type: Literal["ShipmentCancelled"] = "ShipmentCancelled"
    tracking_number: str


class ShipmentIntercepted(EmittedEvent):
    """The order was cancelled after the carrier had picked the parcel up: the carrier refused the call-back, so
    the parcel is to be intercepted and returned to the sender (the money is refunded all the same).
    (Schema addition.)"""

    event_type: Literal["ShipmentIntercepted"] = "ShipmentIntercepted"
    carrier: str
    tracking_number: str
    reason: str


class TrackingStep(Contract):
    """One step of a parcel's route as its carrier reported it (a push or a route query)."""

    step_id: str = Field(min_length=1, max_length=128)  # the carrier's id of the step, or a digest of it
    milestone: Milestone | None = None  # None: a step of no milestone we follow (it is kept, not announced)
    code: str = Field(default="", max_length=64)  # the carrier's own operation code
    at: UtcDatetime
    location: str = Field(default="", max_length=200)
    description: str = Field(default="", max_length=500)


class ShipmentTracked(EmittedEvent):
    """The parcel reached a milestone (picked up, in transit, out for delivery, delivered, an exception), as its
    carrier pushed it or a route query found it; each carrier step is announced once. (Schema addition.)"""

    event_type: Literal["ShipmentTracked"] = "ShipmentTracked"
    carrier: str
    tracking_number: str
    milestone: Milestone
    at: UtcDatetime  # when the carrier says it happened
    location: str = ""
    description: str = ""
    code: str = ""


ShippingEvent = ShipmentScheduled | ShipmentFailed | ShipmentCancelled | ShipmentIntercepted | ShipmentTracked


class CarrierPushed(EmittedEvent):
    """A carrier's route push, its signature verified by the shipping service's notify endpoint, on the shipping
    service's own topic ``shipping.notifications`` (answered to the carrier only once Kafka has it)."""

    event_type: Literal["CarrierPushed"] = "CarrierPushed"
    carrier: CarrierCode
    tracking_number: str = Field(max_length=64)
    steps: list[TrackingStep] = Field(max_length=200)


CarrierPushEvent = CarrierPushed
