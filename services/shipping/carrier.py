"""Carriers behind one interface: the SF Express and JD Logistics clients (``sf.py``, ``jd.py``) and the
in-process sandbox the unit and store tests use.

Every call either answers or raises one of the errors below, which say what the saga may do next:
:class:`CarrierRejected` is final (the parcel will never be booked as asked), :class:`CarrierDuplicate` and
:class:`CarrierUnavailable` leave the outcome unknown -- :func:`book` then asks the carrier what it holds under the
order id before anything else, so a lost reply never books a second parcel.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Mapping
from datetime import date
from typing import Any, Protocol

import httpx
from pydantic import BaseModel, ConfigDict
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shared import telemetry
from shared.events.base import now
from shared.events.shipping import CarrierCode, TrackingStep
from shared.events.storefront import Address
from shared.mongo import grouped

CARRIER_NAMES: dict[str, str] = {"sf": "SF Express", "jd": "JD Logistics"}


class _InFlightLimit(httpx.AsyncBaseTransport):
    """Lets at most ``limit`` requests reach the connection pool; the others wait here, outside every timeout.

    Under a backlog the shipping lanes start hundreds of calls at once. Queued inside httpcore's pool they time
    out as ``PoolTimeout`` (an unknown outcome, so each is followed by a query: more calls) and the pool's
    assignment of queued requests costs time per request per waiting request, which took a whole core.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, limit: int) -> None:
        self._inner = inner
        self._slots = asyncio.Semaphore(limit)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        async with self._slots:
            response = await self._inner.handle_async_request(request)
            await response.aread()  # the slot is held until the body is in, so the connection is free again
            return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def carrier_http(timeout: float, max_in_flight: int = 16) -> httpx.AsyncClient:
    """The HTTP client a carrier client talks through: keep-alive connections, at most ``max_in_flight`` calls."""
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
    return httpx.AsyncClient(
        timeout=timeout, transport=_InFlightLimit(httpx.AsyncHTTPTransport(limits=limits), max_in_flight)
    )


class Sender(BaseModel):
    """Where parcels are picked up (the warehouse), as every booking names it."""

    model_config = ConfigDict(frozen=True)

    name: str = "Fulfil Warehouse"
    phone: str = "02000000000"
    province: str = "上海市"
    city: str = "上海市"
    address: str = "浦东新区 1 号仓"
    postal_code: str = "200000"


class ParcelOrder(BaseModel):
    """What a carrier is asked to carry: our order id is the carrier's order number (its idempotency key)."""

    model_config = ConfigDict(frozen=True)

    order_id: str
    recipient_phone: str = ""
    option: str  # standard | next_day | scheduled
    address: Address
    ordered_on: date
    scheduled_date: date | None = None
    contents: str = "goods"


class Waybill(BaseModel):
    """A booked parcel as the carrier holds it."""

    model_config = ConfigDict(frozen=True)

    tracking_number: str
    promised_date: date | None = None  # when the carrier says (None: it did not say)
    cancelled: bool = False


class Pushed(BaseModel):
    """The steps of one parcel in a carrier's push."""

    model_config = ConfigDict(frozen=True)

    order_id: str | None  # our order id, as the carrier echoes it (None: only the tracking number was given)
    tracking_number: str
    steps: list[TrackingStep]


class CarrierError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CarrierRejected(CarrierError):
    """The carrier refused the booking for good (an address it does not serve, a date it does not deliver on);
    ``reason`` is what the order's history shows."""


class CarrierDuplicate(CarrierError):
    """The carrier already holds an order under this id (a create whose reply was lost, or a second create)."""


class CarrierRefused(CarrierError):
    """The carrier refused a call for the parcel's state: a cancellation after pickup (``picked_up``)."""


class CarrierUnavailable(CarrierError):
    """No answer to rely on (timeout, connection lost, 5xx, a reply that fails its signature): try again later."""


class InvalidPush(CarrierError):
    """A push that fails its signature or its shape: answered with the carrier's failure reply, nothing changes."""


class Carrier(Protocol):
    code: CarrierCode
    name: str  # as shown to customers: "SF Express", "JD Logistics"

    async def create(self, order: ParcelOrder) -> Waybill: ...

    async def query(self, order_id: str) -> Waybill | None:
        """The carrier's record of the order (None: it holds no order under this id)."""
        ...

    async def cancel(self, order_id: str, tracking_number: str) -> None:
        """Call the parcel back (a second call for a cancelled parcel succeeds); CarrierRefused after pickup."""
        ...

    async def routes(self, order_id: str, tracking_number: str) -> list[TrackingStep]: ...

    def parse_push(self, body: bytes, content_type: str, query: Mapping[str, str]) -> list[Pushed]:
        """Verify a route push and read it; InvalidPush when it is forged or garbled."""
        ...

    def push_reply(self, *, ok: bool) -> tuple[bytes, str]:
        """The reply the carrier expects (body, media type): success, or failure so that it pushes again."""
        ...

    async def aclose(self) -> None: ...


async def book(carrier: Carrier, order: ParcelOrder) -> Waybill:
    """Create the parcel, or find the one a lost reply created: never a blind second create."""
    with telemetry.tracer().start_as_current_span(
        "carrier book",
        kind=telemetry.SpanKind.CLIENT,
        attributes={"order.id": order.order_id, "carrier.name": carrier.name, "shipping.option": order.option},
    ):
        try:
            return await carrier.create(order)
        except (CarrierDuplicate, CarrierUnavailable) as e:
            found = await carrier.query(order.order_id)
            if found is None or found.cancelled:
                raise CarrierUnavailable(f"create not confirmed: {e.reason}") from e
            return found


class SandboxCarrier:
    """In-process carrier for the unit and store tests: postal code ``000000`` is refused as undeliverable;
    tracking numbers are derived from the order id; bookings are kept (``carrier_bookings``, one per order,
    ``booked`` or ``cancelled``) when given a database, as a carrier keeps its own; never picked up."""

    def __init__(self, code: CarrierCode = "sf", db: AsyncDatabase[dict[str, Any]] | None = None) -> None:
        self.code = code
        self.name = CARRIER_NAMES[code]
        self.bookings = db["carrier_bookings"] if db is not None else None
        self.held: dict[str, Waybill] = {}

    def _number(self, order_id: str) -> str:
        digits = int(hashlib.sha256(f"{self.name}:{order_id}".encode()).hexdigest(), 16) % 10**12
        return f"{self.code.upper()}{digits:012d}"

    async def _record(self, order_id: str, **fields: Any) -> None:
        if self.bookings is None:
            return
        if fields.get("status") == "booked":
            with contextlib.suppress(DuplicateKeyError):
                await grouped(self.bookings).insert({"_id": order_id, **fields, "at": now()})
        else:
            await self.bookings.update_one({"_id": order_id}, {"$set": {**fields, "at": now()}})

    async def create(self, order: ParcelOrder) -> Waybill:
        if order.address.postal_code == "000000":
            raise CarrierRejected("shipping_failed: carrier rejected postal code 000000 as undeliverable")
        waybill = Waybill(tracking_number=self._number(order.order_id))
        self.held.setdefault(order.order_id, waybill)
        await self._record(order.order_id, status="booked", carrier=self.name, tracking_number=waybill.tracking_number)
        return waybill

    async def query(self, order_id: str) -> Waybill | None:
        return self.held.get(order_id)

    async def cancel(self, order_id: str, tracking_number: str) -> None:
        if order_id in self.held:
            self.held[order_id] = self.held[order_id].model_copy(update={"cancelled": True})
        await self._record(order_id, status="cancelled", tracking_number=tracking_number)

    async def routes(self, order_id: str, tracking_number: str) -> list[TrackingStep]:
        return []

    def parse_push(self, body: bytes, content_type: str, query: Mapping[str, str]) -> list[Pushed]:
        raise InvalidPush("the sandbox carrier does not push")

    def push_reply(self, *, ok: bool) -> tuple[bytes, str]:
        return (b"ok" if ok else b"error"), "text/plain"

    async def aclose(self) -> None:
        return None
