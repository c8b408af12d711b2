"""What every ``fulfil`` command shares at the terminal: the consoles, one-line failures, confirmations, the common
options, the times they take (an ISO time or an age), and tables that fit where they go.

Connections come from one settings class (tools.ops.settings: the services' variables, KAFKA_SECURITY_PROTOCOL,
KAFKA_SASL_*, KAFKA_SSL_CAFILE, MONGODB_URL, ORDER_URL...); an option given on the command line overrides it.
"""

from __future__ import annotations

import asyncio
import io
import re
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, NoReturn, overload

import typer
from rich.console import Console
from rich.table import Table

from tools.ops.verify import Report

console = Console()
err = Console(stderr=True)

Bootstrap = Annotated[
    str | None,
    typer.Option("--bootstrap", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)"),
]
OrderUrl = Annotated[str | None, typer.Option("--order-url", help="order API (default: ORDER_URL)")]
InventoryUrl = Annotated[str | None, typer.Option("--inventory-url", help="inventory API (default: INVENTORY_URL)")]
JaegerUrl = Annotated[str | None, typer.Option("--jaeger-url", help="Jaeger query API (default: JAEGER_QUERY_URL)")]
MongoUrl = Annotated[str | None, typer.Option("--mongodb-url", help="the store (default: MONGODB_URL)")]
Json = Annotated[bool, typer.Option("--json", help="machine-readable output")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="show what would change, change nothing")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")]
OrderOpt = Annotated[str | None, typer.Option("--order-id", help="only this order")]

# How a currency's amounts are written; a currency not named here is written after the amount ("12.50 HKD").
SYMBOLS = {"CNY": "¥", "USD": "$", "EUR": "€", "GBP": "£", "JPY": "JP¥"}


def fail(message: str) -> NoReturn:
    """Print a one-line reason and exit non-zero."""
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


def confirm(yes: bool, question: str) -> None:
    """Ask before changing a live system, unless --yes; without a terminal to ask, refuse rather than guess."""
    if yes:
        return
    if not sys.stdin.isatty():
        fail(f"{question} -- no terminal to ask: pass --yes to go ahead")
    if not typer.confirm(question):
        fail("aborted")


def run(coro: Any) -> Any:
    """Run a coroutine; what goes wrong becomes a one-line failure."""
    # imported here: aiokafka, faststream and pydantic-settings cost ~0.9 s of CPU at start-up of every fulfil command
    from aiokafka.errors import KafkaConnectionError

    from shared.kafka import unreachable
    from tools.ops.settings import tool_settings

    try:
        return asyncio.run(coro)
    except (ValueError, LookupError) as e:
        fail(str(e))
    except KafkaConnectionError as e:  # a refused login or certificate, or no broker: say where and what to check
        fail(unreachable(tool_settings(), e))
    except Exception as e:  # a broker that does not answer, a refused request: one line, non-zero exit
        fail(f"{type(e).__name__}: {e}")
    return None


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """``2026-11-25T08:00:00Z``, a date, ``earliest``, or an age such as ``90s``, ``10m``, ``2h``, ``7d``."""
    now = now or datetime.now(UTC)
    text = text.strip()
    if text == "earliest":
        return datetime(1970, 1, 1, tzinfo=UTC)
    if m := re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text):
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return now - timedelta(**{unit: float(m.group(1))})
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"cannot read time {text!r}: use ISO 8601, 'earliest' or an age like 10m, 2h, 7d") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@overload
def when(text: str) -> datetime: ...
@overload
def when(text: None) -> None: ...
@overload
def when(text: str | None) -> datetime | None: ...
def when(text: str | None) -> datetime | None:
    """An ISO time or an age (10m, 2h) as a time; None stays None; anything else fails the command."""
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as e:
        fail(str(e))


def mongo(url: str | None) -> Any:
    """A client of the store (MONGODB_URL unless given)."""
    # imported here: pymongo and pydantic-settings cost ~0.7 s of CPU at start-up of every fulfil command
    from pymongo import MongoClient

    from tools.ops.settings import tool_settings

    return MongoClient(url or tool_settings().mongodb_url, tz_aware=True, serverSelectionTimeoutMS=5000)


def money(amount: Decimal | None, currency: str) -> str:
    """An amount in its own currency: ``¥1,234.50``; ``-`` for none."""
    if amount is None:
        return "-"
    symbol = SYMBOLS.get(currency)
    return f"{symbol}{amount:,.2f}" if symbol else f"{amount:,.2f} {currency}"


def show(table: Table, *, screen: Console | None = None) -> None:
    """Print a table: on a terminal as rich fits it to the window; to a pipe or a file every cell on one line, the
    table as wide as its cells (a log or ``| grep`` wants whole topic names, not a name folded over five lines)."""
    screen = screen or console
    if screen.is_terminal:
        screen.print(table)
        return
    for column in table.columns:
        column.no_wrap = True
        column.overflow = "ignore"
    width = Console(file=io.StringIO(), width=1_000_000).measure(table).maximum
    Console(file=screen.file, width=max(width, 20), soft_wrap=False).print(table)


def print_report(report: Report, *, title: str = "") -> None:
    """A verification's outcome: orders checked, notes, and a table of violations by kind."""
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(report.statuses.items())) or "none"
    console.print(f"{title}{report.orders} order(s) checked: {statuses}")
    for note in report.notes:
        console.print(f"[dim]note:[/dim] {note}")
    if not report.violations:
        console.print("[green]no violations[/green]")
        return
    by_kind = Counter(x.kind for x in report.violations)
    console.print("violations by kind: " + ", ".join(f"{k} {n}" for k, n in by_kind.most_common()))
    table = Table(title=f"{len(report.violations)} violation(s)")
    for col in ("kind", "order / sku", "detail"):
        table.add_column(col, overflow="fold")
    for x in report.violations:
        table.add_row(f"[red]{x.kind}[/red]", x.subject, x.detail)
    show(table)
