"""Carrier choice by option and region, the scheduled-date window, a call-back refused after pickup, route steps
taken once each, the route-query backoff, and the booking that recovers a lost reply by query."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta

import pytest

from services.shipping import domain
from services.shipping.carrier import (
    CarrierDuplicate,
    CarrierUnavailable,
    ParcelOrder,
    Pushed,
    Waybill,
    book,
)
from services.shipping.domain import Booking, CarrierAnswer, CarrierCall, Shipment
from shared.events.shipping import CarrierCode, Milestone, ShipmentIntercepted, ShipmentTracked, TrackingStep
from tests.unit.factories import AT, ORDER_ID, cause, order_placed

BOOKING = Booking(carrier="JD Logistics", tracking_number="JDV000000000042", promised_date=date(2026, 11, 28))
RULES = domain.parse_carriers("next_day=sf,standard=jd,scheduled=jd,standard@83=sf,standard@830=jd")


def step(step_id: str, milestone: Milestone | None, minutes: int) -> TrackingStep:
    return TrackingStep(step_id=step_id, milestone=milestone, code="x", at=AT + timedelta(minutes=minutes))


def on_its_way() -> Shipment:
    return Shipment(status="SCHEDULED", booking=BOOKING, track_at=AT + timedelta(minutes=1))


@pytest.mark.parametrize(
    ("option", "postal_code", "carrier"),
    [
        ("next_day", "100080", "sf"),
        ("standard", "100080", "jd"),
        ("standard", "831000", "sf"),  # a region's own rule
        ("standard", "830001", "jd"),  # the longer prefix wins
        ("scheduled", "831000", "jd"),  # a region rule is per option
    ],
)
def test_the_carrier_is_chosen_by_option_and_region(option: str, postal_code: str, carrier: str) -> None:
    assert domain.choose_carrier(RULES, option, postal_code) == carrier


@pytest.mark.parametrize(
    "text", ["next_day=sf,standard=jd", "next_day=ups,standard=jd,scheduled=jd", "next_day@xx=sf,standard=jd"]
)
def test_carrier_rules_that_leave_an_option_open_or_name_an_unknown_carrier_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        domain.parse_carriers(text)


def test_the_booking_intent_names_the_chosen_carrier() -> None:
    placed = order_placed()
    shipping = placed.shipping.model_copy(
        update={"address": placed.shipping.address.model_copy(update={"postal_code": "831000"})}
    )
    s = domain.with_stock(domain.with_order(None, shipping, date(2026, 11, 25)))

    assert domain.book(s, RULES).carrier == domain.choose_carrier(RULES, shipping.option, "831000")


@pytest.mark.parametrize(("days", "refused"), [(0, True), (1, False), (14, False), (15, True), (-3, True)])
def test_a_scheduled_date_outside_what_the_carriers_deliver_on_is_refused_before_any_call(
    days: int, refused: bool
) -> None:
    ordered = date(2026, 12, 4)
    s = Shipment(
        option="scheduled",
        order_date=ordered,
        scheduled_date=ordered + timedelta(days=days),
        recipient_phone="+8613800000000",
    )

    reason = domain.refused_before_booking(s)

    assert bool(reason) is refused
    if refused:
        assert reason.startswith("shipping_failed: scheduled date")


@pytest.mark.parametrize(
    ("phone", "fallback", "booked_with"),
    [("+8613800000000", "02000000000", "+8613800000000"), ("", "02000000000", "02000000000"), ("", "", "")],
)
def test_an_order_without_a_phone_is_booked_with_the_service_line_or_refused_before_any_call(
    phone: str, fallback: str, booked_with: str
) -> None:
    s = Shipment(option="standard", order_date=date(2026, 12, 4), recipient_phone=phone)

    reason = domain.refused_before_booking(s, fallback)

    assert domain.recipient_phone(s, fallback) == booked_with
    assert bool(reason) is not bool(booked_with)
    if reason:
        assert "customer.phone" in reason


def test_a_call_back_refused_after_pickup_records_an_interception() -> None:
    calling_back = domain.cancel(on_its_way())

    s, events = domain.record(
        calling_back, CarrierCall(operation="cancel"), CarrierAnswer(booking=BOOKING, refused="picked_up"), cause()
    )

    assert s.status == "INTERCEPTED"
    assert len(events) == 1
    assert isinstance(events[0], ShipmentIntercepted)
    assert (events[0].tracking_number, events[0].reason) == (BOOKING.tracking_number, "picked_up")
    assert domain.pending(s) is None


def test_new_route_steps_are_announced_once_each_in_the_carriers_order() -> None:
    steps = [step("b", "IN_TRANSIT", 30), step("a", "PICKED_UP", 5), step("n", None, 10)]

    s, events = domain.track(on_its_way(), steps, cause())
    again, repeated = domain.track(s, [steps[0], step("a", "PICKED_UP", 5)], cause())

    assert [e.milestone for e in events if isinstance(e, ShipmentTracked)] == ["PICKED_UP", "IN_TRANSIT"]
    assert all(e.tracking_number == BOOKING.tracking_number for e in events if isinstance(e, ShipmentTracked))
    assert [st.step_id for st in s.steps] == ["a", "n", "b"]
    assert s.milestone == "IN_TRANSIT"
    assert (again, repeated) == (s, [])


def test_delivery_ends_tracking_and_its_timer_and_a_late_step_does_not_undo_it() -> None:
    delivered, _ = domain.track(on_its_way(), [step("d", "DELIVERED", 60)], cause())
    late, events = domain.track(delivered, [step("e", "EXCEPTION", 40)], cause())

    assert (delivered.status, delivered.milestone, delivered.track_at) == ("DELIVERED", "DELIVERED", None)
    assert late.milestone == "DELIVERED"
    assert [e.milestone for e in events if isinstance(e, ShipmentTracked)] == ["EXCEPTION"]


def test_steps_before_the_booking_is_recorded_or_after_a_call_back_change_nothing() -> None:
    for s in (Shipment(status="BOOKING"), Shipment(status="CANCELLED", booking=BOOKING)):
        assert domain.track(s, [step("a", "PICKED_UP", 5)], cause()) == (s, [])


def test_route_queries_back_off_while_nothing_moves_and_stop_once_delivered() -> None:
    interval = timedelta(seconds=60)
    s = on_its_way()
    gaps = []
    for _ in range(6):
        s = domain.next_track(s, at=AT, interval=interval)
        assert s.track_at is not None
        gaps.append((s.track_at - AT) // interval)

    assert gaps == [2, 4, 8, 16, 16, 16]
    assert domain.next_track(Shipment(status="DELIVERED", booking=BOOKING), at=AT, interval=interval).track_at is None


class Forgetful:
    """A carrier whose create takes effect but whose reply is lost (or that already holds the order)."""

    code: CarrierCode = "jd"
    name = "JD Logistics"

    def __init__(self, error: Exception, held: Waybill | None) -> None:
        self.error, self.held = error, held
        self.calls: list[str] = []

    async def create(self, order: ParcelOrder) -> Waybill:
        self.calls.append("create")
        raise self.error

    async def query(self, order_id: str) -> Waybill | None:
        self.calls.append("query")
        return self.held

    async def cancel(self, order_id: str, tracking_number: str) -> None:
        raise AssertionError("not called")

    async def routes(self, order_id: str, tracking_number: str) -> list[TrackingStep]:
        return []

    def parse_push(self, body: bytes, content_type: str, query: Mapping[str, str]) -> list[Pushed]:
        return []

    def push_reply(self, *, ok: bool) -> tuple[bytes, str]:
        return b"", "text/plain"

    async def aclose(self) -> None:
        return None


def parcel() -> ParcelOrder:
    return ParcelOrder(
        order_id=ORDER_ID, option="standard", address=order_placed().shipping.address, ordered_on=date(2026, 12, 4)
    )


@pytest.mark.parametrize("error", [CarrierUnavailable("timeout"), CarrierDuplicate("8016")])
async def test_a_lost_create_reply_is_recovered_by_query_without_a_second_create(error: Exception) -> None:
    carrier = Forgetful(error, held=Waybill(tracking_number="JDV1"))

    waybill = await book(carrier, parcel())

    assert waybill.tracking_number == "JDV1"
    assert carrier.calls == ["create", "query"]


@pytest.mark.parametrize("held", [None, Waybill(tracking_number="JDV1", cancelled=True)])
async def test_an_unknown_outcome_the_carrier_does_not_confirm_stays_unknown(held: Waybill | None) -> None:
    carrier = Forgetful(CarrierUnavailable("timeout"), held=held)

    with pytest.raises(CarrierUnavailable):
        await book(carrier, parcel())
    assert carrier.calls == ["create", "query"]
