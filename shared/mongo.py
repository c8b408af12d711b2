"""Mongo plumbing: one client per process, and the versioned documents every service keeps.

Each service owns a database and keeps, per order, one document holding its state, its outbox (events caused by
the last changes, not yet acknowledged by Kafka) and its inbox (``event_id``s already handled). A handler's effect
is one write. To be atomic on every MongoDB-wire store, that write is an *insert* of the next version of the
document (``_id = "<key>@<version>"``): a unique ``_id`` is enforced atomically by MongoDB and by FerretDB alike,
whereas FerretDB v1 evaluates an update's filter and applies the update in two steps, so a conditional update
(compare-and-set with ``replace_one({_id, v})``) can silently lose a concurrent write there. Superseded versions
are pruned right after each write; readers always take the highest version.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from shared.events.base import now
from shared.outbox import OutboxRecord
from shared.settings import ServiceSettings

Doc = dict[str, Any]
S = TypeVar("S", bound=BaseModel)

INBOX_LIMIT = 500  # an order sees a few dozen events; the cap only bounds pathological replays
MAX_WRITE_ATTEMPTS = 50


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


class VersionedCollection:
    """Documents kept as versions: a write inserts version ``v + 1`` and fails if anyone else wrote it first."""

    def __init__(self, coll: AsyncCollection[Doc]) -> None:
        self.coll = coll

    async def ensure_indexes(self) -> None:
        await self.coll.create_index([("key", ASCENDING), ("v", DESCENDING)], name="key_v")

    async def latest(self, key: str) -> Doc | None:
        return await self.coll.find_one({"key": key}, sort=[("v", DESCENDING)])

    async def write(self, key: str, *, read_version: int, body: Doc) -> int:
        """Insert the version after ``read_version``; ConcurrentUpdate if it exists already. Returns the version."""
        version = read_version + 1
        try:
            await self.coll.insert_one({**body, "_id": f"{key}@{version:012d}", "key": key, "v": version})
        except DuplicateKeyError:
            raise ConcurrentUpdate(key) from None
        # Superseded versions only slow readers down; losing this delete (a crash, an outage) is harmless.
        with contextlib.suppress(PyMongoError):
            await self.coll.delete_many({"key": key, "v": {"$lt": version}})
        return version

    async def latest_matching(self, query: Doc, *, sort: str | None = None, limit: int = 200) -> list[Doc]:
        """Latest versions that match ``query`` (a stale, not yet pruned version never answers for its key)."""
        cursor = self.coll.find(query)
        if sort:
            cursor = cursor.sort(sort, ASCENDING)
        out: list[Doc] = []
        seen: set[str] = set()
        async for doc in cursor.limit(limit * 2):
            key = doc["key"]
            if key in seen:
                continue
            seen.add(key)
            newest = await self.latest(key)
            if newest is not None and newest["v"] == doc["v"]:
                out.append(doc)
            if len(out) >= limit:
                break
        return out


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
    """Per-order documents of one service: load, versioned save with outbox and inbox, outbox scans."""

    def __init__(self, db: AsyncDatabase[Doc], collection: str, state_model: type[S]) -> None:
        self.coll: AsyncCollection[Doc] = db[collection]
        self.docs = VersionedCollection(self.coll)
        self.state_model = state_model

    async def ensure_indexes(self) -> None:
        await self.docs.ensure_indexes()
        await self.coll.create_index([("outbox_since", ASCENDING)], name="outbox_since", sparse=True)

    def indexed(self, state: S) -> Doc:
        """Top-level fields derived from the state, kept as native types so scans can query them (override)."""
        return {}

    def _loaded(self, order_id: str, doc: Doc | None) -> Loaded[S]:
        if doc is None:
            return Loaded(order_id=order_id, state=None)
        return Loaded(
            order_id=order_id,
            state=self.state_model.model_validate(doc["state"]),
            version=int(doc["v"]),
            inbox=list(doc.get("inbox", [])),
            outbox=[OutboxRecord.model_validate(r) for r in doc.get("outbox", [])],
        )

    async def load(self, *, order_id: str) -> Loaded[S]:
        return self._loaded(order_id, await self.docs.latest(order_id))

    def _body(self, state: S, inbox: list[str], outbox: list[OutboxRecord]) -> Doc:
        body: Doc = {
            "state": state.model_dump(mode="json"),
            "inbox": inbox,
            "outbox": [r.model_dump(mode="python") for r in outbox],
            "updated_at": now(),
            **self.indexed(state),
        }
        if outbox:
            body["outbox_since"] = min(r.created_at for r in outbox)
        return body

    async def save(
        self,
        loaded: Loaded[S],
        *,
        state: S,
        emit: Sequence[OutboxRecord] = (),
        processed: object | None = None,
    ) -> Loaded[S]:
        """Write state + new outbox records + inbox entry as the next version; ConcurrentUpdate on a race."""
        inbox = [*loaded.inbox, str(processed)][-INBOX_LIMIT:] if processed is not None else loaded.inbox
        outbox = [*loaded.outbox, *emit]
        version = await self.docs.write(
            loaded.order_id, read_version=loaded.version, body=self._body(state, inbox, outbox)
        )
        return Loaded(loaded.order_id, state, version, inbox, outbox)

    async def remove_published(self, *, order_id: str, event_ids: set[str]) -> None:
        """Drop acknowledged records from the outbox, retrying until the new version sticks."""
        for _ in range(MAX_WRITE_ATTEMPTS):
            doc = await self.load(order_id=order_id)
            if doc.state is None:
                return
            remaining = [r for r in doc.outbox if r.event_id not in event_ids]
            if len(remaining) == len(doc.outbox):
                return
            try:
                await self.docs.write(
                    order_id, read_version=doc.version, body=self._body(doc.state, doc.inbox, remaining)
                )
                return
            except ConcurrentUpdate:
                continue
        raise ConcurrentUpdate(order_id)

    async def latest_matching(self, query: Doc, *, sort: str | None = None, limit: int = 200) -> list[Loaded[S]]:
        return [self._loaded(d["key"], d) for d in await self.docs.latest_matching(query, sort=sort, limit=limit)]

    async def with_pending_outbox(self, *, older_than: timedelta, limit: int = 200) -> list[str]:
        cutoff = now() - older_than
        found = await self.latest_matching({"outbox_since": {"$lte": cutoff}}, sort="outbox_since", limit=limit)
        return [d.order_id for d in found]

    async def outbox_stats(self) -> tuple[int, datetime | None]:
        """(events waiting, creation time of the oldest) for the backlog metrics."""
        count, oldest = 0, None
        for d in await self.latest_matching({"outbox_since": {"$exists": True}}, limit=10_000):
            count += len(d.outbox)
            first = min(r.created_at for r in d.outbox) if d.outbox else None
            if first is not None and (oldest is None or first < oldest):
                oldest = first
        return count, oldest
