"""The benchmark of a running system (``make bench`` / ``fulfil bench``): how many orders per second it sustains.

An **open-loop** load generator publishes ``OrderPlaced`` to ``storefront.orders`` at a fixed rate through its own
producer -- the schedule never waits for the system, so a slow saga shows as growing latency and a growing number
of orders in flight, not as a politely slower generator. Orders are realistic: 1-5 lines over a catalogue of
``BENCH-…`` SKUs whose stock the run sets first, a hot SKU in a share of the orders (a flash sale), ~3 % declined
payments (``tok_decline``) and ~2 % out of stock (``SKU-SOLD-OUT``).

What the run reads back, from ``order.events`` and ``notify.events`` (assign + seek, no consumer group):

* completed orders per second;
* latency from the order's *scheduled* placement time to its ``OrderCompleted`` and to its ``NotificationSent``
  (the e-mail), as p50/p90/p99/max. End times are the records' Kafka timestamps, so a busy reader does not
  inflate them; start times are the schedule, so a generator that falls behind does not hide latency.

By default the rate is stepped up (``DEFAULT_STEPS``) until a step does not keep up (not all its orders end
within a short grace, or the orders in flight keep growing); the best rate is then held for 60 s to confirm it,
and the latency is reported at half that rate. In the same run the **broker ceiling** is measured: for each order
the records a happy path produces (8) and consumes (18), with the same keys, partition counts, ``acks=all`` and
idempotence, through the same broker with no processing (``SAGA_FLOW``). The saga's records per second
(completed orders/s x 26) are reported as a ratio of it.

With ``streams`` (``fulfil bench --streams 1000``) a fixed-rate run is made twice in the same run: once without,
then once with that many live-tracking streams (``GET /orders/{id}/stream``) open on orders the bench placed for
them (held in payment review, so the streams idle), and the saga's latency and throughput with the streams are
printed as ratios of those without (:class:`Watchers`).

Figures are printed and written (JSON, PNG chart), never asserted: timings on a shared machine are noisy.
See docs/performance.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from httpx_sse import aconnect_sse
from rich.table import Table

from shared import topics
from shared.kafka import header_map, new_admin, new_consumer, new_producer
from shared.settings import ServiceSettings
from shared.tasks import cancelled
from tools.drills import cpu
from tools.ops.samples import DECLINE_TOKEN, REVIEW_TOKEN, SOLD_OUT_SKU, order_line, order_placed, order_request

TARGET_ORDERS_PER_SECOND = 740
DEFAULT_STEPS = (2, 5, 10, 15, 20, 25, 30, 40, 50, 75, 100, 150, 200, 300, 500, 740)  # finer where 2 cores top out

# The happy path on each topic, from the topic table of docs/events.md:
# topic -> (records one order produces there, consumer groups that read them).
SAGA_FLOW: dict[str, tuple[int, int]] = {
    topics.STOREFRONT_ORDERS: (1, 1),  # OrderPlaced -> order
    topics.ORDER_EVENTS: (2, 4),  # OrderAccepted, OrderCompleted -> payment, inventory, shipping, notify
    topics.PAYMENT_EVENTS: (2, 2),  # PaymentAuthorized, PaymentCaptured -> order, inventory
    topics.INVENTORY_EVENTS: (1, 2),  # StockReserved -> order, shipping
    topics.SHIPPING_EVENTS: (1, 2),  # ShipmentScheduled -> order, payment
    topics.NOTIFY_EVENTS: (1, 1),  # NotificationSent -> order
}
RECORDS_PRODUCED_PER_ORDER = sum(n for n, _ in SAGA_FLOW.values())  # 8
RECORDS_CONSUMED_PER_ORDER = sum(n * groups for n, groups in SAGA_FLOW.values())  # 18
RECORDS_PER_ORDER = RECORDS_PRODUCED_PER_ORDER + RECORDS_CONSUMED_PER_ORDER  # 26

TERMINAL = {"OrderCompleted": "completed", "OrderCancelled": "cancelled", "OrderRejected": "rejected"}
ENDED_STATUSES = {"COMPLETED", "CANCELLED", "REJECTED"}  # what an order stream shows last
HOT_SKU = "BENCH-HOT"
AMPLE_STOCK = 1_000_000

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """What one run does; ``search``, ``fixed`` and ``smoke`` build the three kinds."""

    mode: Literal["search", "fixed", "smoke"]
    steps: tuple[float, ...] = DEFAULT_STEPS
    step_seconds: float = 15.0
    grace_seconds: float = 10.0  # after a step, how long its orders may take to end and still count as kept up
    sustain_seconds: float = 60.0
    latency_seconds: float = 30.0
    rate: float = 0.0  # fixed and smoke runs
    seconds: float = 0.0
    drain_seconds: float = 120.0  # the bounded wait for the last orders at the end of every run
    catalogue_size: int = 200
    hot_share: float = 0.3  # share of orders with the hot SKU in them
    decline_share: float = 0.03
    sold_out_share: float = 0.02
    ceiling_orders: int = 20_000
    ceiling_seconds: float = 60.0  # bound on each half (produce, consume) of the ceiling measurement
    seed: int = 0
    streams: int = 0  # live-tracking streams held open during a second phase, compared with a first without
    review_hold_seconds: float = 20.0  # PAYMENT_REVIEW_HOLD_SECONDS of the running payment service
    inventory_url: str = "http://127.0.0.1:8082"
    order_url: str = "http://127.0.0.1:8080"
    out_dir: Path = Path(".local/bench")

    @classmethod
    def search(cls, **overrides: Any) -> Plan:
        return cls(mode="search", **overrides)

    @classmethod
    def fixed(cls, *, rate: float, seconds: float, **overrides: Any) -> Plan:
        return cls(mode="fixed", rate=rate, seconds=seconds, **overrides)

    @classmethod
    def smoke(cls, **overrides: Any) -> Plan:
        """About ten seconds in all: a small catalogue, a short low-rate run, a small ceiling (CI keeps it working)."""
        base: dict[str, Any] = {
            "rate": 3.0,
            "seconds": 5.0,
            "grace_seconds": 3.0,
            "drain_seconds": 8.0,
            "catalogue_size": 10,
            "ceiling_orders": 2_000,
            "ceiling_seconds": 10.0,
        }
        return cls(mode="smoke", **{**base, **overrides})


# ------------------------------------------------------------------ the orders


class OrderMix:
    """Realistic ``OrderPlaced`` records, reproducible from the seed; each id is ``BENCH-<run>-<n>``."""

    LINES = (1, 2, 3, 4, 5)
    LINE_WEIGHTS = (45, 25, 15, 10, 5)

    def __init__(self, plan: Plan, run: str) -> None:
        self.plan = plan
        self.run = run
        self.prefix = f"BENCH-{run}-"
        self.rng = random.Random(plan.seed)
        self.catalogue = [f"BENCH-{i:04d}" for i in range(plan.catalogue_size)]
        self.prices = {sku: f"{self.rng.randint(190, 99_900) / 100:.2f}" for sku in [*self.catalogue, HOT_SKU]}
        self.prices[SOLD_OUT_SKU] = "19.90"
        self.count = 0

    def next(self) -> tuple[str, bytes, str]:
        """(order id, JSON value, kind: ok | decline | sold_out)."""
        rng = self.rng
        n = self.count
        self.count += 1
        order_id = f"{self.prefix}{n:07d}"
        roll = rng.random()
        kind = "decline" if roll < self.plan.decline_share else "ok"
        if self.plan.decline_share <= roll < self.plan.decline_share + self.plan.sold_out_share:
            kind = "sold_out"
        lines_n = rng.choices(self.LINES, self.LINE_WEIGHTS)[0]
        skus = rng.sample(self.catalogue, min(lines_n, len(self.catalogue)))
        if rng.random() < self.plan.hot_share:
            skus[0] = HOT_SKU
        if kind == "sold_out":
            skus[-1] = SOLD_OUT_SKU
        option = rng.choice(("standard", "standard", "next_day", "scheduled"))
        # The draws keep their old order (event id, quantities, payment method): a seed gives the orders it always did.
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        lines = [order_line(s, rng.choice((1, 1, 1, 2, 3)), self.prices[s]) for s in skus]
        request = order_request(
            order_id,
            lines=lines,
            customer_id=f"bench-{n % 5000}",
            name=f"Bench Customer {n % 997}",
            email=f"{order_id.lower()}@example.com",
            phone="+8613800000000",
            method=rng.choice(("alipay", "wechat_pay", "card")),
            token=DECLINE_TOKEN if kind == "decline" else "tok_bench_ok",
            option=option,
            scheduled_date=(date.today() + timedelta(days=3)).isoformat() if option == "scheduled" else None,
            line1=f"{n % 300 + 1} Zhongguancun St",
        )
        occurred_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        value = order_placed(request, event_id=event_id, occurred_at=occurred_at)
        return order_id, orjson.dumps(value), kind

    def skus(self) -> list[str]:
        """The bench's own SKUs, whose stock the run sets."""
        return [*self.catalogue, HOT_SKU]


async def stock_up(plan: Plan, skus: Iterable[str]) -> None:
    """Ample stock for the bench's SKUs through the inventory API, so the demo catalogue never starves a run."""
    key = os.environ.get("FULFIL_API_KEY")
    headers = {"X-API-Key": key} if key else {}
    limit = asyncio.Semaphore(8)
    async with httpx.AsyncClient(base_url=plan.inventory_url, timeout=15, headers=headers) as http:

        async def put(sku: str) -> None:
            async with limit:
                r = await http.put(f"/stock/{sku}", json={"available": AMPLE_STOCK})
                r.raise_for_status()

        tasks = [asyncio.create_task(put(s)) for s in skus]
        try:
            async with asyncio.timeout(60):
                await asyncio.gather(*tasks)
        except (TimeoutError, httpx.HTTPError) as e:
            raise RuntimeError(f"could not set the bench stock through {plan.inventory_url}: {e!r}") from e
        finally:
            await cancelled(*tasks)


# ------------------------------------------------------------------ what the run reads back


@dataclass
class Track:
    """One placed order as the bench sees it (epoch milliseconds)."""

    placed_ms: float
    phase: int
    kind: str
    sent: bool | None = None  # None until the broker answered the placement
    outcome: str | None = None  # completed | cancelled | rejected
    ended_ms: float | None = None
    mail_ms: float | None = None
    mail_failed: bool = False


@dataclass
class Sample:
    t: float  # seconds since the run started
    placed: int
    completed: int
    ended: int
    phase: str

    @property
    def in_flight(self) -> int:
        return self.placed - self.ended


class Tracker:
    """Follows the run's orders on ``order.events`` and ``notify.events`` (no consumer group, so no offsets move)."""

    def __init__(self, settings: ServiceSettings, prefix: str) -> None:
        self.settings = settings
        self.prefix = prefix.encode()
        self.orders: dict[str, Track] = {}
        self.placed = 0
        self.completed = 0
        self.ended = 0
        self.send_failures = 0
        self.consumer: AIOKafkaConsumer | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = new_consumer(
            self.settings,
            client_id="fulfil-bench",
            enable_auto_commit=False,
            fetch_max_wait_ms=100,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await consumer.start()
        self.consumer = consumer
        parts = [
            TopicPartition(t, p)
            for t in (topics.ORDER_EVENTS, topics.NOTIFY_EVENTS)
            for p in sorted(await _partitions_of(consumer, t))
        ]
        consumer.assign(parts)
        await consumer.seek_to_end(*parts)
        for tp in parts:  # resolve the positions now, before the first order is placed
            await consumer.position(tp)
        self.task = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self.task is not None:
            await cancelled(self.task)
        if self.consumer is not None:
            await self.consumer.stop()

    def expect(self, order_id: str, *, placed_ms: float, phase: int, kind: str) -> None:
        self.orders[order_id] = Track(placed_ms=placed_ms, phase=phase, kind=kind)
        self.placed += 1

    def sent(self, order_id: str, fut: asyncio.Future[Any]) -> None:
        ok = not fut.cancelled() and fut.exception() is None
        self.orders[order_id].sent = ok
        if not ok:
            self.send_failures += 1

    async def _read(self) -> None:
        assert self.consumer is not None
        while True:
            batch = await self.consumer.getmany(timeout_ms=200, max_records=5_000)
            for records in batch.values():
                for r in records:
                    if r.key and r.key.startswith(self.prefix):
                        self._record(r)

    def _record(self, r: Any) -> None:
        track = self.orders.get(r.key.decode())
        if track is None:
            return
        event_type = header_map(r).get("event_type", "")
        data: dict[str, Any] | None = None
        if not event_type or r.topic == topics.NOTIFY_EVENTS:
            try:
                data = orjson.loads(r.value or b"")
            except orjson.JSONDecodeError:
                return
            event_type = str(data.get("event_type", "")) if isinstance(data, dict) else ""
        at = float(r.timestamp)
        if event_type in TERMINAL and track.outcome is None:  # the first end counts; redeliveries do not
            track.outcome, track.ended_ms = TERMINAL[event_type], at
            self.ended += 1
            self.completed += track.outcome == "completed"
        elif event_type == "NotificationSent" and data and data.get("kind") == "order_completed":
            track.mail_ms = track.mail_ms or at
        elif event_type == "NotificationFailed" and data and data.get("kind") == "order_completed":
            track.mail_failed = True

    def sample(self, t: float, phase: str) -> Sample:
        placed = self.placed - self.send_failures  # an order the broker refused is not in flight
        return Sample(t=round(t, 2), placed=placed, completed=self.completed, ended=self.ended, phase=phase)


async def _partitions_of(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    parts: set[int] | None = consumer.partitions_for_topic(topic)
    if not parts:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic)
    if not parts:
        raise LookupError(f"topic {topic} not found: run `fulfil topics apply` (make up does)")
    return parts


# ------------------------------------------------------------------ statistics


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """p50/p90/p99/max in milliseconds (nearest rank), and how many values they describe."""
    if not values:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, int(len(ordered) * p + 0.999999) - 1))], 1)

    return {"count": len(ordered), "p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "max": round(ordered[-1], 1)}


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 for fewer than two distinct x)."""
    if len(points) < 2:
        return 0.0
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


@dataclass
class Phase:
    """One stretch of placements at one rate."""

    index: int
    name: str  # "step", "sustain", "latency", "fixed", "smoke"
    rate: float
    seconds: float
    started_ms: float = 0.0
    ended_ms: float = 0.0
    placed: int = 0
    cpu_pct: dict[str, float] = field(default_factory=dict)  # % of a core per component while placing
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name} {self.rate:g}/s"


def phase_stats(phase: Phase, tracker: Tracker, samples: list[Sample], grace_seconds: float) -> dict[str, Any]:
    """The phase's figures; ``keeps_up`` says whether the system kept pace with its rate."""
    mine = [t for t in tracker.orders.values() if t.phase == phase.index]
    done = [t for t in mine if t.outcome == "completed" and t.ended_ms is not None]
    window = (phase.started_ms, phase.ended_ms)
    completions_in_window = sum(
        1
        for t in tracker.orders.values()
        if t.outcome == "completed" and t.ended_ms is not None and window[0] <= t.ended_ms <= window[1]
    )
    seconds = max((phase.ended_ms - phase.started_ms) / 1000, 1e-3)
    grace_end = phase.ended_ms + grace_seconds * 1000
    ended_in_grace = sum(1 for t in mine if t.ended_ms is not None and t.ended_ms <= grace_end)
    inside = [s for s in samples if s.phase == phase.label]
    half = [s for s in inside if s.t >= (inside[0].t + inside[-1].t) / 2] if inside else []
    growth = slope([(s.t, float(s.in_flight)) for s in half])
    placed_ok = sum(1 for t in mine if t.sent is not False)
    kept_pace = ended_in_grace >= 0.98 * placed_ok
    bounded = growth <= max(0.5, 0.05 * phase.rate)
    return {
        "placed": len(mine),
        "send_failed": sum(1 for t in mine if t.sent is False),
        "completed": len(done),
        "cancelled": sum(1 for t in mine if t.outcome == "cancelled"),
        "rejected": sum(1 for t in mine if t.outcome == "rejected"),
        "not_ended": sum(1 for t in mine if t.outcome is None),
        "ended_within_grace": ended_in_grace,
        "completed_per_s": round(completions_in_window / seconds, 2),
        "in_flight_max": max((s.in_flight for s in inside), default=0),
        "in_flight_growth_per_s": round(growth, 2),
        "keeps_up": kept_pace and bounded,
        "latency_completed_ms": percentiles([t.ended_ms - t.placed_ms for t in done if t.ended_ms]),
        "latency_email_ms": percentiles([t.mail_ms - t.placed_ms for t in done if t.mail_ms]),
        "mail_failed": sum(1 for t in mine if t.mail_failed),
        "cpu_pct": phase.cpu_pct,
        "cpu_ms_per_completed_order": cpu.per_order_ms(phase.cpu_pct, completions_in_window / seconds),
    }


# ------------------------------------------------------------------ the saga run


class SagaRun:
    """Places orders phase by phase and keeps the timeline the chart and the keep-up decisions use."""

    def __init__(self, plan: Plan, settings: ServiceSettings, mix: OrderMix, progress: Progress) -> None:
        self.plan = plan
        self.settings = settings
        self.mix = mix
        self.progress = progress
        self.tracker = Tracker(settings, mix.prefix)
        self.producer = _producer(settings)
        self.phases: list[Phase] = []
        self.samples: list[Sample] = []
        self.current = "setup"
        self.t0 = time.monotonic()
        self.started_ms = time.time() * 1000
        self._ticker: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SagaRun:
        await self.tracker.start()
        await self.producer.start()
        self._ticker = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ticker is not None:
            await cancelled(self._ticker)
        await self.producer.stop()
        await self.tracker.stop()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            s = self.tracker.sample(time.monotonic() - self.t0, self.current)
            self.samples.append(s)
            self.progress(
                f"{self.current:<15} {s.t:4.0f}s placed {s.placed} ended {s.ended} "
                f"(completed {s.completed}) in flight {s.in_flight}"
            )

    async def place(self, name: str, rate: float, seconds: float) -> Phase:
        """Open loop: order n is due at start + n/rate, whatever the system does; bounded in count and time."""
        phase = Phase(index=len(self.phases), name=name, rate=rate, seconds=seconds)
        self.phases.append(phase)
        self.current = phase.label
        total = max(1, round(rate * seconds))
        start = time.monotonic()
        phase.started_ms = time.time() * 1000
        used_before = cpu.snapshot()
        give_up = start + seconds + 30  # a broker that stops answering must not hold the run forever
        while phase.placed < total and time.monotonic() < give_up:
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            while phase.placed < due:
                order_id, value, kind = self.mix.next()
                placed_ms = phase.started_ms + phase.placed * 1000 / rate
                self.tracker.expect(order_id, placed_ms=placed_ms, phase=phase.index, kind=kind)
                fut = await self.producer.send(
                    topics.STOREFRONT_ORDERS, value, key=order_id.encode(), headers=[("event_type", b"OrderPlaced")]
                )
                fut.add_done_callback(lambda f, oid=order_id: self.tracker.sent(oid, f))
                phase.placed += 1
            if phase.placed < total:
                await asyncio.sleep(max(0.0, phase.placed / rate - (time.monotonic() - start)))
        await self.producer.flush()
        phase.ended_ms = time.time() * 1000
        phase.cpu_pct = cpu.usage(used_before, cpu.snapshot())
        return phase

    async def settle(self, phase: Phase, seconds: float) -> None:
        """Wait until the phase's orders ended, at most ``seconds``, then compute its figures."""
        self.current = f"grace {phase.rate:g}/s"
        deadline = time.monotonic() + seconds
        mine = [t for t in self.tracker.orders.values() if t.phase == phase.index]
        while time.monotonic() < deadline:
            if all(t.outcome is not None or t.sent is False for t in mine):
                break
            await asyncio.sleep(0.25)
        phase.stats = phase_stats(phase, self.tracker, self.samples, self.plan.grace_seconds)

    async def drain(self, seconds: float) -> bool:
        """Bounded wait until every order of the run ended and every completed one has its mail; True if so."""
        self.current = "drain"
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if all(
                t.sent is False or (t.outcome is not None and (t.outcome != "completed" or t.mail_ms or t.mail_failed))
                for t in self.tracker.orders.values()
            ):
                return True
            await asyncio.sleep(0.5)
        return False

    async def run_phase(self, name: str, rate: float, seconds: float) -> Phase:
        phase = await self.place(name, rate, seconds)
        await self.settle(phase, self.plan.grace_seconds)
        return phase

    async def search(self) -> tuple[float | None, bool]:
        """Step the rate up until a step does not keep up, then hold the best for ``sustain_seconds``.

        Returns (sustained rate or None, whether the sustain phase confirmed it)."""
        passed: list[float] = []
        for rate in self.plan.steps:
            phase = await self.run_phase("step", rate, self.plan.step_seconds)
            if not phase.stats["keeps_up"]:
                break
            passed.append(rate)
        for rate in reversed(passed[-2:]):  # the best, and once the one below it if the best fails for longer
            await self.drain(self.plan.drain_seconds)
            phase = await self.run_phase("sustain", rate, self.plan.sustain_seconds)
            if phase.stats["keeps_up"]:
                return rate, True
        return (passed[-2] if len(passed) > 1 else passed[0], False) if passed else (None, False)


def _producer(settings: ServiceSettings) -> AIOKafkaProducer:
    """Like the services' producer (acks=all, idempotent, lingering a little so records leave in batches)."""
    return new_producer(
        settings,
        client_id="fulfil-bench",
        acks="all",
        enable_idempotence=True,
        linger_ms=max(settings.kafka_linger_ms, 5),
        max_batch_size=256 * 1024,
        request_timeout_ms=15_000,
    )


# ------------------------------------------------------------------ open order streams


class Watchers:
    """``plan.streams`` live-tracking streams (``GET /orders/{id}/stream``) held open while a phase runs.

    Each is on an order placed for it that waits in payment review (``tok_review``, 20 s on the local stack), so
    it stays PENDING and its stream idles -- what most open streams do. Afterwards the orders are cancelled
    through the API, and each stream must end with its order: the streams were live, not just open. Most end
    CANCELLED; an order whose review ran out before its cancellation was handled goes on and ends COMPLETED (it
    had shipped, so it could no longer be cancelled) -- with hundreds of cancellations queued behind the hold's
    end, about half do. ``ended_by_status`` says which.
    """

    def __init__(self, plan: Plan, settings: ServiceSettings, mix: OrderMix, progress: Progress) -> None:
        self.plan = plan
        self.settings = settings
        self.mix = mix
        self.progress = progress
        self.producer = _producer(settings)
        key = os.environ.get("FULFIL_API_KEY")
        self.http = httpx.AsyncClient(
            base_url=plan.order_url,
            headers={"X-API-Key": key} if key else {},
            timeout=httpx.Timeout(15, read=120),
            limits=httpx.Limits(max_connections=plan.streams + 20, max_keepalive_connections=plan.streams + 20),
        )
        self.order_ids: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.open_now = 0
        self.opened = 0
        self.refused = 0
        self.events = 0
        self.last: dict[str, str] = {}  # order -> last status seen on its stream
        self.events_before = 0
        self.events_in_phase: int | None = None
        self.open_at_phase_end: int | None = None
        self.setup_seconds = 0.0
        self.started = 0.0
        self.phase_seconds = 0.0

    def time_left(self) -> float:
        """Seconds until the first stream orders leave payment review (a margin kept): the phase must end by then,
        or the streams are no longer idle and those orders' sagas load the system being measured."""
        return self.started + self.plan.review_hold_seconds - 3.0 - time.monotonic()

    async def __aenter__(self) -> Watchers:
        self.started = started = time.monotonic()
        await self.producer.start()
        # Each stream opens once its order is accepted (OrderAccepted on order.events): no polling of the API.
        reader = new_consumer(self.settings, client_id="fulfil-bench", enable_auto_commit=False)
        await reader.start()
        try:
            accepted = topics.ORDER_EVENTS
            parts = [TopicPartition(accepted, p) for p in sorted(await _partitions_of(reader, accepted))]
            reader.assign(parts)
            await reader.seek_to_end(*parts)
            for tp in parts:
                await reader.position(tp)
            for _ in range(self.plan.streams):
                order_id, value, _ = self.mix.next()
                order = orjson.loads(value)
                order["payment"]["token"] = REVIEW_TOKEN
                await self.producer.send(
                    topics.STOREFRONT_ORDERS,
                    orjson.dumps(order),
                    key=order_id.encode(),
                    headers=[("event_type", b"OrderPlaced")],
                )
                self.order_ids.append(order_id)
            await self.producer.flush()
            waiting = {oid.encode() for oid in self.order_ids}
            gate = asyncio.Semaphore(50)  # opening reads each order once: not all at the same instant
            deadline = time.monotonic() + 60
            while waiting and time.monotonic() < deadline:
                batch = await reader.getmany(timeout_ms=200)
                for records in batch.values():
                    for r in records:
                        if r.key in waiting and header_map(r).get("event_type") == "OrderAccepted":
                            waiting.discard(r.key)
                            self.tasks.append(asyncio.create_task(self._follow(r.key.decode(), gate)))
                self.progress(f"streams: {len(self.tasks)} orders accepted, {self.opened} streams open")
        finally:
            await reader.stop()
        while self.opened + self.refused < len(self.tasks) and time.monotonic() < deadline:
            self.progress(f"streams: {self.opened} of {len(self.order_ids)} open")
            await asyncio.sleep(0.2)
        self.setup_seconds = time.monotonic() - started
        self.progress(f"streams: {self.opened} open after {self.setup_seconds:.1f}s ({self.refused} refused)")
        self.events_before = self.events
        return self

    def phase_ended(self) -> None:
        self.events_in_phase = self.events - self.events_before
        self.open_at_phase_end = self.open_now

    async def __aexit__(self, *exc: object) -> None:
        try:
            gate = asyncio.Semaphore(20)

            async def cancel(order_id: str) -> None:
                async with gate:
                    with contextlib.suppress(httpx.HTTPError):
                        await self.http.post(f"/orders/{order_id}/cancel")

            await asyncio.gather(*(cancel(oid) for oid in self.order_ids))
            deadline = time.monotonic() + 60
            while self.open_now and time.monotonic() < deadline:
                self.progress(f"streams: {self.open_now} still open after cancelling their orders")
                await asyncio.sleep(0.5)
        finally:
            await cancelled(*self.tasks)
            await self.http.aclose()
            await self.producer.stop()

    async def _follow(self, order_id: str, gate: asyncio.Semaphore) -> None:
        """Open the order's stream (again while it is 404: the order is not stored yet) and read it to its end."""
        counted = False
        try:
            for _ in range(10):
                await gate.acquire()  # held only while the stream opens
                opening = True
                try:
                    async with aconnect_sse(self.http, "GET", f"/orders/{order_id}/stream") as source:
                        gate.release()
                        opening = False
                        if source.response.status_code == 404:  # accepted, but that copy reads it a moment later
                            await asyncio.sleep(0.2)
                            continue
                        if source.response.status_code != 200:
                            self.refused += 1
                            return
                        async for sse in source.aiter_sse():
                            if not sse.data:
                                continue  # keep-alive
                            if not counted:
                                counted = True
                                self.opened += 1
                                self.open_now += 1
                            self.events += 1
                            self.last[order_id] = orjson.loads(sse.data)["status"]
                        return
                finally:
                    if opening:
                        gate.release()
            self.refused += 1
        except httpx.HTTPError:
            self.refused += 1
        finally:
            if counted:
                self.open_now -= 1

    def result(self, baseline: Phase, with_streams: Phase) -> dict[str, Any]:
        """The saga's figures with the streams open as ratios of the same run's figures without them."""

        def ratio(key: str, q: str) -> float | None:
            a, b = baseline.stats[key][q], with_streams.stats[key][q]
            return round(b / a, 3) if a and b else None

        rate_a, rate_b = baseline.stats["completed_per_s"], with_streams.stats["completed_per_s"]
        return {
            "streams": self.plan.streams,
            "opened": self.opened,
            "refused": self.refused,
            "setup_seconds": round(self.setup_seconds, 1),
            "phase_seconds": round(self.phase_seconds, 1),
            "open_at_phase_end": self.open_at_phase_end,
            "events_during_phase": self.events_in_phase,
            "ended": sum(1 for s in self.last.values() if s in ENDED_STATUSES),
            "ended_cancelled": sum(1 for s in self.last.values() if s == "CANCELLED"),
            "ended_by_status": dict(Counter(self.last.values())),
            "served_by": self.plan.order_url,
            "baseline_latency_completed_ms": baseline.stats["latency_completed_ms"],
            "streams_latency_completed_ms": with_streams.stats["latency_completed_ms"],
            "latency_ratio_p50": ratio("latency_completed_ms", "p50"),
            "latency_ratio_p90": ratio("latency_completed_ms", "p90"),
            "latency_ratio_p99": ratio("latency_completed_ms", "p99"),
            "completed_per_s_ratio": round(rate_b / rate_a, 3) if rate_a else None,
        }


# ------------------------------------------------------------------ the broker ceiling


async def ceiling(settings: ServiceSettings, mix: OrderMix, *, orders: int, max_seconds: float) -> dict[str, Any]:
    """Records/s the broker and client move with no processing: per order, what a happy path produces and reads.

    A private topic per saga topic (same partition counts, deleted afterwards); ``orders`` x 8 records produced
    with order-id keys, acks=all and idempotence, with many sends in flight; then read back by one reader per
    consuming group (18 records per order). Each half is bounded by ``max_seconds``.
    """
    run = f"bench-ceiling.{mix.run}"
    admin = new_admin(settings, request_timeout_ms=15_000)
    await admin.start()
    names = {t: f"{run}.{t}" for t in SAGA_FLOW}
    try:
        described = {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics(list(SAGA_FLOW))}
        counts = {t: described.get(t) or 3 for t in SAGA_FLOW}
        await admin.create_topics([NewTopic(names[t], counts[t], 1) for t in SAGA_FLOW])
        try:
            await _leaders_elected(admin, list(names.values()))
            return await _ceiling_on(settings, mix, names, counts, orders=orders, max_seconds=max_seconds)
        finally:
            await admin.delete_topics(list(names.values()))
    finally:
        await admin.close()


async def _leaders_elected(admin: AIOKafkaAdminClient, names: list[str], *, seconds: float = 15.0) -> None:
    """Wait (bounded) until every partition of new topics has a leader, so the first sends need no retry."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        described = await admin.describe_topics(names)
        if all(d.get("error_code", 0) == 0 and d["partitions"] for d in described) and all(
            p.get("leader", -1) >= 0 for d in described for p in d["partitions"]
        ):
            return
        await asyncio.sleep(0.2)


async def _ceiling_on(
    settings: ServiceSettings,
    mix: OrderMix,
    names: dict[str, str],
    counts: dict[str, int],
    *,
    orders: int,
    max_seconds: float,
) -> dict[str, Any]:
    samples = [mix.next() for _ in range(min(orders, 500))]  # payloads built before the clock starts
    small = orjson.dumps({"event_type": "X", "event_id": str(uuid.uuid4()), "pad": "x" * 280})
    producer = new_producer(
        settings,
        client_id="fulfil-bench-ceiling",
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=256 * 1024,
        request_timeout_ms=15_000,
    )
    await producer.start()
    try:
        for t, name in names.items():  # the first send to a new topic waits for its leaders: not measured
            for p in range(counts[t]):
                await producer.send_and_wait(name, b"warm-up", partition=p)
        produced = 0
        started = time.monotonic()
        in_flight: list[asyncio.Future[Any]] = []
        done_orders = 0
        for i in range(orders):
            order_id, value, _ = samples[i % len(samples)]
            key = f"{order_id}-{i}".encode()
            for t, (n, _groups) in SAGA_FLOW.items():
                # OrderPlaced and OrderAccepted carry the whole order; the other events are small
                payload = value if t in (topics.STOREFRONT_ORDERS, topics.ORDER_EVENTS) else small
                for _ in range(n):
                    in_flight.append(await producer.send(names[t], payload, key=key))
            produced += RECORDS_PRODUCED_PER_ORDER
            done_orders += 1
            if len(in_flight) >= 20_000:
                await asyncio.gather(*in_flight)
                in_flight.clear()
                if time.monotonic() - started > max_seconds:
                    break
        await asyncio.gather(*in_flight)
        produce_seconds = time.monotonic() - started
    finally:
        await producer.stop()

    readers = [(names[t], counts[t], n * done_orders) for t, (n, groups) in SAGA_FLOW.items() for _ in range(groups)]
    started = time.monotonic()
    consumed = sum(await asyncio.gather(*(_read_all(settings, *r, deadline=started + max_seconds) for r in readers)))
    consume_seconds = time.monotonic() - started
    records_per_s = (produced + consumed) / (produce_seconds + consume_seconds)
    return {
        "orders": done_orders,
        "records_produced": produced,
        "produce_seconds": round(produce_seconds, 3),
        "produce_records_per_s": round(produced / produce_seconds),
        "records_consumed": consumed,
        "consume_seconds": round(consume_seconds, 3),
        "consume_records_per_s": round(consumed / consume_seconds),
        "records_per_s": round(records_per_s),
        "orders_per_s_equivalent": round(records_per_s / RECORDS_PER_ORDER, 1),
        "client": "aiokafka, one process, asyncio",
    }


async def _read_all(settings: ServiceSettings, topic: str, partitions: int, expected: int, *, deadline: float) -> int:
    """Read one topic from the beginning like one consuming group does; the records read (warm-ups excluded)."""
    consumer = new_consumer(
        settings,
        client_id="fulfil-bench-ceiling",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        seen = -partitions
        while seen < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            seen += sum(len(v) for v in batch.values())
        return max(seen, 0)
    finally:
        await consumer.stop()


# ------------------------------------------------------------------ the whole run


async def run(plan: Plan, settings: ServiceSettings, *, progress: Progress = lambda _: None) -> dict[str, Any]:
    """The whole benchmark; returns the result (also written as JSON and a PNG chart into ``plan.out_dir``)."""
    run_id = datetime.now(UTC).strftime("%m%d%H%M%S") + uuid.uuid4().hex[:4]
    mix = OrderMix(plan, run_id)
    progress(f"stock for {len(mix.skus())} bench SKUs through {plan.inventory_url}")
    await stock_up(plan, mix.skus())
    progress(f"broker ceiling: {plan.ceiling_orders} orders' worth of records")
    ceiling_mix = OrderMix(replace(plan, seed=plan.seed + 1), run_id)
    broker = await ceiling(settings, ceiling_mix, orders=plan.ceiling_orders, max_seconds=plan.ceiling_seconds)

    sustained: float | None = None
    confirmed = False
    async with SagaRun(plan, settings, mix, progress) as saga:
        streams: dict[str, Any] | None = None
        if plan.mode == "search":
            sustained, confirmed = await saga.search()
            await saga.drain(plan.drain_seconds)
            half = (sustained or plan.steps[0]) / 2
            main = await saga.run_phase("latency", half, plan.latency_seconds)
        elif plan.streams:
            # The same rate twice in one run: without streams, then with plan.streams of them open.
            baseline = await saga.run_phase("no streams", plan.rate, plan.seconds)
            stream_mix = OrderMix(replace(plan, seed=plan.seed + 2), run_id + "S")
            async with Watchers(plan, settings, stream_mix, progress) as watchers:
                seconds = min(plan.seconds, watchers.time_left())
                if seconds < 2:
                    raise RuntimeError(
                        f"opening {plan.streams} streams took {watchers.setup_seconds:.0f}s: their orders leave "
                        f"payment review ({plan.review_hold_seconds:g}s) before a phase could run; use fewer streams"
                    )
                watchers.phase_seconds = seconds
                main = await saga.place(f"{plan.streams} streams", plan.rate, seconds)
                watchers.phase_ended()
                await saga.settle(main, plan.grace_seconds)  # before the stream orders are cancelled
            streams = watchers.result(baseline, main)
        else:
            main = await saga.run_phase(plan.mode, plan.rate, plan.seconds)
        drained = await saga.drain(plan.drain_seconds)
        for p in saga.phases:  # late endings count too (a phase's keeps_up was decided at its grace)
            p.stats = {
                **phase_stats(p, saga.tracker, saga.samples, plan.grace_seconds),
                "keeps_up": p.stats["keeps_up"],
            }
        saga.samples.append(saga.tracker.sample(time.monotonic() - saga.t0, "end"))

    # throughput: the confirmed sustain phase, else the fastest phase that kept up, else the last one
    kept_up = [p for p in saga.phases if p.stats["keeps_up"]]
    throughput_phase = next(
        (p for p in kept_up if p.name == "sustain"),
        max(kept_up, key=lambda p: float(p.stats["completed_per_s"]), default=main),
    )
    completed_per_s = float(throughput_phase.stats["completed_per_s"])
    if plan.mode == "fixed" or plan.mode == "smoke":
        sustained = plan.rate if main.stats["keeps_up"] else None
    saga_records_per_s = completed_per_s * RECORDS_PER_ORDER
    tracks = saga.tracker.orders.values()
    result: dict[str, Any] = {
        "run": run_id,
        "started_at": datetime.fromtimestamp(saga.started_ms / 1000, UTC).isoformat(),
        "mode": plan.mode,
        "seed": plan.seed,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "plan": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in plan.__dict__.items() if k not in {"inventory_url"}
        },
        "records_per_order": {
            "produced": RECORDS_PRODUCED_PER_ORDER,
            "consumed": RECORDS_CONSUMED_PER_ORDER,
            "total": RECORDS_PER_ORDER,
        },
        "phases": [{"name": p.name, "rate": p.rate, "seconds": p.seconds, **p.stats} for p in saga.phases],
        "summary": {
            "orders_placed": len(tracks),
            "orders_completed": sum(1 for t in tracks if t.outcome == "completed"),
            "orders_cancelled": sum(1 for t in tracks if t.outcome == "cancelled"),
            "orders_rejected": sum(1 for t in tracks if t.outcome == "rejected"),
            "orders_not_ended": sum(1 for t in tracks if t.outcome is None),
            "drained": drained,
            "sustained_orders_per_s": sustained,
            "sustained_confirmed_for_s": plan.sustain_seconds if confirmed else None,
            "completed_per_s": completed_per_s,
            "throughput_phase": throughput_phase.label,
            "latency_rate": main.rate,
            "latency_completed_ms": main.stats["latency_completed_ms"],
            "latency_email_ms": main.stats["latency_email_ms"],
            "saga_records_per_s": round(saga_records_per_s, 1),
            "target_orders_per_s": TARGET_ORDERS_PER_SECOND,
        },
        "streams": streams,
        "ceiling": broker,
        "ratio_to_ceiling": round(saga_records_per_s / broker["records_per_s"], 5) if broker["records_per_s"] else None,
        "timeline": [s.__dict__ | {"in_flight": s.in_flight} for s in saga.samples],
    }
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    chart_path = plan.out_dir / f"bench-{run_id}.png"
    json_path = plan.out_dir / f"bench-{run_id}.json"
    chart(saga, chart_path)
    result["chart"] = str(chart_path)
    result["json"] = str(json_path)
    json_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return result


def chart(saga: SagaRun, path: Path) -> None:
    """Throughput (placed and completed per second) and latency p50/p99 per 5 s over the run, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = saga.started_ms
    tracks = list(saga.tracker.orders.values())
    ends = [t for t in tracks if t.outcome == "completed" and t.ended_ms is not None]
    last_ms = max([t.ended_ms or t0 for t in ends] + [t.placed_ms for t in tracks] + [t0 + 1000])
    horizon = int(max((last_ms - t0) / 1000, *(s.t for s in saga.samples))) + 1
    placed = [0] * horizon
    completed = [0] * horizon
    for t in tracks:
        placed[min(horizon - 1, max(0, int((t.placed_ms - t0) / 1000)))] += 1
    window: dict[int, list[float]] = {}
    for t in ends:
        assert t.ended_ms is not None
        second = min(horizon - 1, max(0, int((t.ended_ms - t0) / 1000)))
        completed[second] += 1
        window.setdefault(second // 5, []).append((t.ended_ms - t.placed_ms) / 1000)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    xs = list(range(horizon))
    top.step(xs, placed, where="post", label="placed / s", color="tab:gray", alpha=0.8)
    top.step(xs, completed, where="post", label="completed / s", color="tab:blue")
    top.set_ylabel("orders / s")
    top.set_xlim(0, horizon)
    lag = top.twinx()
    lag.plot([x.t for x in saga.samples], [x.in_flight for x in saga.samples], ":", color="tab:orange")
    lag.set_ylabel("orders in flight (dotted)", color="tab:orange")
    top.legend(loc="upper left")
    top.set_title(f"fulfil bench {saga.mix.run}: throughput and latency (placement -> OrderCompleted)")
    wx = sorted(window)
    p99 = [float(percentiles([v * 1000 for v in window[w]])["p99"] or 0) / 1000 for w in wx]
    p50 = [float(percentiles([v * 1000 for v in window[w]])["p50"] or 0) / 1000 for w in wx]
    bottom.plot([w * 5 + 2.5 for w in wx], p99, marker=".", label="p99", color="tab:red")
    bottom.plot([w * 5 + 2.5 for w in wx], p50, marker=".", label="p50", color="tab:green")
    bottom.set_ylabel("latency (s), per 5 s of completions")
    bottom.set_xlabel("seconds since the run started")
    bottom.legend(loc="upper left")
    for i, p in enumerate(saga.phases):
        for ax in (top, bottom):
            ax.axvspan((p.started_ms - t0) / 1000, (p.ended_ms - t0) / 1000, color=f"C{i % 10}", alpha=0.07)
        top.annotate(p.label, ((p.started_ms - t0) / 1000, 0), fontsize=7, rotation=90, va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_json(result: dict[str, Any]) -> str:
    return orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()


def summary_table(result: dict[str, Any]) -> Table:
    """One table: a row per phase, then the sustained rate with its latency, the broker ceiling and the ratio."""
    s, c = result["summary"], result["ceiling"]
    table = Table(title=f"fulfil bench {result['run']} ({result['mode']}, {result['machine']['cpus']} CPUs)")
    table.add_column("phase")
    table.add_column("placed", justify="right")
    table.add_column("completed\n/cancelled", justify="right")
    table.add_column("completed\n/s", justify="right")
    table.add_column("max in\nflight", justify="right")
    table.add_column("to COMPLETED, s\np50/p90/p99/max", justify="right")
    table.add_column("to e-mail, s\np50/p99", justify="right")
    table.add_column("keeps\nup", justify="center")

    def lat(q: dict[str, Any], *keys: str) -> str:
        return "-" if q["count"] == 0 else "/".join(_seconds(q[k]) for k in keys)

    for p in result["phases"]:
        table.add_row(
            f"{p['name']} {p['rate']:g}/s",
            str(p["placed"]),
            f"{p['completed']}/{p['cancelled']}",
            f"{p['completed_per_s']:g}",
            str(p["in_flight_max"]),
            lat(p["latency_completed_ms"], "p50", "p90", "p99", "max"),
            lat(p["latency_email_ms"], "p50", "p99"),
            "yes" if p["keeps_up"] else "[red]no[/red]",
        )
    table.add_section()
    sustained = s["sustained_orders_per_s"]
    held = f"held {s['sustained_confirmed_for_s']:g}s" if s["sustained_confirmed_for_s"] else "not held"
    table.add_row(
        f"[b]sustained[/b] {sustained:g}/s" if sustained is not None else "[b]sustained[/b] none",
        str(s["orders_placed"]),
        f"{s['orders_completed']}/{s['orders_cancelled']}",
        f"{s['completed_per_s']:g}",
        f"{s['orders_not_ended']} left",
        lat(s["latency_completed_ms"], "p50", "p90", "p99", "max"),
        lat(s["latency_email_ms"], "p50", "p99"),
        held if result["mode"] == "search" else "",
    )
    table.add_row(f"(latency at {s['latency_rate']:g}/s)", "", "", "", "", "", "", "")
    table.add_row(
        "[b]broker ceiling[/b]",
        f"{c['orders']}",
        "",
        f"{c['orders_per_s_equivalent']:g}",
        "",
        f"{c['records_per_s']:,} rec/s",
        f"{c['produce_records_per_s'] / 1000:.0f}k out/{c['consume_records_per_s'] / 1000:.0f}k in",
        "",
    )
    if w := result.get("streams"):
        table.add_row(
            f"[b]{w['streams']} streams[/b] open {w['opened']}",
            f"{w['open_at_phase_end']} at end",
            "",
            f"x{w['completed_per_s_ratio']}",
            "",
            "/".join(f"x{w[f'latency_ratio_{q}']}" for q in ("p50", "p90", "p99")),
            f"{w['ended']} ended ({w['ended_cancelled']} cancelled)",
            "",
        )
    if busiest := max(result["phases"], key=lambda p: p["completed_per_s"], default=None):
        table.caption = cpu_line(busiest)
    ratio = result["ratio_to_ceiling"]
    table.add_row(
        "[b]saga / ceiling[/b]",
        "",
        "",
        "",
        "",
        f"{s['saga_records_per_s']:,.0f} rec/s",
        f"x{ratio:.4f}" if ratio is not None else "-",
        "",
    )
    return table


def cpu_line(phase: dict[str, Any]) -> str | None:
    """Where the cores went in a phase: % of one core per component (CPU ms per completed order)."""
    pct, ms = phase.get("cpu_pct") or {}, phase.get("cpu_ms_per_completed_order") or {}
    if not pct:
        return None
    parts = [f"{name} {p:g}% ({ms.get(name, '-')} ms)" for name, p in pct.items() if p >= 0.5]
    total, total_ms = sum(pct.values()), sum(ms.values())
    head = f"CPU while placing {phase['name']} {phase['rate']:g}/s, % of one core (ms per completed order): "
    return head + " · ".join([*parts, f"all {total:.0f}% of {100 * (os.cpu_count() or 1)}% ({total_ms:.0f} ms)"])


def _seconds(ms: float | int | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.2f}"
