"""``fulfil``: the project's command-line tool for operators (topics, stock, traces, dead letters, replay).

Every command has ``--help``; failures exit non-zero with a one-line reason.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml
from rich.console import Console

from shared import topics as topic_names

app = typer.Typer(help="Operate the fulfilment platform.", no_args_is_help=True, pretty_exceptions_enable=False)
topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
stock_app = typer.Typer(help="Inventory stock.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(stock_app, name="stock")
console = Console()
err = Console(stderr=True)

REPO = Path(__file__).resolve().parent.parent
Bootstrap = Annotated[
    str,
    typer.Option("--bootstrap", envvar="KAFKA_BOOTSTRAP_SERVERS", help="Kafka bootstrap servers"),
]


def fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


def topic_plan(path: Path) -> list[dict[str, Any]]:
    """The topics the file declares, DLQs included, each with partitions, replication factor and config."""
    spec = yaml.safe_load(path.read_text())
    defaults = spec.get("defaults", {})
    dlq = spec.get("dead_letter", {})
    plan = []
    for t in spec["topics"]:
        base = {
            "name": t["name"],
            "partitions": int(t.get("partitions", defaults.get("partitions", 3))),
            "replication_factor": int(t.get("replication_factor", defaults.get("replication_factor", 1))),
            "config": {**defaults.get("config", {}), **t.get("config", {})},
        }
        plan.append(base)
        plan.append(
            {
                **base,
                "name": base["name"] + dlq.get("suffix", topic_names.DLQ_SUFFIX),
                "config": {**base["config"], **dlq.get("config", {})},
            }
        )
    return plan


async def _apply_topics(bootstrap: str, plan: list[dict[str, Any]], dry_run: bool) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    actions: list[str] = []
    try:
        existing = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics()}
        create = [t for t in plan if t["name"] not in existing]
        grow = {t["name"]: t["partitions"] for t in plan if existing.get(t["name"], t["partitions"]) < t["partitions"]}
        actions += [f"create {t['name']} ({t['partitions']} partitions)" for t in create]
        actions += [f"grow {name} to {n} partitions" for name, n in grow.items()]
        actions += [f"configure {t['name']}" for t in plan if t["name"] in existing]
        if dry_run:
            return actions
        if create:
            await admin.create_topics(
                [
                    NewTopic(t["name"], t["partitions"], t["replication_factor"], topic_configs=t["config"])
                    for t in create
                ]
            )
        if grow:
            await admin.create_partitions({name: NewPartitions(n) for name, n in grow.items()})
        updates = [
            ConfigResource(ConfigResourceType.TOPIC, t["name"], configs=t["config"])
            for t in plan
            if t["name"] in existing
        ]
        if updates:
            await admin.alter_configs(updates)
    finally:
        await admin.close()
    return actions


@topics_app.command("apply")
def topics_apply(
    bootstrap: Bootstrap = "127.0.0.1:9092",
    file: Annotated[Path, typer.Option(help="declarative topic file")] = REPO / "deploy" / "topics.yaml",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print what would change, change nothing")] = False,
) -> None:
    """Create or update every topic (DLQs included) from the declarative file."""
    try:
        actions = asyncio.run(_apply_topics(bootstrap, topic_plan(file), dry_run))
    except Exception as e:
        fail(f"could not apply topics on {bootstrap}: {type(e).__name__}: {e}")
        return
    for a in actions:
        console.print(("[dim](dry run)[/dim] " if dry_run else "") + a)
    console.print(f"{len(topic_plan(file))} topics declared")


@stock_app.command("seed")
def stock_seed(
    inventory_url: Annotated[str, typer.Option(envvar="INVENTORY_URL")] = "http://127.0.0.1:8082",
    file: Annotated[Path, typer.Option(help="catalogue file")] = REPO / "deploy" / "catalogue.yaml",
) -> None:
    """(Re-)seed the documented catalogue through the inventory API, as an ERP sync would."""
    catalogue = yaml.safe_load(file.read_text())
    headers = {"X-API-Key": os.environ["FULFIL_API_KEY"]} if os.environ.get("FULFIL_API_KEY") else {}
    try:
        with httpx.Client(base_url=inventory_url, timeout=10, headers=headers) as http:
            for sku, available in catalogue.items():
                r = http.put(f"/stock/{sku}", json={"available": int(available)})
                r.raise_for_status()
                level = r.json()
                console.print(f"{sku:16} available={level['available']:>7} reserved={level['reserved']}")
    except httpx.HTTPError as e:
        fail(f"could not seed stock through {inventory_url}: {e}")


def fetch_trace(jaeger_url: str, trace_id: str) -> dict[str, Any]:
    r = httpx.get(f"{jaeger_url}/api/traces/{trace_id}", timeout=10)
    if r.status_code == 404 or not r.json().get("data"):
        raise LookupError(f"trace {trace_id} not found in Jaeger at {jaeger_url}")
    r.raise_for_status()
    data: dict[str, Any] = r.json()["data"][0]
    return data


def waterfall(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """Spans in start order with service, operation, offset and duration in ms, and whether they failed."""
    procs = {k: v["serviceName"] for k, v in trace["processes"].items()}
    spans = sorted(trace["spans"], key=lambda s: s["startTime"])
    t0 = spans[0]["startTime"] if spans else 0
    rows = []
    for span in spans:
        tags = {t["key"]: t["value"] for t in span.get("tags", [])}
        rows.append(
            {
                "service": procs.get(span["processID"], "?"),
                "operation": span["operationName"],
                "start_ms": (span["startTime"] - t0) / 1000,
                "duration_ms": span["duration"] / 1000,
                "error": bool(tags.get("error")) or tags.get("otel.status_code") == "ERROR",
                "order_id": tags.get("order.id"),
            }
        )
    return rows


@app.command("trace")
def trace_cmd(
    order_id: Annotated[str, typer.Argument(help="the order whose trace to show")],
    order_url: Annotated[str, typer.Option(envvar="ORDER_URL")] = "http://127.0.0.1:8080",
    jaeger_url: Annotated[str, typer.Option(envvar="JAEGER_QUERY_URL")] = "http://127.0.0.1:16686",
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Show an order's trace from Jaeger as a waterfall in the terminal, with the Jaeger UI link."""
    from rich.table import Table

    try:
        r = httpx.get(f"{order_url}/orders/{order_id}", timeout=10)
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
    console.print(table)
    services = sorted({row["service"] for row in rows})
    console.print(f"{len(rows)} spans across {len(services)} services: {', '.join(services)}")
    console.print(f"Jaeger UI: {link}")


if __name__ == "__main__":
    app()
