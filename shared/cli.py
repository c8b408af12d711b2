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


if __name__ == "__main__":
    app()
