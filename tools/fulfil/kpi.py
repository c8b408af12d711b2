"""``fulfil kpi``: the shop's KPIs read from the topics, as tables."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from tools.fulfil import term
from tools.fulfil.term import Bootstrap, Json, console, fail, parse_time, run, show, when

if TYPE_CHECKING:
    from tools.ops.kpi.book import KpiBook
    from tools.ops.kpi.report import Figures, KpiReport

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
    # imported here: pydantic costs ~0.3 s of CPU at start-up of every fulfil command
    from tools.ops.kpi.report import STEP

    if bucket not in STEP:
        fail(f"--bucket is one of {', '.join(STEP)}, not {bucket!r}")
    start, end = when(since), when(until) or parse_time("0s")
    if start >= end:
        fail(f"--since {since} is not before --until {until or 'now'}")
    report = _read_report(bootstrap, start, end, bucket=bucket, order_prefix=order_prefix)
    if as_json:
        print(report.model_dump_json(indent=2))
        return
    show(_summary_table(report, start, end, order_prefix=order_prefix))
    for title, figures in (
        ("payment method", report.by_payment_method),
        ("shipping option", report.by_shipping_option),
        ("carrier", report.by_carrier),
    ):
        show(_split_table(title, figures, report.currency))
    show(_series_table(report, bucket))


def _read_report(
    bootstrap: str | None, start: datetime, end: datetime, *, bucket: str, order_prefix: str | None
) -> KpiReport:
    """The KPIs of the orders in the window, read from the topics."""
    # imported here: aiokafka, faststream and pymongo cost ~2 s of CPU at start-up of every fulfil command
    from tools.ops.kpi.read import read_kpis
    from tools.ops.settings import tool_settings

    settings = tool_settings(bootstrap)
    with console.status("reading the topics ..."):
        book: KpiBook = run(read_kpis(settings, start, until=end, order_prefix=order_prefix))
    try:
        return book.report(since=start, until=end, bucket=bucket)  # type: ignore[arg-type]  # checked by kpi_cmd
    except ValueError as e:
        fail(str(e))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} s"


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def _summary_table(report: KpiReport, start: datetime, end: datetime, *, order_prefix: str | None) -> Table:
    """The window's KPIs, one a row."""
    # imported here: pydantic costs ~0.3 s of CPU at start-up of every fulfil command
    from tools.ops.kpi.report import span

    def money(x: Decimal | None) -> str:
        return term.money(x, report.currency)

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
            f"{_pct(report.payment_success_rate)} ({report.payments_authorized}/{report.payments_attempted})",
        ),
        ("cancellation rate (of ended sagas)", _pct(report.cancellation_rate)),
        ("cancellations by reason", _reasons(report.cancellations_by_reason)),
        ("rejections by reason", _reasons(report.rejections_by_reason)),
        (
            "captured / refunded / net",
            f"{money(report.captured)} / {money(report.refunded)} / {money(report.net_revenue)}",
        ),
        ("fulfilment p50 / p95", f"{_secs(report.fulfilment_p50_seconds)} / {_secs(report.fulfilment_p95_seconds)}"),
        (
            "orders delivered / delivery p50 / p95",
            f"{report.orders_delivered} / {span(report.delivery_p50_seconds)} / {span(report.delivery_p95_seconds)}",
        ),
    ):
        summary.add_row(name, value)
    if report.orders_other_currency:
        summary.add_row("orders in another currency (not in money figures)", str(report.orders_other_currency))
    return summary


def _split_table(title: str, figures: dict[str, Figures], currency: str) -> Table:
    """The KPIs per payment method, shipping option or carrier, one a row."""
    # imported here: pydantic costs ~0.3 s of CPU at start-up of every fulfil command
    from tools.ops.kpi.report import span

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
    for name, f in figures.items():
        table.add_row(
            name,
            str(f.orders_placed),
            str(f.orders_accepted),
            term.money(f.gmv, currency),
            term.money(f.aov, currency),
            _pct(f.payment_success_rate),
            str(f.orders_completed),
            str(f.orders_cancelled),
            _pct(f.cancellation_rate),
            _secs(f.fulfilment_p50_seconds),
            _secs(f.fulfilment_p95_seconds),
            str(f.orders_delivered),
            span(f.delivery_p50_seconds),
            span(f.delivery_p95_seconds),
        )
    return table


def _series_table(report: KpiReport, bucket: str) -> Table:
    """The time series, the buckets in which something happened only."""
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
            term.money(p.gmv, report.currency),
        )
    return series
