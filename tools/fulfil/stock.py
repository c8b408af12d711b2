"""``fulfil stock``: the inventory's stock, seeded from the documented catalogue."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tools.fulfil.term import InventoryUrl, confirm, console, fail
from tools.ops.paths import REPO

app = typer.Typer(name="stock", help="Inventory stock.", no_args_is_help=True)


@app.command("seed")
def stock_seed(
    inventory_url: InventoryUrl = None,
    file: Annotated[Path, typer.Option(help="catalogue file")] = REPO / "deploy" / "catalogue.yaml",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would change, change nothing")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """(Re-)seed the documented catalogue through the inventory API, as an ERP sync would: each SKU's units on hand
    (units held by open orders included, so re-seeding never adds what they hold). Shows the change and asks."""
    # imported here: httpx, yaml and pydantic-settings cost ~0.6 s of CPU at start-up of every fulfil command
    import httpx
    import yaml

    from tools.ops.settings import api_headers, tool_settings

    inventory_url = inventory_url or tool_settings().inventory_url
    catalogue = yaml.safe_load(file.read_text())
    headers = api_headers()
    try:
        with httpx.Client(base_url=inventory_url, timeout=10, headers=headers) as http:
            changes = []
            for sku, wanted in catalogue.items():
                r = http.get(f"/stock/{sku}")
                if r.status_code not in (200, 404):
                    r.raise_for_status()
                now_on_hand = int(r.json()["available"]) + int(r.json()["reserved"]) if r.status_code == 200 else None
                if now_on_hand != int(wanted):
                    changes.append((sku, now_on_hand, int(wanted)))
                    was = "new" if now_on_hand is None else f"{now_on_hand} on hand"
                    console.print(f"{'(dry run) ' if dry_run else ''}{sku:16} {was} -> {int(wanted)} on hand")
            if not changes:
                console.print(f"the stock at {inventory_url} already matches {file.name}")
                return
            if dry_run:
                return
            confirm(yes, f"Set the stock of {len(changes)} SKU(s) at {inventory_url}?")
            for sku, _, wanted in changes:
                r = http.put(f"/stock/{sku}", json={"on_hand": wanted})
                r.raise_for_status()
                level = r.json()
                console.print(f"{sku:16} available={level['available']:>7} reserved={level['reserved']}")
    except httpx.HTTPError as e:
        fail(f"could not seed stock through {inventory_url}: {e}")
