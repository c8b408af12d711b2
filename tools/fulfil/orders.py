"""``fulfil order`` and ``fulfil stuck``: one order's saga timeline, and the orders that have not finished."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from shared import topics as topic_names
from tools.fulfil.term import Bootstrap, JaegerUrl, Json, OrderUrl, console, fail, parse_time, run, show

app = typer.Typer()


@app.command("order")
def order_timeline(
    order_id: Annotated[str, typer.Argument(help="the order to inspect")],
    bootstrap: Bootstrap = None,
    order_url: OrderUrl = None,
    jaeger_url: JaegerUrl = None,
    as_json: Json = False,
) -> None:
    """The saga's timeline: every event for the order across topics, with causation chain, status and trace."""
    # imported here: httpx, aiokafka, faststream and pymongo cost ~1.9 s of CPU at start-up of every fulfil command
    import httpx

    from tools.ops import topic_log
    from tools.ops.settings import api_headers, tool_settings

    settings = tool_settings(bootstrap)
    order_url, jaeger_url = order_url or settings.order_url, jaeger_url or settings.jaeger_query_url

    async def collect() -> list[Any]:
        return [r async for r in topic_log.scan(settings, topic_names.ALL_TOPICS, key=order_id)]

    with console.status(f"scanning topics for {order_id} ..."):
        records = run(collect())
    try:
        r = httpx.get(f"{order_url}/orders/{order_id}", timeout=10, headers=api_headers())
        order = r.json() if r.status_code == 200 else None
    except httpx.HTTPError:
        order = None
    if not records and order is None:
        fail(f"nothing known about order {order_id}")
    events = topic_log.timeline(records)
    trace_id = (order or {}).get("trace_id")
    out = {
        "order_id": order_id,
        "status": (order or {}).get("status"),
        "reason": (order or {}).get("reason"),
        "stage": (order or {}).get("stage"),
        "trace_id": trace_id,
        "trace_link": f"{jaeger_url}/trace/{trace_id}" if trace_id else None,
        "events": events,
    }
    if as_json:
        console.print_json(data=out)
        return
    reason = f" ({out['reason']})" if out["reason"] else ""
    table = Table(title=f"order {order_id}: {out['status']}{reason}")
    for col in ("time", "topic", "p:offset", "event", "caused by", "note"):
        table.add_column(col, overflow="fold")
    for e in events:
        cause = e["caused_by"]
        note = "DLQ: " + (e["why"] or "") if e["dead_letter"] else ("replayed" if e["replayed"] else "")
        table.add_row(
            e["at"][11:23], e["topic"], f"{e['partition']}:{e['offset']}", e["event_type"], cause or "-", note
        )
    show(table)
    console.print(f"status: {out['status']}  stage: {out['stage']}  reason: {out['reason']}")
    console.print(f"trace: {out['trace_link'] or '(not sampled)'}")


@app.command("stuck")
def stuck(
    older_than: Annotated[str, typer.Option("--older-than", help="age: 90s, 10m, 2h")] = "10m",
    order_url: OrderUrl = None,
    as_json: Json = False,
) -> None:
    """Orders not finished after the given age, with their last step and age."""
    # imported here: httpx and pydantic-settings cost ~0.5 s of CPU at start-up of every fulfil command
    import httpx

    from tools.ops.settings import api_headers, tool_settings

    order_url = order_url or tool_settings().order_url

    try:
        seconds = (parse_time("0s") - parse_time(older_than)).total_seconds()
        r = httpx.get(
            f"{order_url}/orders",
            params={"older_than_seconds": max(seconds, 0)},
            timeout=10,
            headers=api_headers(),
        )
        r.raise_for_status()
    except (ValueError, httpx.HTTPError) as e:
        fail(str(e))
        return
    orders = r.json()["orders"]
    if as_json:
        console.print_json(data=orders)
        return
    table = Table(title=f"{len(orders)} order(s) not finished after {older_than}")
    for col in ("order", "stage", "last step", "last step at", "age"):
        table.add_column(col)
    for o in orders:
        table.add_row(
            o["order_id"],
            o["stage"] or "-",
            o["last_step"] or "-",
            (o["last_step_at"] or "")[:19],
            f"{o['age_seconds']:.0f}s",
        )
    show(table)
