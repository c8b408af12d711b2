"""The providers' and carriers' clock: Beijing time, and the ways each party writes it."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

# Both providers keep Beijing time (no daylight saving): timestamps, bill days, "YYYY-MM-DD HH:MM:SS" fields.
CST = timezone(timedelta(hours=8), "Asia/Shanghai")


def now() -> datetime:
    return datetime.now(CST)


def cst_text(moment: datetime) -> str:
    """``2026-12-04 23:40:36`` in Beijing time, as Alipay writes times."""
    return moment.astimezone(CST).strftime("%Y-%m-%d %H:%M:%S")


def rfc3339(moment: datetime) -> str:
    """``2026-12-04T23:40:36+08:00``, as WeChat Pay writes times."""
    return moment.astimezone(CST).replace(microsecond=0).isoformat()


def bill_day(moment: datetime) -> date:
    return moment.astimezone(CST).date()
