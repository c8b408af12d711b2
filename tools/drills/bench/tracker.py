"""What the run reads back from ``order.events`` and ``notify.events`` (assign + seek, no consumer group): when each
order ended and how, sampled over the run; and the statistics of a phase from it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared import topics
from shared.kafka import header_map, new_consumer
from shared.settings import ServiceSettings
from shared.tasks import cancelled
from tools.drills import cpu
from tools.drills.bench.plan import (
    TERMINAL,
)


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
            for p in sorted(await partitions_of(consumer, t))
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


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    parts: set[int] | None = consumer.partitions_for_topic(topic)
    if not parts:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic)
    if not parts:
        raise LookupError(f"topic {topic} not found: run `fulfil topics apply` (make up does)")
    return parts


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
