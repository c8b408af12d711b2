"""The transactional outbox: events stored with the state change that caused them, published before the cause
is acknowledged.

A handler never publishes first. It saves its new state together with :class:`OutboxRecord`s in one document
write (see ``shared.mongo``), each record naming its ``cause`` (the event, or the timer, that led to it); then the
records are published with ``acks=all``, and only then is the cause acknowledged (the Kafka offset committed, the
timer cleared). A crash anywhere in between redelivers the cause; the inbox recognises it, and the records it
caused are published again from the document (:meth:`shared.mongo.Loaded.emitted_by`). So nothing scans for
leftovers: at least once, which consumers make exactly-once in effect by deduplicating on ``event_id``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from shared.events.base import EmittedEvent, now

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
    cause: str = ""

    @classmethod
    def of(
        cls, topic: str, event: EmittedEvent, headers: Mapping[str, str] | None = None, *, cause: object = ""
    ) -> OutboxRecord:
        return cls(
            cause=str(cause),
            event_id=str(event.event_id),
            event_type=event.event_type,
            topic=topic,
            key=event.order_id,
            value=event.model_dump_json(),
            headers=dict(headers or {}),
            created_at=now(),
        )
