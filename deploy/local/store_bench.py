"""Measure a MongoDB-wire store (FerretDB on SQLite or PostgreSQL, or MongoDB) on the saga's access patterns.

    python deploy/local/store_bench.py --url mongodb://127.0.0.1:27018 [--docs 50000] [--label sqlite]

Works on a scratch database (``store_bench``) of ~2 KB documents, dropped at the end; point it at a spare instance,
not at the one the services use. Prints docs/s per operation and checks what the saga relies on: an unordered
``insert_many`` with duplicate ``_id``s inserts the others and reports each duplicate with its index.

Last, it probes whether one ``bulk_write`` of ``--bulk-probe`` ReplaceOne (upsert) completes: upstream FerretDB v1.24
keeps one backend connection per update statement until the whole command ends, so a command with as many statements
as its pool (SQLite: 100 per database; PostgreSQL: 50 per server) waits forever and wedges that pool. The stack's
build carries a fix (``FERRETDB_PATCHES`` in stack.py). Run the probe only on a spare instance.

    python deploy/local/store_bench.py --url mongodb://127.0.0.1:27018 --budget 15 --bulk-probe 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import string
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from pymongo import AsyncMongoClient, ReplaceOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

Doc = dict[str, Any]
DUPLICATE_KEY = 11000
SAFE_UPDATES = 40  # update statements per command that even an upstream FerretDB v1.24 completes (see above)


def make_doc(doc_id: str) -> Doc:
    """An order-like document of about 2 KB: nested lines, a history and an inbox of event ids."""
    rnd = random.Random(doc_id)
    return {
        "_id": doc_id,
        "status": "PENDING",
        "customer": {"id": f"c-{rnd.randint(1, 10**6)}", "email": f"{doc_id.lower()}@example.com"},
        "lines": [{"sku": f"SKU-{i:04d}", "quantity": rnd.randint(1, 5), "unit_price": "39.90"} for i in range(8)],
        "history": [{"at": time.time(), "event": f"Event{i}", "event_id": str(uuid.uuid4())} for i in range(8)],
        "inbox": [str(uuid.uuid4()) for _ in range(8)],
        "note": "".join(rnd.choices(string.ascii_letters, k=500)),
    }


class Ids:
    """Fresh, never-used `_id`s."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.n = prefix, 0

    def take(self, k: int) -> list[str]:
        self.n += k
        return [f"{self.prefix}-{i:09d}" for i in range(self.n - k, self.n)]


class Figures(dict[str, float]):
    """Docs/s per operation, echoed to stderr as they come."""

    def __setitem__(self, what: str, docs_per_s: float) -> None:
        print(f"  {what:42} {docs_per_s:10.1f} docs/s", file=sys.stderr, flush=True)
        super().__setitem__(what, docs_per_s)


async def rate(step: Callable[[int], Awaitable[int]], *, steps: int, budget: float) -> float:
    """Docs/s of `step(i)` (which returns how many docs it handled), run up to `steps` times or `budget` seconds."""
    t0, docs = time.perf_counter(), 0
    for i in range(steps):
        docs += await step(i)
        if time.perf_counter() - t0 > budget:
            break
    return docs / (time.perf_counter() - t0)


async def measure(coll: AsyncCollection[Doc], existing: list[str], ids: Ids, budget: float) -> dict[str, float]:
    out = Figures()
    sample = random.sample(existing, 2000)

    async def find_one(i: int) -> int:
        assert await coll.find_one({"_id": sample[i]}) is not None
        return 1

    out["find_one by _id (sequential)"] = await rate(find_one, steps=500, budget=budget)

    async def insert_one(_: int) -> int:
        await coll.insert_one(make_doc(ids.take(1)[0]))
        return 1

    out["insert_one (sequential)"] = await rate(insert_one, steps=500, budget=budget)

    for size in (100, 500):

        async def insert_many(_: int, size: int = size) -> int:
            await coll.insert_many([make_doc(i) for i in ids.take(size)], ordered=False)
            return size

        out[f"insert_many {size} (ordered=False)"] = await rate(insert_many, steps=5000 // size, budget=budget)

    async def bulk_replace(k: int) -> int:
        batch = sample[k * SAFE_UPDATES : (k + 1) * SAFE_UPDATES]
        ops = [ReplaceOne({"_id": i}, {**make_doc(i), "status": "COMPLETED"}, upsert=True) for i in batch]
        await coll.bulk_write(ops, ordered=False)
        return len(batch)

    out[f"bulk_write {SAFE_UPDATES} ReplaceOne upsert"] = await rate(bulk_replace, steps=10, budget=budget)

    # FerretDB v1 does not push `$in` down (explain: filterPushdown false): each query scans the collection.
    async def find_in(k: int) -> int:
        batch = sample[k * 100 : (k + 1) * 100]
        found = await coll.find({"_id": {"$in": batch}}).to_list()
        assert len(found) == len(batch), (len(found), len(batch))
        return len(batch)

    out["find $in 100 _ids"] = await rate(find_in, steps=10, budget=budget)

    per_stream = 50

    async def stream() -> None:
        for i in ids.take(per_stream):
            await coll.insert_one(make_doc(i))

    for streams in (8, 16, 32):

        async def concurrent(_: int, streams: int = streams) -> int:
            await asyncio.gather(*(stream() for _ in range(streams)))
            return streams * per_stream

        out[f"insert_one, {streams} concurrent streams"] = await rate(concurrent, steps=1, budget=budget)
    return out


async def probe_bulk_update(coll: AsyncCollection[Doc], existing: list[str], size: int) -> str:
    """Does one bulk_write of `size` ReplaceOne upserts complete within 20 s?"""
    ops = [ReplaceOne({"_id": i}, {**make_doc(i), "status": "SHIPPED"}, upsert=True) for i in existing[:size]]
    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(coll.bulk_write(ops, ordered=False), 20)
    except TimeoutError:
        return "NO ANSWER in 20 s (a wedged pool, or every update scanning the collection)"
    return f"ok, {size / (time.perf_counter() - t0):.0f} docs/s"


async def check_duplicates(coll: AsyncCollection[Doc], ids: Ids, existing: list[str]) -> dict[str, Any]:
    """Unordered insert_many with duplicates: the others land, each duplicate is reported with its index."""
    fresh = ids.take(8)
    batch = [fresh[0], existing[0], fresh[1], fresh[2], fresh[2], fresh[3], existing[1], *fresh[4:]]
    try:
        await coll.insert_many([make_doc(i) for i in batch], ordered=False)
        return {"ok": False, "why": "no BulkWriteError"}
    except BulkWriteError as e:
        errors = e.details["writeErrors"]
        reported = sorted((err["index"], err["code"]) for err in errors)
        landed = await coll.count_documents({"_id": {"$in": fresh}})
        expected = [(1, DUPLICATE_KEY), (4, DUPLICATE_KEY), (6, DUPLICATE_KEY)]
        return {
            "ok": reported == expected and landed == len(fresh) and e.details["nInserted"] == len(fresh),
            "writeErrors (index, code)": reported,
            "nInserted": e.details["nInserted"],
            "fresh ids stored": f"{landed}/{len(fresh)}",
        }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--docs", type=int, default=50_000, help="documents in the collection before measuring")
    parser.add_argument("--label", default="")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per measurement at most")
    parser.add_argument("--bulk-probe", type=int, default=0, help="then probe one bulk_write of N ReplaceOne")
    args = parser.parse_args()

    client: AsyncMongoClient[Doc] = AsyncMongoClient(args.url)
    db = client["store_bench"]
    await client.drop_database(db)
    coll = db["orders"]
    ids = Ids(f"SHOP-{uuid.uuid4().hex[:6]}")
    existing = ids.take(args.docs)
    t0 = time.perf_counter()
    for k in range(0, args.docs, 1000):
        await coll.insert_many([make_doc(i) for i in existing[k : k + 1000]], ordered=False)
    print(f"{args.label}: seeded {args.docs} docs", file=sys.stderr, flush=True)
    seeded = args.docs / (time.perf_counter() - t0)
    figures = {"seed: insert_many 1000 (ordered=False)": seeded, **await measure(coll, existing, ids, args.budget)}
    duplicates = await check_duplicates(coll, ids, existing)
    print(json.dumps({"label": args.label, "docs_per_s": {k: round(v, 1) for k, v in figures.items()}}))
    print(json.dumps({"label": args.label, "duplicates": duplicates}), flush=True)
    if args.bulk_probe:
        probe = await probe_bulk_update(coll, existing, args.bulk_probe)
        print(json.dumps({"label": args.label, f"bulk_write {args.bulk_probe} ReplaceOne": probe}))
        if probe.startswith("NO ANSWER"):
            return  # the store may no longer answer; dropping the database could wait forever
    if not args.keep:
        await client.drop_database(db)
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
