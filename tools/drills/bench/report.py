"""A bench result as a chart (PNG), JSON and a summary table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
from rich.table import Table

from tools.drills.bench import cost
from tools.drills.bench.phases import SagaRun
from tools.drills.bench.tracker import percentiles


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
    copies = result.get("copies") or {}
    more = ", ".join(f"{n} x {name}" for name, n in copies.items() if n > 1)
    table = Table(
        title=f"fulfil bench {result['run']} ({result['mode']}, {result['machine']['cpus']} CPUs"
        + (f"; copies: {more}" if more else "")
        + ")"
    )
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
    for row in (_streams_row(result.get("streams")), _overload_row(result.get("overload"))):
        if row is not None:
            table.add_row(*row)
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


def _streams_row(w: dict[str, Any] | None) -> tuple[str, ...] | None:
    if not w:
        return None
    return (
        f"[b]{w['streams']} streams[/b] open {w['opened']}",
        f"{w['open_at_phase_end']} at end",
        "",
        f"x{w['completed_per_s_ratio']}",
        "",
        "/".join(f"x{w[f'latency_ratio_{q}']}" for q in ("p50", "p90", "p99")),
        f"{w['ended']} ended ({w['ended_cancelled']} cancelled)",
        "",
    )


def _overload_row(o: dict[str, Any] | None) -> tuple[str, ...] | None:
    if not o:
        return None
    return (
        f"[b]overload[/b] x{o['factor']:g} {o['offered_per_s']:g}/s",
        f"{o['backlog_at_end']} behind",
        "",
        f"{o['completed_per_s']:g}",
        "",
        f"x{o['completed_ratio']} of {o['reference']}" if o["completed_ratio"] is not None else "-",
        f"drain {o['drain_completed_per_s']:g}/s in {o['drain_s']:g}s"
        + (f" (x{o['drain_ratio']})" if o["drain_ratio"] is not None else ""),
        "" if o["drained"] else "[red]no[/red]",
    )


def headline(result: dict[str, Any]) -> str:
    """The summary's first line: CPU per completed order, all in (see tools.drills.bench.cost)."""
    return cost.headline(result.get("cost") or {}, result["machine"]["cpus"] or 1)


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
