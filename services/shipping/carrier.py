"""Carriers (SF Express, JD Logistics) behind one interface, and their sandbox.

Sandbox: postal code ``000000`` is rejected as undeliverable; tracking numbers are derived from the order id, so
booking the same order twice (a redelivery, a retry after a crash) returns the same shipment. Like a carrier's own
system, the sandbox keeps its bookings (``carrier_bookings``: one per order, ``booked`` or ``cancelled``), which
makes every parcel countable by ``fulfil verify`` and the tests.
"""

from __future__ import annotations

import contextlib
import hashlib
from datetime import date
from typing import Any, Protocol

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.shipping.domain import Booking, carrier_for, promised_date
from shared import telemetry
from shared.events.base import now
from shared.events.storefront import Address
from shared.mongo import grouped


class CarrierRejected(Exception):
    """The carrier refused the booking; ``reason`` is what the order's history shows."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Carrier(Protocol):
    async def book(
        self,
        *,
        order_id: str,
        option: str,
        address: Address,
        ordered_on: date,
        scheduled_date: date | None,
    ) -> Booking: ...

    async def cancel(self, *, order_id: str, tracking_number: str) -> None: ...


class SandboxCarrier:
    def __init__(self, db: AsyncDatabase[dict[str, Any]] | None = None) -> None:
        self.bookings = db["carrier_bookings"] if db is not None else None

    async def _record(self, order_id: str, **fields: Any) -> None:
        # A booking is inserted (a repeat of it is a duplicate: same parcel), a cancellation updates it by _id:
        # both find what they look for, where an upsert of a new key would scan the collection first.
        if self.bookings is None:
            return
        if fields.get("status") == "booked":
            with contextlib.suppress(DuplicateKeyError):
                await grouped(self.bookings).insert({"_id": order_id, **fields, "at": now()})
        else:
            await self.bookings.update_one({"_id": order_id}, {"$set": {**fields, "at": now()}})

    async def book(
        self,
        *,
        order_id: str,
        option: str,
        address: Address,
        ordered_on: date,
        scheduled_date: date | None,
    ) -> Booking:
        carrier = carrier_for(option)
        with telemetry.tracer().start_as_current_span(
            "carrier book",
            kind=telemetry.SpanKind.CLIENT,
            attributes={"order.id": order_id, "carrier.name": carrier, "shipping.option": option},
        ):
            if address.postal_code == "000000":
                raise CarrierRejected("shipping_failed: carrier rejected postal code 000000 as undeliverable")
            digits = int(hashlib.sha256(f"{carrier}:{order_id}".encode()).hexdigest(), 16) % 10**12
            prefix = "SF" if carrier == "SF Express" else "JD"
            booking = Booking(
                carrier=carrier,
                tracking_number=f"{prefix}{digits:012d}",
                promised_date=promised_date(option, ordered_on=ordered_on, scheduled_date=scheduled_date),
            )
            await self._record(order_id, status="booked", carrier=carrier, tracking_number=booking.tracking_number)
            return booking

    async def cancel(self, *, order_id: str, tracking_number: str) -> None:
        with telemetry.tracer().start_as_current_span(
            "carrier cancel",
            kind=telemetry.SpanKind.CLIENT,
            attributes={"order.id": order_id, "carrier.tracking_number": tracking_number},
        ):
            await self._record(order_id, status="cancelled", tracking_number=tracking_number)
