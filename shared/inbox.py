"""Idempotent handling: inbox check, decision, one versioned write of state + outbox + inbox, then publish.

Every handler goes through :meth:`Aggregates.handle`. Kafka delivers at least once, so a redelivered
``event_id`` is a no-op; a concurrent change by another handler or replica makes the versioned write fail (see
``shared.mongo``) and the step is run again on fresh state, so a decision is always made on the latest state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import structlog
from pydantic import BaseModel

from shared import metrics, telemetry
from shared.events.base import EmittedEvent, Event
from shared.mongo import AggregateStore, ConcurrentUpdate, Loaded
from shared.outbox import OutboxRecord, OutboxRelay

log = structlog.get_logger(__name__)

S = TypeVar("S", bound=BaseModel)
Step = Callable[[Loaded[S]], Awaitable[tuple[S, Sequence[EmittedEvent]]]]

MAX_CAS_ATTEMPTS = 20


class Aggregates(Generic[S]):
    """One service's per-order documents, with the outbox relay that publishes what they emit."""

    def __init__(self, store: AggregateStore[S], relay: OutboxRelay, *, out_topic: str) -> None:
        self.store = store
        self.relay = relay
        self.out_topic = out_topic

    async def handle(self, event: Event, step: Step[S]) -> Loaded[S] | None:
        """Run ``step`` once per ``event_id``; returns the saved document, or None for a duplicate."""
        for _ in range(MAX_CAS_ATTEMPTS):
            doc = await self.store.load(order_id=event.order_id)
            if doc.seen(event.event_id):
                log.debug("duplicate event skipped", order_id=event.order_id, event_id=str(event.event_id))
                metrics.MESSAGES.labels("inbox", event.event_type, "duplicate").inc()
                return None
            try:
                state, emitted = await step(doc)
                saved = await self.save(doc, state=state, emitted=emitted, processed=event.event_id)
            except ConcurrentUpdate:
                continue
            return saved
        raise ConcurrentUpdate(f"{event.order_id}: gave up after {MAX_CAS_ATTEMPTS} concurrent updates")

    async def save(
        self,
        doc: Loaded[S],
        *,
        state: S,
        emitted: Sequence[EmittedEvent],
        processed: object | None = None,
    ) -> Loaded[S]:
        """Save and publish right away; what cannot be published now is left to the relay's scan."""
        headers = telemetry.current_context_headers()
        records = [OutboxRecord.of(self.out_topic, e, headers) for e in emitted]
        saved = await self.store.save(doc, state=state, emit=records, processed=processed)
        if saved.outbox:
            try:
                await self.relay.flush(order_id=doc.order_id, current=saved)
            except Exception as e:  # durable already: the relay retries it on its next tick
                self.relay.defer(doc.order_id)
                log.warning("publish deferred to the outbox relay", order_id=doc.order_id, error=str(e))
        return saved
