"""`fulfil backup`'s archive on the real store: every BSON type and index comes back exactly, offsets are recorded.

A scratch database stands in for a service's (the drill in tests/e2e/test_backup.py restores the real ones).
No Decimal128: FerretDB v1 closes the connection on one (the services keep money as strings).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from bson import Binary, Int64, ObjectId
from bson.raw_bson import RawBSONDocument
from pymongo import ASCENDING, DESCENDING, MongoClient

from shared import topics
from tests.conftest import Endpoints
from tools.ops.backup import RAW, Archive, take_backup

pytestmark = pytest.mark.infra


@pytest.fixture
def scratch(endpoints: Endpoints) -> Iterator[tuple[MongoClient[dict[str, Any]], str]]:
    client: MongoClient[dict[str, Any]] = MongoClient(endpoints.mongodb_url, tz_aware=True)
    name = f"it_backup_{uuid.uuid4().hex[:8]}"
    try:
        yield client, name
    finally:
        client.drop_database(name)
        client.close()


def raw_docs(client: MongoClient[dict[str, Any]], db: str, coll: str) -> dict[Any, bytes]:
    found = client.get_database(db, codec_options=RAW)[coll].find()  # RawBSONDocuments: the stored bytes
    return {d["_id"]: bytes(cast(RawBSONDocument, d).raw) for d in found}


def indexes(client: MongoClient[dict[str, Any]], db: str, coll: str) -> dict[str, tuple[Any, bool]]:
    return {ix["name"]: (list(ix["key"].items()), bool(ix.get("unique"))) for ix in client[db][coll].list_indexes()}


def test_restore_brings_back_every_document_byte_for_byte_with_its_indexes(
    scratch: tuple[MongoClient[dict[str, Any]], str], endpoints: Endpoints, tmp_path: Path
) -> None:
    client, db = scratch
    docs = [
        {
            "_id": "ORD-1@000000000001",
            "v": 1,
            "amount": "79.80",
            "big": Int64(2**40),
            "ratio": 0.5,
            "at": datetime(2026, 11, 26, 8, 0, 0, 123000, tzinfo=UTC),
            "blob": Binary(b"\x00\x01\xff"),
            "flag": True,
            "oid": ObjectId(),
            "nested": {"name": "张伟", "lines": [{"sku": "SKU-1", "quantity": 2}], "none": None},
        },
        {"_id": "ORD-2@000000000001", "v": 1, "status": "PENDING", "updated_at": datetime(2026, 11, 26, tzinfo=UTC)},
    ]
    client[db]["orders_versions"].insert_many(docs)
    client[db]["orders"].create_index([("status", ASCENDING), ("updated_at", DESCENDING)], name="status_updated")
    client[db]["timers"].create_index([("due_at", ASCENDING)], name="due_at")
    client[db]["timers"].create_index([("kind", ASCENDING)], name="kind_unique", unique=True)
    client[db]["timers"].insert_one({"_id": "deadline:ORD-2", "kind": "deadline", "due_at": datetime.now(UTC)})
    before = {c: raw_docs(client, db, c) for c in ("orders_versions", "timers")}
    index_before = {c: indexes(client, db, c) for c in ("orders", "timers")}

    out = tmp_path / "b.tar.gz"
    manifest = take_backup(
        client=client, mongodb_url=endpoints.mongodb_url, kafka=endpoints.kafka, out=out, databases=(db,)
    )
    client[db]["orders_versions"].insert_one({"_id": "after-the-backup"})
    client[db]["orders_versions"].delete_one({"_id": "ORD-1@000000000001"})
    client[db]["timers"].drop_indexes()

    archive = Archive.open(out)
    assert archive.verify() > 0
    written = archive.restore_into(client)

    assert written == {f"{db}.orders": 0, f"{db}.orders_versions": 2, f"{db}.timers": 1}
    assert {c: raw_docs(client, db, c) for c in ("orders_versions", "timers")} == before
    assert {c: indexes(client, db, c) for c in ("orders", "timers")} == index_before
    restored = client.get_database(db, codec_options=RAW)["orders_versions"].find_one({"_id": "ORD-1@000000000001"})
    assert isinstance(restored, RawBSONDocument)
    assert isinstance(restored["blob"], bytes)
    assert isinstance(restored["oid"], ObjectId)
    assert isinstance(restored["big"], Int64)
    assert manifest["databases"][db]["orders_versions"]["documents"] == 2
    assert out.stat().st_mode & 0o777 == 0o600
    # Every consumer group, every topic it reads, every partition: an offset or None (nothing consumed there yet).
    for group, group_topics in topics.CONSUMER_GROUPS.items():
        assert set(manifest["offsets"][group]) == set(group_topics)
        for topic in group_topics:
            assert manifest["offsets"][group][topic], (group, topic)
