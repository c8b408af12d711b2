"""Feeding a :class:`KpiBook` from the topics (``fulfil kpi``), read without a consumer group."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared import topics
from shared.settings import ServiceSettings
from tools.ops import topic_log
from tools.ops.kpi.book import KPI_TOPICS, KpiBook

# How far before `since` read_kpis reads, so an order that started before the window is attributed to its method
# and option and its fulfilment time is known (the order service cancels a saga idle for 300 s).
CONTEXT = timedelta(minutes=30)
# How far before `since` read_kpis looks for the start of an order delivered in the window (the topics keep 7 days).
DELIVERY_CONTEXT = timedelta(days=8)


async def read_kpis(
    settings: ServiceSettings,
    since: datetime,
    *,
    until: datetime | None = None,
    order_prefix: str | None = None,
    context: timedelta = CONTEXT,
    delivery_context: timedelta = DELIVERY_CONTEXT,
) -> KpiBook:
    """A book of every record of :data:`KPI_TOPICS` from ``since`` to the end offsets (read without a consumer group).

    Reading starts ``context`` earlier, so orders begun before ``since`` keep their method, option and start time;
    the book counts (for its collector) from ``since``, and ``report(since=since)`` leaves the context out. Orders
    delivered in the window but begun before that are looked up further back, to ``delivery_context`` before
    ``since``, in ``storefront.orders`` and ``order.events`` only (those orders' records, nothing else is decoded).
    """
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    book = KpiBook(counting_from=since)
    start = max(since - context, epoch)
    async for rec in topic_log.scan(settings, KPI_TOPICS, since=start, until=until):
        if order_prefix is not None and not (rec.key or "").startswith(order_prefix):
            continue
        value = rec.json()
        if value is not None:
            book.add(rec.topic, value, rec.at)
    undated = book.undated_deliveries(since)
    earlier = max(since - delivery_context, epoch)
    if undated and earlier < start:
        starts = (topics.STOREFRONT_ORDERS, topics.ORDER_EVENTS)
        async for rec in topic_log.scan(settings, starts, since=earlier, until=start):
            if rec.key in undated and rec.at < start and (value := rec.json()) is not None:
                book.add(rec.topic, value, rec.at)
    return book
