"""``fulfil chaos``: the chaos drill (tools.drills.chaos) run and reported from the command line."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tools.fulfil.term import console, fail, print_report

if TYPE_CHECKING:
    from tools.drills.chaos.plan import Plan, Result

app = typer.Typer()


def print_result(result: Result, plan: Plan) -> None:
    settled = "never" if result.settled_after_s is None else f"{result.settled_after_s:.1f}s"
    console.print(f"[bold]chaos seed {result.seed}[/bold]  orders {result.prefix}*")
    console.print(f"orders      {result.placed} placed ({', '.join(f'{k} {n}' for k, n in result.kinds.items())})")
    if result.not_placed:
        console.print(f"[red]not placed[/red]  {len(result.not_placed)}: {', '.join(result.not_placed[:10])}")
    console.print(
        f"kills       {len(result.kills)} ({', '.join(f'{k} {n}' for k, n in Counter(result.kills).items())})"
    )
    console.print(f"restarts    {len(result.restarts)}; last recovery at t={result.last_recovery_s:.0f}s")
    console.print(f"recovery    all orders settled {settled} after the last recovery / end of traffic")
    pushes = ", ".join(f"{c} {m}" for c, m in result.pushes.items()) or "not in the loop"
    console.print(f"pushes      carriers' route pushes: {pushes}")
    console.print(
        f"delivery    {result.delivered}/{result.completed} completed orders delivered by the end; "
        f"{len(result.cancelled_after_completion)} cancelled after completion"
    )
    for f in result.failures:
        console.print(f"[yellow]disruption[/yellow] {f}")
    if result.unsettled:
        sample = ", ".join(f"{k} ({v})" for k, v in list(result.unsettled.items())[:10])
        console.print(f"[red]unsettled[/red]   {len(result.unsettled)} order(s) not terminal in time: {sample}")
    print_report(result.report, title="verify: ")
    verdict = "[green]PASS[/green]" if result.ok else f"[red]FAIL[/red] (repeat with --seed {result.seed})"
    console.print(f"chaos: {verdict}")


@app.command("chaos")
def chaos(
    seed: Annotated[int | None, typer.Option(help="the drill's seed (default: random, printed)")] = None,
    duration: Annotated[float | None, typer.Option(help="seconds of order traffic")] = None,
    kills: Annotated[int | None, typer.Option(min=0, help="service processes to SIGKILL")] = None,
    rate: Annotated[float | None, typer.Option(min=0.1, help="orders per second")] = None,
    short: Annotated[bool, typer.Option("--short", help="the quick version (make test)")] = False,
    broker: Annotated[bool | None, typer.Option("--broker/--no-broker", help="restart Kafka once")] = None,
    brokers: Annotated[
        bool | None,
        typer.Option(
            "--brokers/--no-brokers",
            help="with a cluster (make up KAFKA_BROKERS=3): stop and start each broker in turn, the active "
            "controller first, instead of one restart (default: on with a cluster, except --short)",
        ),
    ] = None,
    store: Annotated[bool | None, typer.Option("--store/--no-store", help="restart the store once")] = None,
    smtp_outage: Annotated[float | None, typer.Option(help="seconds the SMTP server is down (0: none)")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable summary")] = False,
) -> None:
    """Chaos drill: orders of every kind while services are SIGKILLed and the broker, store and SMTP server are
    restarted; then every order must settle and `fulfil verify` must find nothing. Disrupts the live local stack."""
    # imported here: pymongo, aiokafka, faststream and httpx cost ~2 s of CPU at start-up of every fulfil command
    from tools.drills.chaos.drill import drill
    from tools.drills.chaos.monkey import cluster_size
    from tools.drills.chaos.plan import Plan

    seed = seed if seed is not None else secrets.randbelow(10**6)
    given: dict[str, Any] = {
        k: v
        for k, v in {
            "duration": duration,
            "kills": kills,
            "rate": rate,
            "broker": broker,
            "store": store,
            "smtp_outage": smtp_outage,
        }.items()
        if v is not None
    }
    cluster = cluster_size()
    if brokers and cluster < 2:
        fail("--brokers needs a cluster: `make up KAFKA_BROKERS=3`")
    if cluster > 1 and (brokers or (brokers is None and not short)):
        given["brokers"] = cluster
    plan = Plan.short(seed, **given) if short else Plan(seed=seed, **given)
    console.print(f"chaos seed {seed}")
    if not yes and not typer.confirm("This SIGKILLs services and restarts servers of the running local stack. Go on?"):
        fail("aborted")
    try:
        result = asyncio.run(drill(plan, say=lambda line: console.print(line, markup=False, highlight=False)))
    except KeyboardInterrupt:
        fail(f"interrupted (everything stopped was started again); seed {seed}")
        return
    if as_json:
        console.print_json(data=result.as_dict())
    else:
        print_result(result, plan)
    if not result.ok:
        raise typer.Exit(1)
