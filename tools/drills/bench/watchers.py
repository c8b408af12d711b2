"""Live-tracking streams held open during a phase (``fulfil bench --streams N``), on orders held in payment review."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from typing import Any

import httpx
import orjson
from aiokafka import TopicPartition
from httpx_sse import aconnect_sse

from shared import topics
from shared.kafka import header_map, new_consumer
from shared.settings import ServiceSettings
from shared.tasks import cancelled
from tools.drills.bench.phases import bench_producer
from tools.drills.bench.plan import (
    ENDED_STATUSES,
    OrderMix,
    Plan,
    Progress,
)
from tools.drills.bench.tracker import Phase, partitions_of
from tools.ops.samples import REVIEW_TOKEN


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
        self.producer = bench_producer(settings)
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
            parts = [TopicPartition(accepted, p) for p in sorted(await partitions_of(reader, accepted))]
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
