"""The transactional outbox: events stored with the state change that caused them, published by a relay.

A handler never publishes directly. It saves its new state together with :class:`OutboxRecord`s in one document
write (see ``shared.mongo``); then :class:`OutboxRelay` publishes them with ``acks=all`` and removes them once
Kafka has acknowledged. A crash anywhere leaves the records in the document, and the relay's periodic scan
publishes them later: at least once, which consumers make exactly-once in effect by deduplicating on ``event_id``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import BaseModel, ConfigDict

from shared.events.base import EmittedEvent, now

if TYPE_CHECKING:
    from shared.mongo import AggregateStore, Loaded

log = structlog.get_logger(__name__)

Publish = Callable[["OutboxRecord"], Awaitable[None]]


class OutboxRecord(BaseModel):
    """One event waiting to be published, with the trace context of the handler that caused it."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    event_type: str
    topic: str
    key: str
    value: str
    headers: dict[str, str] = {}
    created_at: datetime

    @classmethod
    def of(cls, topic: str, event: EmittedEvent, headers: Mapping[str, str] | None = None) -> OutboxRecord:
        return cls(
            event_id=str(event.event_id),
            event_type=event.event_type,
            topic=topic,
            key=event.order_id,
            value=event.model_dump_json(),
            headers=dict(headers or {}),
            created_at=now(),
        )


class OutboxRelay:
    """Publishes outbox records of one store: right after a handler saved them, and by scans for leftovers.

    A full scan of the store (at start-up, then every ``full_scan_every`` seconds) finds what a crashed process or
    another replica left behind; in between, only the orders whose fast-path publish failed in this process are
    retried, every ``interval`` seconds. Full scans read the whole collection on FerretDB (no index pushdown for
    range filters), so they are kept rare.
    """

    def __init__(
        self,
        store: AggregateStore[Any],
        publish: Publish,
        *,
        interval: float,
        grace: float = 2.0,
        full_scan_every: float = 30.0,
    ) -> None:
        self.store = store
        self.publish = publish
        self.interval = interval
        self.full_scan_every = full_scan_every
        # Records younger than this are left to the handler that wrote them (the fast path), so the scan and the
        # handler rarely publish the same record twice.
        self.grace = timedelta(seconds=grace)
        self.deferred: set[str] = set()

    def defer(self, order_id: str) -> None:
        """The fast path could not publish this order's records: retry them on the next tick."""
        self.deferred.add(order_id)

    async def flush(self, *, order_id: str, current: Loaded[Any] | None = None) -> int:
        """Publish an order's pending records in the order they were written; returns how many went out.

        ``current``: the document as just saved by the caller (the fast path), so it is not read again.
        """
        current = current or await self.store.load(order_id=order_id)
        records = current.outbox
        if not records:
            return 0
        done: set[str] = set()
        try:
            for record in records:
                await self.publish(record)
                done.add(record.event_id)
        finally:
            if done:
                await self.store.remove_published(order_id=order_id, event_ids=done, current=current)
        return len(done)

    async def run(self) -> None:
        """Retry deferred orders every tick and scan the whole store now and then, forever."""
        last_full = float("-inf")
        loop = asyncio.get_running_loop()
        while True:
            try:
                if loop.time() - last_full >= self.full_scan_every:
                    candidates = set(await self.store.with_pending_outbox(older_than=self.grace))
                    last_full = loop.time()
                else:
                    candidates = set()
                candidates |= self.deferred
                for order_id in candidates:
                    sent = await self.flush(order_id=order_id)
                    self.deferred.discard(order_id)
                    if sent:
                        log.info("outbox relayed leftovers", order_id=order_id, count=sent)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the store or Kafka is down: the next tick tries again
                log.warning("outbox relay failed, will retry", error=f"{type(e).__name__}: {e}")
            await asyncio.sleep(self.interval)
