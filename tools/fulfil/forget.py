"""``fulfil forget``: a customer's personal data erased from every service's documents."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from tools.fulfil import term
from tools.fulfil.term import DryRun, Json, MongoUrl, Yes, confirm, console, fail, parse_time
from tools.ops import audit

app = typer.Typer()


@app.command("forget")
def forget(
    customer_id: Annotated[str, typer.Argument(help="the storefront's customer id (customer.id of its orders)")],
    mongodb_url: MongoUrl = None,
    settled_after: Annotated[
        str, typer.Option("--settled-after", help="leave orders that finished less than this long ago")
    ] = "10m",
    dry_run: DryRun = False,
    yes: Yes = False,
    as_json: Json = False,
) -> None:
    """Erase a customer's personal data (name, e-mail, phone, address, payment token, mails) from every service's
    documents. Orders still in flight are left and listed: run it again once they have finished."""
    # imported here: pymongo and fastapi cost ~1 s of CPU at start-up of every fulfil command
    from tools.ops import privacy

    client = term.mongo(mongodb_url)
    with console.status(f"looking for the orders of customer {customer_id} ..."):
        try:
            plan = privacy.plan_forget(client, customer_id, settled_after=parse_time("0s") - parse_time(settled_after))
        except Exception as e:
            fail(f"could not read the stores: {type(e).__name__}: {e}")
            return
    summary = plan.summary()
    if as_json:
        console.print_json(data={**summary, "dry_run": dry_run})
    else:
        console.print(f"customer {customer_id}: {len(plan.order_ids)} finished order(s) to erase")
        for target, n in summary["documents"].items():
            console.print(f"{'(dry run) ' if dry_run else ''}erase personal fields in {n} document(s) of {target}")
        for oid, why in plan.skipped.items():
            console.print(f"[yellow]left[/yellow] {oid}: {why}")
    if dry_run or not plan.documents:
        if not plan.documents and not as_json:
            console.print("nothing to erase")
        return
    confirm(yes, f"Erase the personal data of customer {customer_id} ({len(plan.order_ids)} order(s))? No undo.")
    at = datetime.now(UTC)
    # The tombstone first: if the erasure stops part-way, a restore still knows to erase the customer again.
    privacy.record_erasure(client, customer_id=customer_id, orders=plan.order_ids, at=at)
    written = privacy.apply_forget(client, plan)
    audit.write("forget", audit.AUDIT_LOG, customer_id=customer_id, orders=plan.order_ids, documents=written)
    if not as_json:
        console.print(f"erased: {written} document(s); Kafka keeps its copies until retention (7 days, DLQs 30)")
