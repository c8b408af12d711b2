"""Mongo plumbing: one client per process, and the per-order document every service keeps.

Each service owns a database and keeps, per order, one document holding its state, its outbox (events caused by
the last changes, not yet acknowledged by Kafka) and its inbox (``event_id``s already handled). A handler's
effect is one conditional single-document write (compare-and-set on ``v``), so it behaves the same on MongoDB and
on FerretDB, which has no multi-document transactions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shared.events.base import now
from shared.outbox import OutboxRecord
from shared.settings import ServiceSettings

Doc = dict[str, Any]
S = TypeVar("S", bound=BaseModel)

INBOX_LIMIT = 500  # an order sees a few dozen events; the cap only bounds pathological replays


def connect(settings: ServiceSettings) -> AsyncMongoClient[Doc]:
    # A short server-selection timeout turns a store outage into a quick, retryable error instead of a 30 s hang.
    return AsyncMongoClient(
        settings.mongodb_url,
        serverSelectionTimeoutMS=3000,
        connectTimeoutMS=3000,
        tz_aware=True,
        appname=settings.service_name,
    )


class ConcurrentUpdate(Exception):
    """Another handler or replica changed the document since we read it; reload and decide again."""


@dataclass
class Loaded(Generic[S]):
    """A document as read: the typed state (None for an order not seen yet) and what CAS needs."""

    order_id: str
    state: S | None
    version: int = 0
    inbox: list[str] = field(default_factory=list)
    outbox: list[OutboxRecord] = field(default_factory=list)

    def seen(self, event_id: object) -> bool:
        return str(event_id) in self.inbox


class AggregateStore(Generic[S]):
    """Per-order documents of one service: load, compare-and-set save with outbox and inbox, outbox scans."""

    def __init__(self, db: AsyncDatabase[Doc], collection: str, state_model: type[S]) -> None:
        self.coll: AsyncCollection[Doc] = db[collection]
        self.state_model = state_model

    async def ensure_indexes(self) -> None:
        await self.coll.create_index([("outbox_since", ASCENDING)], name="outbox_since")

    def indexed(self, state: S) -> Doc:
        """Top-level fields derived from the state, kept as native types so scans can query them (override)."""
        return {}

    async def load(self, *, order_id: str) -> Loaded[S]:
        doc = await self.coll.find_one({"_id": order_id})
        if doc is None:
            return Loaded(order_id=order_id, state=None)
        return Loaded(
            order_id=order_id,
            state=self.state_model.model_validate(doc["state"]),
            version=int(doc["v"]),
            inbox=list(doc.get("inbox", [])),
            outbox=[OutboxRecord.model_validate(r) for r in doc.get("outbox", [])],
        )

    async def save(
        self,
        loaded: Loaded[S],
        *,
        state: S,
        emit: Sequence[OutboxRecord] = (),
        processed: object | None = None,
    ) -> Loaded[S]:
        """Write state + new outbox records + inbox entry in one conditional write; ConcurrentUpdate on a race."""
        inbox = [*loaded.inbox, str(processed)][-INBOX_LIMIT:] if processed is not None else loaded.inbox
        outbox = [*loaded.outbox, *emit]
        doc: Doc = {
            "_id": loaded.order_id,
            "v": loaded.version + 1,
            "state": state.model_dump(mode="json"),
            "inbox": inbox,
            "outbox": [r.model_dump(mode="python") for r in outbox],
            "updated_at": now(),
            **self.indexed(state),
        }
        if outbox:
            doc["outbox_since"] = min(r.created_at for r in outbox)
        if loaded.version == 0:
            try:
                await self.coll.insert_one(doc)
            except DuplicateKeyError:
                raise ConcurrentUpdate(loaded.order_id) from None
        else:
            res = await self.coll.replace_one({"_id": loaded.order_id, "v": loaded.version}, doc)
            if res.matched_count != 1:
                raise ConcurrentUpdate(loaded.order_id)
        return Loaded(loaded.order_id, state, loaded.version + 1, inbox, outbox)

    async def remove_published(self, *, order_id: str, event_ids: set[str]) -> None:
        """Drop acknowledged records from the outbox, retrying the compare-and-set until it sticks."""
        for _ in range(20):
            doc = await self.coll.find_one({"_id": order_id}, {"v": 1, "outbox": 1})
            if doc is None:
                return
            remaining = [r for r in doc.get("outbox", []) if r["event_id"] not in event_ids]
            if len(remaining) == len(doc.get("outbox", [])):
                return
            update: Doc = {"$set": {"outbox": remaining, "v": doc["v"] + 1}}
            if remaining:
                update["$set"]["outbox_since"] = min(r["created_at"] for r in remaining)
            else:
                update["$unset"] = {"outbox_since": ""}
            res = await self.coll.update_one({"_id": order_id, "v": doc["v"]}, update)
            if res.matched_count == 1:
                return
        raise ConcurrentUpdate(order_id)

    async def with_pending_outbox(self, *, older_than: timedelta, limit: int = 200) -> list[str]:
        cutoff = now() - older_than
        cursor = self.coll.find({"outbox_since": {"$lte": cutoff}}, {"_id": 1}).sort("outbox_since", 1).limit(limit)
        return [d["_id"] async for d in cursor]

    async def outbox_stats(self) -> tuple[int, datetime | None]:
        """(events waiting, creation time of the oldest) for the backlog metrics."""
        count, oldest = 0, None
        async for d in self.coll.find({"outbox_since": {"$exists": True}}, {"outbox": 1, "outbox_since": 1}):
            count += len(d.get("outbox", []))
            if oldest is None or d["outbox_since"] < oldest:
                oldest = d["outbox_since"]
        return count, oldest
