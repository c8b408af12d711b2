"""The unit of work every handler goes through: inbox check, decision, one versioned write, publish, effects.

Kafka delivers at least once, so a redelivered ``event_id`` is recognised by the inbox: nothing is decided again,
but what it caused is published again (the first publish may have been lost in a crash) and any side effect it
left half-done is finished. A concurrent change by another handler or replica makes the versioned write fail
(see ``shared.mongo``) and the step runs again on fresh state, so a decision is always made on the latest state.

External side effects (authorise, capture, book, send...) never run inside a step that may be re-run. A step
only *records the intent* in the state; :meth:`UnitOfWork.drive` then performs the pending effect with its
idempotency key and records the result as the next version. Whoever meets a recorded intent -- the handler that
wrote it, a redelivery after a crash, a replica, a cancellation -- finishes it the same way, so an effect is
decided once and never left without its result (and, through the domain, its compensation).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

import structlog
from pydantic import BaseModel

from shared import metrics, telemetry
from shared.consumer import Busy, NotYet, PermanentError
from shared.events.base import EmittedEvent, Event
from shared.mongo import AggregateStore, ConcurrentUpdate, Loaded, Timers, on_concurrent_update
from shared.outbox import OutboxRecord

log = structlog.get_logger(__name__)

S = TypeVar("S", bound=BaseModel)
Step = Callable[[Loaded[S]], Awaitable[tuple[S, Sequence[EmittedEvent]]]]
Publish = Callable[[Sequence[OutboxRecord]], Awaitable[None]]


class Effects(Protocol[S]):
    """A service's external side effects: which one a state has pending (pure), doing it, recording its result."""

    def pending(self, state: S | None) -> BaseModel | None: ...

    async def perform(self, order_id: str, state: S, effect: Any) -> Any: ...

    def record(self, state: S, effect: Any, result: Any, cause: Event) -> tuple[S, Sequence[EmittedEvent]]: ...


class UnitOfWork(Generic[S]):
    """The unit of work over one service's per-order documents: per event, the inbox check, one decision, one
    versioned write, the publish of what it emitted, then the pending side effects."""

    def __init__(
        self,
        store: AggregateStore[S],
        publish: Publish,
        *,
        out_topic: str,
        effects: Effects[S] | None = None,
        timers: Timers | None = None,
        timers_of: Callable[[S], Mapping[str, datetime | None]] | None = None,
    ) -> None:
        self.store = store
        self.publish = publish
        self.out_topic = out_topic
        self.effects = effects
        self.timers = timers
        self.timers_of = timers_of

    async def handle(self, event: Event, step: Step[S]) -> Loaded[S] | None:
        """Run ``step`` once per ``event_id``; returns the saved document, or None for a duplicate."""

        async def attempt(_: int) -> Loaded[S] | None:
            doc = await self.store.load(order_id=event.order_id)
            if doc.seen(event.event_id):
                log.debug("duplicate event", order_id=event.order_id, event_id=str(event.event_id))
                metrics.MESSAGES.labels("inbox", event.event_type, "duplicate").inc()
                again = self._in_order(doc, again=event.event_id)
                await self.publish(again)
                self.store.acknowledged(again)
                self.store.rehead(order_id=event.order_id)
                await self.drive(doc, cause=event)
                return None
            try:
                state, emitted = await step(doc)
            except (PermanentError, NotYet):
                if not doc.assumed:
                    # A refusal is only as good as the version it was decided on: the cached one may be behind a
                    # version another copy wrote while it held the order's partition. Never refuse on that.
                    if await self.store.outdated(doc):
                        raise ConcurrentUpdate(event.order_id) from None
                    raise
                # Taken as new without a read, and the step needs what exists: look it up, decide again.
                confirmed = await self.store.confirm(order_id=event.order_id)
                if confirmed.state is None:
                    raise
                raise ConcurrentUpdate(event.order_id) from None
            return await self.save(doc, state=state, emitted=emitted, processed=event.event_id)

        saved = await on_concurrent_update(attempt)
        return None if saved is None else await self.drive(saved, cause=event)

    async def save(
        self,
        doc: Loaded[S],
        *,
        state: S,
        emitted: Sequence[EmittedEvent],
        processed: object | None = None,
        cause: object | None = None,
    ) -> Loaded[S]:
        """One versioned write, then publish what it emitted (raises if Kafka did not take it: the cause is then
        redelivered or re-fired, and the records go out from the document)."""
        headers = telemetry.current_context_headers()
        reason = cause if cause is not None else processed
        records = [OutboxRecord.of(self.out_topic, e, headers, cause=reason or "") for e in emitted]
        before, after = self._timers(doc.state), self._timers(state)
        for kind, due in after.items():
            if due is not None and before.get(kind) != due and self.timers is not None:
                await self.timers.set(kind=kind, key=doc.order_id, due_at=due)  # before the state that needs it
        saved = await self.store.save(doc, state=state, emit=records, processed=processed)
        out = self._in_order(doc, new=records)
        await self.publish(out)
        self.store.acknowledged(out)
        for kind, due in before.items():
            if due is not None and after.get(kind) is None and self.timers is not None:
                # After the state that ends it *and* its events: a timer-driven cause (a review ending) is not
                # redelivered by Kafka, so if the publish fails its timer must fire again to publish them.
                await self.timers.clear(kind=kind, key=doc.order_id)
        return saved

    def _in_order(
        self, doc: Loaded[S], *, again: object | None = None, new: Sequence[OutboxRecord] = ()
    ) -> list[OutboxRecord]:
        """What to publish, in the order it was decided: what the document emitted and Kafka may not have taken (a
        publish that failed, a crash after the write) or what ``again`` (a redelivered cause) emitted, then ``new``.
        So an ``OrderCompleted`` whose publish was lost goes out before the ``OrderCancelled`` decided after it."""
        waiting = {r.event_id for r in self.store.unacknowledged(doc)}
        cause = str(again) if again is not None else None
        return [*(r for r in doc.outbox if r.event_id in waiting or r.cause == cause), *new]

    def _timers(self, state: S | None) -> Mapping[str, datetime | None]:
        return self.timers_of(state) if state is not None and self.timers_of is not None else {}

    async def drive(self, doc: Loaded[S], *, cause: Event) -> Loaded[S]:
        """Perform the document's pending side effects, one after another, recording each result."""
        if self.effects is None:
            return doc
        while doc.state is not None and (effect := self.effects.pending(doc.state)) is not None:
            try:
                result = await self.effects.perform(doc.order_id, doc.state, effect)
            except Busy:
                # Another process holds the effect: the retry must read what it records, not this process's copy
                # (the cache would show its claim until the lease ran out, though the claim was settled long ago).
                self.store.docs.note_exists(doc.order_id, doc.version + 1)
                raise
            doc = await self._record(doc, effect, result, cause)
        return doc

    async def _record(self, doc: Loaded[S], effect: BaseModel, result: Any, cause: Event) -> Loaded[S]:
        """Record an effect's result as the next version. If someone changed the document meanwhile (a
        cancellation noted, or the same result recorded by a replica), record it on the newest state if the
        effect is still the pending one."""
        assert self.effects is not None
        effects = self.effects

        async def attempt(n: int) -> Loaded[S]:
            current = doc if n == 1 else await self.store.load(order_id=doc.order_id)
            if n > 1 and effects.pending(current.state) != effect:
                # Recorded already -- maybe by an earlier delivery of this cause whose publish never happened (a
                # crash, a store error after the write): the inbox check saw an older version without those
                # records, so publish what this cause emitted from the newest one.
                unpublished = self._in_order(current, again=cause.event_id)
                await self.publish(unpublished)
                self.store.acknowledged(unpublished)
                return current
            assert current.state is not None
            state, emitted = effects.record(current.state, effect, result, cause)
            return await self.save(current, state=state, emitted=emitted, cause=cause.event_id)

        return await on_concurrent_update(attempt)
