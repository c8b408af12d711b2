"""`fulfil` tables fit where they go: whole cells in a pipe or a log, money in the data's own currency."""

from __future__ import annotations

from decimal import Decimal

import pytest
from rich.table import Table

from tools.fulfil import term


def test_a_piped_table_keeps_every_cell_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    table = Table(title="1 dead-lettered record(s)")
    for col in ("id", "reason"):
        table.add_column(col, overflow="fold")
    table.add_row("storefront.orders.dlq:0:12", "x" * 150)

    term.show(table)  # pytest's capture is no terminal

    out = capsys.readouterr().out
    assert "storefront.orders.dlq:0:12" in out
    assert "x" * 150 in out
    assert len([line for line in out.splitlines() if "│" in line]) == 1  # one row, one line


def test_money_is_written_in_the_currency_of_the_data() -> None:
    assert term.money(Decimal("274.8"), "CNY") == "¥274.80"
    assert term.money(Decimal("1234.5"), "HKD") == "1,234.50 HKD"
    assert term.money(None, "CNY") == "-"
