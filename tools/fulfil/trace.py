"""``fulfil trace``: an order's trace from Jaeger as a waterfall in the terminal."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from tools.fulfil.term import JaegerUrl, OrderUrl, console, fail, show

app = typer.Typer()


@app.command("trace")
def trace_cmd(
    order_id: Annotated[str, typer.Argument(help="the order whose trace to show")],
    order_url: OrderUrl = None,
    jaeger_url: JaegerUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Show an order's trace from Jaeger as a waterfall in the terminal, with the Jaeger UI link."""
    # imported here: httpx and pydantic-settings cost ~0.5 s of CPU at start-up of every fulfil command
    import httpx

    from tools.ops.settings import api_headers, tool_settings
    from tools.ops.trace import fetch_trace, waterfall

    settings = tool_settings()
    order_url, jaeger_url = order_url or settings.order_url, jaeger_url or settings.jaeger_query_url
    try:
        r = httpx.get(f"{order_url}/orders/{order_id}", timeout=10, headers=api_headers())
        if r.status_code == 404:
            fail(f"unknown order {order_id}")
        r.raise_for_status()
        trace_id = r.json().get("trace_id")
        if not trace_id:
            fail(f"order {order_id} has no trace id (it was not sampled)")
        rows = waterfall(fetch_trace(jaeger_url, trace_id))
    except (httpx.HTTPError, LookupError) as e:
        fail(str(e))
        return
    link = f"{jaeger_url}/trace/{trace_id}"
    if as_json:
        console.print_json(data={"order_id": order_id, "trace_id": trace_id, "link": link, "spans": rows})
        return
    total = max((row["start_ms"] + row["duration_ms"] for row in rows), default=1.0) or 1.0
    table = Table(title=f"order {order_id} — trace {trace_id}")
    for col in ("service", "operation", "start", "duration", ""):
        table.add_column(col, justify="right" if col in ("start", "duration") else "left")
    width = 40
    for row in rows:
        lead = int(row["start_ms"] / total * width)
        bar = " " * lead + "█" * max(1, int(row["duration_ms"] / total * width))
        table.add_row(
            row["service"],
            row["operation"] + (" [red]ERROR[/red]" if row["error"] else ""),
            f"{row['start_ms']:.1f} ms",
            f"{row['duration_ms']:.1f} ms",
            f"[cyan]{bar}[/cyan]",
        )
    show(table)
    services = sorted({row["service"] for row in rows})
    console.print(f"{len(rows)} spans across {len(services)} services: {', '.join(services)}")
    console.print(f"Jaeger UI: {link}")
