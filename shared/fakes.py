"""In-memory stand-ins for the two servers a handler talks to, so a handler is unit-tested without either.

:class:`InMemoryDatabase` answers the few collection calls this code makes (by ``_id`` and simple filters), so the
real stores run on it unchanged: :class:`shared.mongo.AggregateStore` with its versions, inbox, outbox and cache,
:class:`shared.mongo.Timers`, the inventory's stock, the sandbox gateway's ledger. Faking below the stores rather
than beside them keeps what a handler test relies on -- a lost race is an insert of an existing version, a
redelivery is found in the inbox -- the very code that does it in production. Every document goes through BSON on
the way in and out, as with a real server: what cannot be stored fails here too, datetimes come back in UTC cut to
milliseconds, and nothing a caller keeps aliases what is stored.

:class:`InMemoryBroker` stands in for the service's Kafka publish: it keeps what it was given, decodes it by the
topic's contract, and can refuse to take records, as Kafka does in an outage.

A call this code does not make is not emulated: an unknown query operator or a missing method fails loudly, so a
test can never pass on an emulation that merely guessed.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import bson
from bson.codec_options import CodecOptions
from pymongo import DeleteOne, ReplaceOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from shared.consumer import Outage
from shared.events import decode
from shared.events.base import Event
from shared.mongo import Doc
from shared.outbox import OutboxRecord

_BSON: CodecOptions[Doc] = CodecOptions(
    document_class=dict, tz_aware=True
)  # as shared.mongo.connect reads: aware datetimes, in UTC


def _stored(doc: Mapping[str, Any]) -> Doc:
    """``doc`` as a server would keep and return it (raises as the driver does for what BSON cannot hold)."""
    return dict(bson.decode(bson.encode(doc), codec_options=_BSON))


def _value(doc: Mapping[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "$lt": lambda a, b: a is not None and a < b,
    "$lte": lambda a, b: a is not None and a <= b,
    "$gt": lambda a, b: a is not None and a > b,
    "$gte": lambda a, b: a is not None and a >= b,
    "$ne": lambda a, b: a != b,
    "$in": lambda a, b: a in b,
}


def matches(doc: Mapping[str, Any], query: Mapping[str, Any]) -> bool:
    """Whether ``doc`` matches ``query``: equality, ``$or``, and the comparisons in ``_COMPARE``."""
    for key, want in query.items():
        if key == "$or":
            if not any(matches(doc, q) for q in want):
                return False
            continue
        if key.startswith("$"):
            raise NotImplementedError(f"query operator {key} is not emulated in memory")
        have = _value(doc, key)
        if isinstance(want, Mapping) and want and all(str(k).startswith("$") for k in want):
            for op, operand in want.items():
                if op not in _COMPARE:
                    raise NotImplementedError(f"query operator {op} is not emulated in memory")
                if not _COMPARE[op](have, operand):
                    return False
        elif have != want:
            return False
    return True


def _projected(doc: Doc, projection: Mapping[str, Any] | None) -> Doc:
    if not projection:
        return copy.deepcopy(doc)
    keep = {k for k, on in projection.items() if on}
    return {k: copy.deepcopy(v) for k, v in doc.items() if k in keep or k == "_id"}


class InMemoryCursor:
    """What ``find`` returns: sorted and limited like a server's cursor, iterated with ``async for``."""

    def __init__(self, docs: list[Doc]) -> None:
        self._docs = docs

    def sort(self, key: str, direction: int = 1) -> InMemoryCursor:
        present = [d for d in self._docs if _value(d, key) is not None]
        absent = [d for d in self._docs if _value(d, key) is None]  # a missing field sorts first, as in MongoDB
        ordered = sorted(present, key=lambda d: _value(d, key), reverse=direction < 0)
        self._docs = absent + ordered if direction > 0 else ordered + absent
        return self

    def limit(self, n: int) -> InMemoryCursor:
        if n > 0:
            self._docs = self._docs[:n]
        return self

    async def __aiter__(self) -> AsyncIterator[Doc]:
        for doc in self._docs:
            yield doc


class InMemoryCollection:
    """One collection: documents by ``_id``, with the unique ``_id`` a versioned write relies on."""

    def __init__(self, database: InMemoryDatabase, name: str) -> None:
        self.database = database
        self.name = name
        self.docs: dict[Any, Doc] = {}

    def _find(self, query: Mapping[str, Any]) -> list[Doc]:
        if set(query) == {"_id"} and not isinstance(query["_id"], Mapping):
            found = self.docs.get(query["_id"])
            return [found] if found is not None else []
        return [d for d in self.docs.values() if matches(d, query)]

    async def find_one(self, query: Mapping[str, Any], projection: Mapping[str, Any] | None = None) -> Doc | None:
        found = self._find(query)
        return _projected(found[0], projection) if found else None

    def find(
        self, query: Mapping[str, Any] | None = None, projection: Mapping[str, Any] | None = None
    ) -> InMemoryCursor:
        return InMemoryCursor([_projected(d, projection) for d in self._find(query or {})])

    async def count_documents(self, query: Mapping[str, Any]) -> int:
        return len(self._find(query))

    async def insert_one(self, doc: Doc) -> None:
        stored = _stored(doc)
        if stored["_id"] in self.docs:
            raise DuplicateKeyError(f"E11000 duplicate key error: {self.name} _id {stored['_id']!r}", 11000)
        self.docs[stored["_id"]] = stored

    async def insert_many(self, docs: Iterable[Doc], ordered: bool = True) -> None:
        """Inserts each document whose ``_id`` is new; the others are reported as the server does (one
        ``BulkWriteError`` naming each failed index, code 11000), after the rest were written when not ``ordered``."""
        errors: list[Doc] = []
        for i, doc in enumerate(docs):
            if errors and ordered:
                break
            try:
                await self.insert_one(doc)
            except DuplicateKeyError as e:
                errors.append({"index": i, "code": 11000, "errmsg": str(e)})
        if errors:
            raise BulkWriteError({"writeErrors": errors, "writeConcernErrors": [], "nInserted": 0})

    async def replace_one(self, query: Mapping[str, Any], doc: Doc, upsert: bool = False) -> None:
        found = self._find(query)
        if found:
            self.docs[found[0]["_id"]] = _stored({**doc, "_id": found[0]["_id"]})
        elif upsert:
            key = query.get("_id")
            if key is None or isinstance(key, Mapping):
                raise NotImplementedError("an upsert without an _id to insert is not emulated in memory")
            self.docs[key] = _stored({**doc, "_id": key})

    async def update_one(self, query: Mapping[str, Any], update: Mapping[str, Any]) -> None:
        if set(update) != {"$set"}:
            raise NotImplementedError(f"update {sorted(update)} is not emulated in memory (only $set)")
        found = self._find(query)
        if found:
            self.docs[found[0]["_id"]] = _stored({**found[0], **update["$set"]})

    async def delete_one(self, query: Mapping[str, Any]) -> None:
        found = self._find(query)
        if found:
            del self.docs[found[0]["_id"]]

    async def delete_many(self, query: Mapping[str, Any]) -> None:
        for doc in self._find(query):
            del self.docs[doc["_id"]]

    async def bulk_write(self, ops: Sequence[object], ordered: bool = True) -> None:
        # The driver's write models expose what they hold only as attributes of their own; pymongo is pinned
        # (uv.lock), so a change of them fails every handler test at once rather than quietly.
        for op in ops:
            if isinstance(op, ReplaceOne):
                await self.replace_one(op._filter, dict(op._doc), upsert=bool(op._upsert))
            elif isinstance(op, DeleteOne):
                await self.delete_one(op._filter)
            else:
                raise NotImplementedError(f"{type(op).__name__} is not emulated in memory")

    async def create_index(self, keys: object, **options: object) -> str:
        """Indexes change how fast a query is, never what it finds: nothing to keep in memory."""
        return str(options.get("name", "index"))


class InMemoryClient:
    """The client a database belongs to (the stores' group writers are kept per client)."""

    async def close(self) -> None:
        return None


class InMemoryDatabase:
    """A database in memory; ``db`` is it as the stores take it (``AsyncDatabase``), the collections are here to
    look into."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.client = InMemoryClient()
        self.collections: dict[str, InMemoryCollection] = {}

    def __getitem__(self, name: str) -> InMemoryCollection:
        if name not in self.collections:
            self.collections[name] = InMemoryCollection(self, name)
        return self.collections[name]

    @property
    def db(self) -> AsyncDatabase[Doc]:
        # Not an AsyncDatabase, only the part of one this code calls (see the module docstring).
        return cast("AsyncDatabase[Doc]", self)


@dataclass
class InMemoryBroker:
    """Stands in for a service's Kafka publish (``Service.publish``): records every record it took.

    ``refuse`` makes the next that many publishes fail as a Kafka outage does: nothing taken, the caller raises.
    """

    records: list[OutboxRecord] = field(default_factory=list)
    refuse: int = 0

    async def __call__(self, records: Sequence[OutboxRecord]) -> None:
        if not records:
            return
        if self.refuse > 0:
            self.refuse -= 1
            raise Outage("Kafka did not take the records (in-memory broker told to refuse)")
        self.records.extend(records)

    def events(self, order_id: str | None = None) -> list[Event]:
        """Every event taken (``order_id``'s only, if given), decoded by the contract of the topic it went to."""
        return [decode(r.topic, r.value.encode()) for r in self.records if order_id is None or r.key == order_id]

    def types(self, order_id: str | None = None) -> list[str]:
        return [e.event_type for e in self.events(order_id)]

    def clear(self) -> None:
        self.records.clear()
