"""``fulfil kpi``: the shop's KPIs read from the topics, as tables."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

import typer
from rich.table import Table

from tools.fulfil import term
from tools.fulfil.term import Bootstrap, Json, console, fail, run, show, when
from tools.ops import topic_log
from tools.ops.kpi.book import KpiBook
from tools.ops.kpi.read import read_kpis
from tools.ops.kpi.report import STEP, span
from tools.ops.settings import tool_settings

app = typer.Typer()


@app.command("kpi")
def kpi_cmd(
    since: Annotated[str, typer.Option("--since", help="ISO time or age (15m, 1h, 7d)")] = "1h",
    until: Annotated[str | None, typer.Option("--until", help="ISO time or age (default: now)")] = None,
    bucket: Annotated[str, typer.Option("--bucket", help="time series per minute, hour or day")] = "hour",
    order_prefix: Annotated[str | None, typer.Option("--order-prefix", help="only orders whose id starts so")] = None,
    bootstrap: Bootstrap = None,
    as_json: Json = False,
) -> None:
    """The shop's KPIs, read from the topics: GMV, orders, AOV, payment success, cancellations by reason, fulfilment
    time p50/p95, per payment method, shipping option and carrier, and a time series (definitions: docs/runbook.md)."""

    if bucket not in STEP:
        fail(f"--bucket is one of {', '.join(STEP)}, not {bucket!r}")
    start, end = when(since), when(until) or topic_log.parse_time("0s")
    if start >= end:
        fail(f"--since {since} is not before --until {until or 'now'}")
    settings = tool_settings(bootstrap)
    with console.status("reading the topics ..."):
        book: KpiBook = run(read_kpis(settings, start, until=end, order_prefix=order_prefix))
    try:
        report = book.report(since=start, until=end, bucket=bucket)  # type: ignore[arg-type]  # checked above
    except ValueError as e:
        fail(str(e))
        return
    if as_json:
        print(report.model_dump_json(indent=2))
        return

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    def secs(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f} s"

    def money(x: Decimal | None) -> str:
        return term.money(x, report.currency)

    def reasons(counts: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"

    scope = f" (orders {order_prefix}*)" if order_prefix else ""
    summary = Table(title=f"KPIs {start:%Y-%m-%d %H:%M:%S} - {end:%Y-%m-%d %H:%M:%S} UTC{scope}")
    summary.add_column("KPI")
    summary.add_column("value", justify="right")
    for name, value in (
        (f"GMV (accepted orders, {report.currency})", money(report.gmv)),
        (
            "orders placed / accepted / rejected",
            f"{report.orders_placed} / {report.orders_accepted} / {report.orders_rejected}",
        ),
        ("orders completed / cancelled", f"{report.orders_completed} / {report.orders_cancelled}"),
        ("AOV", money(report.aov)),
        (
            "payment success (authorised / attempted)",
            f"{pct(report.payment_success_rate)} ({report.payments_authorized}/{report.payments_attempted})",
        ),
        ("cancellation rate (of ended sagas)", pct(report.cancellation_rate)),
        ("cancellations by reason", reasons(report.cancellations_by_reason)),
        ("rejections by reason", reasons(report.rejections_by_reason)),
        (
            "captured / refunded / net",
            f"{money(report.captured)} / {money(report.refunded)} / {money(report.net_revenue)}",
        ),
        ("fulfilment p50 / p95", f"{secs(report.fulfilment_p50_seconds)} / {secs(report.fulfilment_p95_seconds)}"),
        (
            "orders delivered / delivery p50 / p95",
            f"{report.orders_delivered} / {span(report.delivery_p50_seconds)} / {span(report.delivery_p95_seconds)}",
        ),
    ):
        summary.add_row(name, value)
    if report.orders_other_currency:
        summary.add_row("orders in another currency (not in money figures)", str(report.orders_other_currency))
    show(summary)
    for title, split in (
        ("payment method", report.by_payment_method),
        ("shipping option", report.by_shipping_option),
        ("carrier", report.by_carrier),
    ):
        table = Table(title=f"per {title}")
        for col in (
            title,
            "placed",
            "accepted",
            "GMV",
            "AOV",
            "pay success",
            "completed",
            "cancelled",
            "cancel rate",
            "p50",
            "p95",
            "delivered",
            "delivery p50",
            "delivery p95",
        ):
            table.add_column(col, justify="left" if col == title else "right")
        for name, f in split.items():
            table.add_row(
                name,
                str(f.orders_placed),
                str(f.orders_accepted),
                money(f.gmv),
                money(f.aov),
                pct(f.payment_success_rate),
                str(f.orders_completed),
                str(f.orders_cancelled),
                pct(f.cancellation_rate),
                secs(f.fulfilment_p50_seconds),
                secs(f.fulfilment_p95_seconds),
                str(f.orders_delivered),
                span(f.delivery_p50_seconds),
                span(f.delivery_p95_seconds),
            )
        show(table)
    busy = [
        p for p in report.series if p.orders_placed or p.orders_accepted or p.orders_completed or p.orders_cancelled
    ]
    series = Table(title=f"per {bucket} ({len(report.series) - len(busy)} empty {bucket}s not shown)")
    for col in (bucket, "placed", "accepted", "completed", "cancelled", "GMV"):
        series.add_column(col, justify="left" if col == bucket else "right")
    for p in busy:
        series.add_row(
            f"{p.start:%Y-%m-%d %H:%M}",
            str(p.orders_placed),
            str(p.orders_accepted),
            str(p.orders_completed),
            str(p.orders_cancelled),
            money(p.gmv),
        )
    show(series)
