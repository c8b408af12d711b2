"""``fulfil bench``: the open-loop benchmark (tools.drills.bench) run from the command line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tools.fulfil.term import Bootstrap, InventoryUrl, Json, OrderUrl, Yes, console, err, fail, run, show
from tools.ops.paths import REPO

if TYPE_CHECKING:
    from tools.drills.bench.plan import Plan

app = typer.Typer()


@app.command("bench")
def bench(
    orders: Annotated[int | None, typer.Option(min=1, max=1_000_000, help="fixed run: this many orders")] = None,
    rate: Annotated[float | None, typer.Option(min=0.1, max=10_000, help="fixed run: orders per second")] = None,
    duration: Annotated[float | None, typer.Option(min=1, max=3600, help="fixed run: seconds of placing")] = None,
    smoke: Annotated[bool, typer.Option("--smoke", help="about 10 s at a low rate, no search (CI)")] = False,
    seed: Annotated[int, typer.Option(help="seed of the order mix (same seed, same orders)")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="where the JSON and PNG go [.local/bench]")] = None,
    streams: Annotated[
        int, typer.Option(min=0, max=20_000, help="fixed run twice: without, then with N order streams open")
    ] = 0,
    overload: Annotated[
        float,
        typer.Option(
            min=0,
            max=20,
            help="then FACTOR x the sustained (or fixed) rate for 60 s (--duration in a fixed run), and time the drain",
        ),
    ] = 0.0,
    inventory_url: InventoryUrl = None,
    order_url: OrderUrl = None,
    bootstrap: Bootstrap = None,
    yes: Yes = False,
    as_json: Json = False,
) -> None:
    """Open-loop load on the running system: the highest rate it sustains, latency, and the broker ceiling.

    By default the rate is stepped up until the saga no longer keeps up, the best rate is held for 60 s and the
    latency is measured at half of it; --rate/--duration/--orders make one fixed-rate run instead.
    """
    # imported here: aiokafka, faststream, httpx and pydantic cost ~1 s of CPU at start-up of every fulfil command
    from tools.drills.bench import run as benchmark
    from tools.drills.bench.report import headline, summary_table, to_json
    from tools.ops.settings import tool_settings

    settings = tool_settings(bootstrap).model_copy(update={"service_name": "fulfil-bench"})
    common: dict[str, Any] = {
        "seed": seed,
        "out_dir": out or REPO / ".local" / "bench",
        "inventory_url": inventory_url or settings.inventory_url,
        "order_url": order_url or settings.order_url,
        "streams": streams,
        "overload": overload,
    }
    plan = _plan(common, orders=orders, rate=rate, duration=duration, smoke=smoke)
    what = (
        f"{plan.rate:g} orders/s for {plan.seconds:g} s"
        if plan.mode != "search"
        else f"up to {max(plan.steps):g} orders/s"
    )
    if not yes and not typer.confirm(
        f"This places {what} on the running system and sets the stock of {plan.catalogue_size + 1} BENCH SKUs. Go on?"
    ):
        fail("aborted")
    screen = err if as_json else console
    with screen.status("bench: starting") as status:
        last = [0.0]

        def progress(line: str) -> None:
            if screen.is_terminal:
                status.update(f"bench: {line}")
            elif time.monotonic() - last[0] >= 5:  # a log, not a terminal: a line every 5 s
                last[0] = time.monotonic()
                screen.print(f"bench: {line}", markup=False, highlight=False)

        result = run(benchmark.run(plan, settings, progress=progress))
    if result is None:
        return
    if as_json:
        print(to_json(result))
        return
    console.print(headline(result), markup=False, highlight=False)
    show(summary_table(result))
    console.print(f"result {result['json']}\nchart  {result['chart']}")


def _plan(
    common: dict[str, Any], *, orders: int | None, rate: float | None, duration: float | None, smoke: bool
) -> Plan:
    """The kind of run the options ask for: the smoke, one fixed rate, or the stepped search."""
    from tools.drills.bench.plan import Plan  # with the run: see bench()

    if common["streams"] and not (orders or rate or duration or smoke):
        rate, duration = 10.0, 10.0  # streams idle on orders in a 20 s payment review: a short phase each
    if smoke:
        return Plan.smoke(**common)
    if orders or rate or duration:
        per_s = rate or (orders / duration if orders and duration else 10.0)
        seconds = duration or (orders / per_s if orders else 60.0)
        return Plan.fixed(rate=per_s, seconds=seconds, overload_seconds=seconds, **common)
    return Plan.search(**common)
