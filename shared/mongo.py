"""Mongo plumbing: one client per process, and the versioned documents every service keeps.

Each service owns a database and keeps, per order, one document holding its state, its outbox (events caused by
the last changes, not yet acknowledged by Kafka) and its inbox (``event_id``s already handled). A handler's effect
is one atomic step. To be atomic on every MongoDB-wire store, that step is an *insert* of the next version
(``_id = "<key>@<version>"``): a unique ``_id`` is enforced atomically by MongoDB and by FerretDB alike, whereas
FerretDB v1 evaluates an update's filter and applies the update in two steps, so a conditional update
(compare-and-set with ``replace_one({_id, v})``) can silently lose a concurrent write there. See
:class:`VersionedCollection` for how the latest version is found by ``_id`` alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import structlog
from pydantic import BaseModel
from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from shared.events.base import now
from shared.outbox import OutboxRecord
from shared.settings import ServiceSettings

log = structlog.get_logger(__name__)

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
    """One document per key, whose every change is arbitrated by inserting its next version.

    Two collections: ``<name>_versions`` holds ``<key>@<v>`` documents -- inserting version ``v + 1`` is the atomic
    step: a second writer that read ``v`` gets a duplicate key and must reload. ``<name>`` holds the latest
    document under ``_id = key``, copied there right after the insert; it is what scans query and what readers
    start from. Every access is by ``_id`` (FerretDB v1 pushes only ``_id`` lookups down to its backend; other
    filters scan the collection). A reader checks for a newer version than the copy it found, so a copy left behind
    by a crash (or a late, out-of-order copy) is never taken for the latest; :meth:`repair` brings copies up to
    date at start-up. Each write deletes the version two steps back, so a key keeps at most two versions.
    """

    def __init__(self, coll: AsyncCollection[Doc]) -> None:
        self.coll = coll
        self.versions: AsyncCollection[Doc] = coll.database[f"{coll.name}_versions"]

    @staticmethod
    def _vid(key: str, version: int) -> str:
        return f"{key}@{version:012d}"

    async def ensure_indexes(self) -> None:
        """Nothing beyond ``_id`` is needed: every lookup is by ``_id``."""

    async def latest(self, key: str) -> Doc | None:
        doc = await self.coll.find_one({"_id": key})
        version = int(doc["v"]) if doc else 0
        while (newer := await self.versions.find_one({"_id": self._vid(key, version + 1)})) is not None:
            doc, version = newer, version + 1
        if doc is not None:
            doc = {**doc, "_id": key}
        return doc

    async def write(self, key: str, *, read_version: int, body: Doc) -> int:
        """Insert the version after ``read_version``; ConcurrentUpdate if it exists already. Returns the version."""
        version = read_version + 1
        doc = {**body, "key": key, "v": version}
        try:
            await self.versions.insert_one({**doc, "_id": self._vid(key, version)})
        except DuplicateKeyError:
            raise ConcurrentUpdate(key) from None
        await self._copy(key, doc)
        # The version two steps back can no longer be needed by a reader; losing this delete is harmless.
        if version > 2:
            with contextlib.suppress(PyMongoError):
                await self.versions.delete_one({"_id": self._vid(key, version - 2)})
        return version

    async def _copy(self, key: str, doc: Doc) -> None:
        with contextlib.suppress(DuplicateKeyError):  # the copy is already at a newer version
            await self.coll.replace_one({"_id": key, "v": {"$lt": doc["v"]}}, {**doc, "_id": key}, upsert=True)

    async def repair(self) -> int:
        """Bring every latest copy up to its newest version (after a crash between insert and copy)."""
        newest: dict[str, Doc] = {}
        async for doc in self.versions.find({}):
            if doc["key"] not in newest or doc["v"] > newest[doc["key"]]["v"]:
                newest[doc["key"]] = doc
        fixed = 0
        for key, doc in newest.items():
            current = await self.coll.find_one({"_id": key}, {"v": 1})
            if current is None or current["v"] < doc["v"]:
                await self._copy(key, {k: v for k, v in doc.items() if k != "_id"})
                fixed += 1
        return fixed

    async def latest_matching(self, query: Doc, *, sort: str | None = None, limit: int = 200) -> list[Doc]:
        """Latest documents matching ``query`` whose copy is current (a stale copy is re-read, not trusted)."""
        cursor = self.coll.find(query)
        if sort:
            cursor = cursor.sort(sort, ASCENDING)
        out: list[Doc] = []
        async for doc in cursor.limit(limit):
            newest = await self.versions.find_one({"_id": self._vid(doc["_id"], int(doc["v"]) + 1)}, {"_id": 1})
            if newest is None:
                out.append(doc)
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
        repaired = await self.docs.repair()
        if repaired:
            log.warning("latest copies repaired after an interrupted write", collection=self.coll.name, count=repaired)

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

    async def remove_published(self, *, order_id: str, event_ids: set[str], current: Loaded[S] | None = None) -> None:
        """Drop acknowledged records from the outbox, retrying until the new version sticks.

        ``current`` is the document as the caller just wrote it: tried first, it saves a reload on the hot path.
        """
        for _ in range(MAX_WRITE_ATTEMPTS):
            doc, current = current or await self.load(order_id=order_id), None
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
        return [self._loaded(d["_id"], d) for d in await self.docs.latest_matching(query, sort=sort, limit=limit)]

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
