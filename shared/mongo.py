"""Mongo plumbing: one client per process, and the versioned documents every service keeps.

Each service owns a database and keeps, per order, one document holding its state, its recent outbox (the events
its last changes emitted, each with the ``cause`` that led to it) and its inbox (``event_id``s already handled).
A handler's effect is one atomic step: an *insert* of the next version (``_id = "<key>@<version>"``). A unique
``_id`` is enforced atomically by MongoDB and by FerretDB alike, whereas FerretDB v1 evaluates an update's filter
and applies the update in two steps, so a conditional update can silently lose a concurrent write there.

The hot path is built for a store whose round trips are the cost (FerretDB answers a few hundred sequential
requests per second but inserts ~20,000 documents per second in one ``insert_many``):

* **Group commit**: inserts from every concurrent handler are queued and written by one ``insert_many``
  (``ordered=False``); each caller learns its own outcome (duplicate ``_id`` = lost race).
* **Cache**: the latest version this process wrote or read is kept in memory. A stale entry (another replica
  wrote meanwhile) is harmless: its insert hits the existing next ``_id`` and the caller reloads.
* **Versions are never deleted** while they can be raced: a reader that saw version *c* can only ever insert
  *c+1*, which exists if anyone else wrote after *c* -- so no writer can overtake a reader unnoticed.
* **Head copies** (``_id = key`` in the main collection, what other readers start from) are written behind, the
  newest version per key coalesced into one ``bulk_write`` per flush; a reader probes for newer versions than
  the head it finds, so a head that is behind (or lost in a crash) is never taken for the latest.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Container, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import structlog
from pydantic import BaseModel
from pymongo import ASCENDING, AsyncMongoClient, DeleteOne, ReplaceOne, monitoring
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, InvalidOperation, PyMongoError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from shared import metrics
from shared.events.base import now
from shared.outbox import OutboxRecord
from shared.settings import ServiceSettings

log = structlog.get_logger(__name__)

Doc = dict[str, Any]
S = TypeVar("S", bound=BaseModel)
T = TypeVar("T")

INBOX_LIMIT = 500  # an order sees a few dozen events; the cap only bounds pathological replays
OUTBOX_KEEP = 50  # recent emitted records kept per document, for re-publishing after a crash or a store error
CACHE_SIZE = 50_000
MAX_BATCH = 500
MAX_WRITE_ATTEMPTS = 50
HEAD_BATCH = 40  # updates per command: FerretDB v1 holds a connection per update until the command ends (>= 50 hang)
HEAD_DELAY = 0.2  # heads are written behind; waiting a moment lets one write carry many versions per key
_BulkOp = ReplaceOne[Doc] | DeleteOne


class _CommandCounter(monitoring.CommandListener):
    """Counts every store round trip by command and collection (``fulfil_store_commands_total``): the store's
    round trips are this system's main cost, so they are what to watch and what to profile."""

    def __init__(self) -> None:
        self._names: dict[int, tuple[str, str]] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        target = event.command.get(event.command_name)
        self._names[event.request_id] = (event.command_name, target if isinstance(target, str) else "")

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._done(event.request_id, event.duration_micros)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._done(event.request_id, event.duration_micros)

    def _done(self, request_id: int, micros: int) -> None:
        command, collection = self._names.pop(request_id, ("?", ""))
        metrics.STORE_COMMANDS.labels(command, collection).inc()
        metrics.STORE_SECONDS.labels(command, collection).inc(micros / 1e6)


def connect(settings: ServiceSettings) -> AsyncMongoClient[Doc]:
    # A short server-selection timeout turns a store outage into a quick, retryable error instead of a 30 s hang.
    return AsyncMongoClient(
        settings.mongodb_url,
        event_listeners=[_CommandCounter()],
        serverSelectionTimeoutMS=3000,
        connectTimeoutMS=3000,
        # No store call may wait forever (a wedged connection): it fails as an outage and is retried.
        socketTimeoutMS=30_000,
        tz_aware=True,
        appname=settings.service_name,
        maxPoolSize=32,
    )


class ConcurrentUpdate(Exception):
    """Another handler or replica changed the document since we read it; reload and decide again."""


async def on_concurrent_update(work: Callable[[int], Awaitable[T]], *, attempts: int = MAX_WRITE_ATTEMPTS) -> T:
    """Run a read-decide-write, ``work(attempt)``, again while its write loses a race (ConcurrentUpdate): each
    attempt reads anew, so the decision is taken on the newer version; after ``attempts`` the last ConcurrentUpdate
    is raised. The first attempt runs bare: building tenacity's machinery for every event cost ~4 % of a service's
    CPU, and races are rare."""
    try:
        return await work(1)
    except ConcurrentUpdate:
        if attempts <= 1:
            raise
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(ConcurrentUpdate), stop=stop_after_attempt(attempts - 1), reraise=True
    ):
        with attempt:
            return await work(attempt.retry_state.attempt_number + 1)
    raise AssertionError("AsyncRetrying with reraise=True returns or raises")  # pragma: no cover


_GROUPS: dict[tuple[int, str, str], _GroupInsert] = {}


def grouped(coll: AsyncCollection[Doc]) -> _GroupInsert:
    """The process's group writer for ``coll``: concurrent writes to it leave in shared round trips."""
    key = (id(coll.database.client), coll.database.name, coll.name)
    # id() of a closed client may be reused by a new one: the cached writer must belong to this very client.
    if key not in _GROUPS or _GROUPS[key].coll.database.client is not coll.database.client:
        _GROUPS[key] = _GroupInsert(coll)
    return _GROUPS[key]


class _GroupInsert:
    """Coalesces concurrent writes to one collection into ``insert_many`` / ``bulk_write`` round trips
    (``ordered=False``); each caller learns its own outcome."""

    def __init__(self, coll: AsyncCollection[Doc]) -> None:
        self.coll = coll
        self.queue: list[tuple[Doc | _BulkOp, asyncio.Future[None]]] = []
        self.flushing = False
        self._task: asyncio.Task[None] | None = None

    async def insert(self, doc: Doc) -> None:
        """Insert one document; DuplicateKeyError if its ``_id`` exists. Other errors leave the outcome unknown."""
        await self._queue(doc)

    async def write(self, op: _BulkOp) -> None:
        """One ``ReplaceOne`` / ``DeleteOne``, sent in a ``bulk_write`` with the others queued meanwhile."""
        await self._queue(op)

    async def _queue(self, item: Doc | _BulkOp) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue.append((item, fut))
        if not self.flushing:
            self.flushing = True
            self._task = asyncio.get_running_loop().create_task(self._flush())
        await fut

    async def _flush(self) -> None:
        try:
            while self.queue:
                batch, self.queue = self.queue[:MAX_BATCH], self.queue[MAX_BATCH:]
                docs = [(d, f) for d, f in batch if isinstance(d, dict)]
                ops = [(o, f) for o, f in batch if not isinstance(o, dict)]
                if docs:
                    await self._write(docs, insert=True)
                for i in range(0, len(ops), HEAD_BATCH):
                    await self._write(ops[i : i + HEAD_BATCH], insert=False)
        finally:
            self.flushing = False

    async def _write(self, batch: Sequence[tuple[Any, asyncio.Future[None]]], *, insert: bool) -> None:
        metrics.STORE_BATCH.labels(self.coll.name).observe(len(batch))
        try:
            if insert:
                await self.coll.insert_many([d for d, _ in batch], ordered=False)
            else:
                await self.coll.bulk_write([o for o, _ in batch], ordered=False)
            failed: dict[int, BaseException] = {}
        except BulkWriteError as e:
            failed = {}
            for err in e.details.get("writeErrors", []):
                exc: BaseException = (
                    DuplicateKeyError(err.get("errmsg", "duplicate key"), 11000)
                    if err.get("code") == 11000
                    else PyMongoError(err.get("errmsg", "write error"))
                )
                failed[int(err["index"])] = exc
        except BaseException as e:  # the whole round trip failed (or was cancelled): every outcome is unknown
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e if isinstance(e, Exception) else ConnectionError("store write interrupted"))
            if not isinstance(e, Exception):
                raise
            return
        for i, (_, fut) in enumerate(batch):
            if fut.done():
                continue
            if i in failed:
                fut.set_exception(failed[i])
            else:
                fut.set_result(None)


class VersionedCollection:
    """One document per key whose every change is the insert of its next version (see the module docstring)."""

    def __init__(self, coll: AsyncCollection[Doc], *, heads: bool = True) -> None:
        self.coll = coll
        self.heads = heads  # without readers outside the hot path, no head copies: half the writes
        self.versions: AsyncCollection[Doc] = coll.database[f"{coll.name}_versions"]
        self._inserts = grouped(self.versions)
        self._cache: OrderedDict[str, Doc] = OrderedDict()
        self._exists: dict[str, int] = {}  # key -> a version a failed insert proved to exist
        self._heads: dict[str, Doc] = {}  # newest version per key, waiting to become the head copy
        self._heads_flushing = False
        self._heads_task: asyncio.Task[None] | None = None

    @staticmethod
    def _vid(key: str, version: int) -> str:
        return f"{key}@{version:012d}"

    async def ensure_indexes(self) -> None:
        """Nothing beyond ``_id`` is needed: every lookup is by ``_id``."""

    def note_exists(self, key: str, version: int) -> None:
        self._exists[key] = max(version, self._exists.get(key, 0))

    def forget(self, key: str) -> None:
        """Drop the cached copy (it may be behind the store): the next read starts from its version, in the store."""
        cached = self._cache.pop(key, None)
        if cached is not None:
            self.note_exists(key, int(cached["v"]))

    def _remember(self, key: str, doc: Doc) -> None:
        cached = self._cache.get(key)
        if cached is not None and int(cached["v"]) > int(doc["v"]):
            return
        self._cache[key] = doc
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    async def latest(self, key: str, *, exact: bool = False) -> Doc | None:
        """The newest version of ``key`` this process knows of -- never a lookup of something that may not exist.

        A lookup that finds nothing costs FerretDB a scan of the collection (measured: 15-25 ms at 5,000
        documents, growing with history), whereas a lookup that finds its document is ~2 ms. So: the cache; else
        a version a failed insert proved to exist (then the head, if it is newer); else None -- *assumed* new,
        which the insert of version 1 confirms or refutes. A decision taken on a stale guess is never written:
        its insert hits the existing version, and the caller decides again on what that version holds.
        """
        if (cached := self._cache.get(key)) is not None and int(cached["v"]) >= self._exists.get(key, 0):
            return cached
        if exact:  # no guess: the newest version in the store (each lookup by _id, the last one a miss)
            doc = await self.read(key)
            self._exists.pop(key, None)
            if doc is not None:
                self._remember(key, doc)
            return doc
        known = self._exists.get(key)
        if known is None:
            return None
        head = await self.coll.find_one({"_id": key}) if self.heads else None
        found = head if head is not None and int(head["v"]) >= known else None
        if found is None:
            found = await self.versions.find_one({"_id": self._vid(key, known)})
            if found is None:  # cannot happen: versions are never deleted; ask from the start
                self._exists.pop(key, None)
                return await self.read(key)
        doc = {**found, "_id": key}
        self._remember(key, doc)
        return doc

    async def current(self, key: str) -> Doc | None:
        """Like :meth:`latest`, but a key not known here is looked up (its head) instead of assumed new: for small
        collections of long-lived documents (stock per SKU), where a decision must not be taken on a guess."""
        doc = await self.latest(key)
        if doc is None and key not in self._exists:
            doc = await self.read(key)
            if doc is not None:
                self._remember(key, doc)
        return doc

    async def read(self, key: str) -> Doc | None:
        """The newest version, exactly: the head copy (if any), then a lookup for each newer version until one is
        missing (readers outside the hot path: APIs, operator tools; the head may trail, or have been lost in a
        crash before it was written). Each lookup is by ``_id``, indexed (on FerretDB: see FERRETDB_PATCHES)."""
        found = await self.coll.find_one({"_id": key}) if self.heads else None
        version = int(found["v"]) if found is not None else 0
        while (newer := await self.versions.find_one({"_id": self._vid(key, version + 1)})) is not None:
            found, version = newer, version + 1
        return {**found, "_id": key} if found is not None else None

    async def superseded(self, key: str, version: int) -> bool:
        """Whether a version after ``version`` exists (one lookup by ``_id``); if so the cache drops ``key``, so
        the next read starts from the store."""
        if await self.versions.find_one({"_id": self._vid(key, version + 1)}, {"_id": 1}) is None:
            return False
        self.forget(key)
        self.note_exists(key, version + 1)
        return True

    async def write(self, key: str, *, read_version: int, body: Doc) -> int:
        """Insert the version after ``read_version``; ConcurrentUpdate if it exists already. Returns the version."""
        version = read_version + 1
        doc = {**body, "key": key, "v": version}
        try:
            await self._inserts.insert({**doc, "_id": self._vid(key, version)})
        except DuplicateKeyError:
            self.forget(key)
            self._exists[key] = max(version, self._exists.get(key, 0))  # what the next read starts from
            raise ConcurrentUpdate(key) from None
        except BaseException:
            self.forget(key)  # the insert may or may not have happened: the next reader asks the store
            raise
        doc["_id"] = key
        self._exists.pop(key, None)
        self._remember(key, doc)
        if not self.heads:
            return version
        self._heads[key] = doc
        if not self._heads_flushing:
            self._heads_flushing = True
            self._heads_task = asyncio.get_running_loop().create_task(self._flush_heads())
        return version

    async def _flush_heads(self) -> None:
        """Write the newest version per key as its head copy, retrying while the store is away (a head lost in a
        crash is written again by the next write or redelivery of its document)."""
        try:
            await asyncio.sleep(HEAD_DELAY)
            while self._heads:
                batch = dict(list(self._heads.items())[:HEAD_BATCH])
                for key in batch:
                    del self._heads[key]
                # Unconditional replace by _id (an upsert: a head lost in a crash comes back with the next write).
                # A replica's older head may set it back a version for a moment; the hot path never reads heads.
                ops = [ReplaceOne({"_id": k}, d, upsert=True) for k, d in batch.items()]
                try:
                    await self.coll.bulk_write(ops, ordered=False)
                except InvalidOperation:  # this client was closed (shutdown): the next process's writes bring them
                    self._heads.clear()
                    return
                except Exception as e:  # the store is away: keep them (newer versions win) and try again
                    log.warning("head copies not written, will retry", collection=self.coll.name, error=str(e)[:300])
                    for key, doc in batch.items():
                        self._heads.setdefault(key, doc)
                    await asyncio.sleep(1.0)
        finally:
            self._heads_flushing = False

    def rehead(self, key: str) -> None:
        """Write the head of ``key`` again (a redelivery after a crash may have found the head behind)."""
        if self.heads and (cached := self._cache.get(key)) is not None:
            self._heads.setdefault(key, cached)
            if not self._heads_flushing:
                self._heads_flushing = True
                self._heads_task = asyncio.get_running_loop().create_task(self._flush_heads())

    async def version(self, key: str, version: int) -> Doc | None:
        return await self.versions.find_one({"_id": self._vid(key, version)})

    async def latest_matching(self, query: Doc, *, sort: str | None = None, limit: int = 200) -> list[Doc]:
        """Head documents matching ``query`` whose copy is current (operator queries; scans the head collection)."""
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
    assumed: bool = False  # not read: no version known, taken as new until an insert says otherwise

    def seen(self, event_id: object) -> bool:
        return str(event_id) in self.inbox

    def emitted_by(self, cause: object) -> list[OutboxRecord]:
        """The records this document emitted because of ``cause`` (to publish again after a crash)."""
        return [r for r in self.outbox if r.cause == str(cause)]


def next_inbox_outbox(
    loaded: Loaded[Any], *, emit: Sequence[OutboxRecord], processed: object | None, acknowledged: Container[Any]
) -> tuple[list[str], list[OutboxRecord]]:
    """The inbox and outbox the next version carries: the processed event added (the last ``INBOX_LIMIT`` kept),
    records Kafka acknowledged dropped (only what may be unpublished is carried on), the new ones added."""
    inbox = [*loaded.inbox, str(processed)][-INBOX_LIMIT:] if processed is not None else list(loaded.inbox)
    kept = [r for r in loaded.outbox if r.event_id not in acknowledged]
    return inbox, [*kept, *emit][-OUTBOX_KEEP:]


class AggregateStore(Generic[S]):
    """Per-order documents of one service: load and versioned save of state + recent outbox + inbox."""

    HEADS = False  # a store read by APIs or operator tools keeps head copies (see VersionedCollection)
    # A store whose steps touch other documents (stock) decides on the newest version only, never on a guess.
    EXACT = False

    def __init__(self, db: AsyncDatabase[Doc], collection: str, state_model: type[S]) -> None:
        self.coll: AsyncCollection[Doc] = db[collection]
        self.docs = VersionedCollection(self.coll, heads=self.HEADS)
        self.state_model = state_model
        self._parsed: dict[tuple[str, int], Loaded[S]] = {}
        self._acknowledged: OrderedDict[str, None] = OrderedDict()

    def unacknowledged(self, loaded: Loaded[S]) -> list[OutboxRecord]:
        """The records ``loaded`` carries that this process has not seen Kafka take (all of them after a restart),
        in the order they were emitted."""
        return [r for r in loaded.outbox if r.event_id not in self._acknowledged]

    def acknowledged(self, records: Sequence[OutboxRecord]) -> None:
        """Kafka took these records: the next version of their document need not carry them."""
        for r in records:
            self._acknowledged[r.event_id] = None
        while len(self._acknowledged) > CACHE_SIZE:
            self._acknowledged.popitem(last=False)

    async def ensure_indexes(self) -> None:
        await self.docs.ensure_indexes()

    def indexed(self, state: S) -> Doc:
        """Top-level fields derived from the state, kept as native types so operator queries can use them."""
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
        """The newest version this process knows of, or an *assumed* new document (see ``VersionedCollection``)."""
        doc = await self.docs.latest(order_id, exact=self.EXACT)
        if doc is None:
            return Loaded(order_id=order_id, state=None, assumed=not self.EXACT)
        # The cache keeps the parsed form of what this process wrote: no re-validation on the hot path.
        parsed = self._parsed.get((order_id, int(doc["v"])))
        return parsed if parsed is not None else self._loaded(order_id, doc)

    def _body(self, state: S, inbox: list[str], outbox: list[OutboxRecord]) -> Doc:
        return {
            "state": state.model_dump(mode="json"),
            "inbox": inbox,
            "outbox": [r.model_dump(mode="python") for r in outbox],
            "updated_at": now(),
            **self.indexed(state),
        }

    def rehead(self, *, order_id: str) -> None:
        self.docs.rehead(order_id)

    async def read(self, *, order_id: str) -> Loaded[S]:
        """The document as its head copy shows it: for APIs and operator tools (a missing id costs a scan)."""
        return self._loaded(order_id, await self.docs.read(order_id))

    async def confirm(self, *, order_id: str) -> Loaded[S]:
        """An assumed-new document that a step could not handle: look for it for real (a miss costs a scan)."""
        doc = await self.docs.read(order_id)
        if doc is not None:
            self.docs.note_exists(order_id, int(doc["v"]))
            return await self.load(order_id=order_id)
        return Loaded(order_id=order_id, state=None)

    async def outdated(self, loaded: Loaded[S]) -> bool:
        """A document this process had cached that another process (a copy the order's partition was assigned to
        meanwhile) has moved on from: a step that refused it must decide again on the newer version."""
        return await self.docs.superseded(loaded.order_id, loaded.version)

    async def save(
        self,
        loaded: Loaded[S],
        *,
        state: S,
        emit: Sequence[OutboxRecord] = (),
        processed: object | None = None,
    ) -> Loaded[S]:
        """Write state + new outbox records + inbox entry as the next version; ConcurrentUpdate on a race."""
        inbox, outbox = next_inbox_outbox(loaded, emit=emit, processed=processed, acknowledged=self._acknowledged)
        version = await self.docs.write(
            loaded.order_id, read_version=loaded.version, body=self._body(state, inbox, outbox)
        )
        saved = Loaded(loaded.order_id, state, version, inbox, outbox)
        self._parsed.pop((loaded.order_id, loaded.version), None)
        self._parsed[(loaded.order_id, version)] = saved
        while len(self._parsed) > CACHE_SIZE:
            self._parsed.pop(next(iter(self._parsed)))
        return saved

    async def latest_matching(self, query: Doc, *, sort: str | None = None, limit: int = 200) -> list[Loaded[S]]:
        return [self._loaded(d["_id"], d) for d in await self.docs.latest_matching(query, sort=sort, limit=limit)]


class Timers:
    """Due times per (kind, key) in a collection that holds only work in flight, so a scan stays small.

    A timer is set before the state that needs it is written and cleared after the state that ends it, so a crash
    leaves at worst a spurious timer (whose owner finds nothing due and clears it), never a missing one.
    """

    def __init__(self, db: AsyncDatabase[Doc], collection: str = "timers") -> None:
        self.coll: AsyncCollection[Doc] = db[collection]

    @staticmethod
    def _id(kind: str, key: str) -> str:
        return f"{kind}:{key}"

    async def ensure_indexes(self) -> None:
        await self.coll.create_index([("due_at", ASCENDING)], name="due_at")

    async def set(self, *, kind: str, key: str, due_at: datetime) -> None:
        doc = {"kind": kind, "key": key, "due_at": due_at}
        await grouped(self.coll).write(ReplaceOne({"_id": self._id(kind, key)}, doc, upsert=True))

    async def clear(self, *, kind: str, key: str) -> None:
        with contextlib.suppress(PyMongoError):  # a leftover timer fires, finds nothing due and is cleared again
            await grouped(self.coll).write(DeleteOne({"_id": self._id(kind, key)}))

    async def due(self, *, kind: str, at: datetime, limit: int = 200) -> list[str]:
        cursor = self.coll.find({"kind": kind, "due_at": {"$lte": at}}).sort("due_at", ASCENDING).limit(limit)
        return [d["key"] async for d in cursor]

    async def count(self) -> int:
        return await self.coll.count_documents({})

    def scanner(
        self, kind: str, fire: Callable[[str], Awaitable[None]], interval: float = 1.0
    ) -> Callable[[], Coroutine[Any, Any, None]]:
        """A loop firing due timers of ``kind``; one that fails is logged and fires again, never blocks the others."""

        async def scan() -> None:
            while True:
                for key in await self.due(kind=kind, at=datetime.now(UTC)):
                    try:
                        await fire(key)
                    except Exception as e:
                        log.warning("timer fired without effect, will retry", kind=kind, key=key, error=repr(e))
                await asyncio.sleep(interval)

        scan.__name__ = f"{kind}-scanner"
        return scan
