"""Events the shipping service writes to ``shipping.events``."""

from __future__ import annotations

from datetime import date
from typing import Literal

from shared.events.base import EmittedEvent


class ShipmentScheduled(EmittedEvent):
    event_type: Literal["ShipmentScheduled"] = "ShipmentScheduled"
    carrier: str
    tracking_number: str
    promised_date: date


class ShipmentFailed(EmittedEvent):
    event_type: Literal["ShipmentFailed"] = "ShipmentFailed"
    reason: str


class ShipmentCancelled(EmittedEvent):
    """A scheduled shipment was called back because the order was cancelled first. (Added: not in the design.)"""

    event_type: Literal["ShipmentCancelled"] = "ShipmentCancelled"
    tracking_number: str


ShippingEvent = ShipmentScheduled | ShipmentFailed | ShipmentCancelled
