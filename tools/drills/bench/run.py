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

import os
import platform
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from shared.settings import ServiceSettings
from tools.drills import cpu
from tools.drills.bench import cost
from tools.drills.bench.ceiling import ceiling
from tools.drills.bench.phases import SagaRun
from tools.drills.bench.plan import (
    RECORDS_CONSUMED_PER_ORDER,
    RECORDS_PER_ORDER,
    RECORDS_PRODUCED_PER_ORDER,
    TARGET_ORDERS_PER_SECOND,
    OrderMix,
    Plan,
    Progress,
    new_run_id,
    stock_up,
)
from tools.drills.bench.report import chart
from tools.drills.bench.tracker import Phase, phase_stats
from tools.drills.bench.watchers import Watchers


async def run(plan: Plan, settings: ServiceSettings, *, progress: Progress = lambda _: None) -> dict[str, Any]:
    """The whole benchmark; returns the result (also written as JSON and a PNG chart into ``plan.out_dir``)."""
    run_id = new_run_id()
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
        overload: dict[str, Any] | None = None
        assert saga.tracker.consumer is not None
        before = await cost.read(saga.tracker.consumer)
        if plan.mode == "search":
            sustained, confirmed = await saga.search()
            await saga.drain(plan.drain_seconds)
            half = (sustained or plan.steps[0]) / 2
            main = await saga.run_phase("latency", half, plan.latency_seconds)
        elif plan.streams:
            # The same rate twice in one run: without streams, then with plan.streams of them open.
            main, streams = await _with_streams(plan, settings, saga, run_id, progress)
        else:
            main = await saga.run_phase(plan.mode, plan.rate, plan.seconds)
        drained = await saga.drain(plan.drain_seconds)
        if plan.overload:
            reference = next((p for p in saga.phases if p.name == "sustain" and p.stats["keeps_up"]), main)
            overload = await saga.overload(reference, plan.overload, plan.overload_seconds)
            drained = overload["drained"]
        spent = cost.cost(
            before,
            await cost.read(saga.tracker.consumer),
            orders=len(saga.tracker.orders),
            completed=sum(1 for t in saga.tracker.orders.values() if t.outcome == "completed"),
            cpus=os.cpu_count() or 1,
        )
        for p in saga.phases:  # late endings count too (a phase's keeps_up was decided at its grace)
            p.stats = {
                **phase_stats(p, saga.tracker, saga.samples, plan.grace_seconds),
                "keeps_up": p.stats["keeps_up"],
            }
        saga.samples.append(saga.tracker.sample(time.monotonic() - saga.t0, "end"))

    result = _result(
        plan,
        run_id,
        saga,
        main,
        sustained=sustained,
        confirmed=confirmed,
        drained=drained,
        streams=streams,
        broker=broker,
        spent=spent,
        overload=overload,
    )
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    chart_path = plan.out_dir / f"bench-{run_id}.png"
    json_path = plan.out_dir / f"bench-{run_id}.json"
    chart(saga, chart_path)
    result["chart"] = str(chart_path)
    result["json"] = str(json_path)
    json_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return result


async def _with_streams(
    plan: Plan, settings: ServiceSettings, saga: SagaRun, run_id: str, progress: Progress
) -> tuple[Phase, dict[str, Any]]:
    """The same rate twice: a phase without streams, then one with ``plan.streams`` of them open; the second phase
    and the streams' result."""
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
    return main, watchers.result(baseline, main)


def _result(
    plan: Plan,
    run_id: str,
    saga: SagaRun,
    main: Phase,
    *,
    sustained: float | None,
    confirmed: bool,
    drained: bool,
    streams: dict[str, Any] | None,
    broker: dict[str, Any],
    spent: dict[str, Any],
    overload: dict[str, Any] | None,
) -> dict[str, Any]:
    """The run's result: its phases, the summary (throughput, sustained rate, latency), the ceiling and the timeline."""
    # throughput: the confirmed sustain phase, else the fastest phase that kept up, else the last one
    kept_up = [p for p in saga.phases if p.stats["keeps_up"]]
    throughput_phase = next(
        (p for p in kept_up if p.name == "sustain"),
        max(kept_up, key=lambda p: float(p.stats["completed_per_s"]), default=main),
    )
    completed_per_s = float(throughput_phase.stats["completed_per_s"])
    if plan.mode == "fixed" or plan.mode == "smoke":
        sustained = plan.rate if main.stats["keeps_up"] else None
    # Records the saga moved: measured (written + read by the services' groups) per order, else the happy path's.
    moved = spent["records_per_order_total"] + spent["records_read_per_order_total"]
    saga_records_per_s = completed_per_s * (moved or RECORDS_PER_ORDER)
    tracks = saga.tracker.orders.values()
    result: dict[str, Any] = {
        "run": run_id,
        "started_at": datetime.fromtimestamp(saga.started_ms / 1000, UTC).isoformat(),
        "mode": plan.mode,
        "seed": plan.seed,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "copies": cpu.copies(),
        "cost": spent,
        "overload": overload,
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
    return result
