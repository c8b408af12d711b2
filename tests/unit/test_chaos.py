"""The chaos drill's pure parts: its schedule, the carriers' push modes, when an order is settled, the delivery
figure -- and the simulator calls of the cancel-after-completion kind, against a fake simulator and order API."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tools.drills.chaos import monkey as chaos_monkey
from tools.drills.chaos.drill import _settled, deliveries, restore_pushes, set_pushes
from tools.drills.chaos.monkey import service_processes
from tools.drills.chaos.plan import KINDS, OrderSpec, Plan, Result, push_modes, schedule
from tools.drills.chaos.traffic import Traffic


def test_a_customer_cancelling_a_completed_order_is_a_small_part_of_the_drill() -> None:
    plan = Plan.short(1234, order_url="http://order")

    orders, _ = schedule(plan, "P-")

    assert orders == schedule(plan, "P-")[0]
    assert KINDS["cancel_completed"] / sum(KINDS.values()) < 0.05
    late = [o for o in orders if o.kind == "cancel_completed"]
    assert late
    assert all(o.after_completion and o.cancel_after is not None and 0 <= o.cancel_after <= 1 for o in late)
    assert not any(o.after_completion for o in orders if o.kind != "cancel_completed")


def test_a_cluster_has_each_broker_stopped_in_turn_instead_of_one_restart() -> None:
    plan = Plan(1234, order_url="http://order", brokers=3, kills=0, store=False, smtp_outage=0)

    _, disruptions = schedule(plan, "P-")

    assert [d.action for d in disruptions] == ["brokers"] * 3
    gaps = [b.at - a.at for a, b in itertools.pairwise(disruptions)]
    assert all(gap >= 0.15 * plan.duration for gap in gaps), "one broker down at a time, with room to catch up"
    one = schedule(Plan(1234, order_url="http://order", kills=0, store=False, smtp_outage=0), "P-")[1]
    assert [d.action for d in one] == ["broker"]


def test_the_brokers_of_a_cluster_are_never_taken_for_services_to_kill(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    for name in ("kafka", "kafka-2", "kafka-3", "ferretdb", "order", "order-2", "shipping"):
        (tmp_path / f"{name}.pid").write_text("1")
    monkeypatch.setattr(chaos_monkey, "run_dir", lambda: tmp_path)

    assert service_processes() == ["order", "order-2", "shipping"]


@pytest.mark.parametrize("seed", [1234, 7])
def test_one_carriers_pushes_are_duplicated_and_the_others_delayed(seed: int) -> None:
    modes = push_modes(seed)

    assert sorted(modes) == ["jd", "sf"]
    assert sorted(body["mode"] for body in modes.values()) == ["delay", "duplicate"]
    assert all(body["order_id"] == "*" and body["carrier"] == carrier for carrier, body in modes.items())
    delayed = next(body for body in modes.values() if body["mode"] == "delay")
    assert delayed["delay_seconds"] > 0


def test_which_carrier_is_duplicated_alternates_with_the_seed() -> None:
    assert push_modes(2)["sf"]["mode"] == "duplicate"
    assert push_modes(3)["sf"]["mode"] == "delay"


def view(status: str, *mails: str, delivery: str | None = None) -> dict[str, Any]:
    return {
        "status": status,
        "notifications": [{"kind": k, "status": "SENT"} for k in mails],
        "delivery": None if delivery is None else {"status": delivery, "steps": []},
    }


def test_a_completed_order_is_settled_with_its_mail_without_waiting_for_delivery() -> None:
    assert _settled(view("COMPLETED", "order_completed"))
    assert _settled(view("REJECTED"))
    assert _settled(view("CANCELLED", "order_cancelled"))
    assert not _settled(view("COMPLETED"))
    assert not _settled(view("PENDING", "order_completed"))
    assert not _settled(None)


def test_an_order_cancelled_after_completion_is_settled_only_with_its_cancellation_mail() -> None:
    assert not _settled(view("COMPLETED", "order_completed"), cancelled_after_completion=True)
    # Cancelled in the order view, but the cancellation mail not recorded yet: the completion mail is not the last.
    assert not _settled(view("CANCELLED", "order_completed"))
    assert _settled(view("CANCELLED", "order_completed", "order_cancelled"), cancelled_after_completion=True)


def test_the_delivery_figure_counts_completed_orders_showing_their_parcel_delivered() -> None:
    views: dict[str, dict[str, Any] | None] = {
        "A": view("COMPLETED", "order_completed", delivery="DELIVERED"),
        "B": view("COMPLETED", "order_completed", delivery="IN_TRANSIT"),
        "C": view("COMPLETED", "order_completed"),
        "D": view("CANCELLED", "order_cancelled", delivery="DELIVERED"),  # intercepted, then delivered: not counted
        "E": None,
    }

    assert deliveries(views) == (3, 1)


# ------------------------------------------------------------------ against a fake simulator and order API


class Fake:
    """The simulator's control API and the order API, recording what they were asked."""

    def __init__(self, statuses: list[str] | None = None, sim: Callable[[httpx.Request], int] | None = None) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.statuses = statuses or []
        self.sim = sim or (lambda request: 200)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.calls.append((request.method, request.url.path, body))
        if request.url.path.startswith("/control/"):
            return httpx.Response(self.sim(request), json={})
        if request.method == "POST":
            return httpx.Response(202, json={})
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return httpx.Response(200, json={"status": status})

    def paths(self) -> list[str]:
        return [f"{m} {p}" for m, p, _ in self.calls]


def spec() -> OrderSpec:
    return OrderSpec(at=0, order_id="P-1", kind="cancel_completed", body={}, cancel_after=0.0, after_completion=True)


def traffic(fake: Fake) -> tuple[Traffic, Result, httpx.AsyncClient]:
    http = httpx.AsyncClient(transport=httpx.MockTransport(fake))
    result = Result(seed=1, prefix="P-")
    return Traffic(Plan(seed=1, order_url="http://order"), http, None, result), result, http


async def test_the_parcel_is_held_at_both_carriers_before_the_order_is_placed() -> None:
    fake = Fake(statuses=["PENDING", "COMPLETED"])
    t, result, http = traffic(fake)

    async with http:
        await t.place(spec())

    holds = [(p, b) for m, p, b in fake.calls if p == "/control/parcels/hold"]
    assert holds == [
        ("/control/parcels/hold", {"carrier": "sf", "order_id": "P-1"}),
        ("/control/parcels/hold", {"carrier": "jd", "order_id": "P-1"}),
    ]
    assert fake.paths().index("POST /orders") > fake.paths().index("POST /control/parcels/hold")
    assert result.failures == []


async def test_the_cancellation_waits_for_the_completion() -> None:
    fake = Fake(statuses=["PENDING", "PENDING", "COMPLETED"])
    t, result, http = traffic(fake)

    async with http:
        await t.place(spec())

    paths = fake.paths()
    assert paths.count("GET /orders/P-1") == 3
    assert paths[-1] == "POST /orders/P-1/cancel"
    assert result.cancelled_after_completion == ["P-1"]


async def test_an_order_that_ends_otherwise_is_not_cancelled() -> None:
    fake = Fake(statuses=["CANCELLED"])
    t, result, http = traffic(fake)

    async with http:
        await t.place(spec())

    assert "POST /orders/P-1/cancel" not in fake.paths()
    assert result.cancelled_after_completion == []
    assert any("not COMPLETED" in f for f in result.failures)


async def test_a_simulator_without_carriers_is_noted_and_the_order_still_goes() -> None:
    fake = Fake(statuses=["COMPLETED"], sim=lambda request: 404)
    t, result, http = traffic(fake)

    async with http:
        await t.place(spec())

    assert len([f for f in result.failures if "not held" in f]) == 2
    assert result.cancelled_after_completion == ["P-1"]


async def test_push_modes_are_set_for_the_drill_and_set_back_to_normal() -> None:
    fake = Fake()
    result = Result(seed=3, prefix="P-")

    async with httpx.AsyncClient(transport=httpx.MockTransport(fake)) as http:
        await set_pushes(http, 3, result)
        await restore_pushes(http, result)

    bodies = [b for _, p, b in fake.calls if p == "/control/pushes"]
    assert bodies[:2] == list(push_modes(3).values())
    assert sorted((b["carrier"], b["mode"], b["order_id"]) for b in bodies[2:]) == [
        ("jd", "normal", "*"),
        ("sf", "normal", "*"),
    ]
    assert result.pushes == {"jd": "duplicate", "sf": "delay 3s"}
    assert result.failures == []


async def test_a_simulator_that_does_not_take_push_modes_is_a_disruption_note_not_a_failure() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    result = Result(seed=2, prefix="P-")

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        await set_pushes(http, 2, result)
        await restore_pushes(http, result)

    assert result.pushes == {}
    assert len(result.failures) == 2
    assert all("not in the loop" in f for f in result.failures)
    assert result.ok
