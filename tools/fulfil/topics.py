"""``fulfil topics``: Kafka topics as deploy/topics.yaml declares them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from tools.fulfil.term import Bootstrap, confirm, console, fail
from tools.ops.paths import REPO

app = typer.Typer(name="topics", help="Kafka topics.", no_args_is_help=True)


@app.command("apply")
def topics_apply(
    bootstrap: Bootstrap = None,
    file: Annotated[Path, typer.Option(help="declarative topic file")] = REPO / "deploy" / "topics.yaml",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print what would change, change nothing")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster/--no-cluster", help="a cluster of three brokers: the file's cluster section (RF 3, min ISR 2)"
        ),
    ] = False,
) -> None:
    """Create or update every topic (DLQs included) from the declarative file: only the settings it names are
    changed, the others are kept, and durability (min.insync.replicas, retention, replication) is never lowered."""
    # imported here: aiokafka, faststream and pymongo cost ~2 s of CPU at start-up of every fulfil command
    from tools.ops import topic_config

    try:
        plan = topic_config.topic_plan(file, cluster=cluster)
    except ValueError as e:
        fail(str(e))
        return
    try:
        changes = asyncio.run(topic_config.plan_topics(bootstrap, plan))
    except Exception as e:
        fail(f"could not read topics on {bootstrap}: {type(e).__name__}: {e}")
        return
    for line in changes.lines():
        console.print(("[dim](dry run)[/dim] " if dry_run else "") + line, markup=not line.startswith("configure"))
    for note in changes.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    console.print(f"{len(plan)} topics declared; {'nothing to change' if changes.empty else 'changes above'}")
    if dry_run or changes.empty:
        return
    confirm(yes, f"Apply these {len(changes.lines())} change(s) on {bootstrap}?")
    try:
        asyncio.run(topic_config.apply_topics(bootstrap, changes))
    except Exception as e:
        fail(f"could not apply topics on {bootstrap}: {type(e).__name__}: {e}")
