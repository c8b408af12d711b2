"""The saga run: places orders at a fixed rate, phase after phase, stepping the rate up in a search, and waits for
them to end."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaProducer

from shared import topics
from shared.kafka import new_producer
from shared.settings import ServiceSettings
from shared.tasks import cancelled
from tools.drills import cpu
from tools.drills.bench.plan import (
    OrderMix,
    Plan,
    Progress,
)
from tools.drills.bench.tracker import Phase, Sample, Tracker, phase_stats


class SagaRun:
    """Places orders phase by phase and keeps the timeline the chart and the keep-up decisions use."""

    def __init__(self, plan: Plan, settings: ServiceSettings, mix: OrderMix, progress: Progress) -> None:
        self.plan = plan
        self.settings = settings
        self.mix = mix
        self.progress = progress
        self.tracker = Tracker(settings, mix.prefix)
        self.producer = bench_producer(settings)
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

    async def overload(self, reference: Phase, factor: float, seconds: float) -> dict[str, Any]:
        """``factor`` times the reference phase's rate for ``seconds``, then the backlog is left to drain: how many
        orders completed per second while overloaded and while draining, each as a ratio of the reference phase."""
        await self.drain(self.plan.drain_seconds)
        phase = await self.place("overload", reference.rate * factor, seconds)
        mine = [t for t in self.tracker.orders.values() if t.phase == phase.index]
        backlog = sum(1 for t in mine if t.outcome is None)
        placing_ended = time.monotonic()
        drained = await self.drain(max(self.plan.drain_seconds, 10 * seconds))
        drain_s = time.monotonic() - placing_ended
        phase.stats = phase_stats(phase, self.tracker, self.samples, self.plan.grace_seconds)
        drained_ms = (phase.ended_ms, phase.ended_ms + drain_s * 1000)
        completed_draining = sum(
            1 for t in mine if t.outcome == "completed" and t.ended_ms and drained_ms[0] < t.ended_ms <= drained_ms[1]
        )
        base = float(reference.stats["completed_per_s"]) or None
        during = float(phase.stats["completed_per_s"])
        draining = completed_draining / drain_s if drain_s > 0 else 0.0
        return {
            "factor": factor,
            "offered_per_s": phase.rate,
            "seconds": seconds,
            "reference": reference.label,
            "reference_completed_per_s": base,
            "completed_per_s": during,
            "completed_ratio": round(during / base, 3) if base else None,
            "backlog_at_end": backlog,
            "drain_s": round(drain_s, 1),
            "drained": drained,
            "drain_completed_per_s": round(draining, 2),
            "drain_ratio": round(draining / base, 3) if base else None,
        }

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


def bench_producer(settings: ServiceSettings) -> AIOKafkaProducer:
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
