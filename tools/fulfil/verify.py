"""``fulfil verify``: the saga's invariants checked against what actually happened (tools.ops.verify)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer

from tools.fulfil.term import console, fail, parse_time, print_report, run
from tools.ops.verify import DEFAULT_DEADLINE, Report

app = typer.Typer()


@app.command("verify")
def verify(
    since: Annotated[
        str | None, typer.Option("--since", help="only orders placed since: ISO time or age (30m)")
    ] = None,
    order_prefix: Annotated[str | None, typer.Option("--order-prefix", help="only orders whose id starts so")] = None,
    deadline_seconds: Annotated[
        float, typer.Option("--deadline-seconds", help="an order younger than this may still be open")
    ] = DEFAULT_DEADLINE.total_seconds(),
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Check the saga's invariants over topics, order API, payment ledger, carrier, mails and stock; exit 1 on
    any violation."""
    # imported here: pymongo, httpx, aiokafka and faststream cost ~2.1 s of CPU at start-up of every fulfil command
    from tools.ops import evidence

    try:
        start = parse_time(since) if since else None
    except ValueError as e:
        fail(str(e))
        return
    with console.status("reading topics, ledger, mails and stock ..."):
        report: Report = run(
            evidence.run(since=start, prefix=order_prefix, deadline=timedelta(seconds=deadline_seconds))
        )
    if as_json:
        console.print_json(data=report.as_dict())
    else:
        print_report(report)
    if report.violations:
        raise typer.Exit(1)
