"""Each shipping handler on the in-memory store and broker, booking at the sandbox carrier: no server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.shipping.carrier import SandboxCarrier
from services.shipping.domain import Shipment
from services.shipping.handlers import (
    TRACK,
    CarrierCalls,
    Deps,
    book_on_stock_reserved,
    call_back_on_order_cancelled,
    handlers,
    record_route_push,
    remember_address_on_order_accepted,
    shipment_timers,
    track_at_carrier,
)
from services.shipping.store import ShipmentStore
from shared import topics
from shared.consumer import NotYet, PermanentError
from shared.events.shipping import (
    CarrierPushed,
    ShipmentCancelled,
    ShipmentFailed,
    ShipmentScheduled,
    ShipmentTracked,
    TrackingStep,
)
from shared.fakes import InMemoryBroker, InMemoryDatabase
from shared.mongo import Timers
from shared.unit_of_work import UnitOfWork
from tests.unit.factories import (
    ORDER_ID,
    cause,
    order_accepted,
    order_cancelled,
    order_placed,
    stock_reserved,
)

FAR = datetime(2100, 1, 1, tzinfo=UTC)  # a time every timer set by a test is due at


class RoutedCarrier(SandboxCarrier):
    """The sandbox carrier, with a route to report for the parcels it booked."""

    def __init__(self) -> None:
        super().__init__("sf")
        self.route: list[TrackingStep] = []
        self.asked: list[tuple[str, str]] = []

    async def routes(self, order_id: str, tracking_number: str) -> list[TrackingStep]:
        self.asked.append((order_id, tracking_number))
        return list(self.route)


@pytest.fixture
def broker() -> InMemoryBroker:
    return InMemoryBroker()


@pytest.fixture
def carrier() -> RoutedCarrier:
    return RoutedCarrier()


@pytest.fixture
def deps(broker: InMemoryBroker, carrier: RoutedCarrier) -> Deps:
    """As services/shipping/app.py wires them (the sample order goes next_day, i.e. SF), all in memory."""
    db = InMemoryDatabase().db
    store = ShipmentStore(db, "shipments", Shipment)
    timers = Timers(db)
    calls = CarrierCalls({"sf": carrier, "jd": SandboxCarrier("jd")}, phone_fallback="02000000000")
    shipments = UnitOfWork(
        store, broker, out_topic=topics.SHIPPING_EVENTS, effects=calls, timers=timers, timers_of=shipment_timers
    )
    return Deps(shipments=shipments, store=store, calls=calls, timers=timers)


async def shipment(deps: Deps) -> Shipment:
    doc = await deps.store.read(order_id=ORDER_ID)
    assert doc.state is not None
    return doc.state


async def scheduled(deps: Deps) -> str:
    """The sample order booked; its tracking number."""
    await remember_address_on_order_accepted(order_accepted(), deps)
    await book_on_stock_reserved(stock_reserved(), deps)
    s = await shipment(deps)
    assert s.booking is not None
    return s.booking.tracking_number


def step(step_id: str, minutes: int, milestone: str | None) -> TrackingStep:
    return TrackingStep.model_validate(
        {
            "step_id": step_id,
            "milestone": milestone,
            "at": datetime(2026, 11, 25, 9, tzinfo=UTC) + timedelta(minutes=minutes),
        }
    )


def pushed(tracking_number: str, *steps: TrackingStep) -> CarrierPushed:
    event: CarrierPushed = CarrierPushed.caused_by(
        cause(), carrier="sf", tracking_number=tracking_number, steps=list(steps)
    )
    return event


def test_every_event_the_service_reads_has_its_handler_here() -> None:
    """A handler registered without a test in this module fails here first."""
    assert handlers.handlers == {
        "OrderAccepted": remember_address_on_order_accepted,
        "StockReserved": book_on_stock_reserved,
        "OrderCancelled": call_back_on_order_cancelled,
        "CarrierPushed": record_route_push,
    }
    assert handlers.invalid_handlers == {}


async def test_the_address_alone_books_nothing(deps: Deps, broker: InMemoryBroker, carrier: RoutedCarrier) -> None:
    await remember_address_on_order_accepted(order_accepted(), deps)

    s = await shipment(deps)
    assert (s.status, s.option, s.recipient_phone) == ("AWAITING", "next_day", "+8613800000000")
    assert carrier.held == {}
    assert broker.records == []


async def test_address_and_stock_book_once_with_the_order_id_and_announce_the_schedule(
    deps: Deps, broker: InMemoryBroker, carrier: RoutedCarrier
) -> None:
    await remember_address_on_order_accepted(order_accepted(), deps)
    reserved = stock_reserved()

    await book_on_stock_reserved(reserved, deps)
    await book_on_stock_reserved(reserved, deps)  # redelivered

    assert list(carrier.held) == [ORDER_ID]  # the order id is the carrier's order number: its idempotency key
    s = await shipment(deps)
    assert s.status == "SCHEDULED"
    assert s.booking is not None
    assert s.booking.tracking_number == carrier.held[ORDER_ID].tracking_number
    first, again = broker.events(ORDER_ID)
    assert isinstance(first, ShipmentScheduled)
    assert (first.carrier, first.tracking_number) == ("SF Express", s.booking.tracking_number)
    assert again.event_id == first.event_id
    assert deps.timers is not None
    assert await deps.timers.due(kind=TRACK, at=FAR) == [ORDER_ID]  # a route query, should pushes be quiet


async def test_stock_before_the_address_books_when_the_address_comes(
    deps: Deps, broker: InMemoryBroker, carrier: RoutedCarrier
) -> None:
    await book_on_stock_reserved(stock_reserved(), deps)
    assert carrier.held == {}

    await remember_address_on_order_accepted(order_accepted(), deps)

    assert broker.types(ORDER_ID) == ["ShipmentScheduled"]


async def test_an_address_the_carrier_refuses_fails_the_shipment(
    deps: Deps, broker: InMemoryBroker, carrier: RoutedCarrier
) -> None:
    placed = order_placed(
        shipping={
            "option": "next_day",
            "address": {"recipient": "x", "line1": "y", "city": "z", "postal_code": "000000", "country": "CN"},
        }
    )
    await remember_address_on_order_accepted(order_accepted(placed), deps)

    await book_on_stock_reserved(stock_reserved(), deps)

    assert (await shipment(deps)).status == "FAILED"
    [event] = broker.events(ORDER_ID)
    assert isinstance(event, ShipmentFailed)
    assert event.reason == "shipping_failed"


async def test_a_cancellation_calls_the_booked_parcel_back(
    deps: Deps, broker: InMemoryBroker, carrier: RoutedCarrier
) -> None:
    tracking_number = await scheduled(deps)

    await call_back_on_order_cancelled(order_cancelled("customer_request"), deps)

    assert carrier.held[ORDER_ID].cancelled
    assert (await shipment(deps)).status == "CANCELLED"
    event = broker.events(ORDER_ID)[-1]
    assert isinstance(event, ShipmentCancelled)
    assert event.tracking_number == tracking_number
    assert deps.timers is not None
    assert await deps.timers.due(kind=TRACK, at=FAR) == []  # nothing left to track


async def test_a_cancellation_before_booking_books_nothing_ever(
    deps: Deps, broker: InMemoryBroker, carrier: RoutedCarrier
) -> None:
    await remember_address_on_order_accepted(order_accepted(), deps)

    await call_back_on_order_cancelled(order_cancelled("payment_declined"), deps)
    await book_on_stock_reserved(stock_reserved(), deps)

    assert (await shipment(deps)).status == "CANCELLED"
    assert carrier.held == {}
    assert broker.records == []


async def test_a_push_announces_each_new_milestone_once(deps: Deps, broker: InMemoryBroker) -> None:
    tracking_number = await scheduled(deps)
    picked = step("s1", 0, "PICKED_UP")

    await record_route_push(pushed(tracking_number, picked, step("s2", 5, None)), deps)
    await record_route_push(pushed(tracking_number, picked), deps)  # the carrier pushes the same step again

    tracked = [e for e in broker.events(ORDER_ID) if isinstance(e, ShipmentTracked)]
    assert [e.milestone for e in tracked] == ["PICKED_UP"]
    assert [s.step_id for s in (await shipment(deps)).steps] == ["s1", "s2"]


async def test_a_push_before_the_booking_is_recorded_is_not_yet(deps: Deps, broker: InMemoryBroker) -> None:
    with pytest.raises(NotYet):
        await record_route_push(pushed("SF000000000001", step("s1", 0, "PICKED_UP")), deps)

    assert (await deps.store.read(order_id=ORDER_ID)).state is None
    assert broker.records == []


async def test_a_push_for_another_parcel_is_a_permanent_error(deps: Deps, broker: InMemoryBroker) -> None:
    await scheduled(deps)
    broker.clear()

    with pytest.raises(PermanentError):
        await record_route_push(pushed("SF999999999999", step("s1", 0, "PICKED_UP")), deps)

    assert (await shipment(deps)).steps == []
    assert broker.records == []


async def test_a_route_check_takes_what_the_carrier_reports_and_schedules_the_next(
    deps: Deps, broker: InMemoryBroker, carrier: RoutedCarrier
) -> None:
    tracking_number = await scheduled(deps)
    carrier.route = [step("s1", 0, "PICKED_UP"), step("s9", 60, "DELIVERED")]

    await track_at_carrier(ORDER_ID, deps)

    assert carrier.asked == [(ORDER_ID, tracking_number)]
    assert [e.milestone for e in broker.events(ORDER_ID) if isinstance(e, ShipmentTracked)] == [
        "PICKED_UP",
        "DELIVERED",
    ]
    s = await shipment(deps)
    assert s.status == "DELIVERED"
    assert deps.timers is not None
    assert await deps.timers.due(kind=TRACK, at=FAR) == []  # delivered: no more checks


async def test_a_route_check_of_a_parcel_no_longer_on_its_way_only_clears_its_timer(
    deps: Deps, broker: InMemoryBroker, carrier: RoutedCarrier
) -> None:
    assert deps.timers is not None
    await deps.timers.set(kind=TRACK, key=ORDER_ID, due_at=FAR - timedelta(days=1))  # left over from a crash

    await track_at_carrier(ORDER_ID, deps)

    assert carrier.asked == []
    assert await deps.timers.due(kind=TRACK, at=FAR) == []
    assert broker.records == []
