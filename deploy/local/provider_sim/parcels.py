"""Parcels as a carrier keeps them, whatever the carrier: booked under the merchant's order id, moving on their own
along a time-scaled schedule, and each step pushed to the account's registered URL.

After a create a parcel is picked up at 2 s, in transit at 4 s (it leaves the origin hub) and at 6 s (it reaches
the destination's), out for delivery at 8 s and delivered at 10 s, every time multiplied by
``--parcel-time-scale``; the gap before each step is kept when a parcel resumes, so a parcel released after a hold
goes on where it stopped rather than jumping ahead. A cancelled parcel stops; a picked-up one cannot be cancelled.
Tests hold a parcel still (even before it is booked), advance it now, or release it to move on its own again.

Pushes go out one after the other per parcel, so that a parcel's steps arrive in order; one that is not accepted
is tried again after growing (time-scaled) delays, at most three attempts in all, every attempt recorded. A test
sets a standing push mode per order, or for every order (``"*"``) of a carrier: ``hold`` keeps pushes until
released, ``fail`` lets none through (each attempt fails as if the URL could not be reached), ``duplicate`` sends
each twice, ``delay`` sends each ``delay_seconds`` late; ``normal`` clears the mode.

Everything is in memory: a restart forgets every parcel, as the payment side forgets its trades.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import httpx

from .clock import now, rfc3339
from .outbound import Outbound

log = logging.getLogger("provider_sim.parcels")

Milestone = Literal["PICKED_UP", "IN_TRANSIT", "OUT_FOR_DELIVERY", "DELIVERED", "EXCEPTION"]
Status = Literal["created", "cancelled"]
PushMode = Literal["normal", "hold", "fail", "duplicate", "delay"]
PushState = Literal["queued", "held", "sending", "delivered", "failed"]

# (seconds after the create, unscaled; the milestone reached): the automatic schedule, one route step each.
SCHEDULE: tuple[tuple[float, Milestone], ...] = (
    (2.0, "PICKED_UP"),
    (4.0, "IN_TRANSIT"),
    (6.0, "IN_TRANSIT"),
    (8.0, "OUT_FOR_DELIVERY"),
    (10.0, "DELIVERED"),
)
EXCEPTION_STEP = -1  # the step number of an exception route (not on the schedule)
RANK: dict[Milestone, int] = {"PICKED_UP": 1, "IN_TRANSIT": 2, "OUT_FOR_DELIVERY": 3, "DELIVERED": 4}
PUSH_ATTEMPTS = 3
PUSH_RETRY_DELAYS = (5.0, 15.0)  # unscaled seconds before the second and the third attempt
EVERY_ORDER = "*"


class ParcelError(Exception):
    """A control request the parcel's state does not allow; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def route_id() -> str:
    """A carrier's route/trace id: 16 digits, unique enough for a simulator's lifetime."""
    return str(10**15 + secrets.randbelow(9 * 10**15))


@dataclass(frozen=True)
class Route:
    """One step of a parcel's journey; ``step`` is its place on SCHEDULE (EXCEPTION_STEP for an exception)."""

    id: str
    step: int
    milestone: Milestone
    at: datetime


@dataclass
class Parcel:
    carrier: str
    order_id: str
    waybill: str
    details: dict[str, Any]  # the request as the carrier took it, and what it answered (the carrier's own keys)
    created_at: datetime = field(default_factory=now)
    status: Status = "created"
    cancelled_at: datetime | None = None
    routes: list[Route] = field(default_factory=list)
    next_step: int = 0  # the place on SCHEDULE of the step to come
    held: bool = False
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def milestone(self) -> Milestone | None:
        return self.routes[-1].milestone if self.routes else None

    @property
    def picked_up(self) -> bool:
        return bool(self.routes)


# ---------------------------------------------------------------- pushes


@dataclass
class PushAttempt:
    number: int
    at: str
    status: int | None
    reply: str
    error: str | None
    delivered: bool


@dataclass
class Push:
    """One route step pushed to the account's URL (one copy of it, in ``duplicate`` mode)."""

    carrier: str
    order_id: str
    route: Route
    render: Callable[[], tuple[str, dict[str, str], bytes]]  # URL, headers and body of one attempt, signed now
    accepted: Callable[[httpx.Response], bool]  # the carrier's rule for "the merchant has it"
    mode: PushMode
    due: float  # event-loop time before which the first attempt waits (``delay`` mode)
    copy: int = 1
    made_at: datetime = field(default_factory=now)
    attempts: list[PushAttempt] = field(default_factory=list)
    state: PushState = "queued"

    def view(self) -> dict[str, Any]:
        last = self.attempts[-1] if self.attempts else None
        return {
            "route_id": self.route.id,
            "milestone": self.route.milestone,
            "copy": self.copy,
            "mode": self.mode,
            "at": rfc3339(self.made_at),
            "state": self.state,
            "attempts": len(self.attempts),
            "delivered": self.state == "delivered",
            "reply": last.reply if last is not None else None,
            "attempt_log": [a.__dict__ for a in self.attempts],
        }


Key = tuple[str, str]  # (carrier, order id)


@dataclass
class Pusher:
    """Sends the carriers' pushes in order per parcel, under the modes tests set (see the module's docstring)."""

    time_scale: float
    timeout_seconds: float = 5.0
    modes: dict[Key, tuple[PushMode, float]] = field(default_factory=dict)
    held: list[Push] = field(default_factory=list)
    sent: dict[Key, list[Push]] = field(default_factory=dict)
    _tails: dict[Key, asyncio.Task[None]] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _client: Outbound | None = None

    def set_mode(self, carrier: str, order_id: str, mode: PushMode, delay_seconds: float = 0.0) -> None:
        """A standing mode for this order's pushes (``"*"``: every order of the carrier without its own)."""
        if mode == "normal":
            self.modes.pop((carrier, order_id), None)
        else:
            self.modes[(carrier, order_id)] = (mode, delay_seconds)

    def mode_of(self, carrier: str, order_id: str) -> tuple[PushMode, float]:
        return self.modes.get((carrier, order_id)) or self.modes.get((carrier, EVERY_ORDER)) or ("normal", 0.0)

    def send(
        self,
        carrier: str,
        order_id: str,
        route: Route,
        render: Callable[[], tuple[str, dict[str, str], bytes]],
        accepted: Callable[[httpx.Response], bool],
    ) -> None:
        mode, delay = self.mode_of(carrier, order_id)
        due = asyncio.get_running_loop().time() + (delay if mode == "delay" else 0.0)
        for copy in range(1, 3 if mode == "duplicate" else 2):
            push = Push(carrier, order_id, route, render, accepted, mode, due, copy)
            self.sent.setdefault((carrier, order_id), []).append(push)
            if mode == "hold":
                push.state = "held"
                self.held.append(push)
            else:
                self._queue(push)

    def release(self, carrier: str | None = None, order_id: str | None = None) -> int:
        """Send the held pushes (of a carrier, of one order, or all) in the order they were made, and end the
        ``hold`` modes that chose them; how many were released."""

        def chosen(c: str, o: str) -> bool:
            return (carrier is None or c == carrier) and (order_id is None or o == order_id)

        for key, (mode, _) in list(self.modes.items()):
            if mode == "hold" and chosen(*key):
                del self.modes[key]
        released = [p for p in self.held if chosen(p.carrier, p.order_id)]
        self.held = [p for p in self.held if not chosen(p.carrier, p.order_id)]
        loop_time = asyncio.get_running_loop().time()
        for push in released:
            push.state, push.due = "queued", loop_time
            self._queue(push)
        return len(released)

    def of(self, carrier: str, order_id: str) -> list[dict[str, Any]]:
        return [p.view() for p in self.sent.get((carrier, order_id), [])]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def _queue(self, push: Push) -> None:
        """Deliver after the parcel's previous push is done with (delivered or given up): pushes keep their order."""
        key = (push.carrier, push.order_id)
        task = self._spawn(self._after(self._tails.get(key), push))
        self._tails[key] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._tails.get(key) is done:
                del self._tails[key]

        task.add_done_callback(forget)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _after(self, previous: asyncio.Task[None] | None, push: Push) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait({previous})
        await self._deliver(push)

    async def _deliver(self, push: Push) -> None:
        if (wait := push.due - asyncio.get_running_loop().time()) > 0:
            await asyncio.sleep(wait)
        if self._client is None:
            self._client = Outbound(self.timeout_seconds)
        for retry in range(PUSH_ATTEMPTS):
            if retry:
                await asyncio.sleep(PUSH_RETRY_DELAYS[retry - 1] * self.time_scale)
            push.state = "sending"
            if await self._attempt(self._client, push):
                push.state = "delivered"
                return
        push.state = "failed"
        log.warning(
            "%s push of %s route %s given up after %d attempts",
            push.carrier,
            push.order_id,
            push.route.id,
            len(push.attempts),
        )

    @staticmethod
    async def _attempt(client: Outbound, push: Push) -> bool:
        number, at = len(push.attempts) + 1, rfc3339(now())
        if push.mode == "fail":
            push.attempts.append(PushAttempt(number, at, None, "", "not sent: push mode fail", False))
            return False
        url, headers, body = push.render()
        try:
            response = await client.post(url, content=body, headers=headers)
        except httpx.HTTPError as e:
            push.attempts.append(PushAttempt(number, at, None, "", f"{type(e).__name__}: {e}", False))
            return False
        delivered = push.accepted(response)
        push.attempts.append(PushAttempt(number, at, response.status_code, response.text[:200], None, delivered))
        return delivered


# ---------------------------------------------------------------- one carrier's parcels


class Parcels:
    """One carrier's parcels by order id. The carrier books and cancels through it; ``describe`` renders a route
    step in the carrier's words (for the control view), ``on_route`` pushes a new step."""

    def __init__(
        self,
        carrier: str,
        *,
        time_scale: float,
        pusher: Pusher,
        describe: Callable[[Parcel, Route], dict[str, Any]],
        on_route: Callable[[Parcel, Route], None],
    ) -> None:
        self.carrier = carrier
        self.time_scale = time_scale
        self.pusher = pusher
        self.describe = describe
        self.on_route = on_route
        self.parcels: dict[str, Parcel] = {}
        self.waybills: dict[str, str] = {}  # waybill -> order id
        self.held_before_booking: set[str] = set()

    def __contains__(self, order_id: str) -> bool:
        return order_id in self.parcels

    def get(self, order_id: str) -> Parcel | None:
        return self.parcels.get(order_id)

    def by_waybill(self, waybill: str) -> Parcel | None:
        return self.parcels.get(self.waybills.get(waybill, ""))

    def create(self, order_id: str, waybill: str, details: dict[str, Any]) -> Parcel:
        """Book a parcel (the carrier has refused a second one under the same order id before this)."""
        assert order_id not in self.parcels, order_id
        parcel = Parcel(self.carrier, order_id, waybill, details)
        parcel.held = order_id in self.held_before_booking
        self.held_before_booking.discard(order_id)
        self.parcels[order_id] = parcel
        self.waybills[waybill] = order_id
        self._schedule(parcel)
        return parcel

    def cancel(self, order_id: str) -> Literal["cancelled", "picked_up", "not_found"]:
        """Call the parcel back: refused once picked up; a cancelled parcel is cancelled again."""
        parcel = self.parcels.get(order_id)
        if parcel is None:
            return "not_found"
        if parcel.status == "cancelled":
            return "cancelled"
        if parcel.picked_up:
            return "picked_up"
        parcel.status, parcel.cancelled_at = "cancelled", now()
        self._unschedule(parcel)
        return "cancelled"

    # ------------------------------------------------------------ the control API

    def hold(self, order_id: str) -> Parcel | None:
        """Keep the parcel where it is; a parcel not booked yet is held from its booking on."""
        parcel = self.parcels.get(order_id)
        if parcel is None:
            self.held_before_booking.add(order_id)
            return None
        parcel.held = True
        self._unschedule(parcel)
        return parcel

    def release(self, order_id: str) -> Parcel | None:
        """Let the parcel move on its own again: its next step comes its usual gap from now."""
        self.held_before_booking.discard(order_id)
        parcel = self.parcels.get(order_id)
        if parcel is not None and parcel.held:
            parcel.held = False
            self._schedule(parcel)
        return parcel

    def advance(self, order_id: str, to: Milestone) -> Parcel:
        """Every step not yet made up to ``to``, now, each pushed. ``EXCEPTION`` (after a pickup, made now if
        need be) stops the parcel where it is, as a hold does, until it is released or advanced further."""
        parcel = self.parcels.get(order_id)
        if parcel is None:
            raise ParcelError(404, f"no {self.carrier} parcel for order {order_id!r}")
        if parcel.status == "cancelled":
            raise ParcelError(409, f"the {self.carrier} parcel of order {order_id!r} is cancelled")
        if to == "EXCEPTION":
            if parcel.milestone == "DELIVERED":
                raise ParcelError(409, f"the {self.carrier} parcel of order {order_id!r} is delivered")
            if not parcel.picked_up:
                self._step(parcel)
            self._unschedule(parcel)
            parcel.held = True
            self._record(parcel, Route(route_id(), EXCEPTION_STEP, "EXCEPTION", now()))
            return parcel
        self._unschedule(parcel)
        while parcel.next_step < len(SCHEDULE) and RANK[SCHEDULE[parcel.next_step][1]] <= RANK[to]:
            self._step(parcel)
        if not parcel.held:
            self._schedule(parcel)
        return parcel

    def view(self, parcel: Parcel) -> dict[str, Any]:
        return {
            "carrier": self.carrier,
            "order_id": parcel.order_id,
            "waybill": parcel.waybill,
            "status": parcel.status,
            "milestone": parcel.milestone,
            "held": parcel.held,
            "created_at": rfc3339(parcel.created_at),
            "cancelled_at": rfc3339(parcel.cancelled_at) if parcel.cancelled_at else None,
            "routes": [
                {"id": r.id, "milestone": r.milestone, "at": rfc3339(r.at), **self.describe(parcel, r)}
                for r in parcel.routes
            ],
            "pushes": self.pusher.of(self.carrier, parcel.order_id),
            "request": parcel.details.get("request"),
        }

    def views(self) -> list[dict[str, Any]]:
        return [self.view(p) for p in self.parcels.values()]

    def close(self) -> None:
        for parcel in self.parcels.values():
            self._unschedule(parcel)

    # ------------------------------------------------------------ the schedule

    def _schedule(self, parcel: Parcel) -> None:
        """Time the parcel's next step: its gap on SCHEDULE after the step before it (after the create for the
        first), counted from now."""
        self._unschedule(parcel)
        if parcel.status == "cancelled" or parcel.held or parcel.next_step >= len(SCHEDULE):
            return
        at = SCHEDULE[parcel.next_step][0]
        before = SCHEDULE[parcel.next_step - 1][0] if parcel.next_step else 0.0
        delay = (at - before) * self.time_scale
        parcel.timer = asyncio.get_running_loop().call_later(delay, self._on_time, parcel)

    @staticmethod
    def _unschedule(parcel: Parcel) -> None:
        if parcel.timer is not None:
            parcel.timer.cancel()
            parcel.timer = None

    def _on_time(self, parcel: Parcel) -> None:
        parcel.timer = None
        if parcel.status == "cancelled" or parcel.held:
            return
        self._step(parcel)
        self._schedule(parcel)

    def _step(self, parcel: Parcel) -> None:
        step = parcel.next_step
        parcel.next_step += 1
        self._record(parcel, Route(route_id(), step, SCHEDULE[step][1], now()))

    def _record(self, parcel: Parcel, route: Route) -> None:
        parcel.routes.append(route)
        try:
            self.on_route(parcel, route)
        except Exception:  # a push that cannot be made must not stop the parcel
            log.exception("%s push of %s route %s could not be made", self.carrier, parcel.order_id, route.id)
