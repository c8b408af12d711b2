"""``fulfil reconcile``: a provider's daily bill against our ledger, as finance does each morning.

The payment service holds the provider credentials, so it fetches the bill and compares (``GET
/payments/reconcile``); this command asks it and prints every difference. Exit 1 on any difference.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tools.fulfil.term import show

BEIJING = timezone(timedelta(hours=8))


def _yesterday() -> str:
    return (datetime.now(BEIJING).date() - timedelta(days=1)).isoformat()


def fetch_reconciliation(provider: str, day: date, *, payment_url: str | None = None) -> dict[str, Any]:
    """The payment service's comparison of ``provider``'s bill for ``day`` with our ledger."""
    # imported here: httpx and pydantic-settings cost ~0.5 s of CPU at start-up of every fulfil command
    import httpx

    from tools.ops.settings import tool_settings

    settings = tool_settings()
    key = settings.fulfil_api_key
    headers = {"X-API-Key": key.get_secret_value()} if key else {}
    url = (payment_url or settings.payment_url).rstrip("/") + "/payments/reconcile"
    r = httpx.get(url, params={"provider": provider, "date": day.isoformat()}, headers=headers, timeout=120)
    if r.status_code != 200:
        raise RuntimeError(f"{url} answered {r.status_code}: {r.text[:300]}")
    data: dict[str, Any] = r.json()
    return data


app = typer.Typer()


@app.command("reconcile")
def reconcile_cmd(
    provider: Annotated[str, typer.Option("--provider", help="alipay or wechatpay")],
    day: Annotated[
        str, typer.Option("--date", help="the bill's day, YYYY-MM-DD in Beijing time (default: yesterday)")
    ] = "",
    payment_url: Annotated[str | None, typer.Option("--payment-url", help="payment API (default: PAYMENT_URL)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Compare a provider's daily bill with our ledger: missing, extra, amount and refund differences; exit 1 on any."""
    # imported here: httpx costs ~0.2 s of CPU at start-up of every fulfil command
    import httpx

    err = Console(stderr=True)
    if provider not in ("alipay", "wechatpay"):
        err.print("[red]error:[/red] --provider must be alipay or wechatpay")
        raise typer.Exit(2)
    try:
        when = date.fromisoformat(day or _yesterday())
    except ValueError:
        err.print(f"[red]error:[/red] --date {day!r} is not YYYY-MM-DD")
        raise typer.Exit(2) from None
    try:
        result = fetch_reconciliation(provider, when, payment_url=payment_url)
    except (httpx.HTTPError, RuntimeError) as e:
        err.print(f"[red]error:[/red] reconciliation failed: {e}")
        raise typer.Exit(1) from None
    differences = result["differences"]
    if as_json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        console = Console()
        console.print(
            f"{provider} {result['date']}: {result['bill_rows']} bill rows, {result['ours']} payments of ours, "
            f"{len(differences)} difference(s)"
        )
        if differences:
            table = Table("kind", "order", "detail")
            for d in differences:
                table.add_row(d["kind"], d["order_id"], d["detail"])
            show(table)
    raise typer.Exit(1 if differences else 0)
