"""``fulfil history``: how start-up and idle CPU grow with the stores (tools.drills.history)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tools.fulfil.term import show
from tools.ops.paths import REPO

app = typer.Typer()


@app.command("history")
def history(
    orders: Annotated[int, typer.Option("--orders", min=1, help="finished orders to add")] = 100_000,
    idle: Annotated[float, typer.Option("--idle", min=5, help="seconds of idle CPU measured")] = 30.0,
    out: Annotated[Path | None, typer.Option("--out", help="where the JSON goes [.local/bench]")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Start-up time and idle CPU of the local stack before and after ORDERS more finished orders."""
    # imported here: pymongo, httpx and pydantic-settings cost ~0.9 s of CPU at start-up of every fulfil command
    from tools.drills.history import grow, measure, table

    if not yes and not typer.confirm(f"Add {orders:,} finished orders to the running stack's stores?"):
        raise typer.Exit(1)
    run = time.strftime("%m%d%H%M") + secrets.token_hex(2)
    console = Console(stderr=True)
    console.print(f"history {run}: measuring before (restarts each service, then {idle:.0f} s idle)")
    before = asyncio.run(measure(idle))
    t0 = time.monotonic()
    copied = asyncio.run(
        grow(orders, run, lambda n: console.print(f"history {run}: {n:,} orders copied", highlight=False))
    )
    grew = time.monotonic() - t0
    console.print(f"history {run}: measuring after")
    after = asyncio.run(measure(idle))
    show(table(before, after, orders))
    folder = out or REPO / ".local" / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"history-{run}.json"
    result = {"run": run, "added": orders, "documents_copied": copied, "copy_seconds": round(grew, 1)}
    path.write_text(json.dumps({**result, "before": asdict(before), "after": asdict(after)}, indent=2))
    console.print(f"result {path}")
